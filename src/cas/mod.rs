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
//!
//! Where things are: `layout` (directories, paths, publishing a finished
//! file), `reads` (presence, opening and reading blobs), `writes` and
//! `writer` (blobs from memory and streamed), `batch` (many blobs from
//! memory at once), `ingest` (an action's output
//! files), `executable` (the `xcas/` twins and the empty blob's files),
//! `usage` (bytes kept, watermarks, last-use stamps), `pins`, `shares`,
//! `gc` (size, eviction and verify), `tiered` (the local store, then the
//! upstream) and `tree` (Directory trees).

mod batch;
mod executable;
mod gc;
mod index;
mod ingest;
pub mod last_use;
mod layout;
mod pins;
mod reads;
mod shares;
#[cfg(test)]
pub(crate) mod tests;
pub mod tiered;
pub mod tree;
mod usage;
mod writer;
mod writes;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use crate::digest::Digest;

pub use gc::{GcReport, OnProgress, Progress, VerifyReport};
pub use ingest::Ingest;
pub use pins::PinGuard;
pub use reads::{Blob, CACHED_READ_MAX, read_nowait};
pub use shares::User;
pub use usage::disk_cost;
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
    usage: usage::Usage,
    pins: Mutex<pins::Pins>,
    shares: shares::Shares,
    /// Which blobs `cas/` holds, in memory once built (see `index`).
    index: Arc<index::Index>,
    gc_wake: mpsc::SyncSender<()>,
    gc_wait: Mutex<Option<mpsc::Receiver<()>>>,
}

/// Buffer size for reading files into the store.
const COPY_BUF: usize = 256 * 1024;

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
