//! Running the daemon: open the store, serve the gRPC services on the
//! listeners, talk to the service manager, and shut down on SIGTERM or
//! after the idle time when socket-activated.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;

use crate::action_cache::ActionCache;
use crate::activation::{Listener, Source};
use crate::cas::{Store, StoreConfig};
use crate::cgroup;
use crate::config::Config;
use crate::connection::Deadlines;
use crate::execution::executor::Executor;
use crate::listener::{Acceptor, Activity, ConnLimits};
use crate::notify;
use crate::per_user::PerUser;
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::google::longrunning::operations_server::OperationsServer;
use crate::proto::nativelink_lre::v1::admin_server::AdminServer;
use crate::proto::reapi::action_cache_server::ActionCacheServer;
use crate::proto::reapi::capabilities_server::CapabilitiesServer;
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use crate::proto::reapi::execution_server::ExecutionServer;
use crate::service::{self, Context};
use crate::trust::Policy;
use crate::upstream::{self, Upstream};

/// How long a stop may wait for pending write-back pushes.
const PUSH_DRAIN: Duration = Duration::from_secs(10);

/// How long a graceful shutdown may wait for in-flight calls.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::cas::Error),
    #[error("cannot register the listeners: {0}")]
    Listen(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    Cgroups(String),
    #[error("{0}")]
    Upstream(#[from] upstream::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Serves until SIGTERM/SIGINT, or until idle when socket-activated.
pub async fn serve(
    config: Config,
    upstream: Option<upstream::Settings>,
    listeners: Vec<Listener>,
    source: Source,
) -> Result<(), ServeError> {
    let store = Store::open(StoreConfig {
        root: config.state_dir().to_owned(),
        max_size: config.store.max_size.0,
        high_watermark: config.store.high_watermark,
        low_watermark: config.store.low_watermark,
        fsync: config.store.fsync,
        per_user_max_size: config.store.per_user_max_size(),
    })?;
    store.start_background()?;
    let policy = Arc::new(Policy::from_config(&config));
    let action_cache = Arc::new(ActionCache::new(
        Arc::clone(&store),
        config.action_cache.inline_max_size.0,
    ));
    let activity = Arc::new(Activity::default());
    let upstream = match upstream {
        Some(settings) => {
            let up = Upstream::new(settings, Arc::clone(&store), Arc::clone(&action_cache))?;
            up.start(config.upstream.write_back_queue, Arc::clone(&activity));
            let p = &up.policy;
            tracing::info!(
                "upstream {} (instance {:?}): read-through {}, write-back {}, remote execution {}",
                up.endpoint(),
                up.instance(),
                on_off(p.read_through),
                on_off(p.write_back),
                on_off(p.remote_execution),
            );
            Some(up)
        }
        None => None,
    };
    let ctx = Context::new(
        &config,
        Arc::clone(&store),
        Arc::clone(&action_cache),
        Arc::clone(&policy),
        upstream.clone(),
    );

    // Handlers first: a SIGTERM right after READY=1 must stop us gracefully.
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;

    let (executor, exec_note) = if config.execution.enabled {
        let (cgroups, note) = setup_cgroups(&config)?;
        let executor = Executor::new(
            &config,
            Arc::clone(&store),
            Arc::clone(&ctx.action_cache),
            cgroups,
            Arc::clone(&activity),
            upstream.clone(),
        )?;
        executor.reap_unwatched(config.execution.unwatched_timeout.0);
        describe_sandbox(&config);
        (Some(executor), note)
    } else {
        (None, "execution disabled".to_owned())
    };

    let described: Vec<String> = listeners.iter().map(Listener::describe).collect();
    let listener_info = listeners
        .iter()
        .map(|l| service::admin::listener_info(l, source.is_activated()))
        .collect();
    let limits = &config.limits;
    let nofile = raise_descriptor_limit();
    let conn_limits = ConnLimits {
        // Half the descriptors at most go to connections; the rest stay
        // for the store, the actions and the upstream.
        counts: PerUser::new(
            "connections",
            "max-connections-per-user",
            limits.max_connections_per_user,
            (nofile / 2).max(16) as usize,
        ),
        deadlines: Deadlines {
            preface: limits.preface_timeout.0,
            stream_idle: limits.stream_idle_timeout.0,
        },
    };
    let (mut acceptor, incoming) = Acceptor::new(
        listeners,
        Arc::clone(&policy),
        Arc::clone(&activity),
        conn_limits,
    )
    .map_err(ServeError::Listen)?;
    let calls = service::calls::CallsLayer::new(
        PerUser::new(
            "calls",
            "max-streams-per-user",
            limits.max_streams_per_user,
            usize::MAX,
        ),
        limits.stream_idle_timeout.0,
    );

    // Batch requests over the limit are decoded so that the client gets a
    // clear INVALID_ARGUMENT from our own check; only messages past four
    // times the limit are cut off by tonic (OUT_OF_RANGE) unread.
    let max_message = 4 * config.store.max_batch_size.0 as usize + (1 << 20);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut router = Server::builder()
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        // A client that stops answering PINGs (a suspended Bazel, a dead
        // peer) loses its connection, so it holds up neither the idle exit
        // nor a graceful stop for long.
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .layer(calls)
        .layer(InterceptorLayer::new(service::admit))
        .add_service(CapabilitiesServer::new(
            service::capabilities::CapabilitiesService::new(Arc::clone(&ctx)),
        ))
        .add_service(
            ContentAddressableStorageServer::new(service::cas::CasService::new(Arc::clone(&ctx)))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            ActionCacheServer::new(service::action_cache::ActionCacheService::new(Arc::clone(
                &ctx,
            )))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        )
        .add_service(ByteStreamServer::new(
            service::bytestream::ByteStreamService::new(Arc::clone(&ctx))
                .with_executor(executor.clone()),
        ));
    router = router.add_service(AdminServer::new(
        service::admin::AdminService::new(
            Arc::clone(&ctx),
            executor.clone(),
            Arc::clone(&activity),
        )
        .with_listeners(listener_info),
    ));
    if let Some(executor) = &executor {
        router = router
            .add_service(ExecutionServer::new(
                service::execution::ExecutionService::new(Arc::clone(&ctx), Arc::clone(executor)),
            ))
            .add_service(OperationsServer::new(
                service::operations::OperationsService::new(Arc::clone(executor)),
            ));
    }
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        ReceiverStream::new(incoming),
        async {
            let _ = stop_rx.await;
        },
    ));
    acceptor.start();
    crate::metrics::get().set_sampler(Box::new(Sampler {
        store: Arc::clone(&store),
        executor: executor.clone(),
        upstream: upstream.clone(),
    }));
    match config.metrics.endpoint() {
        Ok(Some(listen)) => crate::metrics::serve(listen)
            .await
            .map_err(ServeError::Listen)?,
        Ok(None) => {}
        // Checked when the configuration was read.
        Err(e) => tracing::warn!("metrics: {e}"),
    }

    let max = config.store.max_size.0;
    let serving = format!("Serving on {}", described.join(", "));
    tracing::info!(
        state_dir = %config.state_dir().display(),
        store_limit = max,
        activated = source.is_activated(),
        "{serving}"
    );
    notify::ready(&format!("{serving}; store limit {}; {exec_note}", gib(max)));
    notify::spawn_watchdog();
    spawn_status_updates(
        Arc::clone(&store),
        Arc::clone(&activity),
        format!("{serving}; {exec_note}"),
    );

    let idle = (source.is_activated() && !config.idle_timeout.0.is_zero())
        .then_some(config.idle_timeout.0);
    let reason = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = idle_exit(&mut acceptor, &activity, idle) => "idle",
    };
    let why = match reason {
        "idle" => format!(
            "Stopping: idle for {}s with no connections; systemd keeps the socket",
            config.idle_timeout.0.as_secs()
        ),
        signal => format!("Stopping on {signal}"),
    };
    tracing::info!("{why}");
    notify::stopping(&why);
    acceptor.pause().await;
    // Running actions do not outlive the daemon: stop them, and wait (a
    // bounded time) until they are gone and their cgroups removed.
    if let Some(executor) = &executor {
        let cancelled = executor.cancel_all();
        if cancelled > 0 {
            tracing::info!("stopping {cancelled} running actions");
            let deadline =
                tokio::time::Instant::now() + executor.kill_grace() + Duration::from_secs(5);
            while activity.busy_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Results waiting to be pushed are in memory only: give them a bounded
    // time while the upstream answers.
    if let Some(up) = &upstream {
        up.drain(PUSH_DRAIN).await;
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!("server task failed: {join}"),
        Err(_) => tracing::warn!(
            "in-flight calls did not finish within {}s",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    // Back to the cgroup we started in, and our subtree removed.
    if let Some(cgroups) = executor.as_ref().and_then(|e| e.cgroups()) {
        cgroups.shutdown();
    }
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard limit, as
/// systemd's documentation recommends for services that need many (its
/// default soft limit is 1024, for the sake of select(2), which we do not
/// use). Returns the soft limit in effect.
fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!("raised the open-file limit from {soft} to {hard}");
            hard
        }
        Err(e) => {
            tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            soft
        }
    }
}

/// Resolves once the daemon has been idle for `idle` and has stopped
/// accepting with nothing connected. Never resolves if `idle` is `None`.
async fn idle_exit(acceptor: &mut Acceptor, activity: &Activity, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let check = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(check).await;
        if activity.idle_for().is_some_and(|d| d >= idle) {
            // Stop accepting, then look once more: a connection accepted
            // just before the pause is counted and keeps us running. Any
            // connection after it waits in systemd's socket for our
            // successor.
            acceptor.pause().await;
            if activity.idle_for().is_some() {
                return;
            }
            acceptor.start();
        }
    }
}

