//! Running an action here: a slot in the fair queue, a host uid, the
//! per-action directory with the inputs laid out, the cgroup, the sandbox
//! and the outputs taken into the store. Each step is a function; the pure
//! choices (how inputs are laid out, how outputs enter the store, which
//! limits are refused) are unit-tested below.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::super::action;
use super::super::action_dir::ActionDir;
use super::super::disk_limit::DiskLimit;
use super::super::inputs::{self, InputError, Materialize};
use super::super::outputs::{self, OutputError};
use super::super::placement::Placement;
use super::super::result;
use super::super::run::Run;
use super::super::supervise;
use super::{Error, Executor, blocking};
use crate::cas;
use crate::cgroup::{self, ActionCgroup};
use crate::config::{PrivateInputs, UnenforceableLimits};
use crate::digest::Digest;
use crate::proto::reapi::{self, execution_stage::Value as Stage};
use crate::sandbox::{self, Outcome, RootMode};
use crate::scheduler;
use crate::trust::Caller;

/// An action to run here ([`Executor::run_here`]).
pub(in crate::execution) struct Local<'a> {
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

/// The end of one sandboxed run, before its outputs are taken.
struct Ran {
    outcome: Outcome,
    usage: crate::proto::nativelink_lre::v1::ResourceUsage,
    timed_out: bool,
}

impl Executor {
    /// Runs an action in the sandbox here: waits for a slot, lays out its
    /// inputs, runs it and takes its outputs into the store. Returns the
    /// result and whether it timed out; storing it is the caller's choice
    /// (a determinism check never does).
    pub(in crate::execution) async fn run_here(
        &self,
        job: Local<'_>,
    ) -> Result<(reapi::ActionResult, bool), Error> {
        let _permit = self.wait_for_slot(job.run, job.caller).await?;
        let mut timeline = result::Timeline::starting(job.queued_at);
        timeline.worker_start = SystemTime::now();
        let lease = self.ids.take().ok_or(Error::NoFreeUid)?;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dir = ActionDir::create(self.exec_dir.join(n.to_string()))?;
        let owner = self.root.then_some((lease.id, lease.gid));
        dir.make_layers(owner)?;
        let how = ingest_mode(self.root, job.placement.host_network);

        timeline.input_fetch_start = SystemTime::now();
        let tree = Arc::new(job.tree);
        let input_bytes = self
            .lay_out_inputs(&dir, Arc::clone(&tree), job.command, job.caller, owner)
            .await?;
        timeline.input_fetch_done = SystemTime::now();

        let cg = self.create_cgroup(n, &job.placement)?;
        let read_only_inputs = self.read_only_inputs(&tree, job.command, job.action_digest);
        let spec = self
            .spec(job.command, &dir, &job.placement, (lease.id, lease.gid))
            .with_inputs(read_only_inputs, cg.as_ref());
        timeline.execution_start = SystemTime::now();
        let ran = self
            .supervise(job.run, &spec, &dir, cg, job.timeout, input_bytes)
            .await?;
        timeline.execution_done = SystemTime::now();
        let mut usage = ran.usage;
        usage.warnings = job.warnings.to_vec();

        timeline.upload_start = SystemTime::now();
        let produced = self
            .collect_outputs(&dir, job.command, how, job.caller, ran.outcome.exit_code())
            .await?;
        timeline.upload_done = SystemTime::now();
        if let Outcome::HelperKilled(why) = &ran.outcome {
            tracing::info!(action = %job.action_digest, "sandbox ended abnormally: {why}");
        }
        let result = result::action_result(produced, &self.settings.worker, &timeline, &usage);
        self.counters.executed.fetch_add(1, Ordering::Relaxed);
        Ok((result, ran.timed_out))
    }

    /// Waits in the fair queue for a slot (the run's stage is Queued
    /// meanwhile), or until the run is cancelled.
    async fn wait_for_slot(&self, run: &Run, caller: &Caller) -> Result<scheduler::Permit, Error> {
        run.set_stage(Stage::Queued);
        let queued = std::time::Instant::now();
        let permit = tokio::select! {
            permit = self.scheduler.acquire(caller.uid) => permit?,
            _ = run.cancelled() => return Err(Error::Cancelled),
        };
        crate::metrics::get()
            .queue_wait_seconds
            .observe(queued.elapsed().as_secs_f64());
        run.set_stage(Stage::Executing);
        Ok(permit)
    }

