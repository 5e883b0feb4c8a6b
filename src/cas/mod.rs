//! The content-addressed store on disk.
//!
//! Layout under the state directory:
//!
//! ```text
//! cas/ab/ab12…ef     one file per blob, named by its SHA-256, 0444
//! tmp/               files being written; cleared at start-up
//! ac/                action-cache entries (see `action_cache`)
//! ```
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
pub mod tree;
mod writer;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime};

use crate::digest::Digest;

pub use gc::GcReport;
pub use writer::BlobWriter;

/// A blob whose last-use time is older than this is touched when used, so
/// that eviction sees it as recently used. Touching on every use would turn
/// every read into a metadata write.
const TOUCH_AFTER: Duration = Duration::from_secs(600);

/// What the store needs from the configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub root: PathBuf,
    pub max_size: u64,
    pub high_watermark: u8,
    pub low_watermark: u8,
    pub fsync: bool,
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
    tmp_dir: PathBuf,
    ac_dir: PathBuf,
    usage: Usage,
    pins: Mutex<HashMap<[u8; 32], u32>>,
    gc_wake: mpsc::SyncSender<()>,
    gc_wait: Mutex<Option<mpsc::Receiver<()>>>,
}

/// Bytes the store keeps. Exact after the first background scan; before that
/// it counts only what this process added.
struct Usage {
    bytes: AtomicU64,
    scanned: AtomicBool,
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
        let tmp_dir = root.join("tmp");
        let ac_dir = root.join("ac");
        for dir in [&root, &cas_dir, &ac_dir] {
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
            for shard in 0..=255u8 {
                let dir = cas_dir.join(hex::encode([shard]));
                match fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io("create directory", &dir)(e)),
                }
            }
            fs::write(&marker, b"nativelink-lre store layout 1\n")
                .map_err(Error::io("write", &marker))?;
        }
        let (gc_wake, gc_wait) = mpsc::sync_channel(1);
        let store = Arc::new(Store {
            config,
            cas_dir,
            tmp_dir,
            ac_dir,
            usage: Usage {
                bytes: AtomicU64::new(0),
                scanned: AtomicBool::new(false),
            },
            pins: Mutex::new(HashMap::new()),
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

    /// The file that holds a blob. Only valid digests reach here, so the
    /// name is always 64 hex characters.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.cas_dir.join(&hex[..2]).join(hex)
    }

    /// Whether the store holds the blob. Marks it as used.
    pub fn contains(&self, digest: &Digest) -> Result<bool> {
        if digest.is_empty() {
            return Ok(true);
        }
        let path = self.blob_path(digest);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("stat", &path)(e)),
        };
        if meta.len() != digest.size() {
            // Only a crash during write-back can cause this: the rename
            // reached the disk but the data did not. Drop the blob.
            tracing::warn!(path = %path.display(), expected = digest.size(), actual = meta.len(),
                "removing blob whose length does not match its digest");
            if fs::remove_file(&path).is_ok() {
                self.usage.sub(disk_cost(meta.len()));
            }
            return Ok(false);
        }
        self.touch_if_stale(&path, &meta);
        Ok(true)
    }

    /// The digests in `digests` that the store does not hold.
    pub fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut missing = Vec::new();
        for d in digests {
            if !self.contains(d)? {
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
        if !self.contains(digest)? {
            return Ok(None);
        }
        let path = self.blob_path(digest);
        match File::open(&path) {
            Ok(file) => Ok(Some(Blob {
                file: Some(file),
                size: digest.size(),
            })),
            // Evicted between the check and the open.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("open", &path)(e)),
        }
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
        if self.contains(digest)? {
            return Ok(());
        }
        let mut writer = self.writer(*digest)?;
        writer.write(data)?;
        writer.commit()
    }

    /// Starts writing a blob; see [`BlobWriter`].
    pub fn writer(self: &Arc<Self>, digest: Digest) -> Result<BlobWriter> {
        BlobWriter::create(Arc::clone(self), digest)
    }

    /// Publishes a finished temporary file under its hash name. Returns
    /// whether the blob is new; an existing blob is kept and the temporary
    /// file removed.
    fn publish(&self, tmp: &Path, digest: &Digest) -> Result<bool> {
        let dest = self.blob_path(digest);
        match nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            tmp,
            nix::fcntl::AT_FDCWD,
            &dest,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {
                self.usage.add(disk_cost(digest.size()));
                self.maybe_wake_gc();
                Ok(true)
            }
            Err(nix::errno::Errno::EEXIST) => {
                let _ = fs::remove_file(tmp);
                Ok(false)
            }
            Err(e) => Err(Error::io("rename into store", &dest)(e.into())),
        }
    }

    /// Marks blobs as in use by a running action: eviction skips them until
    /// the guard is dropped.
    pub fn pin(self: &Arc<Self>, digests: impl IntoIterator<Item = Digest>) -> PinGuard {
        let hashes: Vec<[u8; 32]> = digests.into_iter().map(|d| *d.hash()).collect();
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        for h in &hashes {
            *pins.entry(*h).or_default() += 1;
        }
        PinGuard {
            store: Arc::clone(self),
            hashes,
        }
    }

    fn is_pinned(&self, hash: &[u8; 32]) -> bool {
        self.pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(hash)
    }

    /// Bytes the store keeps, and whether that figure is complete yet.
    pub fn usage(&self) -> (u64, bool) {
        (
            self.usage.bytes.load(Ordering::Relaxed),
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

    fn low_bytes(&self) -> u64 {
        self.config.max_size / 100 * u64::from(self.config.low_watermark)
    }

    fn maybe_wake_gc(&self) {
        if self.usage.bytes.load(Ordering::Relaxed) > self.high_bytes() {
            let _ = self.gc_wake.try_send(());
        }
    }

    /// Sets the modification time, which eviction reads as "last used", if
    /// it is older than [`TOUCH_AFTER`].
    fn touch_if_stale(&self, path: &Path, meta: &fs::Metadata) {
        let stale = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > TOUCH_AFTER);
        if stale {
            touch(path);
        }
    }

    /// Marks a file of the store as used now.
    pub(crate) fn touch_path(&self, path: &Path) {
        if let Ok(meta) = fs::metadata(path) {
            self.touch_if_stale(path, &meta);
        }
    }
}

fn touch(path: &Path) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::NoFollowSymlink,
    );
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
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

/// Keeps blobs from eviction while it lives.
pub struct PinGuard {
    store: Arc<Store>,
    hashes: Vec<[u8; 32]>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut pins = self.store.pins.lock().unwrap_or_else(|e| e.into_inner());
        for h in &self.hashes {
            if let Some(n) = pins.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(h);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn test_store(dir: &Path, max_size: u64) -> Arc<Store> {
        Store::open(StoreConfig {
            root: dir.to_owned(),
            max_size,
            high_watermark: 90,
            low_watermark: 50,
            fsync: false,
        })
        .unwrap()
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
        assert!(!path.exists());
    }

    #[test]
    fn leftover_temporary_files_are_cleared_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(test_store(dir.path(), 1 << 30));
        fs::write(dir.path().join("tmp/partial"), b"half a blob").unwrap();
        let store = test_store(dir.path(), 1 << 30);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }
}
