//! Streaming a blob into the store: a temporary file, hashed as it is
//! written, published only when the hash matches.

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::{Error, Result, Store};
use crate::digest::Digest;

/// A blob being written. Dropping it without [`commit`](Self::commit)
/// removes the temporary file, so an abandoned upload leaves nothing.
pub struct BlobWriter {
    store: Arc<Store>,
    expected: Digest,
    file: File,
    path: PathBuf,
    /// `None` when the caller has already checked the data (`Store::put`):
    /// hashing it again would be the same work twice.
    hasher: Option<Sha256>,
    written: u64,
    done: bool,
}

impl BlobWriter {
    /// `group`: the group that charges the blob to its user (see
    /// `shares`), if any.
    pub(super) fn create(
        store: Arc<Store>,
        expected: Digest,
        group: Option<u32>,
    ) -> Result<BlobWriter> {
        let path = store.temp_path(&expected.hex());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("create", &path))?;
        if group.is_some() {
            std::os::unix::fs::fchown(&file, None, group).map_err(Error::io("chown", &path))?;
        }
        Ok(BlobWriter {
            store,
            expected,
            file,
            path,
            hasher: Some(Sha256::new()),
            written: 0,
            done: false,
        })
    }

    /// For data whose hash the caller has just checked against the digest:
    /// the size is still checked at commit, the hash is not computed again.
    pub(super) fn already_verified(mut self) -> BlobWriter {
        self.hasher = None;
        self
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends data. More data than the digest's size is an error.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let total = self.written + data.len() as u64;
        if total > self.expected.size() {
            return Err(Error::SizeMismatch {
                expected: self.expected,
                actual: total,
            });
        }
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        self.file
            .write_all(data)
            .map_err(Error::io("write", &self.path))?;
        self.written = total;
        Ok(())
    }

    /// Throws away what was written, to start again from offset 0.
    pub fn restart(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind().map(drop))
            .map_err(Error::io("truncate", &self.path))?;
        if self.hasher.is_some() {
            self.hasher = Some(Sha256::new());
        }
        self.written = 0;
        Ok(())
    }

    /// Checks size and hash and publishes the blob under its name.
    pub fn commit(mut self) -> Result<()> {
        if self.written != self.expected.size() {
            return Err(Error::SizeMismatch {
                expected: self.expected,
                actual: self.written,
            });
        }
        if let Some(hasher) = self.hasher.take() {
            let hash: [u8; 32] = hasher.finalize().into();
            if &hash != self.expected.hash() {
                return Err(Error::HashMismatch {
                    expected: self.expected,
                    actual: hex::encode(hash),
                });
            }
        }
        self.file
            .set_modified(super::last_use::fixed_mtime())
            .map_err(Error::io("set mtime of", &self.path))?;
        self.file
            .set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(Error::io("chmod", &self.path))?;
        if self.store.config().fsync {
            self.file
                .sync_data()
                .map_err(Error::io("fsync", &self.path))?;
        }
        self.done = true;
        self.store.publish(&self.path, &self.expected).map(drop)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::test_store;
    use super::*;

    #[test]
    fn streamed_write_commits_when_hash_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let data = vec![7u8; 100_000];
        let d = Digest::of_bytes(&data);
        let mut w = store.writer(d).unwrap();
        for chunk in data.chunks(4096) {
            w.write(chunk).unwrap();
        }
        w.commit().unwrap();
        assert_eq!(store.read(&d).unwrap().unwrap(), data);
    }

    #[test]
    fn abandoned_and_bad_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let d = Digest::of_bytes(b"abc");
        let mut w = store.writer(d).unwrap();
        w.write(b"ab").unwrap();
        drop(w);
        let mut w = store.writer(d).unwrap();
        w.write(b"abd").unwrap();
        assert!(matches!(w.commit(), Err(Error::HashMismatch { .. })));
        let mut w = store.writer(d).unwrap();
        assert!(matches!(w.write(b"abcd"), Err(Error::SizeMismatch { .. })));
        drop(w);
        assert!(!store.contains(&d).unwrap());
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn restart_discards_earlier_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let d = Digest::of_bytes(b"abc");
        let mut w = store.writer(d).unwrap();
        w.write(b"xy").unwrap();
        w.restart().unwrap();
        w.write(b"abc").unwrap();
        w.commit().unwrap();
        assert_eq!(store.read(&d).unwrap().unwrap(), b"abc");
    }
}
