//! The local worker's operation lifecycle: an Execute request starts a
//! run (or follows an identical one), the run goes through its steps
//! (`run_inner`), and its response completes the operations that follow
//! it; cancels and a reaper of unwatched runs stop runs early.
//!
//! - `pipeline`: the steps of one run, from the request to its response;
//! - `routing`: where an action runs, forwarding to the upstream and
//!   fetching what the local store lacks;
//! - `local`: running an action here, from the fair queue to its outputs;
//! - `settings`: what the executor takes from the configuration.

mod local;
mod pipeline;
mod routing;
mod settings;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;

pub use super::error::Error;
pub use super::placement::{
    PROP_CPU_MAX, PROP_MEMORY_MAX, PROP_NETWORK, PROP_PIDS_MAX, PROP_ROOT, PROP_TOOLCHAIN,
};
pub(super) use local::Local;
pub use settings::{Counters, Settings};

use super::inputs;
use super::operation::{Operation, Registry};
use super::run::{CancelReason, Run};
use super::uids::Ids;
use crate::action_cache::ActionCache;
use crate::activity::Activity;
use crate::cas::{self, Store};
use crate::cgroup;
use crate::config::Config;
use crate::digest::Digest;
use crate::instance::{Instance, Instances};
use crate::proto::reapi;
use crate::sandbox::{self, RootMode};
use crate::scheduler::{self, Scheduler};
use crate::trust::Caller;
use crate::upstream::Upstream;

pub struct Executor {
    store: Arc<Store>,
    /// Reads that fall back to the upstream.
    blobs: crate::cas::tiered::Tiered,
    action_cache: Arc<ActionCache>,
    pub scheduler: Arc<Scheduler>,
    pub registry: Arc<Registry>,
    cgroups: Option<cgroup::Manager>,
    ids: Ids,
    settings: Settings,
    exec_dir: PathBuf,
    activity: Arc<Activity>,
    next_id: AtomicU64,
    root: bool,
    pub counters: Counters,
    upstream: Option<Arc<Upstream>>,
    /// What the sandbox probe found at start (`status` shows it).
    pub protections: sandbox::Protections,
    /// The read-only paths in effect and their identity.
    pub toolchain: super::toolchain::Identity,
}

