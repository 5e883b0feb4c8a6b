//! Remote execution: which actions go to the upstream, and forwarding one.
//!
//! The executor asks [`Policy::route`] after its own checks and the cache
//! lookup. A routed action's inputs are uploaded (only what the upstream
//! lacks), the upstream's Execute is called with the same action digest,
//! and its stages are relayed to our own Operation. When it completes, the
//! blobs of its result are fetched and verified into the local store, and
//! the result is cached locally, before the client sees it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prost::Message;
use tonic::Code;

use super::{Error, Executes, MAX_MESSAGE, Policy, Upstream};
use crate::action_cache::{self, Partition, Scope};
use crate::digest::Digest;
use crate::execution::run::Run;
use crate::proto::google::longrunning::{
    self, operation::Result as OpResult, operations_client::OperationsClient,
};
use crate::proto::google::rpc;
use crate::proto::reapi::{
    self, execution_client::ExecutionClient, execution_stage::Value as Stage,
};

/// The platform property that asks for (`"true"`) or refuses (`"false"`)
/// remote execution. A routing hint: never matched against the worker's
/// platform, and left in the Action so that its digest does not change.
pub const PROP_REMOTE: &str = "lre-remote";

/// Reattaches (WaitExecution) in a row after the stream broke without a
/// message; a reattached stream that brings one starts the count again.
const REATTACH: u32 = 2;
/// Reattaches in all, for one execution.
const REATTACH_MAX: u32 = 100;

/// Why an action goes to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `lre-remote = "true"`.
    Requested,
    /// This worker cannot satisfy the action's platform.
    Unsatisfiable,
    /// More actions wait locally than `remote-queue-length`.
    QueueLong,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Requested => "lre-remote=true",
            Reason::Unsatisfiable => "its platform is not satisfiable here",
            Reason::QueueLong => "the local queue is long",
        })
    }
}

impl Policy {
    /// Where an action runs. `requested` is the `lre-remote` property
    /// (already checked to be "true" or "false"), `unsatisfiable` whether
    /// this worker's platform cannot run it, `queued` how many actions wait
    /// locally. `None` means locally.
    pub fn route(
        &self,
        requested: Option<bool>,
        unsatisfiable: bool,
        queued: usize,
    ) -> Option<Reason> {
        if !self.remote_execution {
            return None;
        }
        match requested {
            Some(true) => Some(Reason::Requested),
            Some(false) => None,
            None if unsatisfiable && self.remote_when_unsatisfiable => Some(Reason::Unsatisfiable),
            None if self.remote_queue_length > 0 && queued > self.remote_queue_length => {
                Some(Reason::QueueLong)
            }
            None => None,
        }
    }
}

/// The `lre-remote` property of a platform: `Ok(None)` when absent.
pub fn requested(platform: Option<&reapi::Platform>) -> Result<Option<bool>, String> {
    let Some(p) = platform.and_then(|p| p.properties.iter().find(|p| p.name == PROP_REMOTE)) else {
        return Ok(None);
    };
    match p.value.as_str() {
        "true" => Ok(Some(true)),
        "false" => Ok(Some(false)),
        other => Err(format!(
            "platform property {PROP_REMOTE}={other:?}: the value must be \"true\" or \"false\""
        )),
    }
}

/// The parts of the client's request that travel upstream.
pub struct Forward<'a> {
    pub action: Digest,
    /// Everything the action needs: Action, Command, and its input tree.
    pub blobs: Vec<Digest>,
    pub request: &'a reapi::ExecuteRequest,
    pub do_not_cache: bool,
    /// The action's timeout (its own, or this worker's default). With the
    /// upstream's `timeout` on top, how long the upstream has from the
    /// moment it says EXECUTING to the result.
    pub timeout: Duration,
}

/// How the upstream's Execute ended.
enum Ended {
    /// The operation is done: a response or an operation error.
    Done(OpResult),
    /// The upstream answered the call itself with an error about this
    /// action (before or instead of a response).
    Refused(rpc::Status),
}

/// Where a forwarded execution is.
struct Progress {
    /// The upstream's operation name, once its first message came.
    name: String,
    /// When the upstream first said EXECUTING.
    executing_since: Option<Instant>,
    /// How long it may take from then: the action's timeout and the
    /// upstream's `timeout`.
    limit: Duration,
    /// Whether the current stream brought a message.
    heard: bool,
}

impl Progress {
    fn deadline(&self) -> Option<Instant> {
        self.executing_since.map(|t| t + self.limit)
    }

    fn overdue(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }
}

