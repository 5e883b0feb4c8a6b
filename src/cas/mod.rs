//! The content-addressed store on disk.
//!
//! Layout under the state directory:
//!
//! ```text
//! cas/ab/ab12…ef     one file per blob, named by its SHA-256, 0444
//! xcas/ab/ab12…ef    an executable (0555) copy of a blob, made on demand
//!                    for hard-linking into sandboxes (see `executable_path`)
//! tmp/               files being written; cleared at start-up
//! ac/                action-cache entries (see `action_cache`)
//! ```
//!
//! Files under `cas/` and `xcas/` are hard-linked into action sandboxes, so
//! they must never be modified in place: they are owned by the daemon, 0444
//! or 0555, and replaced only by unlinking (eviction). The empty blob needs
//! no file to be served, but hard-linking needs one: `cas/e3/e3b0…` (and its
//! `xcas` twin) is created on demand and never evicted.
//!
//! A blob is written to a temporary file while it is hashed, checked against
//! its digest, made read-only and published with an atomic rename. A crash at
//! any point therefore leaves at most a stray temporary file, never a partial
//! blob under a hash name. Reads check that a blob's length matches its
//! digest, so a file truncated by a power cut is treated as absent.
//!
//! Start-up does not scan the store: the total size is computed by a
//! background thread, and eviction waits for it (see `gc`).

mod gc;
mod ingest;
pub mod last_use;
mod pins;
mod shares;
pub mod tiered;
pub mod tree;
mod writer;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use crate::digest::Digest;

pub use gc::{GcReport, OnProgress, Progress, VerifyReport};
pub use ingest::Ingest;
pub use pins::PinGuard;
pub use shares::User;
pub use writer::{BlobWriter, SuspendedWriter};

/// What the store needs from the configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub root: PathBuf,
    pub max_size: u64,
    pub high_watermark: u8,
    pub low_watermark: u8,
    pub fsync: bool,
    /// A user's share, in bytes (see `shares`); 0 means none.
    pub per_user_max_size: u64,
}

/// Errors of the store. Each carries the path or digest it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("blob {expected}: the data hashes to {actual}")]
    HashMismatch { expected: Digest, actual: String },
    #[error("blob {expected}: received {actual} bytes")]
    SizeMismatch { expected: Digest, actual: u64 },
    #[error("blob {0} is not in the store")]
    NotFound(Digest),
}

