//! Prometheus metrics: counters and histograms kept for the whole process,
//! and an optional text endpoint (`[metrics] listen`, off by default) on a
//! loopback port or a unix socket.
//!
//! The counters are always kept (an increment is an atomic add); only the
//! endpoint is optional. Figures that are states rather than events (store
//! size, queue length, the upstream's state) are read when scraped, from a
//! [`Sampler`] the server installs.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/package.Service/Method`.
    pub method: String,
    /// The gRPC status code's name (`OK`, `NOT_FOUND`, ...).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// `hit` or `miss`.
    pub result: String,
    /// The caller's uid, or `anonymous`.
    pub user: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `succeeded`, `failed` (non-zero exit), `cached`, `timed_out`,
    /// `cancelled`, `error`, `forwarded`.
    pub outcome: String,
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    pub rpcs: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<MethodLabel, Histogram>,
    pub lookups: Family<LookupLabels, Counter>,
    pub executions: Family<OutcomeLabel, Counter>,
    pub queue_wait_seconds: Histogram,
    pub evicted_files: Counter,
    pub evicted_bytes: Counter,
    store_bytes: Gauge,
    store_limit_bytes: Gauge,
    queued: Gauge,
    running: Gauge,
    upstream_up: Gauge,
    upstream_fetched_bytes: Gauge,
    upstream_pushes: Gauge,
    sampler: OnceLock<Box<dyn Sampler>>,
}

/// The states read when the endpoint is scraped.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub store_bytes: u64,
    pub store_limit_bytes: u64,
    pub queued: u64,
    pub running: u64,
    /// `None` without an upstream.
    pub upstream_up: Option<bool>,
    pub upstream_fetched_bytes: u64,
    pub upstream_pushes: u64,
}

pub trait Sampler: Send + Sync {
    fn sample(&self) -> Sample;
}

fn histogram() -> Histogram {
    // 100 µs to about 100 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lre");
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register("rpcs", "Calls by method and status code", rpcs.clone());
        let rpc_seconds =
            Family::<MethodLabel, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        registry.register(
            "rpc_duration_seconds",
            "Time from a call's start to its status, by method",
            rpc_seconds.clone(),
        );
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "action_cache_lookups",
            "Action-cache lookups by result and user, one per action looked up",
            lookups.clone(),
        );
        let executions = Family::<OutcomeLabel, Counter>::default();
        registry.register("executions", "Executions by outcome", executions.clone());
        let queue_wait_seconds = histogram();
        registry.register(
            "queue_wait_seconds",
            "Time actions waited for a slot",
            queue_wait_seconds.clone(),
        );
        let evicted_files = Counter::default();
        registry.register(
            "store_evicted_files",
            "Files evicted from the store",
            evicted_files.clone(),
        );
        let evicted_bytes = Counter::default();
        registry.register(
            "store_evicted_bytes",
            "Bytes evicted from the store",
            evicted_bytes.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let store_bytes = gauge(&mut registry, "store_bytes", "Bytes the store holds");
        let store_limit_bytes = gauge(&mut registry, "store_limit_bytes", "The store's max-size");
        let queued = gauge(
            &mut registry,
            "queued_actions",
            "Actions waiting for a slot",
        );
        let running = gauge(&mut registry, "running_actions", "Actions running");
        let upstream_up = gauge(
            &mut registry,
            "upstream_up",
            "1 while the upstream answers, 0 while it is down (absent without one)",
        );
        let upstream_fetched_bytes = gauge(
            &mut registry,
            "upstream_fetched_bytes",
            "Bytes fetched from the upstream",
        );
        let upstream_pushes = gauge(
            &mut registry,
            "upstream_pushes",
            "Results pushed to the upstream",
        );
        Metrics {
            registry,
            rpcs,
            rpc_seconds,
            lookups,
            executions,
            queue_wait_seconds,
            evicted_files,
            evicted_bytes,
            store_bytes,
            store_limit_bytes,
            queued,
            running,
            upstream_up,
            upstream_fetched_bytes,
            upstream_pushes,
            sampler: OnceLock::new(),
        }
    }

    /// Installs what [`encode`](Self::encode) samples; the first one stays.
    pub fn set_sampler(&self, sampler: Box<dyn Sampler>) {
        let _ = self.sampler.set(sampler);
    }

    /// Records one finished call.
    pub fn rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        self.rpcs
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code: code_name(code).to_owned(),
            })
            .inc();
        self.rpc_seconds
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one action-cache lookup.
    pub fn lookup(&self, user: Option<u32>, hit: bool) {
        self.lookups
            .get_or_create(&LookupLabels {
                result: if hit { "hit" } else { "miss" }.into(),
                user: user.map_or_else(|| "anonymous".into(), |u| u.to_string()),
            })
            .inc();
    }

    /// Records how an execution ended.
    pub fn execution(&self, outcome: &str) {
        self.executions
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The text exposition format, with the states sampled now.
    pub fn encode(&self) -> String {
        if let Some(s) = self.sampler.get() {
            let s = s.sample();
            let set = |g: &Gauge, v: u64| {
                g.set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            set(&self.store_bytes, s.store_bytes);
            set(&self.store_limit_bytes, s.store_limit_bytes);
            set(&self.queued, s.queued);
            set(&self.running, s.running);
            if let Some(up) = s.upstream_up {
                set(&self.upstream_up, u64::from(up));
            }
            set(&self.upstream_fetched_bytes, s.upstream_fetched_bytes);
            set(&self.upstream_pushes, s.upstream_pushes);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The gRPC name of a code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Where the endpoint listens.
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

/// Serves `GET /metrics` (any path, in fact) over HTTP/1.1 on `listen`
/// until the runtime stops. Binding errors are returned; errors of single
/// scrapes are logged at debug.
pub async fn serve(listen: Listen) -> std::io::Result<()> {
    match listen {
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!("metrics on http://{addr}/metrics");
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(answer(s));
                }
            });
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            tracing::info!("metrics on unix:{}", path.display());
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(answer(s));
                }
            });
        }
    }
    Ok(())
}

async fn answer<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    use http_body_util::Full;
    let service = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        let body = get().encode();
        let resp = http::Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(bytes::Bytes::from(body)));
        resp.map_err(std::io::Error::other)
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .serve_connection(io, service);
    if let Err(e) = conn.await {
        tracing::debug!("metrics scrape: {e}");
    }
}
