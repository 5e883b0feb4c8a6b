//! Why an action did not produce a result: the executor's one error type.
//! `crate::status` maps it to the ExecuteResponse status.

use std::time::Duration;

use super::inputs::InputError;
use super::outputs::OutputError;
use crate::cas;
use crate::digest::Digest;
use crate::scheduler;

/// Why an action did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} blob(s) needed by the action are missing from the CAS", .0.len())]
    Missing(Vec<Digest>),
    #[error("{what} {digest} is not a valid {kind} message: {reason}")]
    BadMessage {
        what: &'static str,
        kind: &'static str,
        digest: Digest,
        reason: String,
    },
    #[error("input tree: {path:?}: {reason}")]
    InvalidInput { path: String, reason: String },
    /// A platform property with a bad value, or one this worker's policy
    /// refuses.
    #[error("{0}")]
    Platform(String),
    /// A platform this worker does not offer (the upstream may).
    #[error("{0}")]
    Unsatisfiable(String),
    #[error("the action's timeout of {asked:?} exceeds this server's max-timeout of {max:?}")]
    Timeout { asked: Duration, max: Duration },
    #[error("the action was cancelled")]
    Cancelled,
    #[error(
        "the action wrote {written} bytes into its exec root, more than sandbox.max-exec-root-size ({cap} bytes); it was stopped"
    )]
    ExecRootFull { written: u64, cap: u64 },
    #[error(transparent)]
    QueueFull(#[from] scheduler::QueueFull),
    #[error("the sandbox could not run the action: {0}")]
    Sandbox(String),
    /// The action's own cgroup could not be created.
    #[error("the sandbox could not run the action: cannot create the action's cgroup: {0}")]
    Cgroup(#[source] crate::cgroup::Error),
    /// The per-action directory could not be made.
    #[error(transparent)]
    ActionDir(#[from] crate::io_error::IoError),
    /// The files that keep the command's stdout and stderr.
    #[error("stdout and stderr: {0}")]
    Streams(#[source] std::io::Error),
    /// An output the Command declared that cannot be taken as it is.
    #[error(transparent)]
    BadOutput(OutputError),
    /// An output of another type than declared (a directory for a file).
    #[error(transparent)]
    OutputType(OutputError),
    #[error(transparent)]
    Store(#[from] cas::Error),
    /// Laying out the inputs failed on our side (a full disk, say).
    #[error(transparent)]
    Inputs(InputError),
    /// Collecting the outputs failed on our side.
    #[error(transparent)]
    Outputs(OutputError),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::Error),
    /// Storing the result or inlining its outputs failed.
    #[error(transparent)]
    ActionCache(#[from] crate::action_cache::Error),
    /// A blocking task of ours panicked or was cancelled.
    #[error("internal error: blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Every uid of the sandbox range is leased (the number of actions
    /// run at once is capped at the range's size: a bug if it happens).
    #[error("internal error: no free uid in the sandbox uid range")]
    NoFreeUid,
    /// The request's instance is not served (the service checks it first:
    /// a bug if it happens).
    #[error("internal error: instance {0:?} is not served")]
    NotServed(String),
}

impl From<InputError> for Error {
    fn from(e: InputError) -> Error {
        match e {
            InputError::Missing(digests) => Error::Missing(digests),
            InputError::Invalid { path, reason } => Error::InvalidInput { path, reason },
            InputError::Store(e) => Error::Store(e),
            e @ (InputError::Destination { .. } | InputError::Io { .. }) => Error::Inputs(e),
        }
    }
}

impl From<OutputError> for Error {
    fn from(e: OutputError) -> Error {
        match e {
            e @ (OutputError::Special { .. }
            | OutputError::Invalid { .. }
            | OutputError::Unrepresentable { .. }) => Error::BadOutput(e),
            e @ OutputError::WrongType { .. } => Error::OutputType(e),
            OutputError::Store(e) => Error::Store(e),
            e @ OutputError::Io { .. } => Error::Outputs(e),
        }
    }
}
