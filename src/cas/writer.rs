//! Streaming a blob into the store: a temporary file, hashed as it is
//! written, published only when the hash matches.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::{Error, Result, Store, disk_cost};
use crate::digest::Digest;

/// The temporary file of a blob being written, with what is known of its
/// contents. Dropped before it is published, it removes the file and gives
/// back the bytes it counted in the store's size.
struct Temp {
    store: Arc<Store>,
    expected: Digest,
    path: PathBuf,
    /// The hash of what was written so far.
    hasher: Sha256,
    written: u64,
    /// Bytes of the file counted in the store's size (whole blocks).
    counted: u64,
    /// A failed write left the file and the hash state apart.
    broken: bool,
    done: bool,
}

impl Temp {
    /// Counts the file as `written` bytes long.
    fn count(&mut self) {
        let cost = disk_cost(self.written);
        if cost > self.counted {
            self.store.temp_added(cost - self.counted);
        } else {
            self.store.temp_removed(self.counted - cost);
        }
        self.counted = cost;
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        self.store.temp_removed(self.counted);
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A blob being written. Dropping it without [`commit`](Self::commit)
/// removes the temporary file, so an abandoned upload leaves nothing.
/// While it is written, its temporary file counts in the store's size.
pub struct BlobWriter {
    temp: Temp,
    file: File,
}

/// A blob whose writing has stopped for now: its temporary file and hash
/// state are kept, its descriptor is closed. [`resume`](Self::resume)
/// goes on where it stopped; dropping it removes the file.
pub struct SuspendedWriter {
    temp: Temp,
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
            temp: Temp {
                store,
                expected,
                path,
                hasher: Sha256::new(),
                written: 0,
                counted: 0,
                broken: false,
                done: false,
            },
            file,
        })
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.temp.written
    }

    /// The digest being written.
    pub fn digest(&self) -> Digest {
        self.temp.expected
    }

    /// Appends data. More data than the digest's size is an error. After a
    /// failed write (a full disk) the file is cut back to what was written
    /// before, so that it and the hash state still agree; if even that
    /// fails, only [`restart`](Self::restart) makes the writer usable.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let t = &mut self.temp;
        if t.broken {
            return Err(Error::io("write", &t.path)(std::io::Error::other(
                "an earlier write failed; the upload must start again at offset 0",
            )));
        }
        let total = t.written + data.len() as u64;
        if total > t.expected.size() {
            return Err(Error::SizeMismatch {
                expected: t.expected,
                actual: total,
            });
        }
        if let Err(e) = self.file.write_all(data) {
            let back = t.written;
            if self
                .file
                .set_len(back)
                .and_then(|()| self.file.seek(SeekFrom::Start(back)).map(drop))
                .is_err()
            {
                t.broken = true;
            }
            return Err(Error::io("write", &t.path)(e));
        }
        t.hasher.update(data);
        t.written = total;
        t.count();
        Ok(())
    }

    /// Throws away what was written, to start again from offset 0.
    pub fn restart(&mut self) -> Result<()> {
        let t = &mut self.temp;
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind().map(drop))
            .map_err(Error::io("truncate", &t.path))?;
        t.hasher = Sha256::new();
        t.written = 0;
        t.broken = false;
        t.count();
        Ok(())
    }

    /// Closes the file and keeps it, with the hash state, for later.
    pub fn suspend(self) -> SuspendedWriter {
        SuspendedWriter { temp: self.temp }
    }

    /// Checks size and hash and publishes the blob under its name.
    pub fn commit(mut self) -> Result<()> {
        let t = &mut self.temp;
        if t.broken || t.written != t.expected.size() {
            return Err(Error::SizeMismatch {
                expected: t.expected,
                actual: t.written,
            });
        }
        let hash: [u8; 32] = std::mem::take(&mut t.hasher).finalize().into();
        if &hash != t.expected.hash() {
            return Err(Error::HashMismatch {
                expected: t.expected,
                actual: hex::encode(hash),
            });
        }
        self.file
            .set_modified(super::last_use::fixed_mtime())
            .map_err(Error::io("set mtime of", &t.path))?;
        self.file
            .set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(Error::io("chmod", &t.path))?;
        if t.store.config().fsync {
            self.file.sync_data().map_err(Error::io("fsync", &t.path))?;
        }
        // From here the file is the store's (or gone): publishing counts it.
        t.done = true;
        t.store.temp_removed(t.counted);
        t.counted = 0;
        t.store.publish(&t.path, &t.expected).map(drop)
    }
}

impl SuspendedWriter {
    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.temp.written
    }

    /// Opens the file again, positioned after what was written.
    pub fn resume(self) -> Result<BlobWriter> {
        let t = &self.temp;
        let mut file = OpenOptions::new()
            .write(true)
            .open(&t.path)
            .map_err(Error::io("reopen", &t.path))?;
        file.set_len(t.written)
            .and_then(|()| file.seek(SeekFrom::Start(t.written)).map(drop))
            .map_err(Error::io("reopen", &t.path))?;
        Ok(BlobWriter {
            temp: self.temp,
            file,
        })
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
    fn a_suspended_write_holds_no_descriptor_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let data = vec![3u8; 10_000];
        let d = Digest::of_bytes(&data);
        let mut w = store.writer(d).unwrap();
        w.write(&data[..6000]).unwrap();
        assert_eq!(store.usage().0, 8192, "the temporary file counts");
        let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let before = fds();
        let s = w.suspend();
        assert_eq!(fds(), before - 1);
        assert_eq!(s.written(), 6000);
        let mut w = s.resume().unwrap();
        w.write(&data[6000..]).unwrap();
        w.commit().unwrap();
        assert_eq!(store.read(&d).unwrap().unwrap(), data);
        assert_eq!(store.usage().0, 12288, "only the blob counts");
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        // Dropped while suspended: file and count are gone.
        let e = Digest::of_bytes(b"abcdef");
        let mut w = store.writer(e).unwrap();
        w.write(b"abc").unwrap();
        drop(w.suspend());
        assert_eq!(store.usage().0, 12288);
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
