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

use prost::Message;

use super::{Error, MAX_MESSAGE, Policy, Upstream};
use crate::action_cache::{self, Scope};
use crate::digest::Digest;
use crate::execution::run::Run;
use crate::proto::google::longrunning::{
    self, operation::Result as OpResult, operations_client::OperationsClient,
};
use crate::proto::reapi::{
    self, execution_client::ExecutionClient, execution_stage::Value as Stage,
};

/// The platform property that asks for (`"true"`) or refuses (`"false"`)
/// remote execution. A routing hint: never matched against the worker's
/// platform, and left in the Action so that its digest does not change.
pub const PROP_REMOTE: &str = "lre-remote";

/// Reconnections (WaitExecution) after the Execute stream breaks.
const REATTACH: u32 = 2;

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
}

impl Upstream {
    /// Runs an action on the upstream. `Ok(None)` when our operation was
    /// cancelled meanwhile (the upstream's is cancelled too).
    pub async fn execute(
        self: &Arc<Self>,
        op: &Run,
        fwd: Forward<'_>,
    ) -> Result<Option<reapi::ExecuteResponse>, Error> {
        self.check()?;
        let uploaded = self.upload_missing(&fwd.blobs).await?;
        tracing::debug!(action = %fwd.action, uploaded, "inputs on the upstream");
        let req = reapi::ExecuteRequest {
            instance_name: self.instance.clone(),
            skip_cache_lookup: fwd.request.skip_cache_lookup,
            action_digest: Some(fwd.action.to_proto()),
            execution_policy: fwd.request.execution_policy,
            results_cache_policy: fwd.request.results_cache_policy,
            digest_function: super::SHA256,
            inline_stdout: false,
            inline_stderr: false,
            inline_output_files: vec![],
        };
        self.stats.remote_executions.fetch_add(1, Ordering::Relaxed);
        let mut name = String::new();
        let mut attempt = 0;
        let response = loop {
            let stream = if name.is_empty() {
                let req = req.clone();
                self.open_stream("Execute", |ch| async move {
                    ExecutionClient::new(ch)
                        .max_decoding_message_size(MAX_MESSAGE)
                        .execute(req)
                        .await
                })
                .await
            } else {
                let req = reapi::WaitExecutionRequest { name: name.clone() };
                self.open_stream("WaitExecution", |ch| async move {
                    ExecutionClient::new(ch)
                        .max_decoding_message_size(MAX_MESSAGE)
                        .wait_execution(req)
                        .await
                })
                .await
            };
            let method = if name.is_empty() {
                "Execute"
            } else {
                "WaitExecution"
            };
            let ended = match stream {
                Ok(mut stream) => {
                    tokio::select! {
                        r = self.follow(op, &mut stream, &mut name) => r,
                        _ = op.cancelled() => {
                            self.cancel_remote(&name).await;
                            return Ok(None);
                        }
                    }
                }
                Err(e) => Err(e),
            };
            match ended {
                Ok(Some(done)) => break done,
                // The stream ended without a result, or broke: reattach to
                // the operation by name, if we have one.
                Ok(None) | Err(_) if !name.is_empty() && attempt < REATTACH => {
                    attempt += 1;
                    tracing::info!(operation = %name, "upstream {method} stream ended early; reattaching");
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
        };
        let mut response = match response {
            OpResult::Response(any) => reapi::ExecuteResponse::decode(any.value.as_slice())
                .map_err(|e| Error::Protocol {
                    endpoint: self.endpoint.clone(),
                    reason: format!("operation {name}: not an ExecuteResponse: {e}"),
                })?,
            OpResult::Error(status) => {
                // The operation itself failed (not the action): report it
                // as the upstream's answer.
                return Ok(Some(reapi::ExecuteResponse {
                    message: format!("upstream {}: {}", self.endpoint, status.message),
                    status: Some(status),
                    ..Default::default()
                }));
            }
        };
        if let Some(result) = response.result.take() {
            if let Err(why) = self.fetch_result_blobs(&result).await? {
                return Err(Error::Protocol {
                    endpoint: self.endpoint.clone(),
                    reason: format!("the result of {} is unusable: {why}", fwd.action),
                });
            }
            let ok = response.status.as_ref().is_none_or(|s| s.code == 0);
            let result = if ok && result.exit_code == 0 && !fwd.do_not_cache {
                let ac = Arc::clone(&self.action_cache);
                let action = fwd.action;
                match tokio::task::spawn_blocking(move || ac.put(&action, result, Scope::Shared))
                    .await
                {
                    Ok(Ok(stored)) => stored,
                    Ok(Err(action_cache::Error::Store(e))) => return Err(e.into()),
                    Ok(Err(e)) => {
                        return Err(Error::Protocol {
                            endpoint: self.endpoint.clone(),
                            reason: format!("the result of {}: {e}", fwd.action),
                        });
                    }
                    Err(e) => return Err(Error::Task(e)),
                }
            } else {
                result
            };
            response.result = Some(result);
        }
        // The operation name and server logs of the upstream are theirs;
        // the message says where the action ran.
        if response.message.is_empty() {
            response.message = format!("executed by upstream {}", self.endpoint);
        }
        Ok(Some(response))
    }

    /// Opens a server stream: the health check and the timeout apply to
    /// getting the stream, not to its (possibly long) life, which HTTP/2
    /// keepalive watches instead.
    async fn open_stream<F, Fut>(
        &self,
        method: &'static str,
        f: F,
    ) -> Result<tonic::Streaming<longrunning::Operation>, Error>
    where
        F: FnOnce(super::Ch) -> Fut,
        Fut: std::future::Future<
                Output = Result<
                    tonic::Response<tonic::Streaming<longrunning::Operation>>,
                    tonic::Status,
                >,
            >,
    {
        self.check()?;
        match tokio::time::timeout(self.timeout, f(self.channel.clone())).await {
            Ok(Ok(r)) => {
                self.succeeded();
                Ok(r.into_inner())
            }
            Ok(Err(s)) => Err(self.failed(method, s)),
            Err(_) => Err(self.failed(method, self.no_answer())),
        }
    }

    /// Relays stages until the operation is done. `Ok(None)` when the
    /// stream ended first.
    async fn follow(
        &self,
        op: &Run,
        stream: &mut tonic::Streaming<longrunning::Operation>,
        name: &mut String,
    ) -> Result<Option<OpResult>, Error> {
        loop {
            let msg = match stream.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(None),
                Err(s) => return Err(self.failed("Execute", s)),
            };
            if name.is_empty() {
                *name = msg.name.clone();
            }
            if let Some(meta) = &msg.metadata
                && let Ok(meta) = reapi::ExecuteOperationMetadata::decode(meta.value.as_slice())
            {
                if let Ok(stage @ (Stage::Queued | Stage::Executing)) = Stage::try_from(meta.stage)
                {
                    op.set_stage(stage);
                }
            }
            if msg.done {
                return match msg.result {
                    Some(r) => Ok(Some(r)),
                    None => Err(Error::Protocol {
                        endpoint: self.endpoint.clone(),
                        reason: format!("operation {} is done without a result", msg.name),
                    }),
                };
            }
        }
    }

    /// Best effort: the client cancelled, so stop the upstream's work too.
    async fn cancel_remote(&self, name: &str) {
        if name.is_empty() {
            return;
        }
        let req = longrunning::CancelOperationRequest {
            name: name.to_owned(),
        };
        if let Err(e) = self
            .call("CancelOperation", |ch| async move {
                OperationsClient::new(ch).cancel_operation(req).await
            })
            .await
        {
            tracing::info!(
                operation = name,
                "cannot cancel the upstream operation: {e}"
            );
        }
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
