//! The steps of one run, from the Execute request to its response:
//! load and place the action, look it up in the action cache, resolve
//! and pin its inputs, forward it or run it here, keep its result. The
//! pure steps (the responses, how a run is counted) are unit-tested in
//! `tests.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::super::action::{self, Loaded};
use super::super::inputs;
use super::super::placement::{self, Offer, Placement};
use super::super::result;
use super::super::run::{CancelReason, Run};
use super::{Error, Executor, Local, blocking, routing};
use crate::action_cache::{Inline, Partition, Scope};
use crate::digest::Digest;
use crate::proto::reapi;
use crate::sandbox::RootMode;
use crate::trust::Caller;
use crate::upstream::{self, execute::Forward, execute::Reason};

/// An action checked and placed, before the cache lookup: what
/// [`Executor::prepare`] found.
struct Prepared {
    loaded: Loaded,
    timeout: Duration,
    partition: Partition,
    root: RootMode,
    /// Where it would run here; an error if it cannot (the upstream may).
    placement: Result<Placement, Error>,
    /// Limits asked for that this host cannot enforce.
    warnings: Vec<String>,
    /// Why it goes to the upstream, if it does.
    route: Option<Reason>,
}

impl Executor {
    pub(super) async fn run(
        &self,
        run: &Run,
        caller: &Caller,
        action: Digest,
        req: &reapi::ExecuteRequest,
    ) -> reapi::ExecuteResponse {
        let started = std::time::Instant::now();
        let outcome = self.run_inner(run, caller, action, req).await;
        let wall_ms = started.elapsed().as_millis() as u64;
        let short = &action.hex()[..12];
        let argv0 = run.argv0().unwrap_or_default();
        match outcome {
            Ok(response) => {
                let outcome = outcome_of(&response);
                crate::metrics::get().execution(outcome);
                let exit_code = response.result.as_ref().map_or(-1, |r| r.exit_code);
                let cached = response.cached_result;
                tracing::info!(user = %caller, action = %short, argv0 = %argv0, exit_code,
                    wall_ms, cached, "action {outcome}");
                response
            }
            // A cancel is ordinary traffic (a client that got its answer
            // from the cache first), not a failure.
            Err(e @ Error::Cancelled) => {
                crate::metrics::get().execution("cancelled");
                let by = cancelled_by(run.cancel_reason());
                tracing::info!(user = %caller, action = %short, argv0 = %argv0, wall_ms,
                    "action cancelled {by}");
                failed(&e)
            }
            Err(e) => {
                crate::metrics::get().execution("error");
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(user = %caller, action = %short, argv0 = %argv0, wall_ms,
                    "action not run: {e}");
                failed(&e)
            }
        }
    }

    /// One run's steps, from the Execute request to its response.
    async fn run_inner(
        &self,
        run: &Run,
        caller: &Caller,
        action_digest: Digest,
        req: &reapi::ExecuteRequest,
    ) -> Result<reapi::ExecuteResponse, Error> {
        let queued_at = SystemTime::now();
        let inline = Inline {
            stdout: req.inline_stdout,
            stderr: req.inline_stderr,
            files: &req.inline_output_files,
        };
        // Everything about the action is checked before it waits in line.
        let job = self.prepare(run, action_digest, req).await?;
        if let Some(hit) = self.lookup(&job, action_digest, caller, req, &inline).await {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(cache_hit(hit));
        }
        let tree = self.resolve(job.loaded.input_root).await?;
        if job.root == RootMode::Input {
            action::input_root_fits(&tree)?;
        }
        // Every blob the action needs, kept from eviction while it runs.
        let needed = needed_blobs(&tree, action_digest, &job.loaded);
        let _pins = self.store.pin(needed.iter().copied());
        if let Some(reason) = job.route {
            let forward = Forward {
                action: action_digest,
                blobs: needed,
                request: req,
                do_not_cache: job.loaded.action.do_not_cache,
                timeout: job.timeout,
            };
            let runs_here = job.placement.is_ok();
            if let Some(response) = self
                .forward(run, reason, forward, runs_here, &inline)
                .await?
            {
                return Ok(response);
            }
        }
        let (result, timed_out) = self
            .run_here(Local {
                run,
                caller,
                action_digest,
                command: &job.loaded.command,
                tree,
                placement: job.placement?,
                timeout: job.timeout,
                queued_at,
                warnings: &job.warnings,
            })
            .await?;
        let partition = job.partition;
        let loaded = &job.loaded;
        let mut result = self
            .keep(run, partition, action_digest, loaded, result, timed_out)
            .await?;
        self.action_cache.inline(&mut result, &inline)?;
        let max_file_size = self.settings.max_file_size;
        Ok(ran_here(
            result,
            timed_out,
            job.timeout,
            max_file_size,
            &job.warnings,
        ))
    }

