//! Executable copies of blobs (`xcas/`) and the files standing for the
//! empty blob, for hard-linking inputs into sandboxes.

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use super::{Error, Result, Store, last_use};
use crate::digest::Digest;

impl Store {
    /// The path of a 0555 copy of a blob, for hard-linking an executable
    /// input into a sandbox (the 0444 blob cannot be linked: a link shares
    /// the inode, mode included). The copy lives at `xcas/ab/<hash>`, is
    /// made on first use, counts in the usage like a blob, is evicted like
    /// one and is protected by the same pins. `None` if the blob is absent.
    pub fn executable_path(self: &Arc<Self>, digest: &Digest) -> Result<Option<PathBuf>> {
        if digest.is_empty() {
            return self.empty_file(true).map(Some);
        }
        // The blob first: only a blob file of the digest's length proves
        // that the (client-supplied) size is right, and so that a copy of
        // another length is damaged rather than asked for wrongly.
        let Some(blob) = self.open_blob(digest)? else {
            return Ok(None);
        };
        let dest = self.exec_blob_path(digest);
        match fs::symlink_metadata(&dest) {
            Ok(meta) if meta.is_file() && meta.len() == digest.size() => {
                self.touch_if_stale(&dest, &meta);
                return Ok(Some(dest));
            }
            // A short copy left by a crash is replaced by the new one
            // (`publish_at`).
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", &dest)(e)),
        }
        let Some(mut src) = blob.file else {
            unreachable!("only the empty blob has no file");
        };
        let src_path = self.blob_path(digest);
        let tmp = self.temp_path(&format!("x.{}", digest.hex()));
        let result = (|| -> Result<bool> {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(Error::io("create", &tmp))?;
            let copied = io::copy(&mut src, &mut out).map_err(Error::io("copy", &src_path))?;
            if copied != digest.size() {
                return Err(Error::SizeMismatch {
                    expected: *digest,
                    actual: copied,
                });
            }
            out.set_modified(last_use::fixed_mtime())
                .map_err(Error::io("set mtime of", &tmp))?;
            out.set_permissions(fs::Permissions::from_mode(0o555))
                .map_err(Error::io("chmod", &tmp))?;
            if self.config.fsync {
                out.sync_data().map_err(Error::io("fsync", &tmp))?;
            }
            self.publish_at(&tmp, &dest, digest.size())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|_| Some(dest))
    }

    /// The file to hard-link into a sandbox for a blob: the blob itself, or
    /// its executable twin (see [`executable_path`](Self::executable_path)).
    /// For the empty blob, which the store otherwise keeps no file for, an
    /// empty file is created on demand and never evicted. `None` if the
    /// blob is absent. The caller should hold a pin on the digest for as
    /// long as it needs the path to stay valid.
    pub fn link_source(
        self: &Arc<Self>,
        digest: &Digest,
        executable: bool,
    ) -> Result<Option<PathBuf>> {
        if digest.is_empty() {
            return self.empty_file(executable).map(Some);
        }
        if executable {
            return self.executable_path(digest);
        }
        Ok(self.contains(digest)?.then(|| self.blob_path(digest)))
    }

    /// The file standing for the empty blob under `cas/` (or `xcas/`),
    /// created if needed. It costs no blocks and is never evicted.
    pub(super) fn empty_file(&self, executable: bool) -> Result<PathBuf> {
        let path = if executable {
            self.exec_blob_path(&Digest::EMPTY)
        } else {
            self.blob_path(&Digest::EMPTY)
        };
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == 0 => return Ok(path),
            Ok(_) => fs::remove_file(&path).map_err(Error::io("remove", &path))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", &path)(e)),
        }
        let tmp = self.temp_path("empty");
        let mode = if executable { 0o555 } else { 0o444 };
        let result = (|| -> Result<()> {
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(Error::io("create", &tmp))?;
            f.set_modified(last_use::fixed_mtime())
                .map_err(Error::io("set mtime of", &tmp))?;
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(Error::io("chmod", &tmp))?;
            // An empty file costs no blocks; another writer may win the race.
            self.publish_at(&tmp, &path, 0).map(drop)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }
}