    /// The action's own cgroup, when the daemon manages cgroups.
    fn create_cgroup(&self, n: u64, placement: &Placement) -> Result<Option<ActionCgroup>, Error> {
        let Some(m) = &self.cgroups else {
            return Ok(None);
        };
        let cg = m
            .create(&n.to_string(), &placement.limits)
            .map_err(Error::Cgroup)?;
        Ok(Some(cg))
    }

    /// What the sandbox runs: the command in `dir`'s exec root as the
    /// leased `host` (uid, gid), with the placement's root and network.
    fn spec(
        &self,
        command: &reapi::Command,
        dir: &ActionDir,
        placement: &Placement,
        host: (u32, u32),
    ) -> sandbox::Spec {
        sandbox::Spec {
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
            read_only_inputs: Vec::new(),
            root: placement.root,
            read_only_paths: match placement.root {
                RootMode::Host => self.settings.read_only_paths.clone(),
                RootMode::Input => Vec::new(),
            },
            tmp_size: self.settings.tmp_size,
            host_uid: host.0,
            host_gid: host.1,
            host_network: placement.host_network,
            // Without the pids controller, a per-uid process limit stands in
            // for pids.max; only as root, where the uid is the action's own.
            nproc_limit: placement.limits.pids_max.filter(|_| {
                self.root && !self.cgroups.as_ref().is_some_and(|m| m.controllers().pids)
            }),
            cgroup_procs: None,
            rlimits: self.settings.rlimits.clone(),
            nice: self.settings.nice,
            result_path: dir.path.join("result.json"),
            probe: false,
        }
    }

    /// Runs `spec` under the timeout and the exec root's disk limit, and
    /// accounts its resource usage.
    async fn supervise(
        &self,
        run: &Run,
        spec: &sandbox::Spec,
        dir: &ActionDir,
        cg: Option<ActionCgroup>,
        timeout: Duration,
        input_bytes: u64,
    ) -> Result<Ran, Error> {
        let spawned_ns = sandbox::monotonic_ns();
        let limit = DiskLimit::new(
            dir.exec_root(),
            self.settings.max_exec_root_size,
            input_bytes,
        );
        let bounds = supervise::Bounds {
            timeout,
            limit: &limit,
            kill_grace: self.settings.kill_grace,
        };
        let (end, mut usage) = supervise::supervise(run, spec, dir, cg, bounds).await?;
        let (report, timed_out) = end.into_report(&limit)?;
        supervise::account(&mut usage, &report, spawned_ns);
        Ok(Ran {
            outcome: report.outcome,
            usage,
            timed_out,
        })
    }

