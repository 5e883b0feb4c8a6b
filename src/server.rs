//! Running the daemon: open the store, serve the gRPC services on the
//! listeners, talk to the service manager, and shut down on SIGTERM or
//! after the idle time when socket-activated.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;

use crate::activation::{Listener, Source};
use crate::cas::{Store, StoreConfig};
use crate::config::Config;
use crate::listener::{Acceptor, Activity};
use crate::notify;
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::reapi::action_cache_server::ActionCacheServer;
use crate::proto::reapi::capabilities_server::CapabilitiesServer;
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use crate::service::{self, Context};
use crate::trust::Policy;

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
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Serves until SIGTERM/SIGINT, or until idle when socket-activated.
pub async fn serve(
    config: Config,
    listeners: Vec<Listener>,
    source: Source,
) -> Result<(), ServeError> {
    let store = Store::open(StoreConfig {
        root: config.state_dir().to_owned(),
        max_size: config.store.max_size.0,
        high_watermark: config.store.high_watermark,
        low_watermark: config.store.low_watermark,
        fsync: config.store.fsync,
    })?;
    store.start_background()?;
    let policy = Arc::new(Policy::from_config(&config));
    let ctx = Context::new(&config, Arc::clone(&store), Arc::clone(&policy));
    let activity = Arc::new(Activity::default());

    // Handlers first: a SIGTERM right after READY=1 must stop us gracefully.
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;

    let described: Vec<String> = listeners.iter().map(Listener::describe).collect();
    let (mut acceptor, incoming) =
        Acceptor::new(listeners, Arc::clone(&policy), Arc::clone(&activity))
            .map_err(ServeError::Listen)?;

    // Batch requests over the limit are decoded so that the client gets a
    // clear INVALID_ARGUMENT from our own check; only messages past four
    // times the limit are cut off by tonic (OUT_OF_RANGE) unread.
    let max_message = 4 * config.store.max_batch_size.0 as usize + (1 << 20);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = Server::builder()
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
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
            service::bytestream::ByteStreamService::new(Arc::clone(&ctx)),
        ));
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        ReceiverStream::new(incoming),
        async {
            let _ = stop_rx.await;
        },
    ));
    acceptor.start();

    let max = config.store.max_size.0;
    let serving = format!("Serving on {}", described.join(", "));
    tracing::info!(
        state_dir = %config.state_dir().display(),
        store_limit = max,
        activated = source.is_activated(),
        "{serving}"
    );
    notify::ready(&format!("{serving}; store limit {}", gib(max)));
    notify::spawn_watchdog();
    spawn_status_updates(Arc::clone(&store), Arc::clone(&activity), serving.clone());

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
    let _ = stop_tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!("server task failed: {join}"),
        Err(_) => tracing::warn!(
            "in-flight calls did not finish within {}s",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    Ok(())
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