impl Upstream {
    /// Runs an action on the upstream. `Ok(None)` when our operation was
    /// cancelled meanwhile (the upstream's is cancelled too). An error
    /// status of the upstream's about the action is `Ok`: it is the answer.
    pub async fn execute(
        self: &Arc<Self>,
        op: &Run,
        fwd: Forward<'_>,
    ) -> Result<Option<reapi::ExecuteResponse>, Error> {
        self.check()?;
        if let Executes::No(reason) = self.executes().await? {
            return Err(Error::NoExecution {
                endpoint: self.endpoint.clone(),
                reason,
            });
        }
        let uploaded = self.upload_missing(&fwd.blobs).await?;
        tracing::debug!(action = %fwd.action, uploaded, "inputs on the upstream");
        let req = reapi::ExecuteRequest {
            instance_name: self.instance.clone(),
            // NativeLink 1.6.6 caches a do_not_cache action's result anyway;
            // it must not answer the next one from there.
            skip_cache_lookup: fwd.request.skip_cache_lookup || fwd.do_not_cache,
            action_digest: Some(fwd.action.to_proto()),
            execution_policy: fwd.request.execution_policy,
            results_cache_policy: fwd.request.results_cache_policy,
            digest_function: super::SHA256,
            inline_stdout: false,
            inline_stderr: false,
            inline_output_files: vec![],
        };
        self.stats.remote_executions.fetch_add(1, Ordering::Relaxed);
        let mut progress = Progress {
            name: String::new(),
            executing_since: None,
            limit: fwd.timeout + self.timeout,
            heard: false,
        };
        let Some(ended) = self.follow_operation(op, &req, &mut progress).await? else {
            return Ok(None);
        };
        let response = match ended {
            Ended::Refused(status) | Ended::Done(OpResult::Error(status)) => {
                reapi::ExecuteResponse {
                    status: Some(status),
                    ..Default::default()
                }
            }
            Ended::Done(OpResult::Response(any)) => {
                reapi::ExecuteResponse::decode(any.value.as_slice()).map_err(|e| {
                    Error::Protocol {
                        endpoint: self.endpoint.clone(),
                        reason: format!("operation {}: not an ExecuteResponse: {e}", progress.name),
                    }
                })?
            }
        };
        let response = self.complete(response, &fwd).await?;
        Ok(Some(self.answer(response)))
    }

