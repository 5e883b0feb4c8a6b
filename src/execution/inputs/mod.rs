//! The input tree of an action: checking it, and laying it out on disk as
//! the action's exec root.
//!
//! [`resolve`] walks the `Directory` messages from the input root digest and
//! validates the whole tree before anything runs, collecting every blob the
//! store lacks so the client can upload them all in one round trip.
//! [`materialize`] then creates the tree under a host directory, hard-linking
//! files from the store (the store's files are 0444/0555 and owned by the
//! daemon, so an action running as another uid cannot change them).
//! [`create_output_parents`] creates the parents of the declared outputs, as
//! REAPI requires of the server.
//!
//! Paths inside an [`InputTree`] are relative to the input root, use `/`,
//! and have no `.`/`..` components: every name was checked.

use std::io;
use std::path::{Path, PathBuf};

use crate::cas::{self};
use crate::digest::Digest;

/// The most entries (directories, files and symlinks, counted once per
/// path) an input tree may expand to. A Merkle DAG that reuses a directory
/// at many paths can describe a huge tree in a few bytes; this bounds the
/// memory and disk a single request can make us spend.
pub const MAX_ENTRIES: usize = 2 << 20;

/// The longest relative path an input or output may have, in bytes. The
/// exec root's own path must fit in front of it within `PATH_MAX` (4096).
pub const MAX_PATH_LEN: usize = 3072;

/// The largest Action, Command or Directory message read, in bytes. Each
/// is read whole into memory, so a bigger one is refused from its digest,
/// before a byte of it is read. Real ones are far smaller: a Directory of
/// 100,000 files takes about 10 MiB.
pub const MAX_MESSAGE_SIZE: u64 = 16 << 20;

/// The most bytes of Directory messages and of paths one input tree may
/// make us hold while it is resolved.
pub const MAX_TREE_BYTES: u64 = 512 << 20;

/// The longest file name Linux allows.
const NAME_MAX: usize = 255;

/// Why an input tree cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Blobs the store lacks: absent Directory messages and absent file
    /// contents, deduplicated and sorted. The caller reports them as
    /// FAILED_PRECONDITION with a `PreconditionFailure` listing each one.
    #[error("{} input blob(s) missing from the CAS: {}", .0.len(), list_digests(.0))]
    Missing(Vec<Digest>),
    /// The tree (or an output path, or the working directory) breaks a
    /// rule. `path` is relative to the input root for tree entries, and the
    /// path as the client sent it for outputs. INVALID_ARGUMENT.
    #[error("invalid input tree at {path:?}: {reason}")]
    Invalid { path: String, reason: String },
    /// The exec root cannot be created where asked.
    #[error("cannot materialize inputs into {path}: {reason}")]
    Destination { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] cas::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

pub(super) fn list_digests(digests: &[Digest]) -> String {
    const SHOWN: usize = 5;
    let mut s = digests
        .iter()
        .take(SHOWN)
        .map(Digest::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if digests.len() > SHOWN {
        s.push_str(&format!(" and {} more", digests.len() - SHOWN));
    }
    s
}

pub(super) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> InputError {
    InputError::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}

pub(super) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> InputError + 'a {
    move |source| InputError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

mod materialize;
mod output_paths;
mod tree;

pub use materialize::*;
pub use output_paths::*;
pub use tree::*;

#[cfg(test)]
pub(crate) mod tests;
