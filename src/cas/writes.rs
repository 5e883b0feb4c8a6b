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
        let mut to_write = Vec::new();
        for (i, ((digest, _), result)) in blobs.iter().zip(&results).enumerate() {
            if result.is_ok() && !present.next().unwrap_or(false) && !digest.is_empty() {
                to_write.push(i);
            }
        }
        // Temporary files first, then their renames into place under the
        // index's lock in groups (rule 1 of `index`).
        let mut written = Vec::new();
        for i in to_write {
            let (digest, data) = &blobs[i];
            let tmp = self.temp_path(&digest.hex());
            match self.write_temp(user, &tmp, data) {
                Ok(()) => written.push((i, tmp, self.blob_path(digest))),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    results[i] = Err(e);
                }
            }
        }
        for group in written.chunks(PUBLISH_GROUP) {
            let files: Vec<([u8; 32], &std::path::Path, u64)> = group
                .iter()
                .map(|(i, _, dest)| (*blobs[*i].0.hash(), dest.as_path(), blobs[*i].0.size()))
                .collect();
            let published = self.index.publishing_many(&files, |k| {
                let (_, tmp, dest) = &group[k];
                self.publish_at(tmp, dest, files[k].2)
            });
            for ((i, tmp, _), r) in group.iter().zip(published) {
                if let Err(e) = r {
                    let _ = std::fs::remove_file(tmp);
                    results[*i] = Err(e);
                }
            }
        }
        results
    }

    /// Writes checked bytes to a new temporary file at `tmp`: created
    /// read-only (the descriptor can still write), charged to `user`, given
    /// its fixed mtime and, with `fsync`, flushed.
    fn write_temp(&self, user: User, tmp: &std::path::Path, data: &[u8]) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .custom_flags(libc::O_CLOEXEC)
            .open(tmp)
            .map_err(Error::io("create", tmp))?;
        if let Some(group) = self.shares.group_for(user) {
            std::os::unix::fs::fchown(&file, None, Some(group)).map_err(Error::io("chown", tmp))?;
        }
        // A daemon started with umask 077 would make blobs that only it
        // can read (and actions not at all).
        if crate::umask::process_umask() & 0o444 != 0 {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o444))
                .map_err(Error::io("chmod", tmp))?;
        }
        file.write_all(data).map_err(Error::io("write", tmp))?;
        file.set_modified(last_use::fixed_mtime())
            .map_err(Error::io("set mtime of", tmp))?;
        if self.config.fsync {
            file.sync_data().map_err(Error::io("fsync", tmp))?;
        }
        Ok(())
    }

    /// Writes checked bytes to a temporary file and publishes it: the file
    /// is created read-only (the descriptor can still write), given its
    /// fixed mtime and, with `fsync`, flushed, then renamed into place.
    fn write_verified(&self, user: User, digest: &Digest, data: &[u8]) -> Result<()> {
        let tmp = self.temp_path(&digest.hex());
        let result = self
            .write_temp(user, &tmp, data)
            .and_then(|()| self.publish(&tmp, digest));
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

/// Blobs of a batch renamed into place under one hold of the index's
/// lock (so that presence checks wait at most for one group).
const PUBLISH_GROUP: usize = 128;

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