fn spawn_status_updates(store: Arc<Store>, activity: Arc<Activity>, serving: String) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            let (used, exact) = store.usage();
            notify::status(&format!(
                "{serving}; store {}{} of {}; {} connections",
                gib(used),
                if exact { "" } else { " (counting)" },
                gib(store.config().max_size),
                activity.connections()
            ));
        }
    });
}

/// Sets up per-action cgroups and says, in the log and the STATUS line,
/// which limits are enforced. With `cgroup.require-controllers`, a missing
/// controller stops start-up instead.
fn setup_cgroups(config: &Config) -> Result<(Option<cgroup::Manager>, String), ServeError> {
    // Named for this state directory's own id, not its path: two daemons
    // in different mount namespaces may see their directories at one path.
    let id = crate::state_dir::instance_id(config.state_dir())
        .map_err(|e| ServeError::Cgroups(e.to_string()))?;
    let name = format!("nativelink-lre-{}", &id[..12]);
    let require = config.cgroup.require_controllers;
    let refuse = |why: String| -> Result<(Option<cgroup::Manager>, String), ServeError> {
        Err(ServeError::Cgroups(format!(
            "{why}; refusing to start because cgroup.require-controllers = true"
        )))
    };
    match cgroup::Manager::setup(&name) {
        Ok(cgroup::Setup::Ready(manager)) => {
            let missing = manager.controllers().missing();
            if missing.is_empty() {
                tracing::info!(cgroup = %manager.base().display(), "per-action cgroups with memory, pids and cpu limits");
                return Ok((Some(manager), "limits: memory, pids, cpu".into()));
            }
            let why = format!(
                "cgroup controllers {} unavailable under {}: those per-action limits are not enforced",
                missing.join(", "),
                manager.base().display()
            );
            if require {
                manager.shutdown();
                return refuse(why);
            }
            tracing::warn!("{why}; killing and cpu accounting still use cgroup.kill and cpu.stat");
            Ok((
                Some(manager),
                format!("limits: {} unavailable", missing.join(", ")),
            ))
        }
        Ok(cgroup::Setup::Unavailable(why)) => {
            let why =
                format!("per-action cgroups unavailable ({why}): no memory, pids or cpu limits");
            if require {
                return refuse(why);
            }
            tracing::warn!(
                "{why}; actions are still killed as a whole through their pid namespace"
            );
            Ok((
                None,
                "limits: memory, pids, cpu unavailable (no cgroup)".into(),
            ))
        }
        Err(e) => {
            let why = format!("cannot set up per-action cgroups: {e}");
            if require {
                return refuse(why);
            }
            tracing::warn!("{why}");
            Ok((
                None,
                "limits: memory, pids, cpu unavailable (cgroup error)".into(),
            ))
        }
    }
}

