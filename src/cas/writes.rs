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

    /// Writes checked bytes to a new temporary file at `tmp`; see
    /// [`fill_temp`](Self::fill_temp).
    fn write_temp(&self, user: User, tmp: &std::path::Path, data: &[u8]) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .custom_flags(libc::O_CLOEXEC)
            .open(tmp)
            .map_err(Error::io("create", tmp))?;
        self.fill_temp(user, file, tmp, data)
    }

    /// Fills a temporary file just created read-only (the descriptor can
    /// still write) with checked bytes: charged to `user`, given its fixed
    /// mtime and, with `fsync`, flushed. `tmp` names it in errors.
    pub(super) fn fill_temp(
        &self,
        user: User,
        mut file: std::fs::File,
        tmp: &std::path::Path,
        data: &[u8],
    ) -> Result<()> {
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

/// Whether `data` is the blob `digest` names: its size, then its hash.
fn check(digest: &Digest, data: &[u8]) -> Result<()> {
    check_size(digest, data)?;
    check_hash(digest, data)
}

/// Whether `data` has the length `digest` names.
pub(super) fn check_size(digest: &Digest, data: &[u8]) -> Result<()> {
    if data.len() as u64 != digest.size() {
        return Err(Error::SizeMismatch {
            expected: *digest,
            actual: data.len() as u64,
        });
    }
    Ok(())
}

/// Whether `data` hashes to `digest` (whose size it has).
pub(super) fn check_hash(digest: &Digest, data: &[u8]) -> Result<()> {
    let actual = Digest::of_bytes(data);
    if actual != *digest {
        return Err(Error::HashMismatch {
            expected: *digest,
            actual: actual.hex(),
        });
    }
    Ok(())
}
