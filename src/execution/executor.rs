//! The local worker: takes an Execute request through cache lookup,
//! validation, the fair queue, input materialization, the sandbox and
//! output ingestion, and completes its operation with an ExecuteResponse.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prost::Message;

pub use super::error::Error;
pub use super::placement::{
    PROP_CPU_MAX, PROP_MEMORY_MAX, PROP_NETWORK, PROP_PIDS_MAX, PROP_ROOT, PROP_TOOLCHAIN,
};

use super::action::{self, Loaded};
use super::action_dir::ActionDir;
use super::disk_limit::DiskLimit;
use super::inputs::{self, InputError, Materialize};
use super::operation::{Operation, Registry};
use super::outputs::{self, OutputError};
use super::placement::{Offer, Placement};
use super::result;
use super::run::{CancelReason, Run};
use super::supervise;
use super::uids::Ids;
use crate::action_cache::{ActionCache, Inline, Partition, Scope};
use crate::cas::{self, Store};
use crate::cgroup::{self, ActionCgroup};
use crate::config::{Config, OneOrMany, PrivateInputs, UnenforceableLimits};
use crate::digest::Digest;
use crate::instance::{Instance, Instances};
use crate::listener::Activity;
use crate::proto::reapi::{self, execution_stage::Value as Stage};
use crate::sandbox::{self, Outcome, RootMode};
use crate::scheduler::{self, Scheduler};
use crate::trust::Caller;
use crate::upstream::{self, Upstream, execute::Forward};

/// Settings taken from the configuration at start-up.
pub struct Settings {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub kill_grace: Duration,
    pub platform: BTreeMap<String, OneOrMany>,
    pub read_only_paths: Vec<PathBuf>,
    pub tmp_size: u64,
    pub allow_host_network: bool,
    pub max_file_size: u64,
    pub max_exec_root_size: u64,
    pub private_inputs: PrivateInputs,
    pub limits: cgroup::Limits,
    pub worker: String,
    /// The served instance names and the root mode each selects.
    pub instances: Instances,
    pub unenforceable_limits: UnenforceableLimits,
    /// The resource limits and nice value of every command.
    pub rlimits: Vec<sandbox::rlimits::Rlimit>,
    pub nice: i32,
    /// The most input files bound read-only one by one.
    pub max_read_only_inputs: usize,
    /// Whether actions must name the toolchain identity.
    pub require_toolchain: bool,
    /// One in this many stored results is checked again (0: none).
    pub repeat: u64,
}

