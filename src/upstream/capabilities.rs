//! What the upstream offers, from its GetCapabilities: the batch limit,
//! and whether it executes actions at all. Asked at start-up and each time
//! it is back after being down (`probe_loop`), or by the first Execute
//! that comes before the start-up answer. An upstream whose GetCapabilities
//! says `exec_enabled = false` for our instance (a cache-only server), or
//! refuses our instance name, does not execute; neither does one whose
//! Execute answers UNIMPLEMENTED or is not gRPC (see
//! `settings::grpc_or_status`).

use std::time::{Duration, Instant};

use tonic::Code;

use super::{Error, Upstream};
use crate::proto::reapi;

/// Whether the upstream runs actions, as far as it has told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executes {
    /// GetCapabilities has not answered yet, or does not exist there: the
    /// answer to the first Execute decides.
    Unknown,
    Yes,
    /// Why not: what GetCapabilities or Execute answered.
    No(String),
}

impl Upstream {
    /// Asks GetCapabilities: at start-up (to learn what the upstream
    /// offers) and, while it is down, at each retry.
    async fn probe(&self) -> Result<reapi::ServerCapabilities, Error> {
        let req = reapi::GetCapabilitiesRequest {
            instance_name: self.instance.clone(),
        };
        self.call("GetCapabilities", |ch| async move {
            reapi::capabilities_client::CapabilitiesClient::new(ch)
                .get_capabilities(req)
                .await
        })
        .await
    }

    pub(super) async fn probe_loop(&self) {
        loop {
            // Probe while capabilities are unknown or the upstream is down.
            let due = {
                let h = self.lock_health();
                match h.down() {
                    Some(d) => Some(d.retry_at),
                    None if self.lock(&self.capabilities).is_none() => Some(Instant::now()),
                    None => None,
                }
            };
            match due {
                Some(at) => {
                    tokio::time::sleep_until(at.into()).await;
                    let _ = self.learn().await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Asks GetCapabilities and takes in the answer. Fails only when the
    /// upstream did not answer.
    async fn learn(&self) -> Result<(), Error> {
        match self.probe().await {
            Ok(caps) => self.learned(caps),
            Err(e) if e.is_unavailable() => return Err(e),
            Err(e) => {
                // It answers, but not GetCapabilities: assume the REAPI
                // defaults for the cache. A server without the method may
                // still execute (its Execute's answer decides); one that
                // refuses our instance name there serves us nothing.
                tracing::warn!("upstream {}: {e}", self.endpoint);
                *self.lock(&self.capabilities) = Some(Default::default());
                if !matches!(
                    e,
                    Error::Call {
                        code: Code::Unimplemented,
                        ..
                    }
                ) {
                    self.set_executes(Executes::No(format!(
                        "GetCapabilities for instance {:?} fails: {e}",
                        self.instance
                    )));
                }
            }
        }
        Ok(())
    }

    fn learned(&self, caps: reapi::ServerCapabilities) {
        let api = |v: &Option<crate::proto::build::bazel::semver::SemVer>| {
            v.as_ref()
                .map(|v| format!("{}.{}", v.major, v.minor))
                .unwrap_or_else(|| "?".into())
        };
        let exec = caps
            .execution_capabilities
            .as_ref()
            .is_some_and(|e| e.exec_enabled);
        let line = format!(
            "REAPI {}–{}, execution {}",
            api(&caps.low_api_version),
            api(&caps.high_api_version),
            if exec { "enabled" } else { "not offered" }
        );
        if self.lock(&self.capabilities).replace(caps).is_none() {
            tracing::info!(upstream = %self.endpoint, "upstream {} answers: {line}", self.endpoint);
        }
        self.set_executes(if exec {
            Executes::Yes
        } else {
            Executes::No(format!(
                "its GetCapabilities for instance {:?} says exec_enabled = false",
                self.instance
            ))
        });
    }

    /// Whether the upstream runs actions; logged when that changes, since
    /// with `remote-execution` it decides where routed actions go.
    pub(super) fn set_executes(&self, now: Executes) {
        let before = std::mem::replace(&mut *self.lock(&self.executes), now.clone());
        if before == now || !self.policy.remote_execution {
            return;
        }
        match &now {
            Executes::No(why) => tracing::warn!(
                upstream = %self.endpoint,
                "upstream {} does not execute actions ({why}): actions routed to it run here where they can (local-fallback), or fail with UNAVAILABLE",
                self.endpoint
            ),
            Executes::Yes => tracing::info!(
                upstream = %self.endpoint,
                "upstream {} executes actions",
                self.endpoint
            ),
            Executes::Unknown => {}
        }
    }

    /// Whether the upstream runs actions. Asks GetCapabilities first if
    /// nothing is known yet (an Execute that came before the start-up
    /// probe's answer).
    pub async fn executes(&self) -> Result<Executes, Error> {
        if self.lock(&self.capabilities).is_none() {
            let _one = self.learning.lock().await;
            if self.lock(&self.capabilities).is_none() {
                self.learn().await?;
            }
        }
        Ok(self.lock(&self.executes).clone())
    }
}
