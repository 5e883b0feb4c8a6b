//! The upstream: an existing REAPI cluster (NativeLink, Buildbarn,
//! BuildGrid, BuildBuddy, or another nativelink-lre) that this service uses
//! as a second-level cache and as extra executors. Action digests are the
//! same on both sides, so a hit in one place is a hit in the other.
//!
//! - [`settings`]: the endpoint, TLS and headers, read and checked at
//!   start-up (and by `check-config`).
//! - [`fetch`]: read-through. Local misses (ActionCache, CAS reads, an
//!   Execute's inputs) are fetched from the upstream into the local store,
//!   verified by hash like any upload, before anything refers to them.
//! - [`push`]: write-back. Results our own sandbox produced are pushed in
//!   the background through a bounded queue: blobs first, then the
//!   ActionResult.
//! - [`capabilities`]: what the upstream's GetCapabilities says, and so
//!   whether it executes actions at all.
//! - [`execute`]: remote execution. The routing policy, and forwarding an
//!   Execute to the upstream while relaying its progress; the upstream's
//!   error statuses are the client's answer.
//!
//! Every call goes through [`Upstream::call`]: a limit on concurrent calls,
//! a timeout, and the health state. A call that fails the way a dead or
//! unreachable server fails marks the upstream down; while it is down,
//! calls fail at once (local work goes on without waiting for timeouts) and
//! a background probe retries with exponential backoff.

pub mod capabilities;
mod error;
pub mod execute;
pub mod fetch;
mod health;
pub mod push;
pub mod settings;

pub use capabilities::Executes;
pub use error::Error;
use error::{describe, marks_down};
pub use fetch::lookup;
use health::{Failure, Health};
pub use settings::{Ch, Settings};

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::{Code, Response, Status};

use crate::action_cache::ActionCache;
use crate::cas::Store;
use crate::digest::Digest;
use crate::proto::nativelink_lre::v1 as admin;
use crate::proto::reapi;

/// Blobs up to this size are fetched and pushed in batches; larger ones
/// through ByteStream.
const BATCH_BLOB_MAX: u64 = 1 << 20;
/// Request bytes per batch, below the 4 MiB every server accepts (BuildGrid
/// allows 4 MiB minus 1 KiB), leaving room for the message framing.
const BATCH_BYTES_MAX: u64 = (4 << 20) - (64 << 10);
/// The only digest function: every request says so explicitly.
const SHA256: i32 = reapi::digest_function::Value::Sha256 as i32;

