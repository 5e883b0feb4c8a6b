//! Reads: whether the store holds a blob, and opening or reading one.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::shares::User;
use super::{Error, Result, Store, index, last_use};
use crate::digest::Digest;

impl Store {
    /// Whether the store holds the blob. Marks it as used.
    pub fn contains(&self, digest: &Digest) -> Result<bool> {
        self.contains_as(digest, None)
    }

    /// [`contains`](Self::contains), for `user` (see `shares`): a blob
    /// charged to another user becomes shared.
    pub fn contains_as(&self, digest: &Digest, user: User) -> Result<bool> {
        if digest.is_empty() {
            return Ok(true);
        }
        if let Some(present) = self.indexed(std::slice::from_ref(digest), user) {
            return Ok(present[0]);
        }
        self.stat_contains_as(digest, user)
    }

    /// Answers from the index (see `index`), with the side effects of a
    /// use: a stale last use is refreshed, a blob charged to another user
    /// becomes shared. `None` while the index is not ready.
    pub(super) fn indexed(&self, digests: &[Digest], user: User) -> Option<Vec<bool>> {
        let mut present = Vec::with_capacity(digests.len());
        let mut uses = Vec::new();
        let answered = self.index.lookup(digests, |d, answer| match answer {
            index::Lookup::Present(entry) => {
                present.push(true);
                let stale = last_use::is_stale_secs(entry.last_use);
                let unshare = self.shares.takes_over(entry.gid, user);
                if stale || unshare {
                    uses.push((*d, stale, unshare));
                }
            }
            index::Lookup::Missing => present.push(false),
        });
        if !answered {
            return None;
        }
        for (d, stale, unshare) in uses {
            let path = self.blob_path(&d);
            if stale {
                last_use::touch(&path);
            }
            if unshare && self.shares.make_shared(&path) {
                self.index.set_gid(d.hash(), self.shares.shared_gid());
            }
        }
        Some(present)
    }

    /// [`contains_as`](Self::contains_as) by `stat`.
    fn stat_contains_as(&self, digest: &Digest, user: User) -> Result<bool> {
        let path = self.blob_path(digest);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("stat", &path)(e)),
        };
        let usable = self.usable(&path, digest, &meta);
        if usable {
            self.shares.note_use(&path, &meta, user);
        }
        Ok(usable)
    }

    /// Whether a blob file of this length can stand for `digest`; marks it
    /// as used if so. The size in `digest` comes from a client and may be
    /// wrong, so a file of another length only means "not present": it is
    /// never removed here. A file that really is damaged (a crash during
    /// write-back can leave a short one) is replaced by the next write of
    /// the blob (see [`publish_at`](Self::publish_at)) or removed by
    /// `verify`.
    pub(super) fn usable(&self, path: &Path, digest: &Digest, meta: &fs::Metadata) -> bool {
        if meta.len() != digest.size() {
            tracing::debug!(path = %path.display(), asked = digest.size(), actual = meta.len(),
                "a blob was asked for with another size than its file's: not present");
            return false;
        }
        self.touch_if_stale(path, meta);
        true
    }

    /// The digests in `digests` that the store does not hold.
    pub fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.find_missing_as(digests, None)
    }

    /// [`find_missing`](Self::find_missing) for `user`: what it is told is
    /// present, it uses.
    pub fn find_missing_as(&self, digests: &[Digest], user: User) -> Result<Vec<Digest>> {
        if let Some(missing) = self.find_missing_indexed(digests, user) {
            return Ok(missing);
        }
        let mut missing = Vec::new();
        for d in digests {
            if !self.contains_as(d, user)? {
                missing.push(*d);
            }
        }
        Ok(missing)
    }

    /// [`find_missing_as`](Self::find_missing_as) from the index alone,
    /// which needs no disk I/O (see `index`); `None` while it is not ready.
    pub fn find_missing_indexed(&self, digests: &[Digest], user: User) -> Option<Vec<Digest>> {
        let asked: Vec<Digest> = digests.iter().filter(|d| !d.is_empty()).copied().collect();
        let present = self.indexed(&asked, user)?;
        Some(
            asked
                .into_iter()
                .zip(present)
                .filter(|(_, p)| !p)
                .map(|(d, _)| d)
                .collect(),
        )
    }

    /// Opens a blob for reading, or `None` if it is absent.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<Blob>> {
        if digest.is_empty() {
            return Ok(Some(Blob {
                file: None,
                size: 0,
            }));
        }
        // Open, then look at what was opened: one lookup of the path, and
        // no window for an eviction between a check and the open.
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", &path)(e)),
        };
        let meta = file.metadata().map_err(Error::io("stat", &path))?;
        if !self.usable(&path, digest, &meta) {
            return Ok(None);
        }
        Ok(Some(Blob {
            file: Some(file),
            size: digest.size(),
        }))
    }

    /// Reads a whole blob into memory, or `None` if it is absent. For small
    /// blobs only (batch reads, protos).
    pub fn read(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let Some(blob) = self.open_blob(digest)? else {
            return Ok(None);
        };
        let mut buf = vec![0u8; blob.size as usize];
        blob.read_exact_at(&mut buf, 0, &self.blob_path(digest))?;
        Ok(Some(buf))
    }
}