impl Executor {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        action_cache: Arc<ActionCache>,
        cgroups: Option<cgroup::Manager>,
        activity: Arc<Activity>,
        upstream: Option<Arc<Upstream>>,
    ) -> Result<Arc<Executor>, cas::Error> {
        let root = nix::unistd::geteuid().is_root();
        let ids = Ids::for_daemon(
            root,
            config.sandbox.uid_range_start,
            config.sandbox.uid_range_count,
        );
        let exec_dir = fresh_exec_dir(&store)?;
        let instances = Instances::from_config(config);
        for line in instances.describe() {
            tracing::info!("{line}");
        }
        let read_only_paths = super::toolchain::read_only_paths(&config.sandbox.read_only_paths());
        let toolchain = super::toolchain::Identity::start(
            read_only_paths.clone(),
            config.execution.require_toolchain,
        );
        let rlimits = sandbox::rlimits::for_config(&config.sandbox, root);
        let protections = match ids.take() {
            Some(lease) => {
                let probe = |paths, root| {
                    sandbox::probe::at_start(
                        &exec_dir,
                        paths,
                        (lease.id, lease.gid),
                        (rlimits.clone(), config.sandbox.nice),
                        root,
                    )
                };
                if instances.uses(RootMode::Input) {
                    // Logged; `status` shows the host mode's findings.
                    probe(Vec::new(), RootMode::Input);
                }
                probe(read_only_paths.clone(), RootMode::Host)
            }
            None => sandbox::Protections::default(),
        };
        let caps = scheduler::Caps {
            running_per_user: config.execution.max_running_per_user,
            queued_per_user: config.execution.max_queued_per_user,
        };
        Ok(Arc::new(Executor {
            blobs: crate::cas::tiered::Tiered::new(Arc::clone(&store), upstream.clone()),
            store,
            action_cache,
            scheduler: Scheduler::new(settings::max_concurrent(config, root), caps),
            registry: Arc::new(Registry::default()),
            cgroups,
            ids,
            settings: Settings::from_config(config, instances, read_only_paths, rlimits),
            exec_dir,
            activity,
            next_id: AtomicU64::new(1),
            root,
            counters: Counters::default(),
            upstream,
            protections,
            toolchain,
        }))
    }

    pub fn require_toolchain(&self) -> bool {
        self.settings.require_toolchain
    }

    pub fn repeat(&self) -> u64 {
        self.settings.repeat
    }

    pub(super) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(super) fn action_cache(&self) -> &Arc<ActionCache> {
        &self.action_cache
    }

    pub fn cgroups(&self) -> Option<&cgroup::Manager> {
        self.cgroups.as_ref()
    }

    /// The host paths every action sees read-only.
    pub fn read_only_paths(&self) -> &[PathBuf] {
        &self.settings.read_only_paths
    }

    /// Cancels every run that has not ended, which stops its action
    /// (SIGTERM, the grace period, then a kill of the whole tree). Used when
    /// the daemon stops.
    pub fn cancel_all(&self) -> usize {
        let runs = self.registry.active_runs();
        for run in &runs {
            run.cancel(CancelReason::Shutdown);
        }
        runs.len()
    }

    /// The grace period between SIGTERM and the kill.
    pub fn kill_grace(&self) -> Duration {
        self.settings.kill_grace
    }

    /// What the request's instance name selects (the service has checked
    /// that it is served).
    fn instance(&self, req: &reapi::ExecuteRequest) -> Result<Instance, Error> {
        self.settings
            .instances
            .get(&req.instance_name)
            .ok_or_else(|| Error::NotServed(req.instance_name.clone()))
    }

    /// Starts an execution of an action for `caller`, or follows an
    /// identical one already under way, and returns the caller's own
    /// operation. `action` has been validated by the caller.
    pub async fn execute(
        self: &Arc<Self>,
        caller: Caller,
        action: Digest,
        req: reapi::ExecuteRequest,
    ) -> Arc<Operation> {
        // Runs are joined by action digest alone, which names no
        // partition: only the default partition's runs are joined, so that
        // an instance never follows a run made for another partition.
        let joinable = self
            .instance(&req)
            .is_ok_and(|i| i.partition().is_default())
            && self.joinable(action).await;
        let (op, run) = self.registry.submit(caller, action, req, joinable);
        if let Some(run) = run {
            self.start(run, Arc::clone(&op));
        }
        op
    }

    /// Whether identical requests may share a run of `action`: its Action
    /// is in the store and is not `do_not_cache` (REAPI: such actions are
    /// never merged with other executions). An Action not here yet is not
    /// shared either; its run fetches it or reports it missing.
    async fn joinable(&self, action: Digest) -> bool {
        if action.size() > inputs::MAX_MESSAGE_SIZE {
            return false;
        }
        let store = Arc::clone(&self.store);
        let bytes = blocking(move || store.read(&action)).await;
        matches!(bytes, Ok(Ok(Some(b)))
            if reapi::Action::decode(b.as_slice()).is_ok_and(|a| !a.do_not_cache))
    }

    /// Runs `run`, which `op` submitted, in the background.
    fn start(self: &Arc<Self>, run: Arc<Run>, op: Arc<Operation>) {
        let this = Arc::clone(self);
        let busy = self.activity.busy();
        tokio::spawn(async move {
            let response = this.run(&run, &op.caller, run.action, &op.request).await;
            this.registry.run_finished(&run);
            // Checks compare with the default partition's entries.
            let stored = run.is_shared()
                && !response.cached_result
                && this
                    .instance(&op.request)
                    .is_ok_and(|i| i.partition().is_default());
            this.finish(&run, response);
            if stored {
                this.maybe_repeat(run.action);
            }
            drop(busy);
        });
    }

    /// With `execution.repeat = N`, checks one in N results our sandbox
    /// stored by running the action again in the background.
    fn maybe_repeat(self: &Arc<Self>, action: Digest) {
        let n = self.settings.repeat;
        if n == 0 || self.counters.stored.fetch_add(1, Ordering::Relaxed) % n != 0 {
            return;
        }
        let this = Arc::clone(self);
        let busy = self.activity.busy();
        tokio::spawn(async move {
            let caller = super::check::daemon_caller();
            super::check::check(&this, &caller, action).await;
            drop(busy);
        });
    }

    /// Gives a finished run's response to its followers. A follower of the
    /// submitting user gets it as it is. A follower of another user gets it
    /// only if the result is in the shared action cache (what it could have
    /// had from there anyway), or if the run was stopped for everyone (by a
    /// trusted user, for want of watchers, by a stop); otherwise the action
    /// runs again for that follower alone. A failed run of one user is never
    /// shown to another.
    fn finish(self: &Arc<Self>, run: &Arc<Run>, response: reapi::ExecuteResponse) {
        let for_everyone = run.is_shared()
            || matches!(
                run.cancel_reason(),
                Some(CancelReason::Trusted | CancelReason::Unwatched | CancelReason::Shutdown)
            );
        for op in run.followers() {
            if op.is_done() {
                continue;
            }
            if for_everyone || op.owner() == run.submitter {
                self.registry.complete(&op, response.clone());
            } else {
                let rerun = self.registry.rerun(&op);
                self.start(rerun, op);
            }
        }
    }

    /// A client's CancelOperation of `op`. The submitter's cancel, or a
    /// trusted user's, stops the run; a follower's only ends its own
    /// operation, and stops the run only if no other follower is left.
    pub fn cancel(self: &Arc<Self>, op: &Arc<Operation>, caller: &Caller) {
        let run = op.run();
        if op.is_done() || run.is_cancelled() {
            return;
        }
        let own = caller.uid.is_some() && caller.uid == op.owner();
        if op.is_submitter() && own {
            run.cancel(CancelReason::Submitter);
        } else if caller.trusted && !own {
            tracing::info!(%caller, action = %run.action, "an action cancelled by a trusted user");
            run.cancel(CancelReason::Trusted);
        } else {
            if self
                .registry
                .detach(op, pipeline::failed(&Error::Cancelled))
                == 0
            {
                run.cancel(CancelReason::Unwatched);
            }
        }
    }

    /// Cancels the runs that none of their followers has watched for
    /// `timeout`: a client that went away does not keep its actions queued
    /// or running. Runs until the daemon stops.
    pub fn reap_unwatched(self: &Arc<Self>, timeout: Duration) {
        if timeout.is_zero() {
            return;
        }
        let this = Arc::downgrade(self);
        let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                let Some(this) = this.upgrade() else { return };
                for run in this.registry.active_runs() {
                    let followers: Vec<_> = run
                        .followers()
                        .into_iter()
                        .filter(|op| !op.is_done())
                        .collect();
                    if !followers.is_empty()
                        && followers
                            .iter()
                            .all(|op| op.unwatched_for().is_some_and(|d| d >= timeout))
                    {
                        tracing::info!(action = %run.action,
                            "cancelling an action nobody has watched for {}s",
                            timeout.as_secs_f64());
                        run.cancel(CancelReason::Unwatched);
                    }
                }
            }
        });
    }
}

/// The directory of running actions' scratch space, emptied of what a
/// crash left there. Only the daemon may reach running actions (the
/// helper enters each exec root before it switches to the action's uid).
fn fresh_exec_dir(store: &Store) -> Result<PathBuf, cas::Error> {
    use std::os::unix::fs::PermissionsExt;
    let exec_dir = store.root().join("exec");
    if exec_dir.exists() {
        let _ = std::fs::remove_dir_all(&exec_dir);
    }
    std::fs::create_dir_all(&exec_dir).map_err(cas::Error::io("create directory", &exec_dir))?;
    std::fs::set_permissions(&exec_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(cas::Error::io("chmod", &exec_dir))?;
    Ok(exec_dir)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    Ok(tokio::task::spawn_blocking(f).await?)
}
