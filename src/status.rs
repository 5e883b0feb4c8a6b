//! The one place where errors become gRPC statuses. Every error type of
//! the lower layers maps to exactly one code here.

use tonic::{Code, Status};

use crate::action_cache;
use crate::cas;
use crate::digest::DigestError;
use crate::resource::ResourceError;
use crate::service::RequestError;
use crate::trust::Denied;

impl From<cas::Error> for Status {
    fn from(e: cas::Error) -> Status {
        let code = match &e {
            cas::Error::Io { .. } => Code::Internal,
            cas::Error::HashMismatch { .. } | cas::Error::SizeMismatch { .. } => {
                Code::InvalidArgument
            }
            cas::Error::NotFound(_) => Code::NotFound,
        };
        if code == Code::Internal {
            tracing::error!("{e}");
        }
        Status::new(code, e.to_string())
    }
}

impl From<action_cache::Error> for Status {
    fn from(e: action_cache::Error) -> Status {
        match e {
            action_cache::Error::Store(e) => e.into(),
            e @ (action_cache::Error::BadDigest { .. } | action_cache::Error::BadInline { .. }) => {
                Status::invalid_argument(e.to_string())
            }
            e @ action_cache::Error::Corrupt { .. } => {
                tracing::error!("{e}");
                Status::internal(e.to_string())
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
            RequestError::Internal(_) => Code::Internal,
            RequestError::OutOfRange(_) => Code::OutOfRange,
            _ => Code::InvalidArgument,
        };
        Status::new(code, e.to_string())
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
