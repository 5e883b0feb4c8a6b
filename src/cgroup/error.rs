//! The errors of the cgroup layer. Every variant names the cgroupfs path
//! involved, because "Device or resource busy" alone tells the reader
//! nothing.

use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::io_error::IoError;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, listing, creating or removing a cgroupfs path failed.
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected contents in {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("invalid cgroup name {name:?} under {parent}: {reason}")]
    InvalidName {
        parent: PathBuf,
        name: String,
        reason: &'static str,
    },
    #[error("invalid limit for {path}: {detail}")]
    InvalidLimit { path: PathBuf, detail: String },
    #[error("cannot send {signal} to pid {pid} of {path}: {source}")]
    Signal {
        path: PathBuf,
        pid: i32,
        signal: Signal,
        #[source]
        source: Errno,
    },
    #[error("{path} still has processes {waited:?} after they were killed")]
    StillPopulated { path: PathBuf, waited: Duration },
    #[error(
        "{path} holds processes {pids:?} that are not this one; \
         is another nativelink-lre running with the same state directory?"
    )]
    InUse { path: PathBuf, pids: Vec<i32> },
}