/// An open blob.
pub struct Blob {
    /// `None` for the empty blob, which has no file.
    pub(super) file: Option<File>,
    pub size: u64,
}

impl Blob {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match &self.file {
            None => Ok(0),
            Some(f) => f.read_at(buf, offset),
        }
    }

    pub(super) fn read_exact_at(&self, buf: &mut [u8], offset: u64, path: &Path) -> Result<()> {
        match &self.file {
            None => Ok(()),
            Some(f) => f
                .read_exact_at(buf, offset)
                .map_err(Error::io("read", path)),
        }
    }
}

/// The largest blob [`Store::read_cached`] reads on the caller's thread.
pub const CACHED_READ_MAX: u64 = 64 * 1024;

impl Store {
    /// Reads a small blob on the caller's thread if that needs no disk
    /// I/O: presence from the index, bytes from the page cache
    /// (`RWF_NOWAIT`). `None` means "could block, or cannot tell": ask
    /// [`read`](Self::read) from a blocking thread instead. For async
    /// callers that would otherwise pay a hop through the blocking pool
    /// for a few hundred bytes (action-cache hits, Action and Command).
    pub fn read_cached(&self, digest: &Digest) -> Option<Result<Option<Vec<u8>>>> {
        if digest.is_empty() {
            return Some(Ok(Some(Vec::new())));
        }
        if digest.size() > CACHED_READ_MAX {
            return None;
        }
        if !self.indexed(std::slice::from_ref(digest), None)?[0] {
            return Some(Ok(None));
        }
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Removed since the answer: absent, as a stat would say now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(Ok(None)),
            Err(_) => return None,
        };
        read_nowait(&file, digest.size() as usize).map(|data| Ok(Some(data)))
    }

    /// Whether every one of `digests` is present, from the index alone
    /// (with the side effects of a use); `None` while it is not ready.
    pub fn contains_all_cached(&self, digests: &[Digest]) -> Option<bool> {
        let asked: Vec<Digest> = digests.iter().filter(|d| !d.is_empty()).copied().collect();
        Some(self.indexed(&asked, None)?.into_iter().all(|p| p))
    }
}

/// Reads exactly `len` bytes from the start of `file` if they are all in
/// the page cache; `None` if reading would wait for the disk (or the file
/// is not `len` bytes long).
pub fn read_nowait(file: &File, len: usize) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Some(buf);
    }
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: `iov` describes `buf`, which is valid for writes of `len`
    // bytes and outlives the call; the descriptor is open for the call's
    // duration (borrowed from `file`).
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    (usize::try_from(n).ok() == Some(len)).then_some(buf)
}