impl Error {
    pub(crate) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
        move |source| Error::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The store. Cheap to share behind an `Arc`; every method is blocking file
/// I/O, so async callers run it with `spawn_blocking`.
pub struct Store {
    config: StoreConfig,
    cas_dir: PathBuf,
    /// Executable copies of blobs; see [`Store::executable_path`].
    xcas_dir: PathBuf,
    tmp_dir: PathBuf,
    ac_dir: PathBuf,
    usage: Usage,
    pins: Mutex<pins::Pins>,
    shares: shares::Shares,
    gc_wake: mpsc::SyncSender<()>,
    gc_wait: Mutex<Option<mpsc::Receiver<()>>>,
}

/// Bytes the store keeps. Exact after the first background scan; before that
/// it counts only what this process added.
struct Usage {
    bytes: AtomicU64,
    scanned: AtomicBool,
    /// Temporary files being written (uploads in progress or waiting to
    /// be resumed): counted in the size, never evicted (see `writer`).
    temp: AtomicU64,
}

/// The bytes a file of `len` costs on disk: whole 4 KiB blocks.
pub fn disk_cost(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

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
    fn usable(&self, path: &Path, digest: &Digest, meta: &fs::Metadata) -> bool {
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
        let mut missing = Vec::new();
        for d in digests {
            if !self.contains_as(d, user)? {
                missing.push(*d);
            }
        }
        Ok(missing)
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

    /// Stores a blob held in memory after checking it against its digest.
    pub fn put(self: &Arc<Self>, digest: &Digest, data: &[u8]) -> Result<()> {
        self.put_as(None, digest, data)
    }

    /// [`put`](Self::put) for `user`, to whom a new blob is charged.
    pub fn put_as(self: &Arc<Self>, user: User, digest: &Digest, data: &[u8]) -> Result<()> {
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
        if self.contains_as(digest, user)? {
            return Ok(());
        }
        let mut writer = self.writer_as(user, *digest)?.already_verified();
        writer.write(data)?;
        writer.commit()
    }

    /// Starts writing a blob; see [`BlobWriter`].
    pub fn writer(self: &Arc<Self>, digest: Digest) -> Result<BlobWriter> {
        self.writer_as(None, digest)
    }

    /// [`writer`](Self::writer) for `user`, to whom the blob is charged.
    pub fn writer_as(self: &Arc<Self>, user: User, digest: Digest) -> Result<BlobWriter> {
        BlobWriter::create(Arc::clone(self), digest, self.shares.group_for(user))
    }

    /// Publishes a finished temporary file under its hash name. Returns
    /// whether the blob is new; an existing blob is kept and the temporary
    /// file removed.
    fn publish(&self, tmp: &Path, digest: &Digest) -> Result<bool> {
        self.publish_at(tmp, &self.blob_path(digest), digest.size())
    }

    /// Renames `tmp` to `dest` unless `dest` exists, counting `size` bytes
    /// of usage if it was new. An existing `dest` of the right length is
    /// kept and `tmp` removed: store files are immutable, so whichever copy
    /// got there first wins. An existing `dest` of another length cannot
    /// hold these bytes (`tmp` has been checked against the digest, size
    /// included), so it is damaged and `tmp` replaces it; sandboxes that
    /// linked the old inode keep it.
    fn publish_at(&self, tmp: &Path, dest: &Path, size: u64) -> Result<bool> {
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
    fn exec_blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.xcas_dir.join(&hex[..2]).join(hex)
    }

    /// A fresh name in `tmp/` for a file being built.
    pub(crate) fn temp_path(&self, tag: &str) -> PathBuf {
        self.tmp_dir
            .join(format!("{tag}.{:016x}", rand::random::<u64>()))
    }

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
    fn empty_file(&self, executable: bool) -> Result<PathBuf> {
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

    /// Bytes the store keeps, and whether that figure is complete yet.
    pub fn usage(&self) -> (u64, bool) {
        (
            self.usage.bytes.load(Ordering::Relaxed) + self.temp_bytes(),
            self.usage.scanned.load(Ordering::Relaxed),
        )
    }

    /// Counts bytes added outside the blob path (action-cache entries).
    pub(crate) fn account_added(&self, bytes: u64) {
        self.usage.add(bytes);
        self.maybe_wake_gc();
    }

    pub(crate) fn account_removed(&self, bytes: u64) {
        self.usage.sub(bytes);
    }

    fn high_bytes(&self) -> u64 {
        self.config.max_size / 100 * u64::from(self.config.high_watermark)
    }

    /// The size eviction shrinks the store to (the low watermark).
    pub fn low_bytes(&self) -> u64 {
        self.config.max_size / 100 * u64::from(self.config.low_watermark)
    }

    fn maybe_wake_gc(&self) {
        if self.usage().0 > self.high_bytes() {
            let _ = self.gc_wake.try_send(());
        }
    }

    /// Records a use of a store file if its recorded last use is older
    /// than [`last_use::TOUCH_AFTER`].
    fn touch_if_stale(&self, path: &Path, meta: &fs::Metadata) {
        if last_use::is_stale(meta) {
            last_use::touch(path);
        }
    }

    /// Marks a file of the store as used now.
    pub(crate) fn touch_path(&self, path: &Path) {
        if let Ok(meta) = fs::metadata(path) {
            self.touch_if_stale(path, &meta);
        }
    }
}

/// Buffer size for reading files into the store.
const COPY_BUF: usize = 256 * 1024;

/// `renameat2(RENAME_NOREPLACE)`: never replaces an existing store file.
/// Shard directories are made on first use (256 mkdirs at start-up cost
/// up to 200 ms on a slow disk), so a missing one is created and the
/// rename tried again.
fn rename_noreplace(from: &Path, to: &Path) -> nix::Result<()> {
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
fn create_shard(path: &Path) -> Result<()> {
    let shard = path.parent().expect("store paths have a shard directory");
    match fs::create_dir(shard) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create directory", shard)(e)),
    }
}

/// SHA-256 and length of an open file, read from its start.
pub(crate) fn hash_file(file: &File, path: &Path) -> Result<Digest> {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut offset = 0u64;
    loop {
        let n = file
            .read_at(&mut buf, offset)
            .map_err(Error::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(Digest::new(hasher.finalize().into(), offset))
}

/// What kind of file a non-regular file is, for error messages.
pub(crate) fn file_kind(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_file() {
        "a regular file"
    } else {
        "of unknown type"
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(Error::io("chmod", path))
}

impl Usage {
    fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn sub(&self, n: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// An open blob.
pub struct Blob {
    /// `None` for the empty blob, which has no file.
    file: Option<File>,
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

    fn read_exact_at(&self, buf: &mut [u8], offset: u64, path: &Path) -> Result<()> {
        match &self.file {
            None => Ok(()),
            Some(f) => f
                .read_exact_at(buf, offset)
                .map_err(Error::io("read", path)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    pub(crate) fn test_store(dir: &Path, max_size: u64) -> Arc<Store> {
        Store::open(StoreConfig {
            root: dir.to_owned(),
            max_size,
            high_watermark: 90,
            low_watermark: 50,
            fsync: false,
            per_user_max_size: 0,
        })
        .unwrap()
    }

    #[test]
    fn concurrent_writers_of_a_new_shard_all_succeed() {
        // Each round's blobs share one shard that does not exist yet, and
        // every thread writes all of them at once: the first renames into
        // the shard race with its creation.
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(tmp.path(), 1 << 30);
        let mut rounds = 0;
        for seed in 0u64.. {
            let first = Digest::of_bytes(format!("blob {seed}").as_bytes());
            let shard = store.blob_path(&first).parent().unwrap().to_owned();
            if shard.exists() {
                continue;
            }
            rounds += 1;
            // There are 256 shards.
            if rounds > 200 {
                break;
            }
            let data = format!("blob {seed}").into_bytes();
            std::thread::scope(|scope| {
                for _ in 0..8 {
                    scope.spawn(|| store.put(&first, &data).unwrap());
                }
            });
            assert_eq!(store.read(&first).unwrap().unwrap(), data);
        }
    }

    #[test]
    fn put_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let d = Digest::of_bytes(b"hello");
        assert!(!store.contains(&d).unwrap());
        store.put(&d, b"hello").unwrap();
        assert!(store.contains(&d).unwrap());
        assert_eq!(store.read(&d).unwrap().unwrap(), b"hello");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(store.blob_path(&d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        assert_eq!(store.usage().0, 4096);
        // A second put of the same blob is not counted twice.
        store.put(&d, b"hello").unwrap();
        assert_eq!(store.usage().0, 4096);
    }

    #[test]
    fn wrong_data_is_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let d = Digest::of_bytes(b"hello");
        assert!(matches!(
            store.put(&d, b"jello"),
            Err(Error::HashMismatch { .. })
        ));
        assert!(matches!(
            store.put(&d, b"hell"),
            Err(Error::SizeMismatch { .. })
        ));
        assert!(!store.contains(&d).unwrap());
        assert!(!store.blob_path(&d).exists());
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn empty_blob_is_always_present() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        assert!(store.contains(&Digest::EMPTY).unwrap());
        assert_eq!(store.read(&Digest::EMPTY).unwrap().unwrap(), b"");
        assert!(store.find_missing(&[Digest::EMPTY]).unwrap().is_empty());
    }

    #[test]
    fn truncated_blob_counts_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let d = Digest::of_bytes(b"hello world");
        store.put(&d, b"hello world").unwrap();
        let path = store.blob_path(&d);
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"hello").unwrap();
        assert!(!store.contains(&d).unwrap());
        // Not removed on a read: the asked size could be the wrong one.
        assert!(path.exists());
        // The next write of the blob replaces the damaged file.
        store.put(&d, b"hello world").unwrap();
        assert!(store.contains(&d).unwrap());
        assert_eq!(store.read(&d).unwrap().unwrap(), b"hello world");
    }

    #[test]
    fn a_wrong_size_never_removes_a_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let data = b"#!/bin/sh\nexit 0\n";
        let d = Digest::of_bytes(data);
        store.put(&d, data).unwrap();
        let exe = store.executable_path(&d).unwrap().unwrap();
        let wrong = Digest::new(*d.hash(), d.size() + 1);
        assert!(!store.contains(&wrong).unwrap());
        assert!(store.open_blob(&wrong).unwrap().is_none());
        assert!(store.read(&wrong).unwrap().is_none());
        assert_eq!(store.find_missing(&[wrong]).unwrap(), [wrong]);
        assert!(store.executable_path(&wrong).unwrap().is_none());
        assert!(store.link_source(&wrong, true).unwrap().is_none());
        assert!(store.link_source(&wrong, false).unwrap().is_none());
        assert_eq!(store.read(&d).unwrap().unwrap(), data);
        assert!(exe.exists());
        assert_eq!(store.usage().0, 2 * 4096);
    }

    #[test]
    fn leftover_temporary_files_are_cleared_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(test_store(dir.path(), 1 << 30));
        fs::write(dir.path().join("tmp/partial"), b"half a blob").unwrap();
        let store = test_store(dir.path(), 1 << 30);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn executable_copy_is_made_once_counted_and_evictable() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let data = b"#!/bin/sh\necho hi\n";
        let d = Digest::of_bytes(data);
        assert!(store.executable_path(&d).unwrap().is_none());
        store.put(&d, data).unwrap();
        let x = store.executable_path(&d).unwrap().unwrap();
        assert_eq!(x, dir.path().join("xcas").join(&d.hex()[..2]).join(d.hex()));
        assert_eq!(fs::read(&x).unwrap(), data);
        assert_eq!(mode_of(&x), 0o555);
        assert_eq!(mode_of(&store.blob_path(&d)), 0o444);
        assert_eq!(store.usage().0, 2 * 4096);
        let ino = fs::metadata(&x).unwrap().ino();
        assert_eq!(store.link_source(&d, true).unwrap().unwrap(), x);
        assert_eq!(fs::metadata(&x).unwrap().ino(), ino, "made twice");
        assert_eq!(store.usage().0, 2 * 4096);
        assert_eq!(
            store.link_source(&d, false).unwrap().unwrap(),
            store.blob_path(&d)
        );
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

        // Pinned: both files survive eviction to zero.
        let pin = store.pin([d]);
        let report = store.collect_garbage(0).unwrap();
        assert_eq!((report.files, report.removed_files), (2, 0));
        drop(pin);
        let report = store.collect_garbage(0).unwrap();
        assert_eq!(report.removed_files, 2);
        assert!(!x.exists());
        assert_eq!(store.usage().0, 0);
    }

    #[test]
    fn empty_blob_files_are_made_on_demand_and_never_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let plain = store.link_source(&Digest::EMPTY, false).unwrap().unwrap();
        let exec = store.link_source(&Digest::EMPTY, true).unwrap().unwrap();
        assert_eq!(plain, store.blob_path(&Digest::EMPTY));
        assert_ne!(plain, exec);
        assert_eq!(fs::metadata(&plain).unwrap().len(), 0);
        assert_eq!((mode_of(&plain), mode_of(&exec)), (0o444, 0o555));
        assert_eq!(
            store.executable_path(&Digest::EMPTY).unwrap().unwrap(),
            exec
        );
        let report = store.collect_garbage(0).unwrap();
        assert_eq!((report.files, report.removed_files), (0, 0));
        assert!(plain.exists() && exec.exists());
        assert_eq!(store.usage().0, 0);
    }
}
