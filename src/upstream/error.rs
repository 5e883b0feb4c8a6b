//! The errors of the upstream layer, and which of them mean the upstream
//! is unreachable (and so mark it down).

use std::path::PathBuf;

use tonic::{Code, Status};

use crate::cas;

/// Errors of the upstream layer. All of them mean "the upstream could not
/// help", and map to UNAVAILABLE (naming the upstream) in `crate::status`;
/// only a failure of our own store keeps its own code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream.{key}: {path}: {reason}")]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("upstream {endpoint}: {reason}")]
    Setup { endpoint: String, reason: String },
    #[error("upstream {endpoint} is unavailable: {reason}; next retry in {retry_in}s")]
    Down {
        endpoint: String,
        reason: String,
        retry_in: u64,
    },
    #[error("upstream {endpoint}: {method}: {code:?}: {message}")]
    Call {
        endpoint: String,
        method: &'static str,
        code: Code,
        message: String,
    },
    #[error("upstream {endpoint}: {reason}")]
    Protocol { endpoint: String, reason: String },
    /// The upstream does not run actions: its GetCapabilities says so (or
    /// fails for our instance name), or its Execute is not there.
    #[error("upstream {endpoint} does not execute actions: {reason}")]
    NoExecution { endpoint: String, reason: String },
    #[error(transparent)]
    Store(#[from] cas::Error),
    /// A blocking or spawned task of ours panicked or was cancelled.
    #[error("internal error: a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    /// Whether the upstream could not be reached or did not answer, as
    /// opposed to answering with an error of its own.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Down { .. } => true,
            Error::Call { code, .. } => marks_down(*code),
            _ => false,
        }
    }

    /// Whether a forwarded execution that failed this way may run locally
    /// instead: the upstream is unreachable, does not execute at all (a
    /// cache-only server), or answered with something unusable (a result
    /// whose outputs it cannot serve). Not for errors of our own store, and
    /// never for an answer of the upstream's about the action itself, which
    /// is not an error here but the response.
    pub fn allows_local_fallback(&self) -> bool {
        self.is_unavailable()
            || matches!(
                self,
                Error::Call {
                    code: Code::Unimplemented,
                    ..
                } | Error::Protocol { .. }
                    | Error::NoExecution { .. }
            )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Call {
                code: Code::NotFound,
                ..
            }
        )
    }
}

/// Codes that mean the server is gone, unreachable, too slow, or refuses
/// us as a whole (a bad token): these mark the upstream down.
pub(super) fn marks_down(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Unauthenticated
    )
}

/// A status's message, with the transport error's chain when tonic has
/// one (a refused connection says so only in its source).
pub(super) fn describe(status: &Status) -> String {
    use std::error::Error as _;
    let mut s = status.message().to_owned();
    let mut cur = status.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !s.contains(&text) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&text);
        }
        cur = e.source();
    }
    if s.is_empty() {
        s = "no message".into();
    }
    s
}
