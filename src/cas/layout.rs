//! The store's layout on disk: the directories it opens or creates, the
//! path of each blob and of its executable twin, temporary names, and the
//! crash-safe publication of a finished file under its hash name.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, mpsc};

use super::usage::{Usage, disk_cost};
use super::{Error, Result, Store, StoreConfig, index, pins, shares};
use crate::digest::Digest;

impl Store {
    /// Opens (creating if needed) the store under `config.root`. This does
    /// only a constant amount of work, however large the store is.
    pub fn open(config: StoreConfig) -> Result<Arc<Store>> {
        let root = config.root.clone();
        let cas_dir = root.join("cas");
        let xcas_dir = root.join("xcas");
        let tmp_dir = root.join("tmp");
        let ac_dir = root.join("ac");
        for dir in [&root, &cas_dir, &xcas_dir, &ac_dir] {
            fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        }
        // The blob files must not be readable by way of a writable parent.
        set_mode(&root, 0o755)?;
        // Move the old temporary directory aside and delete it in the
        // background: it holds only what a crash left behind.
        let stale = if tmp_dir.exists() {
            let stale = root.join(format!("tmp.stale.{}", std::process::id()));
            fs::rename(&tmp_dir, &stale).map_err(Error::io("rename", &tmp_dir))?;
            Some(stale)
        } else {
            None
        };
        fs::create_dir(&tmp_dir).map_err(Error::io("create directory", &tmp_dir))?;
        set_mode(&tmp_dir, 0o700)?;
        let marker = cas_dir.join(".layout-v1");
        if !marker.exists() {
            fs::write(&marker, b"nativelink-lre store layout 1\n")
                .map_err(Error::io("write", &marker))?;
        }
        let (gc_wake, gc_wait) = mpsc::sync_channel(1);
        let per_user_max = config.per_user_max_size;
        let store = Arc::new(Store {
            config,
            index: Arc::new(index::Index::new(cas_dir.clone())),
            cas_dir,
            xcas_dir,
            tmp_dir,
            ac_dir,
            usage: Usage {
                bytes: AtomicU64::new(0),
                scanned: AtomicBool::new(false),
                temp: AtomicU64::new(0),
            },
            pins: Mutex::new(pins::Pins::default()),
            shares: shares::Shares::new(per_user_max),
            gc_wake,
            gc_wait: Mutex::new(Some(gc_wait)),
        });
        // Clear leftovers from any earlier run, including ones whose pid
        // differs from ours.
        let root_for_cleanup = root.clone();
        let cleanup = move || {
            if let Ok(entries) = fs::read_dir(&root_for_cleanup) {
                for entry in entries.flatten() {
                    if entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with("tmp.stale.")
                    {
                        let _ = fs::remove_dir_all(entry.path());
                    }
                }
            }
        };
        if stale.is_some() {
            std::thread::Builder::new()
                .name("tmp-cleanup".into())
                .spawn(cleanup)
                .map_err(Error::io("spawn cleanup thread for", &root))?;
        }
        Ok(store)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn root(&self) -> &Path {
        &self.config.root
    }

    pub fn ac_dir(&self) -> &Path {
        &self.ac_dir
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }

    /// The directory of blob files, `cas/`: the blob of hash `h` is
    /// `cas/<h[..2]>/<h>` (see [`blob_path`](Self::blob_path)).
    pub fn cas_dir(&self) -> &Path {
        &self.cas_dir
    }

    /// The file that holds a blob. Only valid digests reach here, so the
    /// name is always 64 hex characters.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.cas_dir.join(&hex[..2]).join(hex)
    }

    /// Publishes a finished temporary file under its hash name. Returns
    /// whether the blob is new; an existing blob is kept and the temporary
    /// file removed.
    ///
    /// The rename happens under the index's lock, which then records the
    /// blob (rule 1 of `index`).
    pub(super) fn publish(&self, tmp: &Path, digest: &Digest) -> Result<bool> {
        let dest = self.blob_path(digest);
        self.index
            .publishing(digest.hash(), &dest, digest.size(), || {
                self.publish_at(tmp, &dest, digest.size())
            })
    }

    /// Renames `tmp` to `dest` unless `dest` exists, counting `size` bytes
    /// of usage if it was new. An existing `dest` of the right length is
    /// kept and `tmp` removed: store files are immutable, so whichever copy
    /// got there first wins. An existing `dest` of another length cannot
    /// hold these bytes (`tmp` has been checked against the digest, size
    /// included), so it is damaged and `tmp` replaces it; sandboxes that
    /// linked the old inode keep it.
    pub(super) fn publish_at(&self, tmp: &Path, dest: &Path, size: u64) -> Result<bool> {
        match rename_noreplace(tmp, dest) {
            Ok(()) => {
                self.usage.add(disk_cost(size));
                self.maybe_wake_gc();
                Ok(true)
            }
            Err(nix::errno::Errno::EEXIST) => match fs::symlink_metadata(dest) {
                Ok(meta) if !meta.is_file() || meta.len() != size => {
                    tracing::warn!(path = %dest.display(), expected = size, actual = meta.len(),
                        "replacing a damaged store file");
                    fs::rename(tmp, dest).map_err(Error::io("rename into store", dest))?;
                    self.usage.sub(disk_cost(meta.len()));
                    self.usage.add(disk_cost(size));
                    Ok(true)
                }
                _ => {
                    let _ = fs::remove_file(tmp);
                    Ok(false)
                }
            },
            Err(e) => Err(Error::io("rename into store", dest)(e.into())),
        }
    }

    /// The executable twin of a blob: `xcas/ab/<hash>`.
    pub(super) fn exec_blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.xcas_dir.join(&hex[..2]).join(hex)
    }

    /// A fresh name in `tmp/` for a file being built.
    pub(crate) fn temp_path(&self, tag: &str) -> PathBuf {
        self.tmp_dir.join(temp_name(tag))
    }
}

/// A new name in `tmp/` for `tag`: the tag and 64 random bits.
pub(super) fn temp_name(tag: &str) -> String {
    format!("{tag}.{:016x}", rand::random::<u64>())
}

/// `renameat2(RENAME_NOREPLACE)`: never replaces an existing store file.
/// Shard directories are made on first use (256 mkdirs at start-up cost
/// up to 200 ms on a slow disk), so a missing one is created and the
/// rename tried again.
pub(super) fn rename_noreplace(from: &Path, to: &Path) -> nix::Result<()> {
    let rename = || {
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            from,
            nix::fcntl::AT_FDCWD,
            to,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
    };
    match rename() {
        // The shard directory is missing, or was just made by a concurrent
        // writer after our rename failed (so checking that it is missing
        // would race): make sure it exists and try once more. If `from` is
        // what is missing, the second rename says so again.
        Err(nix::errno::Errno::ENOENT) => {
            create_shard(to).map_err(|_| nix::errno::Errno::ENOENT)?;
            rename()
        }
        other => other,
    }
}

/// Creates the shard directory of a store path if it is missing. The
/// shards of `cas/` and `xcas/` are made when first needed.
pub(super) fn create_shard(path: &Path) -> Result<()> {
    let shard = path.parent().expect("store paths have a shard directory");
    match fs::create_dir(shard) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create directory", shard)(e)),
    }
}

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(Error::io("chmod", path))
}
