//! The local worker: takes an Execute request through cache lookup,
//! validation, the fair queue, input materialization, the sandbox and
//! output ingestion, and completes its operation with an ExecuteResponse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message;

use super::disk_limit::DiskLimit;
use super::inputs::{self, InputError, Materialize};
use super::operation::{Operation, Registry};
use super::outputs::{self, OutputError};
use super::run::{CancelReason, Run};
use crate::action_cache::{ActionCache, Inline, Partition, Scope};
use crate::cas::{self, Store};
use crate::cgroup::{self, ActionCgroup};
use crate::config::{Config, OneOrMany, PrivateInputs, UnenforceableLimits};
use crate::digest::Digest;
use crate::instance::{Instance, Instances};
use crate::listener::Activity;
use crate::proto::any;
use crate::proto::nativelink_lre::v1::ResourceUsage;
use crate::proto::reapi::{self, execution_stage::Value as Stage};
use crate::sandbox::{self, Outcome, RootMode};
use crate::scheduler::{self, Scheduler};
use crate::trust::Caller;
use crate::upstream::{self, Upstream, execute::Forward};

/// Platform properties the worker interprets itself rather than matching
/// against `[execution] platform`.
pub const PROP_MEMORY_MAX: &str = "lre-memory-max";
pub const PROP_PIDS_MAX: &str = "lre-pids-max";
pub const PROP_CPU_MAX: &str = "lre-cpu-max";
pub const PROP_NETWORK: &str = "lre-network";
pub use super::platform::PROP_ROOT;

/// Why an action did not produce a result. Mapped to the
/// ExecuteResponse status in `crate::status`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} blob(s) needed by the action are missing from the CAS", .0.len())]
    Missing(Vec<Digest>),
    #[error("{what} {digest} is not a valid {kind} message: {reason}")]
    BadMessage {
        what: &'static str,
        kind: &'static str,
        digest: Digest,
        reason: String,
    },
    #[error("input tree: {path:?}: {reason}")]
    InvalidInput { path: String, reason: String },
    /// A platform property with a bad value, or one this worker's policy
    /// refuses.
    #[error("{0}")]
    Platform(String),
    /// A platform this worker does not offer (the upstream may).
    #[error("{0}")]
    Unsatisfiable(String),
    #[error("the action's timeout of {asked:?} exceeds this server's max-timeout of {max:?}")]
    Timeout { asked: Duration, max: Duration },
    #[error("the action was cancelled")]
    Cancelled,
    #[error(
        "the action wrote {written} bytes into its exec root, more than sandbox.max-exec-root-size ({cap} bytes); it was stopped"
    )]
    ExecRootFull { written: u64, cap: u64 },
    #[error(transparent)]
    QueueFull(#[from] scheduler::QueueFull),
    #[error("the sandbox could not run the action: {0}")]
    Sandbox(String),
    #[error("{0}")]
    BadOutput(String),
    #[error("{0}")]
    OutputType(String),
    #[error(transparent)]
    Store(#[from] cas::Error),
    /// Laying out the inputs failed on our side (a full disk, say).
    #[error(transparent)]
    Inputs(InputError),
    /// Collecting the outputs failed on our side.
    #[error(transparent)]
    Outputs(OutputError),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<InputError> for Error {
    fn from(e: InputError) -> Error {
        match e {
            InputError::Missing(digests) => Error::Missing(digests),
            InputError::Invalid { path, reason } => Error::InvalidInput { path, reason },
            InputError::Store(e) => Error::Store(e),
            e @ (InputError::Destination { .. } | InputError::Io { .. }) => Error::Inputs(e),
        }
    }
}

impl From<OutputError> for Error {
    fn from(e: OutputError) -> Error {
        match e {
            e @ (OutputError::Special { .. }
            | OutputError::Invalid { .. }
            | OutputError::Unrepresentable { .. }) => Error::BadOutput(e.to_string()),
            e @ OutputError::WrongType { .. } => Error::OutputType(e.to_string()),
            OutputError::Store(e) => Error::Store(e),
            e @ OutputError::Io { .. } => Error::Outputs(e),
        }
    }
}

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
}

/// Host uids and gids for running actions.
enum Ids {
    /// As root: a configured range; each running action takes its own.
    Range(Mutex<Vec<u32>>),
    /// As an ordinary user: we can map only ourselves.
    Own { uid: u32, gid: u32 },
}

struct IdLease<'a> {
    ids: &'a Ids,
    id: u32,
    gid: u32,
}