    /// Takes the declared outputs and the stdout and stderr into the store.
    async fn collect_outputs(
        &self,
        dir: &ActionDir,
        command: &reapi::Command,
        how: cas::Ingest,
        caller: &Caller,
        exit_code: i32,
    ) -> Result<result::Produced, Error> {
        let (store, exec_root, path) = (Arc::clone(&self.store), dir.exec_root(), dir.path.clone());
        let command = command.clone();
        let user = caller.uid;
        let produced = blocking(move || -> Result<_, OutputError> {
            Ok(result::Produced {
                outputs: outputs::collect(&store, &exec_root, &command, how, user)?,
                stdout: outputs::ingest_stream(&store, &path.join("stdout"), how, user)?,
                stderr: outputs::ingest_stream(&store, &path.join("stderr"), how, user)?,
                exit_code,
            })
        })
        .await??;
        Ok(produced)
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
        let private = private_inputs(self.settings.private_inputs, caller.trusted);
        let mode = materialize_mode(self.root, private, owner);
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
            super::super::stamps::settle(&exec_root, &tree, &command2)
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
    pub(super) fn check_limits(
        &self,
        placement: Result<Placement, Error>,
        action: &reapi::Action,
        command: &reapi::Command,
    ) -> (Result<Placement, Error>, Vec<String>) {
        let controllers = self.cgroups.as_ref().map(cgroup::Manager::controllers);
        let how = super::super::limits::Enforcement {
            controllers,
            nproc_fallback: self.root,
        };
        let warnings = super::super::limits::unenforced(action::platform_of(action, command), how);
        refuse_unenforceable(placement, warnings, self.settings.unenforceable_limits)
    }
}

impl sandbox::Spec {
    /// The spec with the inputs bound read-only and the cgroup to join.
    fn with_inputs(mut self, read_only_inputs: Vec<String>, cg: Option<&ActionCgroup>) -> Self {
        self.read_only_inputs = read_only_inputs;
        self.cgroup_procs = cg.map(ActionCgroup::procs_file);
        self
    }
}

/// Whether a caller's inputs are private copies. Hard links share an
/// inode with every other user's actions that use the same content (one
/// could flock it against another); `sandbox.private-inputs` gives some
/// callers copies instead.
fn private_inputs(policy: PrivateInputs, trusted: bool) -> bool {
    match policy {
        PrivateInputs::Never => false,
        PrivateInputs::Untrusted => !trusted,
        PrivateInputs::Always => true,
    }
}

/// How the inputs are laid out. A per-user daemon's actions run as its
/// own uid, so a hard link would let them chmod and change the store's
/// files: they always get copies, in directories of the daemon's.
fn materialize_mode(root: bool, private: bool, owner: Option<(u32, u32)>) -> Materialize {
    match (root, private) {
        (true, false) => Materialize::HardLink { dir_owner: owner },
        (true, true) => Materialize::Copy { dir_owner: owner },
        (false, _) => Materialize::Copy { dir_owner: None },
    }
}

/// How outputs enter the store. Under a new name for their inode only
/// when nothing but the (then dead) action could ever have opened them:
/// as root, the exec root is reachable by no other uid, and without the
/// host network the action had no way to pass a descriptor out. Otherwise
/// (a per-user daemon, whose owner's other processes reach the exec root;
/// the host network) they are copied.
fn ingest_mode(root: bool, host_network: bool) -> cas::Ingest {
    if root && !host_network {
        cas::Ingest::Link {
            take_ownership: true,
        }
    } else {
        cas::Ingest::Copy
    }
}

/// With `cgroup.unenforceable-limits = "refuse"`, an action that asks for
/// limits this host cannot enforce is unsatisfiable here; otherwise the
/// limits become warnings of its result.
fn refuse_unenforceable(
    placement: Result<Placement, Error>,
    warnings: Vec<String>,
    policy: UnenforceableLimits,
) -> (Result<Placement, Error>, Vec<String>) {
    match (placement, policy) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: Option<(u32, u32)> = Some((70000, 70000));

    #[test]
    fn only_root_hard_links_inputs_and_only_for_callers_not_given_copies() {
        assert_eq!(
            materialize_mode(true, false, OWNER),
            Materialize::HardLink { dir_owner: OWNER }
        );
        assert_eq!(
            materialize_mode(true, true, OWNER),
            Materialize::Copy { dir_owner: OWNER }
        );
        for private in [false, true] {
            assert_eq!(
                materialize_mode(false, private, OWNER),
                Materialize::Copy { dir_owner: None }
            );
        }
    }

    #[test]
    fn private_inputs_follow_the_policy_and_the_callers_trust() {
        for trusted in [false, true] {
            assert!(!private_inputs(PrivateInputs::Never, trusted));
            assert!(private_inputs(PrivateInputs::Always, trusted));
        }
        assert!(private_inputs(PrivateInputs::Untrusted, false));
        assert!(!private_inputs(PrivateInputs::Untrusted, true));
    }

    #[test]
    fn outputs_are_renamed_only_as_root_without_the_host_network() {
        assert_eq!(
            ingest_mode(true, false),
            cas::Ingest::Link {
                take_ownership: true
            }
        );
        assert_eq!(ingest_mode(true, true), cas::Ingest::Copy);
        assert_eq!(ingest_mode(false, false), cas::Ingest::Copy);
    }

    fn placement() -> Placement {
        Placement {
            limits: Default::default(),
            host_network: false,
            root: RootMode::Host,
        }
    }

    #[test]
    fn unenforceable_limits_are_warnings_or_refused() {
        let warned = || vec!["lre-memory-max: no memory controller".to_owned()];
        let (p, w) = refuse_unenforceable(Ok(placement()), warned(), UnenforceableLimits::Warn);
        assert_eq!((p.unwrap(), w), (placement(), warned()));
        let (p, w) = refuse_unenforceable(Ok(placement()), warned(), UnenforceableLimits::Refuse);
        let e = p.unwrap_err();
        assert!(
            matches!(&e, Error::Unsatisfiable(m) if m.contains("no memory controller")
            && m.contains("refuse")),
            "{e}"
        );
        assert!(w.is_empty());
        // Nothing to refuse, or an error already: unchanged.
        let (p, _) = refuse_unenforceable(Ok(placement()), vec![], UnenforceableLimits::Refuse);
        assert!(p.is_ok());
        let bad = Err(Error::Platform("bad".into()));
        let (p, w) = refuse_unenforceable(bad, warned(), UnenforceableLimits::Refuse);
        assert!(matches!(p, Err(Error::Platform(_))));
        assert_eq!(w, warned());
    }
}