/// Logs what actions will see and who they run as.
fn describe_sandbox(config: &Config) {
    let paths: Vec<String> = config
        .sandbox
        .read_only_paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    tracing::info!("sandbox read-only paths: {}", paths.join(" "));
    if nix::unistd::geteuid().is_root() {
        let s = &config.sandbox;
        tracing::info!(
            "actions run as host uids {}..{}, each its own",
            s.uid_range_start,
            s.uid_range_start as u64 + s.uid_range_count as u64 - 1
        );
    } else {
        tracing::warn!(
            "running as uid {} without root: a user namespace can map only our own uid, so every \
             action runs as uid {} and inputs are copied rather than hard-linked",
            nix::unistd::geteuid(),
            nix::unistd::geteuid()
        );
    }
}

/// What the metrics endpoint samples when scraped.
struct Sampler {
    store: Arc<Store>,
    executor: Option<Arc<Executor>>,
    upstream: Option<Arc<Upstream>>,
}

impl crate::metrics::Sampler for Sampler {
    fn sample(&self) -> crate::metrics::Sample {
        use std::sync::atomic::Ordering::Relaxed;
        let mut s = crate::metrics::Sample {
            store_bytes: self.store.usage().0,
            store_limit_bytes: self.store.config().max_size,
            ..Default::default()
        };
        if let Some(ex) = &self.executor {
            let snap = ex.scheduler.snapshot();
            s.queued = snap.queued.iter().map(|(_, n)| *n as u64).sum();
            s.running = snap.running as u64;
        }
        if let Some(up) = &self.upstream {
            s.upstream_up = Some(!up.is_down());
            s.upstream_fetched_bytes = up.stats.bytes_fetched.load(Relaxed);
            s.upstream_pushes = up.stats.pushes_done.load(Relaxed);
        }
        s
    }
}
