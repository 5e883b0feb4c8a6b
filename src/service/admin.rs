//! nativelink_lre.v1.Admin: the daemon's side of `nativelink-lre status`,
//! `gc`, `verify` and `check`.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Context, blocking, caller};
use crate::activation::Listener;
use crate::cas;
use crate::execution::executor::Executor;
use crate::listener::Activity;
use crate::proto::nativelink_lre::v1::{self as admin, admin_server::Admin};
use crate::trust::{Caller, Denied};

/// The most progress messages a stream sends per second (about).
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

type UpdateStream<U> = Pin<Box<dyn Stream<Item = Result<U, Status>> + Send>>;

/// Runs `work` on a blocking thread and streams what it reports: progress
/// (at most every [`PROGRESS_EVERY`]; a slow reader misses some, never
/// holds the work up) and then its answer, both turned into messages by
/// `progress` and `done`.
fn with_progress<R, U>(
    work: impl FnOnce(cas::OnProgress) -> Result<R, Status> + Send + 'static,
    progress: fn(admin::Progress) -> U,
    done: fn(R) -> U,
) -> UpdateStream<U>
where
    R: Send + 'static,
    U: Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<U, Status>>(8);
    tokio::task::spawn_blocking(move || {
        let last = Mutex::new(None::<Instant>);
        let report = |p: cas::Progress| {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
                return;
            }
            *last = Some(Instant::now());
            let _ = tx.try_send(Ok(progress(admin::Progress {
                phase: p.phase.into(),
                done: p.done,
                total: p.total,
                unit: p.unit.into(),
            })));
        };
        let answer = work(&report).map(done);
        let _ = tx.blocking_send(answer);
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn gc_response(report: cas::GcReport, bytes_after: u64) -> admin::CollectGarbageResponse {
    admin::CollectGarbageResponse {
        bytes_before: report.bytes_before,
        removed_files: report.removed_files,
        removed_bytes: report.removed_bytes,
        bytes_after,
        duration_ms: report.duration.as_millis() as u64,
    }
}

/// The answer to a verify: the store's report and the action cache's
/// (entries checked, torn entries removed).
/// The answer to a verify by `caller`, logged.
fn verify_response(
    caller: &Caller,
    report: cas::VerifyReport,
    (entries, torn): (u64, Vec<std::path::PathBuf>),
) -> admin::VerifyResponse {
    tracing::info!(%caller, checked = report.checked, removed = report.removed.len(),
        action_cache_entries = entries, torn = torn.len(), "store verified on request");
    admin::VerifyResponse {
        checked: report.checked,
        removed: (report.removed.len() + torn.len()) as u64,
        removed_paths: report
            .removed
            .iter()
            .chain(&torn)
            .map(|p| p.display().to_string())
            .collect(),
        duration_ms: report.duration.as_millis() as u64,
        action_cache_checked: entries,
    }
}

pub struct AdminService {
    ctx: Arc<Context>,
    executor: Option<Arc<Executor>>,
    activity: Arc<Activity>,
    listeners: Vec<admin::ListenerInfo>,
}

/// What `status` says about one listening socket.
pub fn listener_info(l: &Listener, activated: bool) -> admin::ListenerInfo {
    use std::os::unix::fs::PermissionsExt;
    let (name, address, unix_mode) = match l {
        Listener::Unix { listener, name } => {
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(ToOwned::to_owned));
            let mode = path
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.permissions().mode() & 0o7777);
            let shown = path.map_or("(unnamed)".into(), |p| p.display().to_string());
            (name, format!("unix:{shown}"), mode)
        }
        Listener::Tcp { listener, name } => {
            let addr = listener
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string());
            (name, format!("tcp:{addr}"), 0)
        }
    };
    admin::ListenerInfo {
        name: name.clone(),
        address,
        unix_mode,
        activated,
    }
}

impl AdminService {
    pub fn new(
        ctx: Arc<Context>,
        executor: Option<Arc<Executor>>,
        activity: Arc<Activity>,
    ) -> Self {
        AdminService {
            ctx,
            executor,
            activity,
            listeners: Vec::new(),
        }
    }

    /// The listening sockets `status` reports.
    pub fn with_listeners(mut self, listeners: Vec<admin::ListenerInfo>) -> Self {
        self.listeners = listeners;
        self
    }
}

#[allow(clippy::result_large_err)]
fn require_trusted(caller: &Caller, what: &str) -> Result<(), Status> {
    if caller.trusted {
        Ok(())
    } else {
        Err(Denied(format!("{caller} may not {what}: only trusted-users may")).into())
    }
}