/// Splits blobs into batches of at most `limit` request bytes (blobs up to
/// [`BATCH_BLOB_MAX`]) and the larger ones, which go through ByteStream.
fn plan_transfers(blobs: &[Digest], limit: u64) -> (Vec<Vec<Digest>>, Vec<Digest>) {
    let (mut batches, mut streams) = (Vec::new(), Vec::new());
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for d in blobs {
        if d.size() > BATCH_BLOB_MAX.min(limit) {
            streams.push(*d);
            continue;
        }
        if batch_bytes + d.size() > limit && !batch.is_empty() {
            batches.push(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
        batch_bytes += d.size();
        batch.push(*d);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    (batches, streams)
}

/// Largest message we accept from the upstream.
const MAX_MESSAGE: usize = 64 << 20;

/// Counters for `status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub ac_hits: AtomicU64,
    pub ac_misses: AtomicU64,
    pub blobs_fetched: AtomicU64,
    pub bytes_fetched: AtomicU64,
    /// Blobs the upstream served with bytes that do not match the digest.
    pub blobs_rejected: AtomicU64,
    pub pushes_done: AtomicU64,
    pub pushes_dropped: AtomicU64,
    pub pushes_failed: AtomicU64,
    pub blobs_pushed: AtomicU64,
    pub remote_executions: AtomicU64,
    pub remote_fallbacks: AtomicU64,
    pub calls_failed: AtomicU64,
}

pub struct Upstream {
    endpoint: String,
    instance: String,
    channel: Ch,
    calls: Semaphore,
    timeout: Duration,
    pub policy: Policy,
    health: Mutex<Health>,
    /// The last error of any kind (down or not), for `status`.
    last_error: Mutex<Option<String>>,
    pub stats: Stats,
    store: Arc<Store>,
    action_cache: Arc<ActionCache>,
    /// What GetCapabilities said last (it is asked at start-up and again
    /// each time the upstream is back after being down).
    capabilities: Mutex<Option<reapi::ServerCapabilities>>,
    executes: Mutex<Executes>,
    /// Held while an Execute asks GetCapabilities itself (it came before
    /// the start-up probe was answered), so that only one does.
    learning: tokio::sync::Mutex<()>,
    /// Whether "CancelOperation is not implemented there" was logged.
    cancel_unimplemented: std::sync::atomic::AtomicBool,
    push: OnceLock<push::Queue>,
}

/// What the upstream is used for.
#[derive(Debug, Clone)]
pub struct Policy {
    pub read_through: bool,
    pub write_back: bool,
    pub remote_execution: bool,
    pub remote_when_unsatisfiable: bool,
    pub remote_queue_length: usize,
    pub local_fallback: bool,
}

impl Upstream {
    pub fn new(
        settings: Settings,
        store: Arc<Store>,
        action_cache: Arc<ActionCache>,
    ) -> Result<Arc<Upstream>, Error> {
        let c = &settings.config;
        let up = Arc::new(Upstream {
            endpoint: settings.endpoint.to_string(),
            instance: c.instance_name.clone(),
            channel: settings.channel()?,
            calls: Semaphore::new(c.max_concurrent_calls),
            timeout: c.timeout.0,
            policy: Policy {
                read_through: c.read_through,
                write_back: c.write_back,
                remote_execution: c.remote_execution,
                remote_when_unsatisfiable: c.remote_when_unsatisfiable,
                remote_queue_length: c.remote_queue_length,
                local_fallback: c.local_fallback,
            },
            health: Mutex::new(Health::new(c.retry_min.0, c.retry_max.0)),
            last_error: Mutex::new(None),
            stats: Stats::default(),
            store,
            action_cache,
            capabilities: Mutex::new(None),
            executes: Mutex::new(Executes::Unknown),
            learning: tokio::sync::Mutex::new(()),
            cancel_unimplemented: Default::default(),
            push: OnceLock::new(),
        });
        Ok(up)
    }

    /// Starts the background work: the first GetCapabilities, the health
    /// probe, and the write-back worker. `activity` keeps the daemon from
    /// exiting for idleness while pushes are pending.
    pub fn start(
        self: &Arc<Self>,
        write_back_queue: usize,
        activity: Arc<crate::listener::Activity>,
    ) {
        if self.policy.write_back {
            let _ = self
                .push
                .set(push::Queue::start(self, write_back_queue, activity));
        }
        let this = Arc::clone(self);
        tokio::spawn(async move { this.probe_loop().await });
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether the upstream is known to be down right now (no attempt due).
    pub fn is_down(&self) -> bool {
        self.lock_health().refuses(Instant::now()).is_some()
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails at once while the upstream is down and no retry is due.
    fn check(&self) -> Result<(), Error> {
        let h = self.lock_health();
        match h.refuses(Instant::now()) {
            Some(d) => Err(Error::Down {
                endpoint: self.endpoint.clone(),
                reason: d.error.clone(),
                retry_in: d
                    .retry_at
                    .saturating_duration_since(Instant::now())
                    .as_secs()
                    + 1,
            }),
            _ => Ok(()),
        }
    }

    fn succeeded(&self) {
        let back = self.lock_health().succeeded();
        if let Some(d) = back {
            tracing::warn!(
                upstream = %self.endpoint,
                "upstream {} is back after {}s",
                self.endpoint,
                d.since.elapsed().as_secs()
            );
        }
    }

    /// Records a failed call and turns it into an [`Error`]. Failures that
    /// mean the server is unreachable mark it down (or lengthen the
    /// backoff); answers such as NOT_FOUND do not.
    fn failed(&self, method: &'static str, status: Status) -> Error {
        let code = status.code();
        let message = describe(&status);
        if code != Code::NotFound {
            self.stats.calls_failed.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("{method}: {code:?}: {message}"));
        }
        if marks_down(code) {
            let error = format!("{method}: {code:?}: {message}");
            let failure =
                self.lock_health()
                    .failed(Instant::now(), error.clone(), rand::random::<f64>());
            match failure {
                Failure::Marked { backoff } => tracing::warn!(
                    upstream = %self.endpoint,
                    "upstream {} is unavailable: {error}; local work goes on, next retry in {}s",
                    self.endpoint,
                    backoff.as_secs_f64().ceil()
                ),
                Failure::Lengthened { backoff } => tracing::info!(
                    upstream = %self.endpoint,
                    "upstream {} still unavailable ({error}); next retry in {}s",
                    self.endpoint,
                    backoff.as_secs_f64().ceil()
                ),
                Failure::Unchanged => {}
            }
        }
        Error::Call {
            endpoint: self.endpoint.clone(),
            method,
            code,
            message,
        }
    }

    /// The health check, then a slot among the `max-concurrent-calls`;
    /// every call (unary or streamed) holds one while it runs.
    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        self.check()?;
        self.calls.acquire().await.map_err(|_| Error::Setup {
            endpoint: self.endpoint.clone(),
            reason: "shutting down".into(),
        })
    }

    /// One unary call: the health check, a slot among the concurrent
    /// calls, the timeout, and the bookkeeping of its outcome.
    async fn call<T, F, Fut>(&self, method: &'static str, f: F) -> Result<T, Error>
    where
        F: FnOnce(Ch) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        match self.attempt(f).await? {
            Ok(response) => {
                self.succeeded();
                Ok(response)
            }
            Err(status) => {
                let e = self.failed(method, status);
                if e.is_not_found() {
                    self.succeeded();
                }
                Err(e)
            }
        }
    }

    /// A unary call without the bookkeeping: the health check, a slot, and
    /// the timeout (which comes back as [`Self::no_answer`]). The status is
    /// for the caller to judge.
    async fn attempt<T, F, Fut>(&self, f: F) -> Result<Result<T, Status>, Error>
    where
        F: FnOnce(Ch) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let _slot = self.slot().await?;
        Ok(
            match tokio::time::timeout(self.timeout, f(self.channel.clone())).await {
                Ok(r) => r.map(Response::into_inner),
                Err(_) => Err(self.no_answer()),
            },
        )
    }

    /// The status of a call that timed out.
    fn no_answer(&self) -> Status {
        Status::deadline_exceeded(format!("no answer within {:?}", self.timeout))
    }

    /// The resource-name prefix for ByteStream: `{instance}/` or nothing.
    fn resource_prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        }
    }

    fn lock<'a, T>(&self, m: &'a Mutex<T>) -> std::sync::MutexGuard<'a, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The batch limit: the upstream's, or 4 MiB, less framing room.
    fn batch_bytes(&self) -> u64 {
        let advertised = self
            .lock(&self.capabilities)
            .as_ref()
            .and_then(|c| c.cache_capabilities.as_ref())
            .map(|c| c.max_batch_total_size_bytes)
            .filter(|n| *n > 0)
            .map_or(4 << 20, |n| n as u64);
        advertised
            .min(4 << 20)
            .saturating_sub(64 << 10)
            .clamp(64 << 10, BATCH_BYTES_MAX)
    }

    /// What `status` shows.
    pub fn status(&self) -> admin::UpstreamStatus {
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let h = self.lock_health();
        let now = Instant::now();
        let (state, down_for, retry_in, down_error) = match h.down() {
            Some(d) => (
                "down",
                d.since.elapsed().as_secs(),
                d.retry_at.saturating_duration_since(now).as_secs(),
                d.error.clone(),
            ),
            None if self.lock(&self.capabilities).is_some() => ("up", 0, 0, String::new()),
            None => ("connecting", 0, 0, String::new()),
        };
        drop(h);
        admin::UpstreamStatus {
            endpoint: self.endpoint.clone(),
            instance_name: self.instance.clone(),
            state: state.into(),
            down_seconds: down_for,
            next_retry_seconds: retry_in,
            error: down_error,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default(),
            read_through: self.policy.read_through,
            write_back: self.policy.write_back,
            remote_execution: self.policy.remote_execution,
            action_cache_hits: n(&s.ac_hits),
            action_cache_misses: n(&s.ac_misses),
            blobs_fetched: n(&s.blobs_fetched),
            bytes_fetched: n(&s.bytes_fetched),
            blobs_rejected: n(&s.blobs_rejected),
            pushes_queued: self.push.get().map_or(0, |q| q.pending() as u64),
            pushes_done: n(&s.pushes_done),
            pushes_dropped: n(&s.pushes_dropped),
            pushes_failed: n(&s.pushes_failed),
            blobs_pushed: n(&s.blobs_pushed),
            remote_executions: n(&s.remote_executions),
            remote_fallbacks: n(&s.remote_fallbacks),
            calls_failed: n(&s.calls_failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_are_batched_up_to_the_limit_and_large_blobs_streamed() {
        let blob = |n: u64| Digest::of_bytes(&vec![b'x'; n as usize]);
        let (small, mid, big) = (blob(100), blob(600 << 10), blob(2 << 20));
        let (batches, streams) = plan_transfers(&[small, mid, mid, big, small], 1 << 20);
        assert_eq!(streams, vec![big]);
        // 100 + 600 KiB fits; a second 600 KiB does not; then 600 KiB + 100.
        assert_eq!(batches, vec![vec![small, mid], vec![mid, small]]);
    }
}