    /// Follows the upstream operation to its end: Execute, then, when the
    /// stream breaks or ends early, WaitExecution by its name. `Ok(None)`
    /// when our operation was cancelled.
    async fn follow_operation(
        self: &Arc<Self>,
        op: &Run,
        req: &reapi::ExecuteRequest,
        p: &mut Progress,
    ) -> Result<Option<Ended>, Error> {
        // Reattaches in a row that brought nothing, and in all.
        let (mut silent, mut total) = (0, 0);
        loop {
            let method = if p.name.is_empty() {
                "Execute"
            } else {
                "WaitExecution"
            };
            let followed = match self.open_stream(method, req, &p.name).await? {
                Err(refused) => return Ok(Some(Ended::Refused(refused))),
                Ok(mut stream) => {
                    p.heard = false;
                    tokio::select! {
                        r = self.follow(method, op, &mut stream, p) => r,
                        _ = op.cancelled() => {
                            self.cancel_later(&p.name);
                            return Ok(None);
                        }
                    }
                }
            };
            silent = if p.heard { 1 } else { silent + 1 };
            total += 1;
            match followed {
                Ok(Some(ended)) => return Ok(Some(ended)),
                Err(e) if p.overdue() => {
                    self.cancel_later(&p.name);
                    return Err(e);
                }
                // A GOAWAY (gRPC servers send one for keepalive PINGs they
                // find too frequent) breaks the stream of a live upstream:
                // reattach as long as it answers. Not after an answer that
                // makes no sense, which would come again.
                Ok(None) | Err(Error::Call { .. })
                    if !p.name.is_empty() && silent <= REATTACH && total <= REATTACH_MAX =>
                {
                    tracing::info!(operation = %p.name, "upstream {method} stream ended early; reattaching");
                }
                Ok(None) => {
                    return Err(self.failed(
                        method,
                        tonic::Status::unavailable(
                            "the stream ended before the operation was done",
                        ),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens Execute (no operation name yet) or WaitExecution. The health
    /// check and the timeout apply to getting the stream, not to its
    /// (possibly long) life. `Ok(Err(status))` is the upstream's refusal.
    async fn open_stream(
        &self,
        method: &'static str,
        req: &reapi::ExecuteRequest,
        name: &str,
    ) -> Result<Result<tonic::Streaming<longrunning::Operation>, rpc::Status>, Error> {
        self.check()?;
        let mut client =
            ExecutionClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
        let call = async {
            if name.is_empty() {
                client.execute(req.clone()).await
            } else {
                let req = reapi::WaitExecutionRequest { name: name.into() };
                client.wait_execution(req).await
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(r)) => {
                self.succeeded();
                Ok(Ok(r.into_inner()))
            }
            Ok(Err(s)) => self.refusal(method, s).map(Err),
            Err(_) => Err(self.failed(method, self.no_answer())),
        }
    }

    /// Relays stages until the operation is done. `Ok(None)` when the
    /// stream ended first. Once the upstream says EXECUTING, the result
    /// must come within `p.limit`.
    async fn follow(
        &self,
        method: &'static str,
        op: &Run,
        stream: &mut tonic::Streaming<longrunning::Operation>,
        p: &mut Progress,
    ) -> Result<Option<Ended>, Error> {
        loop {
            let next = match p.deadline() {
                None => stream.message().await,
                Some(at) => match tokio::time::timeout_at(at.into(), stream.message()).await {
                    Ok(next) => next,
                    Err(_) => {
                        let why = format!(
                            "no result {:?} after it began to execute the action (its timeout and upstream.timeout)",
                            p.limit
                        );
                        return Err(self.failed(method, tonic::Status::deadline_exceeded(why)));
                    }
                },
            };
            let msg = match next {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(None),
                Err(s) => return self.refusal(method, s).map(|r| Some(Ended::Refused(r))),
            };
            p.heard = true;
            if p.name.is_empty() {
                p.name = msg.name.clone();
            }
            if let Some(meta) = &msg.metadata
                && let Ok(meta) = reapi::ExecuteOperationMetadata::decode(meta.value.as_slice())
            {
                match Stage::try_from(meta.stage) {
                    Ok(Stage::Queued) => op.set_stage(Stage::Queued),
                    Ok(Stage::Executing) => {
                        op.set_stage(Stage::Executing);
                        p.executing_since.get_or_insert_with(Instant::now);
                    }
                    _ => {}
                }
            }
            if msg.done {
                return match msg.result {
                    Some(r) => Ok(Some(Ended::Done(r))),
                    None => Err(Error::Protocol {
                        endpoint: self.endpoint.clone(),
                        reason: format!("operation {} is done without a result", msg.name),
                    }),
                };
            }
        }
    }

    /// An error status of the upstream's Execute or WaitExecution. The
    /// upstream's own answer about the action (INVALID_ARGUMENT,
    /// FAILED_PRECONDITION with its MISSING list, ...) is `Ok`: passed on
    /// to the client with its code, message and details. A failure of the
    /// upstream or of the connection, or an Execute that is not there, is
    /// an `Err`, after which the action may run here.
    fn refusal(&self, method: &'static str, status: tonic::Status) -> Result<rpc::Status, Error> {
        // tonic gives a status made from a transport error (a reset
        // stream, a broken connection) its source; one the server sent has
        // none.
        let transport = std::error::Error::source(&status).is_some();
        match status.code() {
            Code::Unimplemented if method == "Execute" => {
                let reason = format!("its Execute answers UNIMPLEMENTED: {}", status.message());
                let _ = self.failed(method, status);
                self.set_executes(Executes::No(reason.clone()));
                Err(Error::NoExecution {
                    endpoint: self.endpoint.clone(),
                    reason,
                })
            }
            Code::Unimplemented | Code::Unavailable | Code::Unauthenticated | Code::Cancelled => {
                Err(self.failed(method, status))
            }
            // The operation is gone there (a restart), not the action.
            Code::NotFound if method == "WaitExecution" => Err(self.failed(method, status)),
            _ if transport => Err(self.failed(method, status)),
            _ => {
                self.succeeded();
                let details = rpc::Status::decode(status.details())
                    .map(|s| s.details)
                    .unwrap_or_default();
                Ok(rpc::Status {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    details,
                })
            }
        }
    }

    /// Takes in what the upstream answered. With an OK status, every blob
    /// of the result is fetched into the local store (a result whose
    /// outputs cannot be had is unusable) and the result is cached under
    /// the local rules. With any other status, the status is the answer:
    /// a result that comes with it (a timed-out action's output) is kept
    /// only if its blobs can be had, and is never cached.
    async fn complete(
        self: &Arc<Self>,
        mut response: reapi::ExecuteResponse,
        fwd: &Forward<'_>,
    ) -> Result<reapi::ExecuteResponse, Error> {
        let code = response.status.as_ref().map_or(0, |s| s.code);
        let unusable = |why: String| Error::Protocol {
            endpoint: self.endpoint.clone(),
            reason: format!("the result of {} is unusable: {why}", fwd.action),
        };
        let Some(result) = response.result.take() else {
            return match code {
                0 => Err(unusable(
                    "the response has an OK status and no result".into(),
                )),
                _ => Ok(response),
            };
        };
        let fetched = self.fetch_result_blobs(&result).await;
        if code != 0 {
            match fetched {
                Ok(Ok(())) => response.result = Some(result),
                Ok(Err(why)) => tracing::debug!(
                    action = %fwd.action,
                    "the result sent with the upstream's status {code} is left out: {why}"
                ),
                Err(e) => tracing::info!(
                    action = %fwd.action,
                    "the result sent with the upstream's status {code} is left out: {e}"
                ),
            }
            return Ok(response);
        }
        fetched?.map_err(unusable)?;
        response.result = Some(if result.exit_code == 0 && !fwd.do_not_cache {
            let ac = Arc::clone(&self.action_cache);
            let action = fwd.action;
            match tokio::task::spawn_blocking(move || {
                ac.put(Partition::default(), &action, result, Scope::Shared)
            })
            .await
            {
                Ok(Ok(stored)) => stored,
                Ok(Err(action_cache::Error::Store(e))) => return Err(e.into()),
                Ok(Err(e)) => return Err(unusable(e.to_string())),
                Err(e) => return Err(Error::Task(e)),
            }
        } else {
            result
        });
        Ok(response)
    }

    /// The response as our client sees it: the upstream's operation name
    /// and server logs are its own; the messages say where the action ran.
    fn answer(&self, mut r: reapi::ExecuteResponse) -> reapi::ExecuteResponse {
        let by = format!("upstream {}", self.endpoint);
        let ok = match r.status.as_mut() {
            Some(s) if s.code != 0 => {
                s.message = format!("{by}: {}", s.message);
                false
            }
            _ => true,
        };
        if !r.message.is_empty() {
            r.message = format!("{by}: {}", r.message);
        } else if ok {
            r.message = format!("executed by {by}");
        }
        r
    }

    /// Cancels the upstream operation in the background (best effort; the
    /// upstream may be frozen, and our operation ends now).
    fn cancel_later(self: &Arc<Self>, name: &str) {
        if name.is_empty() {
            return;
        }
        let (this, name) = (Arc::clone(self), name.to_owned());
        tokio::spawn(async move { this.cancel_remote(&name).await });
    }

    /// The client cancelled (or the upstream overran), so stop the
    /// upstream's work too. An upstream without CancelOperation (NativeLink
    /// 1.6.6) runs the action to its end; that is logged once, not counted
    /// as a failed call each time.
    async fn cancel_remote(&self, name: &str) {
        const METHOD: &str = "CancelOperation";
        let req = longrunning::CancelOperationRequest {
            name: name.to_owned(),
        };
        let status = match self
            .attempt(|ch| async move { OperationsClient::new(ch).cancel_operation(req).await })
            .await
        {
            Ok(Ok(_)) => return self.succeeded(),
            Ok(Err(status)) => status,
            Err(e) => {
                return tracing::info!(
                    operation = name,
                    "cannot cancel the upstream operation: {e}"
                );
            }
        };
        if status.code() == Code::Unimplemented {
            if !self.cancel_unimplemented.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    upstream = %self.endpoint,
                    "upstream {} does not implement {METHOD} ({}): an action cancelled here runs there to its end (logged once)",
                    self.endpoint,
                    status.message()
                );
            }
            return;
        }
        let e = self.failed(METHOD, status);
        tracing::info!(
            operation = name,
            "cannot cancel the upstream operation: {e}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            read_through: true,
            write_back: false,
            remote_execution: true,
            remote_when_unsatisfiable: true,
            remote_queue_length: 4,
            local_fallback: true,
        }
    }

    #[test]
    fn routing_follows_the_policy() {
        let p = policy();
        assert_eq!(p.route(Some(true), false, 0), Some(Reason::Requested));
        assert_eq!(p.route(Some(false), false, 100), None);
        assert_eq!(p.route(None, true, 0), Some(Reason::Unsatisfiable));
        assert_eq!(p.route(None, false, 4), None);
        assert_eq!(p.route(None, false, 5), Some(Reason::QueueLong));
        let off = Policy {
            remote_execution: false,
            ..policy()
        };
        assert_eq!(off.route(Some(true), true, 100), None);
        let strict = Policy {
            remote_when_unsatisfiable: false,
            remote_queue_length: 0,
            ..policy()
        };
        assert_eq!(strict.route(None, true, 100), None);
    }

    #[test]
    fn lre_remote_values_are_checked() {
        let platform = |v: &str| reapi::Platform {
            properties: vec![reapi::platform::Property {
                name: PROP_REMOTE.into(),
                value: v.into(),
            }],
        };
        assert_eq!(requested(None), Ok(None));
        assert_eq!(requested(Some(&platform("true"))), Ok(Some(true)));
        assert_eq!(requested(Some(&platform("false"))), Ok(Some(false)));
        assert!(
            requested(Some(&platform("yes")))
                .unwrap_err()
                .contains("lre-remote")
        );
    }
}
