//! The one place where errors become gRPC statuses. Every error type of
//! the lower layers maps to exactly one code here.

use std::io;

use tonic::{Code, Status};

use crate::action_cache;
use crate::cas;
use crate::digest::DigestError;
use crate::per_user::OverLimit;
use crate::proto::any;
use crate::proto::google::rpc;
use crate::resource::ResourceError;
use crate::service::{RequestError, ServiceError};
use crate::trust::Denied;

/// A full disk or quota (ENOSPC, EDQUOT) and no descriptors left (EMFILE,
/// ENFILE) are RESOURCE_EXHAUSTED, as REAPI names it for "insufficient
/// disk quota": the client may retry later or elsewhere. Any other I/O
/// failure is ours: INTERNAL.
pub(crate) fn io_code(e: &io::Error) -> Code {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE) => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

/// The status for an I/O error while doing `what`.
pub(crate) fn io_status(what: &str, e: &io::Error) -> Status {
    let code = io_code(e);
    if code == Code::Internal {
        tracing::error!("{what}: {e}");
    } else {
        tracing::warn!("{what}: {e}");
    }
    Status::new(code, format!("{what}: {e}"))
}

fn store_code(e: &cas::Error) -> Code {
    match e {
        cas::Error::Io { source, .. } => io_code(source),
        cas::Error::HashMismatch { .. } | cas::Error::SizeMismatch { .. } => Code::InvalidArgument,
        cas::Error::NotFound(_) => Code::NotFound,
    }
}

impl From<cas::Error> for Status {
    fn from(e: cas::Error) -> Status {
        let code = store_code(&e);
        match code {
            Code::Internal => tracing::error!("{e}"),
            Code::ResourceExhausted => tracing::warn!("{e}"),
            _ => {}
        }
        Status::new(code, e.to_string())
    }
}

impl From<crate::uploads::UploadError> for Status {
    fn from(e: crate::uploads::UploadError) -> Status {
        match e {
            crate::uploads::UploadError::Store(e) => e.into(),
            e @ crate::uploads::UploadError::Exhausted(_) => {
                Status::resource_exhausted(e.to_string())
            }
        }
    }
}

impl From<action_cache::Error> for Status {
    fn from(e: action_cache::Error) -> Status {
        match e {
            action_cache::Error::Store(e) => e.into(),
            e @ (action_cache::Error::BadDigest { .. } | action_cache::Error::BadInline { .. }) => {
                Status::invalid_argument(e.to_string())
            }
        }
    }
}