/// Counters for `status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub executed: AtomicU64,
    pub cache_hits: AtomicU64,
    pub failed: AtomicU64,
    /// Determinism checks run, and those whose result differed.
    pub checks: AtomicU64,
    pub mismatches: AtomicU64,
    /// Results stored, to pick one in `repeat` for a background check.
    pub stored: AtomicU64,
}

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
        let mut max = match config.execution.max_concurrent_actions {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        if root {
            max = max.min(config.sandbox.uid_range_count as usize);
        }
        let exec_dir = store.root().join("exec");
        // Scratch space of actions a crash interrupted.
        if exec_dir.exists() {
            let _ = std::fs::remove_dir_all(&exec_dir);
        }
        std::fs::create_dir_all(&exec_dir)
            .map_err(cas::Error::io("create directory", &exec_dir))?;
        // Only the daemon may reach running actions (the helper enters each
        // exec root before it switches to the action's uid).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exec_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(cas::Error::io("chmod", &exec_dir))?;
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
        let c = &config.cgroup;
        let limits = cgroup::Limits {
            memory_max: (c.memory_max.0 > 0).then_some(c.memory_max.0),
            swap_max: Some(c.swap_max.0),
            pids_max: (c.pids_max > 0).then_some(c.pids_max),
            cpu_max: (c.cpu_max > 0.0).then_some(c.cpu_max),
        };
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Arc::new(Executor {
            blobs: crate::cas::tiered::Tiered::new(Arc::clone(&store), upstream.clone()),
            store,
            action_cache,
            scheduler: Scheduler::new(
                max,
                scheduler::Caps {
                    running_per_user: config.execution.max_running_per_user,
                    queued_per_user: config.execution.max_queued_per_user,
                },
            ),
            registry: Arc::new(Registry::default()),
            cgroups,
            ids,
            settings: Settings {
                default_timeout: config.execution.default_timeout.0,
                max_timeout: config.execution.max_timeout.0,
                kill_grace: config.execution.kill_grace.0,
                platform: config.execution.platform.clone(),
                read_only_paths,
                tmp_size: config.sandbox.tmp_size.0,
                allow_host_network: config.sandbox.allow_host_network,
                max_file_size: config.sandbox.max_file_size.0,
                max_exec_root_size: config.sandbox.max_exec_root_size.0,
                private_inputs: config.sandbox.private_inputs,
                limits,
                worker: format!("nativelink-lre@{host}"),
                instances,
                unenforceable_limits: config.cgroup.unenforceable_limits,
                rlimits,
                nice: config.sandbox.nice,
                max_read_only_inputs: config.sandbox.max_read_only_inputs,
                require_toolchain: config.execution.require_toolchain,
                repeat: config.execution.repeat,
            },
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
            .ok_or_else(|| {
                Error::Internal(format!("instance {:?} is not served", req.instance_name))
            })
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
            let cancelled = reapi::ExecuteResponse {
                status: Some(crate::status::execute_status(&Error::Cancelled)),
                message: Error::Cancelled.to_string(),
                ..Default::default()
            };
            if self.registry.detach(op, cancelled) == 0 {
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

    async fn run(
        &self,
        run: &Run,
        caller: &Caller,
        action: Digest,
        req: &reapi::ExecuteRequest,
    ) -> reapi::ExecuteResponse {
        let started = std::time::Instant::now();
        let outcome = self.run_inner(run, caller, action, req).await;
        let elapsed = started.elapsed();
        let short = &action.hex()[..12];
        let argv0 = run.argv0().unwrap_or_default();
        match outcome {
            Ok(response) => {
                let exit_code = response.result.as_ref().map_or(-1, |r| r.exit_code);
                let timed_out = response
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == tonic::Code::DeadlineExceeded as i32);
                let outcome = match (response.cached_result, timed_out, exit_code) {
                    (true, _, _) => "cached",
                    (_, true, _) => "timed_out",
                    (_, _, 0) => "succeeded",
                    _ => "failed",
                };
                crate::metrics::get().execution(outcome);
                tracing::info!(
                    user = %caller,
                    action = %short,
                    argv0 = %argv0,
                    exit_code,
                    wall_ms = elapsed.as_millis() as u64,
                    cached = response.cached_result,
                    "action {outcome}"
                );
                response
            }
            Err(e) => {
                // A cancel is ordinary traffic (a client that got its answer
                // from the cache first), not a failure.
                let cancelled = matches!(e, Error::Cancelled);
                crate::metrics::get().execution(if cancelled { "cancelled" } else { "error" });
                if cancelled {
                    let by = match run.cancel_reason() {
                        Some(CancelReason::Submitter) => "by its client",
                        Some(CancelReason::Trusted) => "by a trusted user",
                        Some(CancelReason::Unwatched) => "because nobody watched it",
                        Some(CancelReason::Shutdown) => "because the daemon is stopping",
                        None => "",
                    };
                    tracing::info!(user = %caller, action = %short, argv0 = %argv0, wall_ms = elapsed.as_millis() as u64, "action cancelled {by}");
                } else {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(user = %caller, action = %short, argv0 = %argv0, wall_ms = elapsed.as_millis() as u64, "action not run: {e}");
                }
                reapi::ExecuteResponse {
                    status: Some(crate::status::execute_status(&e)),
                    message: e.to_string(),
                    ..Default::default()
                }
            }
        }
    }

    async fn run_inner(
        &self,
        run: &Run,
        caller: &Caller,
        action_digest: Digest,
        req: &reapi::ExecuteRequest,
    ) -> Result<reapi::ExecuteResponse, Error> {
        let queued_at = SystemTime::now();
        let inline_files = req.inline_output_files.clone();
        let inline = Inline {
            stdout: req.inline_stdout,
            stderr: req.inline_stderr,
            files: &inline_files,
        };
        // Everything about the action is checked before it waits in line.
        let Loaded {
            action,
            command,
            command_digest,
            input_root,
        } = match action::load_cached(&self.store, &action_digest) {
            Some(loaded) => loaded,
            None => self.load(action_digest).await?,
        };
        run.set_argv0(&command.arguments[0]);
        let timeout = self.timeout(&action)?;
        let instance = self.instance(req)?;
        let partition = instance.partition();
        let root =
            super::platform::root_mode(action::platform_of(&action, &command), instance.root)
                .map_err(Error::Platform)?;
        let (placement, warnings) =
            self.check_limits(self.placement(&action, &command, root), &action, &command);
        let unsatisfiable = matches!(placement, Err(Error::Unsatisfiable(_)));
        let route = self.route(&action, &command, unsatisfiable, root, partition)?;
        // Bad values fail here, wherever the action would run; so does a
        // platform this worker cannot satisfy, unless it goes upstream.
        let placement = match (route, placement) {
            (_, Err(e @ Error::Platform(_))) | (None, Err(e)) => return Err(e),
            (_, p) => p,
        };
        // A do_not_cache action is never looked up, here or upstream.
        if !req.skip_cache_lookup && !action.do_not_cache {
            let cached =
                self.action_cache
                    .get_cached(partition, &action_digest, caller.uid, &inline);
            let hit = match cached {
                Some(hit) => {
                    let kind = crate::lookups::Kind::Execute;
                    let lookups = self.action_cache.lookups();
                    lookups.record(&action_digest, caller.uid, true, kind);
                    Ok(Some(hit))
                }
                None => {
                    upstream::lookup(
                        &self.action_cache,
                        self.upstream.as_ref(),
                        partition,
                        action_digest,
                        caller.uid,
                        inline.clone(),
                        crate::lookups::Kind::Execute,
                    )
                    .await
                }
            }
            // A lookup that fails is not an answer: the action runs, as on
            // a miss.
            .unwrap_or_else(|e| {
                tracing::warn!(action = %action_digest, "action cache lookup failed, running the action: {e}");
                None
            });
            if let Some(result) = hit {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(reapi::ExecuteResponse {
                    result: Some(result),
                    cached_result: true,
                    status: Some(Default::default()),
                    ..Default::default()
                });
            }
        }
        let tree = self.resolve(input_root).await?;
        if root == RootMode::Input {
            action::input_root_fits(&tree)?;
        }
        // Every blob the action needs, kept from eviction while it runs.
        let needed: Vec<Digest> = tree
            .digests()
            .into_iter()
            .chain([action_digest, command_digest, input_root])
            .collect();
        let _pins = self.store.pin(needed.iter().copied());

        if let Some(reason) = route {
            let forward = Forward {
                action: action_digest,
                blobs: needed,
                request: req,
                do_not_cache: action.do_not_cache,
                timeout,
            };
            if let Some(response) = self
                .forward(run, reason, forward, placement.is_ok(), &inline)
                .await?
            {
                return Ok(response);
            }
        }
        let placement = placement?;
        let (mut result, timed_out) = self
            .run_here(Local {
                run,
                caller,
                action_digest,
                command: &command,
                tree,
                placement,
                timeout,
                queued_at,
                warnings: &warnings,
            })
            .await?;
        let exit_code = result.exit_code;
        if exit_code == 0 && !timed_out && !action.do_not_cache {
            // Our own sandbox produced it: trusted for everyone.
            let ac = Arc::clone(&self.action_cache);
            let r = result.clone();
            result =
                blocking(move || ac.put(partition, &action_digest, r, Scope::Shared)).await??;
            run.mark_shared();
            // The upstream's action cache has no partitions: only the
            // default one is shared with it.
            if let Some(up) = self.upstream.as_ref().filter(|_| partition.is_default()) {
                up.push(action_digest, vec![action_digest, command_digest], &result);
            }
        }
        self.action_cache.inline(&mut result, &inline)?;
        let status = if timed_out {
            crate::status::deadline_exceeded(&format!(
                "the action ran longer than its timeout of {timeout:?}"
            ))
        } else {
            Default::default()
        };
        Ok(reapi::ExecuteResponse {
            result: Some(result),
            cached_result: false,
            status: Some(status),
            message: result::message(exit_code, self.settings.max_file_size, &warnings),
            ..Default::default()
        })
    }

    /// Runs an action in the sandbox here: waits for a slot, lays out its
    /// inputs, runs it and takes its outputs into the store. Returns the
    /// result and whether it timed out; storing it is the caller's choice
    /// (a determinism check never does).
    pub(super) async fn run_here(
        &self,
        job: Local<'_>,
    ) -> Result<(reapi::ActionResult, bool), Error> {
        let Local {
            run,
            caller,
            action_digest,
            command,
            tree,
            placement,
            timeout,
            queued_at,
            warnings,
        } = job;
        run.set_stage(Stage::Queued);
        let queued = std::time::Instant::now();
        let _permit = tokio::select! {
            permit = self.scheduler.acquire(caller.uid) => permit?,
            _ = run.cancelled() => return Err(Error::Cancelled),
        };
        crate::metrics::get()
            .queue_wait_seconds
            .observe(queued.elapsed().as_secs_f64());
        run.set_stage(Stage::Executing);
        let mut timeline = result::Timeline::starting(queued_at);
        timeline.worker_start = SystemTime::now();
        let lease = self
            .ids
            .take()
            .ok_or_else(|| Error::Internal("no free uid in the sandbox uid range".into()))?;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dir = ActionDir::create(self.exec_dir.join(n.to_string()))?;
        let owner = self.root.then_some((lease.id, lease.gid));
        dir.make_layers(owner)?;
        // Outputs enter the store under a new name for their inode only when
        // nothing but the (then dead) action could ever have opened them:
        // as root, the exec root is reachable by no other uid, and without
        // the host network the action had no way to pass a descriptor out.
        // Otherwise (a per-user daemon, whose owner's other processes reach
        // the exec root; the host network) they are copied.
        let how = if self.root && !placement.host_network {
            cas::Ingest::Link {
                take_ownership: true,
            }
        } else {
            cas::Ingest::Copy
        };

        timeline.input_fetch_start = SystemTime::now();
        let tree = Arc::new(tree);
        let input_bytes = self
            .lay_out_inputs(&dir, Arc::clone(&tree), command, caller, owner)
            .await?;
        timeline.input_fetch_done = SystemTime::now();

        let cg =
            match &self.cgroups {
                Some(m) => Some(m.create(&n.to_string(), &placement.limits).map_err(|e| {
                    Error::Sandbox(format!("cannot create the action's cgroup: {e}"))
                })?),
                None => None,
            };
        let read_only_inputs = self.read_only_inputs(&tree, command, action_digest);
        let spec = sandbox::Spec {
            args: command.arguments.clone(),
            env: command
                .environment_variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone()))
                .collect(),
            working_dir: command.working_directory.clone(),
            exec_root: dir.exec_root(),
            // The exec root is an overlay that names no host path.
            exec_overlay: true,
            read_only_inputs,
            root: placement.root,
            read_only_paths: match placement.root {
                RootMode::Host => self.settings.read_only_paths.clone(),
                RootMode::Input => Vec::new(),
            },
            tmp_size: self.settings.tmp_size,
            host_uid: lease.id,
            host_gid: lease.gid,
            host_network: placement.host_network,
            // Without the pids controller, a per-uid process limit stands in
            // for pids.max; only as root, where the uid is the action's own.
            nproc_limit: placement.limits.pids_max.filter(|_| {
                self.root && !self.cgroups.as_ref().is_some_and(|m| m.controllers().pids)
            }),
            cgroup_procs: cg.as_ref().map(ActionCgroup::procs_file),
            rlimits: self.settings.rlimits.clone(),
            nice: self.settings.nice,
            result_path: dir.path.join("result.json"),
            probe: false,
        };
        timeline.execution_start = SystemTime::now();
        let spawned_ns = sandbox::monotonic_ns();
        let limit = DiskLimit::new(
            dir.exec_root(),
            self.settings.max_exec_root_size,
            input_bytes,
        );
        let (end, mut usage) = supervise::supervise(
            run,
            &spec,
            &dir,
            cg,
            supervise::Bounds {
                timeout,
                limit: &limit,
                kill_grace: self.settings.kill_grace,
            },
        )
        .await?;
        timeline.execution_done = SystemTime::now();
        let (report, timed_out) = end.into_report(&limit)?;
        supervise::account(&mut usage, &report, spawned_ns);
        usage.warnings = warnings.to_vec();
        let outcome = report.outcome;

        timeline.upload_start = SystemTime::now();
        let (store, exec_root, path) = (Arc::clone(&self.store), dir.exec_root(), dir.path.clone());
        let command2 = command.clone();
        let user = caller.uid;
        let exit_code = outcome.exit_code();
        let produced = blocking(move || -> Result<_, OutputError> {
            Ok(result::Produced {
                outputs: outputs::collect(&store, &exec_root, &command2, how, user)?,
                stdout: outputs::ingest_stream(&store, &path.join("stdout"), how, user)?,
                stderr: outputs::ingest_stream(&store, &path.join("stderr"), how, user)?,
                exit_code,
            })
        })
        .await??;
        timeline.upload_done = SystemTime::now();
        if let Outcome::HelperKilled(why) = &outcome {
            tracing::info!(action = %action_digest, "sandbox ended abnormally: {why}");
        }
        let result = result::action_result(produced, &self.settings.worker, &timeline, &usage);
        self.counters.executed.fetch_add(1, Ordering::Relaxed);
        Ok((result, timed_out))
    }

    /// Lays out the inputs in `dir`'s exec root (hard links to the store,
    /// or copies), creates the outputs' parents (owned by `owner`) and
    /// fixes the times. Returns the bytes the inputs add to the file
    /// system (for `sandbox.max-exec-root-size`).
    async fn lay_out_inputs(
        &self,
        dir: &ActionDir,
        tree: Arc<inputs::InputTree>,
        command: &reapi::Command,
        caller: &Caller,
        owner: Option<(u32, u32)>,
    ) -> Result<u64, Error> {
        let (store, exec_root, command2) =
            (Arc::clone(&self.store), dir.exec_root(), command.clone());
        // Hard links share an inode with every other user's actions that
        // use the same content (one could flock it against another);
        // sandbox.private-inputs gives some callers copies instead.
        let private = match self.settings.private_inputs {
            PrivateInputs::Never => false,
            PrivateInputs::Untrusted => !caller.trusted,
            PrivateInputs::Always => true,
        };
        let mode = if self.root && !private {
            Materialize::HardLink { dir_owner: owner }
        } else if self.root {
            Materialize::Copy { dir_owner: owner }
        } else {
            // Our actions run as our own uid, so a hard link would let them
            // chmod and change the store's files: copy instead.
            Materialize::Copy { dir_owner: None }
        };
        let input_bytes = if matches!(mode, Materialize::HardLink { .. }) {
            tree.distinct_file_bytes()
        } else {
            tree.file_bytes()
        };
        blocking(move || -> Result<(), InputError> {
            inputs::materialize(&store, &tree, &exec_root, mode)?;
            inputs::create_output_parents(
                &exec_root,
                &command2.working_directory,
                &command2,
                owner,
            )?;
            super::stamps::settle(&exec_root, &tree, &command2)
        })
        .await??;
        Ok(input_bytes)
    }

    /// The input files to bind read-only onto themselves
    /// (`sandbox::exec_root`). As root, the action's inputs belong to the
    /// daemon and it runs as a uid of its own, so it cannot change them
    /// (EACCES, EPERM), and a bind per file would cost about 40 µs of every
    /// action per input file. A per-user daemon's actions run as the
    /// daemon's uid and own the copies of their inputs: only binds stop
    /// them (EROFS, EBUSY).
    fn read_only_inputs(
        &self,
        tree: &inputs::InputTree,
        command: &reapi::Command,
        action: Digest,
    ) -> Vec<String> {
        if self.root {
            return Vec::new();
        }
        let files = inputs::read_only_candidates(tree, command);
        if files.len() <= self.settings.max_read_only_inputs {
            return files;
        }
        tracing::debug!(%action, files = files.len(),
            "too many input files to bind read-only one by one");
        Vec::new()
    }

    /// The limits the action asks for that this host cannot enforce: as
    /// warnings for its result, or (`cgroup.unenforceable-limits =
    /// "refuse"`) as a platform this worker cannot satisfy.
    fn check_limits(
        &self,
        placement: Result<Placement, Error>,
        action: &reapi::Action,
        command: &reapi::Command,
    ) -> (Result<Placement, Error>, Vec<String>) {
        let controllers = self.cgroups.as_ref().map(cgroup::Manager::controllers);
        let how = super::limits::Enforcement {
            controllers,
            nproc_fallback: self.root,
        };
        let warnings = super::limits::unenforced(action::platform_of(action, command), how);
        match (placement, self.settings.unenforceable_limits) {
            (Ok(_), UnenforceableLimits::Refuse) if !warnings.is_empty() => (
                Err(Error::Unsatisfiable(format!(
                    "{}; this worker refuses such actions (cgroup.unenforceable-limits = \"refuse\")",
                    warnings.join("; ")
                ))),
                Vec::new(),
            ),
            (placement, _) => (placement, warnings),
        }
    }

    /// Runs a routed action on the upstream. `Ok(None)` when local
    /// execution takes over: the upstream is down or failed, and the
    /// action can run here (`runs_here`) and may (local-fallback, or it
    /// was routed only because the queue was long).
    async fn forward(
        &self,
        run: &Run,
        reason: upstream::execute::Reason,
        forward: Forward<'_>,
        runs_here: bool,
        inline: &Inline<'_>,
    ) -> Result<Option<reapi::ExecuteResponse>, Error> {
        let Some(up) = &self.upstream else {
            return Ok(None);
        };
        let fallback = runs_here
            && (up.policy.local_fallback || reason == upstream::execute::Reason::QueueLong);
        let action = forward.action;
        let why = if fallback && up.is_down() {
            "is down".to_owned()
        } else {
            tracing::debug!(%action, "to the upstream: {reason}");
            match up.execute(run, forward).await {
                Ok(Some(mut response)) => {
                    if let Some(result) = &mut response.result {
                        self.action_cache.inline(result, inline)?;
                    }
                    return Ok(Some(response));
                }
                Ok(None) => return Err(Error::Cancelled),
                Err(e) if fallback && e.allows_local_fallback() => format!("failed ({e})"),
                Err(e) => return Err(e.into()),
            }
        };
        up.stats.remote_fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%action, "running locally: the upstream {} {why}", up.endpoint());
        Ok(None)
    }

    /// Loads the Action and Command, fetching them from the upstream
    /// (with read-through) when the local store lacks them.
    pub(super) async fn load(&self, action: Digest) -> Result<Loaded, Error> {
        let mut rounds = 0;
        loop {
            let store = Arc::clone(&self.store);
            match blocking(move || action::load(&store, &action)).await? {
                Err(Error::Missing(missing)) if rounds < 2 && self.fetched(&missing).await => {
                    rounds += 1;
                }
                r => return r,
            }
        }
    }

    /// Resolves the input tree, fetching what the local store lacks from
    /// the upstream (with read-through): each round reveals the next
    /// level of directories.
    pub(super) async fn resolve(&self, root: Digest) -> Result<inputs::InputTree, Error> {
        loop {
            let store = Arc::clone(&self.store);
            match blocking(move || inputs::resolve(&store, &root)).await? {
                Err(InputError::Missing(missing)) if self.fetched(&missing).await => {}
                r => return Ok(r?),
            }
        }
    }

    /// Fetches `missing` from the upstream; whether any of it came.
    async fn fetched(&self, missing: &[Digest]) -> bool {
        self.blobs.fetch(missing).await
    }

    /// Whether the action goes to the upstream, and why.
    fn route(
        &self,
        action: &reapi::Action,
        command: &reapi::Command,
        unsatisfiable: bool,
        root: RootMode,
        partition: Partition,
    ) -> Result<Option<upstream::execute::Reason>, Error> {
        let requested = upstream::execute::requested(action::platform_of(action, command))
            .map_err(Error::Platform)?;
        // An upstream knows neither the input root mode nor our partitions
        // (its results would land in the default one): such actions run
        // here, or nowhere.
        if root == RootMode::Input || !partition.is_default() {
            if requested == Some(true) {
                return Err(Error::Platform(format!(
                    "platform property {}=true: actions with {PROP_ROOT}=input, or sent \
                     through an instance with root = \"input\", run only here",
                    upstream::execute::PROP_REMOTE
                )));
            }
            return Ok(None);
        }
        let Some(up) = &self.upstream else {
            return Ok(None);
        };
        let queued = self
            .scheduler
            .snapshot()
            .queued
            .iter()
            .map(|(_, n)| n)
            .sum();
        Ok(up.policy.route(requested, unsatisfiable, queued))
    }

    pub(super) fn timeout(&self, action: &reapi::Action) -> Result<Duration, Error> {
        let Some(t) = &action.timeout else {
            return Ok(self.settings.default_timeout);
        };
        let asked = Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
        if asked.is_zero() {
            return Ok(self.settings.default_timeout);
        }
        if asked > self.settings.max_timeout {
            return Err(Error::Timeout {
                asked,
                max: self.settings.max_timeout,
            });
        }
        Ok(asked)
    }

    pub(super) fn placement(
        &self,
        action: &reapi::Action,
        command: &reapi::Command,
        root: RootMode,
    ) -> Result<Placement, Error> {
        let platform = action::platform_of(action, command);
        // Only an action that names the identity, or a worker that requires
        // it, waits for it to be computed (just after start).
        let names_it =
            platform.is_some_and(|p| p.properties.iter().any(|p| p.name == PROP_TOOLCHAIN));
        let toolchain = if names_it || (self.settings.require_toolchain && root == RootMode::Host) {
            tokio::task::block_in_place(|| self.toolchain.wait().digest.clone())
        } else {
            String::new()
        };
        let offer = Offer {
            limits: &self.settings.limits,
            allow_host_network: self.settings.allow_host_network,
            platform: &self.settings.platform,
            toolchain: &toolchain,
            require_toolchain: self.settings.require_toolchain,
        };
        Placement::from_platform(&offer, platform, root)
    }
}

/// An action to run here ([`Executor::run_here`]).
pub(super) struct Local<'a> {
    pub run: &'a Run,
    pub caller: &'a Caller,
    pub action_digest: Digest,
    pub command: &'a reapi::Command,
    pub tree: inputs::InputTree,
    pub placement: Placement,
    pub timeout: Duration,
    pub queued_at: SystemTime,
    /// Limits asked for that this host cannot enforce (for the result).
    pub warnings: &'a [String],
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))
}