impl Ids {
    fn take(&self) -> Option<IdLease<'_>> {
        match self {
            Ids::Range(free) => {
                let id = free.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
                Some(IdLease {
                    ids: self,
                    id,
                    gid: id,
                })
            }
            Ids::Own { uid, gid } => Some(IdLease {
                ids: self,
                id: *uid,
                gid: *gid,
            }),
        }
    }
}

impl Drop for IdLease<'_> {
    fn drop(&mut self) {
        if let Ids::Range(free) = self.ids {
            free.lock().unwrap_or_else(|e| e.into_inner()).push(self.id);
        }
    }
}

/// Counters for `status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub executed: AtomicU64,
    pub cache_hits: AtomicU64,
    pub failed: AtomicU64,
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
}

/// Which way an execution ended.
enum End {
    Finished(sandbox::Report),
    TimedOut(sandbox::Report),
    Cancelled,
    /// Killed for writing this many bytes, more than the cap.
    ExecRootFull(u64),
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
        let ids = if root {
            let s = &config.sandbox;
            Ids::Range(Mutex::new(
                (s.uid_range_start..s.uid_range_start + s.uid_range_count)
                    .rev()
                    .collect(),
            ))
        } else {
            Ids::Own {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            }
        };
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
        let protections = match ids.take() {
            Some(lease) => {
                if instances.uses(RootMode::Input) {
                    // Logged; `status` shows the host mode's findings.
                    sandbox::probe::at_start(
                        &exec_dir,
                        Vec::new(),
                        lease.id,
                        lease.gid,
                        RootMode::Input,
                    );
                }
                sandbox::probe::at_start(
                    &exec_dir,
                    config.sandbox.read_only_paths(),
                    lease.id,
                    lease.gid,
                    RootMode::Host,
                )
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
                read_only_paths: config.sandbox.read_only_paths(),
                tmp_size: config.sandbox.tmp_size.0,
                allow_host_network: config.sandbox.allow_host_network,
                max_file_size: config.sandbox.max_file_size.0,
                max_exec_root_size: config.sandbox.max_exec_root_size.0,
                private_inputs: config.sandbox.private_inputs,
                limits,
                worker: format!("nativelink-lre@{host}"),
                instances,
                unenforceable_limits: config.cgroup.unenforceable_limits,
            },
            exec_dir,
            activity,
            next_id: AtomicU64::new(1),
            root,
            counters: Counters::default(),
            upstream,
            protections,
        }))
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
            this.finish(&run, response);
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
        } = match load_cached(&self.store, &action_digest) {
            Some(loaded) => loaded,
            None => self.load(action_digest).await?,
        };
        run.set_argv0(&command.arguments[0]);
        let timeout = self.timeout(&action)?;
        let instance = self.instance(req)?;
        let partition = instance.partition();
        let root = super::platform::root_mode(platform_of(&action, &command), instance.root)
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
            input_root_fits(&tree)?;
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
        let worker_start = SystemTime::now();
        let lease = self
            .ids
            .take()
            .ok_or_else(|| Error::Internal("no free uid in the sandbox uid range".into()))?;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let scratch = Scratch::create(self.exec_dir.join(n.to_string()))?;
        let owner = self.root.then_some((lease.id, lease.gid));
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

        let input_fetch_start = SystemTime::now();
        let (store, exec_root, command2) = (
            Arc::clone(&self.store),
            scratch.exec_root(),
            command.clone(),
        );
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
            inputs::create_output_parents(&exec_root, &command2.working_directory, &command2, owner)
        })
        .await??;
        let input_fetch_done = SystemTime::now();

        let cg =
            match &self.cgroups {
                Some(m) => Some(m.create(&n.to_string(), &placement.limits).map_err(|e| {
                    Error::Sandbox(format!("cannot create the action's cgroup: {e}"))
                })?),
                None => None,
            };
        let spec = sandbox::Spec {
            args: command.arguments.clone(),
            env: command
                .environment_variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone()))
                .collect(),
            working_dir: command.working_directory.clone(),
            exec_root: scratch.exec_root(),
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
            file_size_limit: Some(self.settings.max_file_size),
            cgroup_procs: cg.as_ref().map(ActionCgroup::procs_file),
            result_path: scratch.path.join("result.json"),
            probe: false,
        };
        let execution_start = SystemTime::now();
        let spawned_ns = sandbox::monotonic_ns();
        let limit = DiskLimit::new(
            scratch.exec_root(),
            self.settings.max_exec_root_size,
            input_bytes,
        );
        let live = LiveLogGuard::start(run, &scratch.path);
        let ended = self
            .run_sandbox(run, &spec, &scratch, cg.as_ref(), timeout, &limit)
            .await;
        drop(live);
        let end = match ended {
            Ok(end) => end,
            Err(e) => {
                // Dropping the cgroup kills and removes it, which waits for
                // the kernel: not on an async thread.
                tokio::task::block_in_place(|| drop(cg));
                return Err(e);
            }
        };
        let execution_done = SystemTime::now();
        let teardown_start = sandbox::monotonic_ns();
        let mut usage = match cg {
            Some(cg) => {
                // stats() reads files and remove() may wait for the kernel
                // to reap: both block.
                let stats = tokio::task::block_in_place(|| {
                    let stats = cg.stats();
                    if let Err(e) = cg.remove() {
                        tracing::warn!("cannot remove the action cgroup: {e}");
                    }
                    stats
                });
                ResourceUsage {
                    cpu_usage_usec: stats.usage_usec,
                    cpu_user_usec: stats.user_usec,
                    cpu_system_usec: stats.system_usec,
                    memory_peak_bytes: stats.memory_peak,
                    oom_kills: stats.oom_kills,
                    pids_max_events: stats.pids_max_events,
                    source: "cgroup".into(),
                    ..Default::default()
                }
            }
            None => ResourceUsage {
                source: "none".into(),
                ..Default::default()
            },
        };
        let timed_out = matches!(end, End::TimedOut(_));
        let report = match end {
            End::Cancelled => return Err(Error::Cancelled),
            End::ExecRootFull(written) => {
                return Err(Error::ExecRootFull {
                    written,
                    cap: limit.cap(),
                });
            }
            End::Finished(sandbox::Report {
                outcome: Outcome::SetupFailed(msg),
                ..
            }) => return Err(Error::Sandbox(msg)),
            End::Finished(r) | End::TimedOut(r) => r,
        };
        if usage.source == "none" {
            usage.cpu_user_usec = report.cpu_user_usec;
            usage.cpu_system_usec = report.cpu_system_usec;
            usage.cpu_usage_usec = report.cpu_user_usec + report.cpu_system_usec;
            usage.source = "rusage".into();
        }
        usage.sandbox_setup_usec = report.exec_ns.saturating_sub(spawned_ns) / 1000;
        usage.command_usec = report.exit_ns.saturating_sub(report.exec_ns) / 1000;
        usage.teardown_usec = sandbox::monotonic_ns().saturating_sub(teardown_start) / 1000;
        usage.warnings = warnings.clone();
        let outcome = report.outcome;

        let upload_start = SystemTime::now();
        let (store, exec_root, path) = (
            Arc::clone(&self.store),
            scratch.exec_root(),
            scratch.path.clone(),
        );
        let command2 = command.clone();
        let user = caller.uid;
        let (outs, stdout, stderr) = blocking(move || -> Result<_, OutputError> {
            let outs = outputs::collect(&store, &exec_root, &command2, how, user)?;
            let stdout = outputs::ingest_stream(&store, &path.join("stdout"), how, user)?;
            let stderr = outputs::ingest_stream(&store, &path.join("stderr"), how, user)?;
            Ok((outs, stdout, stderr))
        })
        .await??;
        let upload_done = SystemTime::now();
        if let Outcome::HelperKilled(why) = &outcome {
            tracing::info!(action = %action_digest, "sandbox ended abnormally: {why}");
        }
        let exit_code = outcome.exit_code();
        // Clients before REAPI 2.1 read the per-kind symlink fields; later
        // ones read output_symlinks. `outputs::collect` fills the ones that
        // match how the Command declared its outputs.
        #[allow(deprecated)]
        let mut result = reapi::ActionResult {
            output_files: outs.files,
            output_directories: outs.directories,
            output_symlinks: outs.symlinks,
            output_file_symlinks: outs.file_symlinks,
            output_directory_symlinks: outs.directory_symlinks,
            exit_code,
            stdout_digest: Some(stdout.to_proto()),
            stderr_digest: Some(stderr.to_proto()),
            execution_metadata: Some(reapi::ExecutedActionMetadata {
                worker: self.settings.worker.clone(),
                queued_timestamp: Some(queued_at.into()),
                worker_start_timestamp: Some(worker_start.into()),
                input_fetch_start_timestamp: Some(input_fetch_start.into()),
                input_fetch_completed_timestamp: Some(input_fetch_done.into()),
                execution_start_timestamp: Some(execution_start.into()),
                execution_completed_timestamp: Some(execution_done.into()),
                output_upload_start_timestamp: Some(upload_start.into()),
                output_upload_completed_timestamp: Some(upload_done.into()),
                worker_completed_timestamp: Some(SystemTime::now().into()),
                auxiliary_metadata: vec![any("nativelink_lre.v1.ResourceUsage", &usage)],
                ..Default::default()
            }),
            ..Default::default()
        };
        self.counters.executed.fetch_add(1, Ordering::Relaxed);
        if exit_code == 0 && !timed_out && !action.do_not_cache {
            // Our own sandbox produced it: trusted for everyone.
            let ac = Arc::clone(&self.action_cache);
            let r = result.clone();
            result = blocking(move || ac.put(partition, &action_digest, r, Scope::Shared))
                .await?
                .map_err(|e| Error::Internal(e.to_string()))?;
            run.mark_shared();
            // The upstream's action cache has no partitions: only the
            // default one is shared with it.
            if let Some(up) = self.upstream.as_ref().filter(|_| partition.is_default()) {
                up.push(action_digest, vec![action_digest, command_digest], &result);
            }
        }
        self.action_cache
            .inline(&mut result, &inline)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let status = if timed_out {
            crate::status::deadline_exceeded(&format!(
                "the action ran longer than its timeout of {timeout:?}"
            ))
        } else {
            Default::default()
        };
        // A command killed for writing past RLIMIT_FSIZE says why.
        let message = if exit_code == 128 + libc::SIGXFSZ {
            format!(
                "the command was killed by SIGXFSZ: a file it wrote reached sandbox.max-file-size ({} bytes)",
                self.settings.max_file_size
            )
        } else {
            String::new()
        };
        Ok(reapi::ExecuteResponse {
            result: Some(result),
            cached_result: false,
            status: Some(status),
            message: [message, warnings.join("\n")]
                .into_iter()
                .filter(|m| !m.is_empty())
                .collect::<Vec<_>>()
                .join("\n"),
            ..Default::default()
        })
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
        let warnings = super::limits::unenforced(platform_of(action, command), how);
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

    /// Runs the sandbox to its end, a timeout, or a cancel. On timeout or
    /// cancel: SIGTERM to everything, a grace period, then a kill of the
    /// whole tree. Afterwards nothing of the action is left running.
    async fn run_sandbox(
        &self,
        run: &Run,
        spec: &sandbox::Spec,
        scratch: &Scratch,
        cg: Option<&ActionCgroup>,
        timeout: Duration,
        limit: &DiskLimit,
    ) -> Result<End, Error> {
        let stdout = std::fs::File::create(scratch.path.join("stdout"))
            .map_err(|e| Error::Internal(e.to_string()))?;
        let stderr = std::fs::File::create(scratch.path.join("stderr"))
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut running = sandbox::spawn(spec, stdout, stderr)
            .map_err(|e| Error::Sandbox(format!("cannot start the helper: {e}")))?;
        enum Why {
            Timeout,
            Cancel,
            ExecRootFull(u64),
        }
        let why = tokio::select! {
            outcome = running.wait() => {
                let outcome = outcome.map_err(|e| Error::Sandbox(e.to_string()))?;
                // Daemonized grandchildren outlive the command's init only
                // if they left its pid namespace; the cgroup catches them.
                if let Some(cg) = cg {
                    let _ = tokio::task::block_in_place(|| cg.kill());
                }
                // An action that wrote too much and exited before the watch
                // below looked is caught here.
                let written = outcome.written_bytes;
                if let Some(written) = tokio::task::block_in_place(|| limit.exceeded_after(written)) {
                    return Ok(End::ExecRootFull(written));
                }
                return Ok(End::Finished(outcome));
            }
            _ = tokio::time::sleep(timeout) => Why::Timeout,
            _ = run.cancelled() => Why::Cancel,
            written = watch_exec_root(limit) => Why::ExecRootFull(written),
        };
        match cg {
            Some(cg) => {
                // Walks cgroupfs: blocking, like the kills around it.
                let _ =
                    tokio::task::block_in_place(|| cg.signal(nix::sys::signal::Signal::SIGTERM));
            }
            None => running.signal(nix::sys::signal::Signal::SIGTERM),
        }
        let outcome = match tokio::time::timeout(self.settings.kill_grace, running.wait()).await {
            Ok(outcome) => outcome,
            Err(_) => {
                match cg {
                    Some(cg) => {
                        let _ = tokio::task::block_in_place(|| cg.kill());
                    }
                    None => running.signal(nix::sys::signal::Signal::SIGKILL),
                }
                running.wait().await
            }
        }
        .map_err(|e| Error::Sandbox(e.to_string()))?;
        if let Some(cg) = cg {
            let _ = tokio::task::block_in_place(|| cg.kill());
        }
        Ok(match why {
            Why::Timeout => End::TimedOut(outcome),
            Why::Cancel => End::Cancelled,
            Why::ExecRootFull(written) => End::ExecRootFull(written),
        })
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
                        self.action_cache
                            .inline(result, inline)
                            .map_err(|e| Error::Internal(e.to_string()))?;
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
    async fn load(&self, action: Digest) -> Result<Loaded, Error> {
        let mut rounds = 0;
        loop {
            let store = Arc::clone(&self.store);
            match blocking(move || load(&store, &action)).await? {
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
    async fn resolve(&self, root: Digest) -> Result<inputs::InputTree, Error> {
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
        let requested =
            upstream::execute::requested(platform_of(action, command)).map_err(Error::Platform)?;
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

    fn timeout(&self, action: &reapi::Action) -> Result<Duration, Error> {
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

    /// Checks the action's platform against what this worker satisfies and
    /// reads the properties that set limits or the network.
    fn placement(
        &self,
        action: &reapi::Action,
        command: &reapi::Command,
        root: RootMode,
    ) -> Result<Placement, Error> {
        let platform = platform_of(action, command);
        let mut placement = Placement {
            limits: self.settings.limits.clone(),
            host_network: false,
            root,
        };
        for p in platform
            .map(|p| p.properties.as_slice())
            .unwrap_or_default()
        {
            let bad = |why: &str| {
                Error::Platform(format!(
                    "platform property {}={}: {why}",
                    p.name,
                    super::platform::shown(&p.value)
                ))
            };
            match p.name.as_str() {
                PROP_MEMORY_MAX => {
                    let v = crate::config::ByteSize::parse(&p.value)
                        .map_err(|e| bad(&e))?
                        .0;
                    placement.limits.memory_max =
                        Some(placement.limits.memory_max.map_or(v, |m| m.min(v)));
                }
                PROP_PIDS_MAX => {
                    let v: u64 = p.value.parse().map_err(|_| bad("not a number"))?;
                    placement.limits.pids_max =
                        Some(placement.limits.pids_max.map_or(v, |m| m.min(v)));
                }
                PROP_CPU_MAX => {
                    let v: f64 = p.value.parse().map_err(|_| bad("not a number of cores"))?;
                    if !(v > 0.0 && v.is_finite()) {
                        return Err(bad("not a positive number of cores"));
                    }
                    placement.limits.cpu_max =
                        Some(placement.limits.cpu_max.map_or(v, |m| m.min(v)));
                }
                // Checked, and acted on, by `route` and `platform::root_mode`.
                upstream::execute::PROP_REMOTE | PROP_ROOT => {}
                PROP_NETWORK => match p.value.as_str() {
                    "none" => {}
                    "host" if self.settings.allow_host_network => placement.host_network = true,
                    "host" => {
                        return Err(bad(
                            "this worker does not allow the host network (sandbox.allow-host-network)",
                        ));
                    }
                    _ => return Err(bad("the value must be \"none\" or \"host\"")),
                },
                name => {
                    if let Some(why) =
                        super::platform::unsatisfied(&self.settings.platform, name, &p.value)
                    {
                        return Err(Error::Unsatisfiable(why));
                    }
                }
            }
        }
        Ok(placement)
    }
}

/// The run's live log while its command runs; ended however the sandbox
/// ends.
struct LiveLogGuard<'a>(&'a Run);

impl<'a> LiveLogGuard<'a> {
    fn start(run: &'a Run, dir: &Path) -> LiveLogGuard<'a> {
        run.set_live_log(Some(super::logs::LiveLog::new(dir)));
        LiveLogGuard(run)
    }
}

impl Drop for LiveLogGuard<'_> {
    fn drop(&mut self) {
        self.0.set_live_log(None);
    }
}

/// The action's platform. REAPI 2.2 moved it to the Action; older clients
/// put it in the Command.
fn platform_of<'a>(
    action: &'a reapi::Action,
    command: &'a reapi::Command,
) -> Option<&'a reapi::Platform> {
    #[allow(deprecated)]
    action.platform.as_ref().or(command.platform.as_ref())
}

/// The input root can become `/` only if its top-level `dev`, `proc`
/// and `tmp` are directories or absent (the sandbox mounts on them).
fn input_root_fits(tree: &inputs::InputTree) -> Result<(), Error> {
    let files = tree.files().iter().map(|f| (&f.path, "a file"));
    let links = tree.symlinks().iter().map(|l| (&l.path, "a symlink"));
    for (path, kind) in files.chain(links) {
        if let Some(reason) = sandbox::mount_point_conflict(path, kind) {
            return Err(Error::InvalidInput {
                path: path.clone(),
                reason,
            });
        }
    }
    Ok(())
}

struct Placement {
    limits: cgroup::Limits,
    host_network: bool,
    root: RootMode,
}

/// An Action and its Command, decoded, with the digests the Action names.
struct Loaded {
    action: reapi::Action,
    command: reapi::Command,
    command_digest: Digest,
    input_root: Digest,
}

/// Loads and decodes the Action and its Command. Missing blobs are listed
/// together so the client re-uploads them in one go.
/// [`load`] on the caller's thread when the Action and Command can be read
/// without disk I/O (see `Store::read_cached`); `None` otherwise, and on any
/// error, which the full `load` then reports (or repairs from the upstream).
fn load_cached(store: &Store, digest: &Digest) -> Option<Loaded> {
    let action = reapi::Action::decode(store.read_cached(digest)?.ok()??.as_slice()).ok()?;
    let command = Digest::from_required(action.command_digest.as_ref()).ok()?;
    if command.size() > inputs::MAX_MESSAGE_SIZE {
        return None;
    }
    // Both are in the page cache now: the full check reads them again.
    store.read_cached(&command)?.ok()??;
    load(store, digest).ok()
}

fn load(store: &Store, digest: &Digest) -> Result<Loaded, Error> {
    let too_big = |what, kind, digest: &Digest| Error::BadMessage {
        what,
        kind,
        digest: *digest,
        reason: format!(
            "{} bytes, over the limit of {} bytes",
            digest.size(),
            inputs::MAX_MESSAGE_SIZE
        ),
    };
    if digest.size() > inputs::MAX_MESSAGE_SIZE {
        return Err(too_big("action", "Action", digest));
    }
    let Some(bytes) = store.read(digest)? else {
        return Err(Error::Missing(vec![*digest]));
    };
    let action = reapi::Action::decode(bytes.as_slice()).map_err(|e| Error::BadMessage {
        what: "action",
        kind: "Action",
        digest: *digest,
        reason: e.to_string(),
    })?;
    let bad = |field: &str, e: crate::digest::DigestError| Error::BadMessage {
        what: "action",
        kind: "Action",
        digest: *digest,
        reason: format!("{field}: {e}"),
    };
    let command_digest = Digest::from_required(action.command_digest.as_ref())
        .map_err(|e| bad("command_digest", e))?;
    let input_root = Digest::from_required(action.input_root_digest.as_ref())
        .map_err(|e| bad("input_root_digest", e))?;
    if command_digest.size() > inputs::MAX_MESSAGE_SIZE {
        return Err(too_big("command", "Command", &command_digest));
    }
    let Some(bytes) = store.read(&command_digest)? else {
        let mut missing = vec![command_digest];
        if !store.contains(&input_root)? {
            missing.push(input_root);
        }
        return Err(Error::Missing(missing));
    };
    let command = reapi::Command::decode(bytes.as_slice()).map_err(|e| Error::BadMessage {
        what: "command",
        kind: "Command",
        digest: command_digest,
        reason: e.to_string(),
    })?;
    super::command::check(&command).map_err(|reason| Error::BadMessage {
        what: "command",
        kind: "Command",
        digest: command_digest,
        reason,
    })?;
    if let Some(platform) = &action.platform {
        super::command::check_platform(platform).map_err(|reason| Error::BadMessage {
            what: "action",
            kind: "Action",
            digest: *digest,
            reason,
        })?;
    }
    Ok(Loaded {
        action,
        command,
        command_digest,
        input_root,
    })
}

/// An action's scratch directory, removed when dropped:
/// `exec/` (the exec root), `stdout`, `stderr`, `result.json`. Mode 0700:
/// the daemon's alone.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn create(path: PathBuf) -> Result<Scratch, Error> {
        use std::os::unix::fs::PermissionsExt;
        let io = |e: std::io::Error| Error::Internal(format!("{}: {e}", path.display()));
        std::fs::create_dir(&path).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Scratch { path })
    }

    fn exec_root(&self) -> PathBuf {
        self.path.join("exec")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        // Removing a large tree is slow; do not hold up the caller.
        std::thread::spawn(move || remove_tree(&path));
    }
}

fn remove_tree(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

/// Resolves with the bytes written once the action has written more into
/// its exec root than its cap allows; looks once a second.
async fn watch_exec_root(limit: &DiskLimit) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some(written) = tokio::task::block_in_place(|| limit.exceeded()) {
            return written;
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))
}