type CheckStream = Pin<Box<dyn Stream<Item = Result<admin::ActionCheck, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    type CheckStream = CheckStream;

    async fn check(
        &self,
        req: Request<admin::CheckRequest>,
    ) -> Result<Response<CheckStream>, Status> {
        let caller = caller(&req)?;
        require_trusted(&caller, "check actions")?;
        let Some(ex) = self.executor.clone() else {
            return Err(Status::failed_precondition(
                "execution is disabled on this daemon: nothing can be run again",
            ));
        };
        let req = req.into_inner();
        let ex2 = Arc::clone(&ex);
        let actions = blocking(move || {
            crate::execution::check::chosen(&ex2, &req).map_err(Status::invalid_argument)
        })
        .await?;
        tracing::info!(%caller, actions = actions.len(), "determinism check on request");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let busy = self.activity.busy();
        tokio::spawn(async move {
            for action in actions {
                let report = crate::execution::check::check(&ex, &caller, action).await;
                if tx.send(Ok(report)).await.is_err() {
                    break;
                }
            }
            drop(busy);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
    type CollectGarbageWithProgressStream = UpdateStream<admin::CollectGarbageUpdate>;
    type VerifyWithProgressStream = UpdateStream<admin::VerifyUpdate>;

    async fn status(
        &self,
        req: Request<admin::StatusRequest>,
    ) -> Result<Response<admin::StatusResponse>, Status> {
        let caller = caller(&req)?;
        let (bytes, exact) = self.ctx.store.usage();
        let stats = self.ctx.action_cache.lookups();
        let uploads = self.ctx.uploads.stats();
        let mut resp = admin::StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.ctx.started.elapsed().as_secs(),
            state_dir: self.ctx.store.root().display().to_string(),
            store_bytes: bytes,
            store_bytes_exact: exact,
            store_limit_bytes: self.ctx.store.config().max_size,
            action_cache_hits: stats.hits.load(Ordering::Relaxed),
            action_cache_misses: stats.misses.load(Ordering::Relaxed),
            execution_enabled: self.executor.is_some(),
            connections: self.activity.connections() as u32,
            upstream: self.ctx.upstream.as_ref().map(|u| u.status()),
            only_own: !caller.trusted,
            store_by_user: self
                .ctx
                .store
                .usage_by_user()
                .into_iter()
                .filter(|(uid, _)| caller.trusted || caller.uid == Some(*uid))
                .map(|(uid, bytes)| admin::StoreUse { uid, bytes })
                .collect(),
            store_per_user_max: self.ctx.store.per_user_max(),
            lookups_by_user: stats
                .by_user()
                .into_iter()
                .filter(|(uid, _, _)| caller.trusted || (uid.is_some() && *uid == caller.uid))
                .map(|(uid, hits, misses)| admin::UserLookups { uid, hits, misses })
                .collect(),
            uploads_in_progress: uploads.in_progress,
            uploads_waiting: uploads.waiting,
            upload_bytes: uploads.bytes,
            listeners: self.listeners.clone(),
            ..Default::default()
        };
        if let Ok((soft, hard)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            (resp.fd_limit_soft, resp.fd_limit_hard) = (soft, hard);
        }
        if let Some(ex) = &self.executor {
            resp.actions_executed = ex.counters.executed.load(Ordering::Relaxed);
            resp.execute_cache_hits = ex.counters.cache_hits.load(Ordering::Relaxed);
            let snap = ex.scheduler.snapshot();
            resp.max_concurrent_actions = snap.max as u32;
            resp.running_count = snap.running as u32;
            resp.queued_count = snap.queued.iter().map(|(_, n)| *n as u32).sum();
            // Another user's operations name actions whose Commands (argv,
            // environment, often tokens) anyone could then read: untrusted
            // callers see only their own, and counts.
            let own = |uid: Option<u32>| caller.trusted || (uid.is_some() && uid == caller.uid);
            resp.queued = snap
                .queued
                .iter()
                .filter(|(uid, _)| own(*uid))
                .map(|(uid, n)| admin::QueuedActions {
                    uid: *uid,
                    count: *n as u32,
                })
                .collect();
            resp.running = ex
                .registry
                .list()
                .into_iter()
                .filter(|op| !op.is_done() && own(op.owner()))
                .map(|op| admin::RunningAction {
                    operation: op.name.clone(),
                    action_digest: op.action.to_string(),
                    uids: vec![op.owner().map_or(-1, i64::from)],
                    stage: op.state().stage.as_str_name().to_owned(),
                    user: op.caller.name.clone().unwrap_or_default(),
                    argv0: op.run().argv0().unwrap_or_default(),
                    elapsed_seconds: op.created.elapsed().as_secs(),
                })
                .collect();
            // The helper always enters a new cgroup namespace
            // (src/sandbox/helper.rs, step 5).
            resp.namespaces = ["user", "mount", "pid", "network", "ipc", "uts", "cgroup"]
                .into_iter()
                .map(String::from)
                .collect();
            resp.per_action_uids = nix::unistd::geteuid().is_root();
            resp.read_only_paths = ex
                .read_only_paths()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            resp.sandbox_protections = ex
                .protections
                .items
                .iter()
                .map(|p| admin::SandboxProtection {
                    name: p.name.clone(),
                    in_force: p.in_force,
                    detail: p.detail.clone(),
                })
                .collect();
            resp.sandbox_error = ex.protections.error.clone().unwrap_or_default();
            let identity = ex.toolchain.clone();
            let toolchain = blocking(move || Ok(identity.wait().clone())).await?;
            resp.toolchain_identity = toolchain.digest;
            resp.toolchain_items = toolchain.lines;
            resp.require_toolchain = ex.require_toolchain();
            resp.repeat = ex.repeat();
            resp.determinism_checks = ex.counters.checks.load(Ordering::Relaxed);
            resp.determinism_mismatches = ex.counters.mismatches.load(Ordering::Relaxed);
            if let Some(cg) = ex.cgroups() {
                let c = cg.controllers();
                resp.cgroup_base = cg.base().display().to_string();
                resp.cgroup_controllers = c.enabled().into_iter().map(String::from).collect();
                resp.cgroup_missing = c.missing().into_iter().map(String::from).collect();
            } else {
                let none = crate::cgroup::Controllers::default();
                resp.cgroup_missing = none.missing().into_iter().map(String::from).collect();
            }
        }
        Ok(Response::new(resp))
    }

    async fn collect_garbage(
        &self,
        req: Request<admin::CollectGarbageRequest>,
    ) -> Result<Response<admin::CollectGarbageResponse>, Status> {
        let caller = caller(&req)?;
        require_trusted(&caller, "collect garbage")?;
        let store = Arc::clone(&self.ctx.store);
        let target = req
            .into_inner()
            .target_bytes
            .unwrap_or_else(|| store.low_bytes());
        let report = blocking(move || Ok(store.collect_garbage(target)?)).await?;
        tracing::info!(%caller, target, removed = report.removed_bytes, "garbage collection on request");
        Ok(Response::new(gc_response(report, self.ctx.store.usage().0)))
    }

    async fn collect_garbage_with_progress(
        &self,
        req: Request<admin::CollectGarbageRequest>,
    ) -> Result<Response<Self::CollectGarbageWithProgressStream>, Status> {
        use admin::collect_garbage_update::Update;
        let caller = caller(&req)?;
        require_trusted(&caller, "collect garbage")?;
        let store = Arc::clone(&self.ctx.store);
        let target = req
            .into_inner()
            .target_bytes
            .unwrap_or_else(|| store.low_bytes());
        let stream = with_progress(
            move |progress| {
                let report = store.collect_garbage_with(target, progress)?;
                tracing::info!(%caller, target, removed = report.removed_bytes, "garbage collection on request");
                Ok(gc_response(report, store.usage().0))
            },
            |p| admin::CollectGarbageUpdate {
                update: Some(Update::Progress(p)),
            },
            |r| admin::CollectGarbageUpdate {
                update: Some(Update::Done(r)),
            },
        );
        Ok(Response::new(stream))
    }

    async fn verify_with_progress(
        &self,
        req: Request<admin::VerifyRequest>,
    ) -> Result<Response<Self::VerifyWithProgressStream>, Status> {
        use admin::verify_update::Update;
        let caller = caller(&req)?;
        require_trusted(&caller, "verify the store")?;
        let store = Arc::clone(&self.ctx.store);
        let ac = Arc::clone(&self.ctx.action_cache);
        let stream = with_progress(
            move |progress| {
                let report = store.verify_with(progress)?;
                Ok(verify_response(&caller, report, ac.verify()?))
            },
            |p| admin::VerifyUpdate {
                update: Some(Update::Progress(p)),
            },
            |r| admin::VerifyUpdate {
                update: Some(Update::Done(r)),
            },
        );
        Ok(Response::new(stream))
    }

    async fn verify(
        &self,
        req: Request<admin::VerifyRequest>,
    ) -> Result<Response<admin::VerifyResponse>, Status> {
        let caller = caller(&req)?;
        require_trusted(&caller, "verify the store")?;
        let store = Arc::clone(&self.ctx.store);
        let ac = Arc::clone(&self.ctx.action_cache);
        let (report, ac_report) = blocking(move || Ok((store.verify()?, ac.verify()?))).await?;
        Ok(Response::new(verify_response(&caller, report, ac_report)))
    }
}
