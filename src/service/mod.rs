//! The gRPC services. Each file is a thin layer over a plain type
//! (`cas::Store`, `action_cache::ActionCache`): it checks the request,
//! runs the blocking work off the async threads and maps errors (through
//! `crate::status`).

pub mod action_cache;
pub mod admin;
pub mod bytestream;
pub mod calls;
pub mod capabilities;
pub mod cas;
mod error;
pub mod execution;
pub mod operations;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Status};

use crate::action_cache::ActionCache;
use crate::cas::Store;
use crate::cas::tiered::Tiered;
use crate::config::Config;
use crate::instance::{Instance, Instances};
use crate::listener::ConnInfo;
use crate::proto::reapi;
use crate::quote::Quoted;
use crate::trust::{Caller, Policy};
use crate::uploads::{UploadLimits, Uploads};
use crate::upstream::Upstream;

pub use error::ServiceError;

/// Problems with a request as a whole (not with one blob of a batch).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "instance name {name} is not served here; the served names (instance-names and [instances]) are {}",
        quoted(served)
    )]
    UnknownInstance { name: Quoted, served: Vec<String> },
    #[error("digest function {0} is not supported; this server uses SHA256 only")]
    DigestFunction(String),
    #[error(
        "the batch's blobs total {total} bytes, over the limit of {limit} bytes (max_batch_total_size_bytes)"
    )]
    BatchTooLarge { total: u64, limit: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    OutOfRange(String),
}

/// What every service shares.
pub struct Context {
    /// The local store, for writes.
    pub store: Arc<Store>,
    /// Where reads come from: the local store, then the upstream.
    pub blobs: Arc<Tiered>,
    pub action_cache: Arc<ActionCache>,
    pub policy: Arc<Policy>,
    pub instances: Instances,
    pub max_batch: u64,
    pub exec_enabled: bool,
    pub started: Instant,
    /// The remote cluster, when one is configured.
    pub upstream: Option<Arc<Upstream>>,
    /// Unfinished ByteStream uploads.
    pub uploads: Arc<Uploads>,
}

impl Context {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        action_cache: Arc<ActionCache>,
        policy: Arc<Policy>,
        upstream: Option<Arc<Upstream>>,
    ) -> Arc<Context> {
        Arc::new(Context {
            action_cache,
            blobs: Arc::new(Tiered::new(Arc::clone(&store), upstream.clone())),
            store,
            policy,
            instances: Instances::from_config(config),
            max_batch: config.store.max_batch_size.0,
            exec_enabled: config.execution.enabled,
            started: Instant::now(),
            upstream,
            uploads: Uploads::new(UploadLimits::from_config(&config.limits)),
        })
    }

    /// Enforces max_batch_total_size_bytes on the sizes of a batch's blobs.
    pub fn check_batch(&self, sizes: impl Iterator<Item = u64>) -> Result<(), RequestError> {
        let total = sizes.fold(0u64, u64::saturating_add);
        if total > self.max_batch {
            return Err(RequestError::BatchTooLarge {
                total,
                limit: self.max_batch,
            });
        }
        Ok(())
    }

    /// What a served instance name selects; refuses names that are not
    /// configured.
    pub fn check_instance(&self, name: &str) -> Result<Instance, RequestError> {
        self.instances
            .get(name)
            .ok_or_else(|| RequestError::UnknownInstance {
                name: Quoted::new(name),
                served: self.instances.names(),
            })
    }
}

/// `"a", "b"`: names as a reader can copy them, the empty one included.
fn quoted(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    quoted.join(", ")
}

/// Unset means SHA-256 (REAPI before 2.2); anything else but SHA256 is
/// refused rather than silently hashed the wrong way.
pub fn check_digest_function(value: i32) -> Result<(), RequestError> {
    use reapi::digest_function::Value;
    match Value::try_from(value) {
        Ok(Value::Unknown | Value::Sha256) => Ok(()),
        Ok(other) => Err(RequestError::DigestFunction(other.as_str_name().to_owned())),
        Err(_) => Err(RequestError::DigestFunction(value.to_string())),
    }
}

/// The tonic interceptor that runs before every call: it refuses callers
/// that `allowed-users` does not admit and attaches the admitted [`Caller`].
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn admit(mut req: Request<()>) -> Result<Request<()>, Status> {
    let caller = match req.extensions().get::<ConnInfo>() {
        Some(info) => info.caller.clone()?,
        None => return Err(ServiceError::NoPeerInfo.into()),
    };
    req.extensions_mut().insert(caller);
    Ok(req)
}

/// The caller attached by [`admit`].
#[allow(clippy::result_large_err)]
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ServiceError::NotAdmitted.into())
}

/// Runs blocking store work on tokio's blocking pool.
pub async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, Status> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ServiceError::Task)?
}
