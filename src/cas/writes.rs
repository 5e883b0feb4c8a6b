//! Writing blobs: from memory after checking them ([`Store::put`]), or
//! streamed through a [`BlobWriter`].

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use super::shares::User;
use super::{BlobWriter, Error, Result, Store, last_use};
use crate::digest::Digest;

impl Store {
    /// Stores a blob held in memory after checking it against its digest.
    pub fn put(self: &Arc<Self>, digest: &Digest, data: &[u8]) -> Result<()> {
        self.put_as(None, digest, data)
    }

    /// [`put`](Self::put) for `user`, to whom a new blob is charged.
    pub fn put_as(self: &Arc<Self>, user: User, digest: &Digest, data: &[u8]) -> Result<()> {
        check(digest, data)?;
        if self.contains_as(digest, user)? {
            return Ok(());
        }
        self.write_verified(user, digest, data)
    }

    /// Stores a batch of blobs held in memory, each checked against its
    /// digest: [`put_as`](Self::put_as) for each, with the work a batch can
    /// share done once (one presence check for all of them). One result
    /// per blob, in order.
    pub fn put_batch(&self, user: User, blobs: &[(Digest, &[u8])]) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = blobs
            .iter()
            .map(|(digest, data)| check(digest, data))
            .collect();
        let checked: Vec<Digest> = blobs
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|((d, _), _)| *d)
            .collect();
        let present = match self.indexed(&checked, user) {
            Some(present) => present,
            None => checked
                .iter()
                .map(|d| self.contains_as(d, user).unwrap_or(false))
                .collect(),
        };
        let mut present = present.into_iter();
        for ((digest, data), result) in blobs.iter().zip(&mut results) {
            if result.is_ok() && !present.next().unwrap_or(false) && !digest.is_empty() {
                *result = self.write_verified(user, digest, data);
            }
        }
        results
    }

    /// Writes checked bytes to a temporary file and publishes it: the file
    /// is created read-only (the descriptor can still write), given its
    /// fixed mtime and, with `fsync`, flushed, then renamed into place.
    fn write_verified(&self, user: User, digest: &Digest, data: &[u8]) -> Result<()> {
        let tmp = self.temp_path(&digest.hex());
        let result = (|| -> Result<bool> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .custom_flags(libc::O_CLOEXEC)
                .open(&tmp)
                .map_err(Error::io("create", &tmp))?;
            if let Some(group) = self.shares.group_for(user) {
                std::os::unix::fs::fchown(&file, None, Some(group))
                    .map_err(Error::io("chown", &tmp))?;
            }
            file.write_all(data).map_err(Error::io("write", &tmp))?;
            file.set_modified(last_use::fixed_mtime())
                .map_err(Error::io("set mtime of", &tmp))?;
            if self.config.fsync {
                file.sync_data().map_err(Error::io("fsync", &tmp))?;
            }
            drop(file);
            self.publish(&tmp, digest)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(drop)
    }

    /// Starts writing a blob; see [`BlobWriter`].
    pub fn writer(self: &Arc<Self>, digest: Digest) -> Result<BlobWriter> {
        self.writer_as(None, digest)
    }

    /// [`writer`](Self::writer) for `user`, to whom the blob is charged.
    pub fn writer_as(self: &Arc<Self>, user: User, digest: Digest) -> Result<BlobWriter> {
        BlobWriter::create(Arc::clone(self), digest, self.shares.group_for(user))
    }
}

/// Whether `data` is the blob `digest` names: its size, then its hash.
fn check(digest: &Digest, data: &[u8]) -> Result<()> {
    if data.len() as u64 != digest.size() {
        return Err(Error::SizeMismatch {
            expected: *digest,
            actual: data.len() as u64,
        });
    }
    let actual = Digest::of_bytes(data);
    if actual != *digest {
        return Err(Error::HashMismatch {
            expected: *digest,
            actual: actual.hex(),
        });
    }
    Ok(())
}
