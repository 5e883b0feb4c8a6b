//! The services' own refusals and failures that are not about the request's
//! contents ([`super::RequestError`]) nor a lower layer's error: a call that
//! reached a service without its caller, an operation that is not there or
//! not done, a client that went quiet. `crate::status` picks their codes.

use std::time::Duration;

/// An error of the service layer itself.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The connection carries no [`crate::listener::ConnInfo`]: a wiring bug.
    #[error("connection has no peer information")]
    NoPeerInfo,
    /// A request reached a service without passing [`super::admit`].
    #[error("request was not admitted")]
    NotAdmitted,
    /// A blocking task of ours panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// No operation of that name that the caller may see.
    #[error("no operation named {0:?}")]
    NoOperation(String),
    /// The operation cannot be deleted while it runs.
    #[error("operation {0} is still running; cancel it first")]
    StillRunning(String),
    /// A client stream sent nothing for `stream-idle-timeout`.
    #[error("the client sent nothing for {}s (stream-idle-timeout)", .0.as_secs_f64())]
    StreamIdle(Duration),
}