    /// Loads the action and checks everything about it that decides where
    /// it runs: its timeout, instance, root mode, placement and route.
    async fn prepare(
        &self,
        run: &Run,
        action_digest: Digest,
        req: &reapi::ExecuteRequest,
    ) -> Result<Prepared, Error> {
        let loaded = match action::load_cached(&self.store, &action_digest) {
            Some(loaded) => loaded,
            None => self.load(action_digest).await?,
        };
        run.set_argv0(&loaded.command.arguments[0]);
        let (action, command) = (&loaded.action, &loaded.command);
        let timeout = self.timeout(action)?;
        let instance = self.instance(req)?;
        let partition = instance.partition();
        let root =
            super::super::platform::root_mode(action::platform_of(action, command), instance.root)
                .map_err(Error::Platform)?;
        let (placement, warnings) =
            self.check_limits(self.placement(action, command, root), action, command);
        let unsatisfiable = matches!(placement, Err(Error::Unsatisfiable(_)));
        let route = self.route(action, command, unsatisfiable, root, partition)?;
        let placement = routing::placement_for(route, placement)?;
        Ok(Prepared {
            loaded,
            timeout,
            partition,
            root,
            placement,
            warnings,
            route,
        })
    }

    /// The action cache's answer, here or upstream. A do_not_cache action
    /// is never looked up; a lookup that fails is not an answer: the
    /// action runs, as on a miss.
    async fn lookup(
        &self,
        job: &Prepared,
        action_digest: Digest,
        caller: &Caller,
        req: &reapi::ExecuteRequest,
        inline: &Inline<'_>,
    ) -> Option<reapi::ActionResult> {
        if req.skip_cache_lookup || job.loaded.action.do_not_cache {
            return None;
        }
        let kind = crate::lookups::Kind::Execute;
        let cached =
            self.action_cache
                .get_cached(job.partition, &action_digest, caller.uid, inline);
        let hit = match cached {
            Some(hit) => {
                let lookups = self.action_cache.lookups();
                lookups.record(&action_digest, caller.uid, true, kind);
                Ok(Some(hit))
            }
            None => {
                let (ac, up) = (&self.action_cache, self.upstream.as_ref());
                let inline = inline.clone();
                upstream::lookup(
                    ac,
                    up,
                    job.partition,
                    action_digest,
                    caller.uid,
                    inline,
                    kind,
                )
                .await
            }
        };
        hit.unwrap_or_else(|e| {
            tracing::warn!(action = %action_digest, "action cache lookup failed, running the action: {e}");
            None
        })
    }

    /// Stores a result our own sandbox produced (trusted for everyone) if
    /// it succeeded in time and may be cached, and pushes it upstream.
    async fn keep(
        &self,
        run: &Run,
        partition: Partition,
        action_digest: Digest,
        loaded: &Loaded,
        result: reapi::ActionResult,
        timed_out: bool,
    ) -> Result<reapi::ActionResult, Error> {
        if result.exit_code != 0 || timed_out || loaded.action.do_not_cache {
            return Ok(result);
        }
        let ac = Arc::clone(&self.action_cache);
        let result =
            blocking(move || ac.put(partition, &action_digest, result, Scope::Shared)).await??;
        run.mark_shared();
        // The upstream's action cache has no partitions: only the default
        // one is shared with it.
        if let Some(up) = self.upstream.as_ref().filter(|_| partition.is_default()) {
            let blobs = vec![action_digest, loaded.command_digest];
            up.push(action_digest, blobs, &result);
        }
        Ok(result)
    }