impl From<DigestError> for Status {
    fn from(e: DigestError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

impl From<ResourceError> for Status {
    fn from(e: ResourceError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

impl From<Denied> for Status {
    fn from(e: Denied) -> Status {
        Status::permission_denied(e.0)
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Status {
        let code = match &e {
            RequestError::OutOfRange(_) => Code::OutOfRange,
            _ => Code::InvalidArgument,
        };
        Status::new(code, e.to_string())
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let code = match &e {
            ServiceError::NoPeerInfo | ServiceError::NotAdmitted | ServiceError::Task(_) => {
                Code::Internal
            }
            ServiceError::NoOperation(_) => Code::NotFound,
            ServiceError::StillRunning(_) => Code::FailedPrecondition,
            ServiceError::StreamIdle(_) => Code::DeadlineExceeded,
        };
        Status::new(code, e.to_string())
    }
}

/// One user's share of connections or calls is used up.
impl From<OverLimit> for Status {
    fn from(e: OverLimit) -> Status {
        Status::resource_exhausted(e.to_string())
    }
}

impl From<cas::tree::TreeError> for Status {
    fn from(e: cas::tree::TreeError) -> Status {
        match e {
            cas::tree::TreeError::Store(e) => e.into(),
            e @ cas::tree::TreeError::Corrupt { .. } => Status::invalid_argument(e.to_string()),
        }
    }
}

/// Whatever the upstream did is UNAVAILABLE (naming it); our own store's
/// errors keep their code, and a failed task of ours is INTERNAL.
fn upstream_code(e: &crate::upstream::Error) -> Code {
    match e {
        crate::upstream::Error::Store(inner) => store_code(inner),
        crate::upstream::Error::Task(_) => Code::Internal,
        _ => Code::Unavailable,
    }
}

impl From<crate::upstream::Error> for Status {
    fn from(e: crate::upstream::Error) -> Status {
        let code = upstream_code(&e);
        if code == Code::Internal {
            tracing::error!("{e}");
        }
        Status::new(code, e.to_string())
    }
}

/// The `google.rpc.Status` an ExecuteResponse carries for an execution
/// error. Missing inputs get FAILED_PRECONDITION with a PreconditionFailure
/// listing every missing blob as `blobs/{hash}/{size}`, which Bazel reads to
/// re-upload exactly those.
pub fn execute_status(e: &crate::execution::executor::Error) -> rpc::Status {
    use crate::execution::executor::Error as E;
    let code = match e {
        E::Missing(_) | E::Platform(_) | E::Unsatisfiable(_) | E::OutputType(_) => {
            Code::FailedPrecondition
        }
        E::BadMessage { .. } | E::InvalidInput { .. } | E::Timeout { .. } | E::BadOutput(_) => {
            Code::InvalidArgument
        }
        E::Cancelled => Code::Cancelled,
        E::QueueFull(_) | E::ExecRootFull { .. } => Code::ResourceExhausted,
        E::Store(inner) => store_code(inner),
        E::Inputs(crate::execution::inputs::InputError::Io { source, .. })
        | E::Outputs(crate::execution::outputs::OutputError::Io { source, .. })
        | E::Streams(source) => io_code(source),
        E::ActionDir(e) => io_code(&e.source),
        E::Upstream(inner) => upstream_code(inner),
        // As GetActionResult answers for the same error.
        E::ActionCache(crate::action_cache::Error::Store(inner)) => store_code(inner),
        E::ActionCache(_) => Code::InvalidArgument,
        E::Inputs(_)
        | E::Outputs(_)
        | E::Sandbox(_)
        | E::Cgroup(_)
        | E::Task(_)
        | E::NoFreeUid
        | E::NotServed(_) => Code::Internal,
    };
    let details = match e {
        E::Missing(digests) => vec![any(
            "google.rpc.PreconditionFailure",
            &rpc::PreconditionFailure {
                violations: digests
                    .iter()
                    .map(|d| rpc::precondition_failure::Violation {
                        r#type: "MISSING".into(),
                        subject: format!("blobs/{}/{}", d.hex(), d.size()),
                        description: String::new(),
                    })
                    .collect(),
            },
        )],
        E::Platform(why) | E::Unsatisfiable(why) => vec![any(
            "google.rpc.PreconditionFailure",
            &rpc::PreconditionFailure {
                violations: vec![rpc::precondition_failure::Violation {
                    r#type: "PLATFORM".into(),
                    subject: "platform".into(),
                    description: why.clone(),
                }],
            },
        )],
        _ => vec![],
    };
    if code == Code::Internal {
        tracing::error!("{e}");
    }
    rpc::Status {
        code: code as i32,
        message: cut(e.to_string()),
        details,
    }
}

/// An ExecuteResponse's status message, at most 4 KiB (the messages quote
/// paths the client sent).
fn cut(mut message: String) -> String {
    const MAX: usize = 4096;
    if message.len() > MAX {
        let len = message.len();
        let mut end = MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(&format!("… (cut from {len} bytes)"));
    }
    message
}

/// The status of a result that ran out of time.
pub fn deadline_exceeded(message: &str) -> rpc::Status {
    rpc::Status {
        code: Code::DeadlineExceeded as i32,
        message: message.to_owned(),
        details: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution::executor::Error as E;

    fn code(e: &E) -> Code {
        Code::from_i32(execute_status(e).code)
    }

    fn full_disk() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOSPC)
    }

    async fn join_error() -> tokio::task::JoinError {
        tokio::spawn(async { panic!("a task that panics") })
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn a_failed_task_is_internal_from_every_layer() {
        assert_eq!(code(&E::Task(join_error().await)), Code::Internal);
        let service: Status = ServiceError::Task(join_error().await).into();
        assert_eq!(service.code(), Code::Internal);
        let upstream: Status = crate::upstream::Error::Task(join_error().await).into();
        assert_eq!(upstream.code(), Code::Internal);
    }

    #[test]
    fn our_own_invariants_broken_are_internal() {
        assert_eq!(code(&E::NoFreeUid), Code::Internal);
        let e = E::NotServed("other".into());
        assert_eq!(code(&e), Code::Internal);
        assert!(e.to_string().contains("\"other\""), "{e}");
        let cg = crate::cgroup::Error::Parse {
            path: "/sys/fs/cgroup/x/cpu.stat".into(),
            detail: "garbage".into(),
        };
        let e = E::Cgroup(cg);
        assert_eq!(code(&e), Code::Internal);
        assert!(e.to_string().contains("cpu.stat"), "{e}");
    }

    #[test]
    fn a_full_disk_is_resource_exhausted_wherever_it_strikes() {
        let path = std::path::Path::new("/var/lib/nativelink-lre/exec/1");
        let dir = E::ActionDir(crate::io_error::IoError::new(
            "cannot create",
            path,
            full_disk(),
        ));
        assert_eq!(code(&dir), Code::ResourceExhausted);
        assert!(dir.to_string().contains("exec/1"), "{dir}");
        assert_eq!(code(&E::Streams(full_disk())), Code::ResourceExhausted);
        let store = || cas::Error::Io {
            op: "write",
            path: path.into(),
            source: full_disk(),
        };
        assert_eq!(code(&E::Store(store())), Code::ResourceExhausted);
        assert_eq!(
            code(&E::ActionCache(action_cache::Error::Store(store()))),
            Code::ResourceExhausted
        );
        let from_cache: Status = action_cache::Error::Store(store()).into();
        assert_eq!(from_cache.code(), Code::ResourceExhausted);
        // Any other I/O failure is ours.
        let eio = io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(code(&E::Streams(eio)), Code::Internal);
    }

    #[test]
    fn a_cache_error_gets_one_code_from_get_action_result_and_execute() {
        let bad = || action_cache::Error::BadDigest {
            field: "output_files[0].digest".into(),
            source: crate::digest::DigestError::Missing,
        };
        let from_get: Status = bad().into();
        assert_eq!(code(&E::ActionCache(bad())), from_get.code());
        let missing =
            || action_cache::Error::Store(cas::Error::NotFound(crate::digest::Digest::EMPTY));
        let from_get: Status = missing().into();
        assert_eq!(code(&E::ActionCache(missing())), from_get.code());
    }
}