    pub(in crate::execution) fn timeout(&self, action: &reapi::Action) -> Result<Duration, Error> {
        let (default, max) = (self.settings.default_timeout, self.settings.max_timeout);
        placement::timeout(action.timeout.as_ref(), default, max)
    }

    pub(in crate::execution) fn placement(
        &self,
        action: &reapi::Action,
        command: &reapi::Command,
        root: RootMode,
    ) -> Result<Placement, Error> {
        let platform = action::platform_of(action, command);
        let require = self.settings.require_toolchain;
        let toolchain = if placement::needs_toolchain(platform, require, root) {
            tokio::task::block_in_place(|| self.toolchain.wait().digest.clone())
        } else {
            String::new()
        };
        let offer = Offer {
            limits: &self.settings.limits,
            allow_host_network: self.settings.allow_host_network,
            platform: &self.settings.platform,
            toolchain: &toolchain,
            require_toolchain: require,
        };
        Placement::from_platform(&offer, platform, root)
    }
}

/// Every blob the action needs: its inputs, Action, Command and root.
fn needed_blobs(tree: &inputs::InputTree, action: Digest, loaded: &Loaded) -> Vec<Digest> {
    let own = [action, loaded.command_digest, loaded.input_root];
    tree.digests().into_iter().chain(own).collect()
}

/// The response of an action cache hit.
fn cache_hit(result: reapi::ActionResult) -> reapi::ExecuteResponse {
    reapi::ExecuteResponse {
        result: Some(result),
        cached_result: true,
        status: Some(Default::default()),
        ..Default::default()
    }
}

/// The response of an action run here: DEADLINE_EXCEEDED (with what it
/// produced) when it timed out, and a message about truncated streams and
/// unenforced limits.
fn ran_here(
    result: reapi::ActionResult,
    timed_out: bool,
    timeout: Duration,
    max_file_size: u64,
    warnings: &[String],
) -> reapi::ExecuteResponse {
    let status = if timed_out {
        crate::status::deadline_exceeded(&format!(
            "the action ran longer than its timeout of {timeout:?}"
        ))
    } else {
        Default::default()
    };
    reapi::ExecuteResponse {
        message: result::message(result.exit_code, max_file_size, warnings),
        result: Some(result),
        cached_result: false,
        status: Some(status),
        ..Default::default()
    }
}

/// How a response is counted and logged.
fn outcome_of(response: &reapi::ExecuteResponse) -> &'static str {
    let exit_code = response.result.as_ref().map_or(-1, |r| r.exit_code);
    let timed_out = response
        .status
        .as_ref()
        .is_some_and(|s| s.code == tonic::Code::DeadlineExceeded as i32);
    match (response.cached_result, timed_out, exit_code) {
        (true, _, _) => "cached",
        (_, true, _) => "timed_out",
        (_, _, 0) => "succeeded",
        _ => "failed",
    }
}

/// Who stopped a cancelled run, for its log line.
fn cancelled_by(reason: Option<CancelReason>) -> &'static str {
    match reason {
        Some(CancelReason::Submitter) => "by its client",
        Some(CancelReason::Trusted) => "by a trusted user",
        Some(CancelReason::Unwatched) => "because nobody watched it",
        Some(CancelReason::Shutdown) => "because the daemon is stopping",
        None => "",
    }
}

/// The response of a run that produced no result.
pub(super) fn failed(e: &Error) -> reapi::ExecuteResponse {
    reapi::ExecuteResponse {
        status: Some(crate::status::execute_status(e)),
        message: e.to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
