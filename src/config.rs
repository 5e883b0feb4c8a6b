//! The daemon's configuration: a TOML file read with serde.
//!
//! Every key is optional; the built-in defaults work for whoever runs the
//! daemon (root gets system paths, anyone else per-user paths). Unknown keys
//! are errors that name the key, the line and the column. Every key here is
//! documented in `man/nativelink-lre.toml.5`; keep the two in step.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod limits;
pub use limits::Limits;
mod checks;
mod messages;
mod values;

pub use checks::ConfigWarning;
pub use values::{ByteSize, DurationValue, FileMode};

/// The whole configuration, after defaults have been resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Where the store lives. Resolved by [`Config::resolve_defaults`].
    pub state_dir: Option<PathBuf>,
    /// Instance names served with the default settings. Any name neither
    /// here nor in `[instances]` is refused.
    pub instance_names: Vec<String>,
    /// `[instances.NAME]`: instance names served with their own settings.
    pub instances: BTreeMap<String, Instance>,
    /// Who may use the service at all (`*`, user names, uids, `@group`).
    pub allowed_users: Vec<String>,
    /// Whose action-cache writes go to the shared cache.
    pub trusted_users: Vec<String>,
    /// What happens to an untrusted caller's UpdateActionResult.
    pub untrusted_action_cache_writes: UntrustedWrites,
    /// Exit after this long with no connections, when socket-activated.
    pub idle_timeout: DurationValue,
    /// Default log filter; `RUST_LOG` overrides it.
    pub log_level: String,
    pub listen: Listen,
    pub store: Store,
    pub action_cache: ActionCache,
    pub execution: Execution,
    pub sandbox: Sandbox,
    pub cgroup: Cgroup,
    pub upstream: Upstream,
    pub limits: Limits,
    pub metrics: Metrics,
}

/// `[metrics]`: the optional Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Metrics {
    /// `HOST:PORT` on loopback, or `unix:/PATH`; empty: no endpoint.
    pub listen: String,
}

impl Metrics {
    /// The endpoint, if one is configured and valid.
    pub fn endpoint(&self) -> Result<Option<crate::metrics::Listen>, String> {
        let l = self.listen.trim();
        if l.is_empty() {
            return Ok(None);
        }
        if let Some(path) = l.strip_prefix("unix:") {
            let path = PathBuf::from(path.trim_start_matches("//"));
            if !path.is_absolute() {
                return Err(format!(
                    "{l:?}: the socket path must be absolute (unix:/PATH)"
                ));
            }
            return Ok(Some(crate::metrics::Listen::Unix(path)));
        }
        let addr: SocketAddr = l
            .parse()
            .map_err(|_| format!("{l:?} is neither HOST:PORT nor unix:/PATH"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{addr} is not a loopback address"));
        }
        Ok(Some(crate::metrics::Listen::Tcp(addr)))
    }
}

/// `[instances.NAME]`: what an instance name selects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Instance {
    /// Which tree becomes the sandbox's `/` for the instance's actions
    /// (those that do not choose with `lre-root`): `"host"` or `"input"`.
    pub root: crate::sandbox::RootMode,
}

/// `[listen]`: addresses to bind when not socket-activated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Listen {
    /// Path of the unix socket; an empty path disables it.
    pub unix: Option<PathBuf>,
    /// Permission bits of the unix socket, in octal.
    pub unix_mode: FileMode,
    /// Loopback TCP addresses.
    pub tcp: Vec<SocketAddr>,
}

/// `[store]`: the content-addressed store on disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Store {
    /// The most bytes the store may keep.
    pub max_size: ByteSize,
    /// Garbage collection starts above this percentage of `max-size`...
    pub high_watermark: u8,
    /// ...and evicts least recently used entries down to this percentage.
    pub low_watermark: u8,
    /// fsync every blob before publishing it.
    pub fsync: bool,
    /// The limit on the sum of blob sizes in one batch call.
    pub max_batch_size: ByteSize,
    /// One user's share of the store; `None`: half of `max-size`; 0: none.
    pub per_user_max_size: Option<ByteSize>,
}

impl Store {
    /// The per-user share in effect, in bytes (0: none).
    pub fn per_user_max_size(&self) -> u64 {
        self.per_user_max_size.map_or(self.max_size.0 / 2, |s| s.0)
    }
}

/// `[action-cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ActionCache {
    /// The most bytes inlined into one GetActionResult response.
    pub inline_max_size: ByteSize,
}

/// `[execution]`: the Execution service and its queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Execution {
    /// Whether the Execution service is offered at all.
    pub enabled: bool,
    /// Actions run at once; 0 means the number of cores.
    pub max_concurrent_actions: usize,
    /// Timeout for actions that do not set one.
    pub default_timeout: DurationValue,
    /// The longest timeout an action may ask for.
    pub max_timeout: DurationValue,
    /// Time between SIGTERM and SIGKILL when an action is stopped.
    pub kill_grace: DurationValue,
    /// Platform properties this worker satisfies: name to value(s).
    pub platform: std::collections::BTreeMap<String, OneOrMany>,
    /// The most actions one user runs at once; 0 means no cap.
    pub max_running_per_user: usize,
    /// The most actions of one user waiting at once; 0 means no cap.
    pub max_queued_per_user: usize,
    /// An action nobody has watched for this long is cancelled (queued
    /// ones are dropped before they start); 0 means never.
    pub unwatched_timeout: DurationValue,
    /// Refuse actions that do not name this worker's toolchain identity in
    /// the platform property `lre-toolchain`.
    pub require_toolchain: bool,
    /// Run one in this many executed actions again in the background and
    /// compare the results (determinism check); 0 means never.
    pub repeat: u64,
}

/// A string, or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn contains(&self, value: &str) -> bool {
        self.values().any(|v| v == value)
    }

    pub fn values(&self) -> impl Iterator<Item = &str> {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v).iter(),
            OneOrMany::Many(vs) => vs.iter(),
        }
        .map(String::as_str)
    }
}

/// `[sandbox]`: what an action can see.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Sandbox {
    /// Host paths visible read-only inside every action. `None` means the
    /// built-in list, resolved at start-up (see [`Sandbox::read_only_paths`]).
    pub read_only_paths: Option<Vec<PathBuf>>,
    /// Size limit of each action's private /tmp.
    pub tmp_size: ByteSize,
    /// First host uid (and gid) of the range actions run as, when root.
    pub uid_range_start: u32,
    /// Number of uids in the range: at most this many actions at once.
    pub uid_range_count: u32,
    /// Whether an action may ask for the host network with the platform
    /// property `lre-network = "host"`.
    pub allow_host_network: bool,
    /// RLIMIT_NOFILE of every action, soft and hard.
    pub open_files: u64,
    /// RLIMIT_STACK (soft) of every action.
    pub stack_size: ByteSize,
    /// The nice value every action runs at.
    pub nice: i32,
    /// The most input files of one action that are bound read-only one by
    /// one (see `sandbox::exec_root`).
    pub max_read_only_inputs: usize,
    /// The largest file an action may write (RLIMIT_FSIZE), stdout and
    /// stderr included.
    pub max_file_size: ByteSize,
    /// The most bytes an action may write into its exec root.
    pub max_exec_root_size: ByteSize,
    /// Who gets private copies of their input files instead of hard links
    /// shared with other users' actions.
    pub private_inputs: PrivateInputs,
}

/// `sandbox.private-inputs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrivateInputs {
    /// Inputs are hard links to the store for everyone.
    Never,
    /// Callers outside trusted-users get copies (reflinks where the file
    /// system can).
    Untrusted,
    /// Every action gets copies.
    Always,
}

/// `[cgroup]`: per-action resource limits (cgroup v2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Cgroup {
    /// memory.max of each action; 0 means no limit.
    pub memory_max: ByteSize,
    /// memory.swap.max of each action.
    pub swap_max: ByteSize,
    /// pids.max of each action; 0 means no limit.
    pub pids_max: u64,
    /// CPU limit in cores (cpu.max); 0 means no limit.
    pub cpu_max: f64,
    /// Refuse to start when a controller needed for these limits is
    /// missing, instead of running without the limit.
    pub require_controllers: bool,
    /// What happens to an action that asks for a limit (`lre-memory-max`,
    /// ...) this host cannot enforce.
    pub unenforceable_limits: UnenforceableLimits,
}

/// The policy for limits an action asks for that cannot be enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnenforceableLimits {
    /// Run it, and say so in its result.
    Warn,
    /// Do not run it here (FAILED_PRECONDITION, or the upstream runs it).
    Refuse,
}

/// `[upstream]`: a remote REAPI cluster used as a second-level cache and as
/// extra executors. Absent (an empty endpoint) means none. The files it names
/// are read when the daemon starts (see `crate::upstream`), not here, so
/// that a configuration can be checked where its secrets are not visible.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Upstream {
    /// `grpc://HOST:PORT`, `grpcs://HOST:PORT` or `unix:/PATH`.
    pub endpoint: String,
    /// Instance name sent with every upstream call.
    pub instance_name: String,
    /// PEM roots for the server's certificate; the system's when absent.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Extra request metadata, literal values.
    pub headers: BTreeMap<String, String>,
    /// Extra request metadata whose values are read from files (secrets).
    pub header_files: BTreeMap<String, PathBuf>,
    pub connect_timeout: DurationValue,
    /// Per call; for streams, the longest wait for the next message.
    pub timeout: DurationValue,
    pub max_concurrent_calls: usize,
    /// Local misses fall back to the upstream.
    pub read_through: bool,
    /// Results our sandbox produced are pushed to the upstream.
    pub write_back: bool,
    /// Results waiting to be pushed; more are dropped.
    pub write_back_queue: usize,
    /// Actions may be sent to the upstream's Execution service.
    pub remote_execution: bool,
    /// ...when this worker cannot satisfy their platform.
    pub remote_when_unsatisfiable: bool,
    /// ...when more than this many actions wait locally (0: never).
    pub remote_queue_length: usize,
    /// Run locally (where possible) when the upstream fails.
    pub local_fallback: bool,
    /// Backoff after a failure: from `retry-min`, doubling up to `retry-max`.
    pub retry_min: DurationValue,
    pub retry_max: DurationValue,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            endpoint: String::new(),
            instance_name: String::new(),
            tls_ca_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            headers: BTreeMap::new(),
            header_files: BTreeMap::new(),
            connect_timeout: DurationValue(Duration::from_secs(5)),
            timeout: DurationValue(Duration::from_secs(10)),
            max_concurrent_calls: 16,
            read_through: true,
            write_back: false,
            write_back_queue: 1000,
            remote_execution: false,
            remote_when_unsatisfiable: true,
            remote_queue_length: 0,
            local_fallback: true,
            retry_min: DurationValue(Duration::from_secs(1)),
            retry_max: DurationValue(Duration::from_secs(60)),
        }
    }
}

/// Where the upstream is, parsed from `upstream.endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Plain HTTP/2: `HOST:PORT`.
    Grpc(String),
    /// HTTP/2 over TLS: `HOST:PORT`.
    Grpcs(String),
    /// A unix socket.
    Unix(PathBuf),
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            let path = Path::new(path);
            if !path.is_absolute() {
                return Err(format!(
                    "{s:?}: the socket path must be absolute (unix:/PATH)"
                ));
            }
            return Ok(Endpoint::Unix(path.to_owned()));
        }
        let (tls, rest) = if let Some(rest) = s.strip_prefix("grpcs://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("grpc://") {
            (false, rest)
        } else {
            return Err(format!(
                "{s:?} must start with grpc://, grpcs:// or unix: (e.g. grpcs://cache.example.com:443)"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let bad = |why: &str| format!("{s:?}: {why}; write HOST:PORT after the scheme");
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return Err(bad("no host, or a path after it"));
        }
        if host.starts_with('[') != host.ends_with(']') {
            return Err(bad("unbalanced brackets around an IPv6 address"));
        }
        port.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(&format!("{port:?} is not a port")))?;
        Ok(if tls {
            Endpoint::Grpcs(rest.to_owned())
        } else {
            Endpoint::Grpc(rest.to_owned())
        })
    }

    /// The host part, for TLS server-name checks.
    pub fn host(&self) -> Option<&str> {
        match self {
            Endpoint::Grpc(hp) | Endpoint::Grpcs(hp) => hp
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']')),
            Endpoint::Unix(_) => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Grpc(hp) => write!(f, "grpc://{hp}"),
            Endpoint::Grpcs(hp) => write!(f, "grpcs://{hp}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Upstream {
    /// The parsed endpoint; `None` when no upstream is configured.
    pub fn endpoint(&self) -> Option<Endpoint> {
        if self.endpoint.is_empty() {
            return None;
        }
        Endpoint::parse(&self.endpoint).ok()
    }

    /// Checks everything that can be checked without reading files.
    /// Returns the offending key and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.endpoint.is_empty() {
            return Ok(());
        }
        let endpoint = Endpoint::parse(&self.endpoint).map_err(|e| ("endpoint", e))?;
        crate::resource::check_instance_name(&self.instance_name)
            .map_err(|why| ("instance-name", format!("{:?}: {why}", self.instance_name)))?;
        let tls = matches!(endpoint, Endpoint::Grpcs(_));
        for (key, path) in [
            ("tls-ca-file", &self.tls_ca_file),
            ("tls-client-cert", &self.tls_client_cert),
            ("tls-client-key", &self.tls_client_key),
        ] {
            if let Some(path) = path {
                if !tls {
                    return Err((
                        key,
                        format!("TLS settings need a grpcs:// endpoint, not {endpoint}"),
                    ));
                }
                if !path.is_absolute() {
                    return Err((key, format!("{} is not an absolute path", path.display())));
                }
            }
        }
        match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(_), None) => {
                return Err(("tls-client-cert", "needs tls-client-key as well".into()));
            }
            (None, Some(_)) => {
                return Err(("tls-client-key", "needs tls-client-cert as well".into()));
            }
            _ => {}
        }
        for (name, value) in &self.headers {
            check_header_name(name).map_err(|why| ("headers", why))?;
            if !value
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                return Err((
                    "headers",
                    format!("the value of {name:?} has characters outside printable ASCII"),
                ));
            }
        }
        for (name, path) in &self.header_files {
            check_header_name(name).map_err(|why| ("header-files", why))?;
            if self.headers.contains_key(name) {
                return Err((
                    "header-files",
                    format!("{name:?} is also in headers; give it in one table only"),
                ));
            }
            if !path.is_absolute() {
                return Err((
                    "header-files",
                    format!("{name}: {} is not an absolute path", path.display()),
                ));
            }
        }
        for (key, d) in [
            ("connect-timeout", self.connect_timeout),
            ("timeout", self.timeout),
            ("retry-min", self.retry_min),
            ("retry-max", self.retry_max),
        ] {
            if d.0.is_zero() {
                return Err((key, "must be longer than zero".into()));
            }
        }
        if self.retry_min.0 > self.retry_max.0 {
            return Err(("retry-min", "must not be longer than retry-max".into()));
        }
        if self.max_concurrent_calls == 0 {
            return Err(("max-concurrent-calls", "must be at least 1".into()));
        }
        if self.write_back && self.write_back_queue == 0 {
            return Err((
                "write-back-queue",
                "must be at least 1 when write-back is on".into(),
            ));
        }
        Ok(())
    }
}

/// A metadata name we may send: lowercase, not one that gRPC or HTTP/2
/// reserve, and not binary (`-bin`).
fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
    {
        return Err(format!(
            "{name:?} is not a header name (lowercase letters, digits, '-', '_', '.')"
        ));
    }
    if name.ends_with("-bin") {
        return Err(format!("{name:?}: binary (-bin) headers are not supported"));
    }
    if name.starts_with("grpc-")
        || ["content-type", "te", "user-agent", "host", "connection"].contains(&name)
    {
        return Err(format!("{name:?} is reserved by gRPC or HTTP/2"));
    }
    Ok(())
}

impl Default for Execution {
    fn default() -> Self {
        let mut platform = std::collections::BTreeMap::new();
        // The REAPI platform lexicon's spelling, which clients built on it
        // send, and the capitalised one that Bazel users write.
        platform.insert(
            "OSFamily".to_owned(),
            OneOrMany::Many(vec!["linux".to_owned(), "Linux".to_owned()]),
        );
        platform.insert(
            "ISA".to_owned(),
            OneOrMany::One(std::env::consts::ARCH.replace('_', "-")),
        );
        Execution {
            enabled: true,
            max_concurrent_actions: 0,
            default_timeout: DurationValue(Duration::from_secs(15 * 60)),
            max_timeout: DurationValue(Duration::from_secs(3 * 3600)),
            kill_grace: DurationValue(Duration::from_secs(2)),
            platform,
            max_running_per_user: 0,
            max_queued_per_user: 10_000,
            unwatched_timeout: DurationValue(Duration::from_secs(30)),
            require_toolchain: false,
            repeat: 0,
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            read_only_paths: None,
            tmp_size: ByteSize(1 << 30),
            uid_range_start: 0x7000_0000,
            uid_range_count: 65536,
            allow_host_network: false,
            open_files: crate::sandbox::rlimits::DEFAULT_OPEN_FILES,
            stack_size: ByteSize(crate::sandbox::rlimits::DEFAULT_STACK_SIZE),
            nice: 0,
            max_read_only_inputs: 65536,
            max_file_size: ByteSize(crate::sandbox::rlimits::DEFAULT_FILE_SIZE),
            max_exec_root_size: ByteSize(32 << 30),
            private_inputs: PrivateInputs::Never,
        }
    }
}

impl Sandbox {
    /// The paths in effect: the configured list, or the built-in one:
    /// `/nix/store` where it exists, plus `/usr /bin /lib /lib64` on hosts
    /// that are not NixOS (so Bazel's auto-configured toolchain works).
    pub fn read_only_paths(&self) -> Vec<PathBuf> {
        if let Some(paths) = &self.read_only_paths {
            return paths.clone();
        }
        let mut out = Vec::new();
        if Path::new("/nix/store").is_dir() {
            out.push(PathBuf::from("/nix/store"));
        }
        if !Path::new("/etc/NIXOS").exists() {
            for p in ["/usr", "/bin", "/lib", "/lib64"] {
                if Path::new(p).exists() {
                    out.push(PathBuf::from(p));
                }
            }
        }
        out
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Cgroup {
            memory_max: ByteSize(0),
            swap_max: ByteSize(0),
            pids_max: 0,
            cpu_max: 0.0,
            require_controllers: false,
            unenforceable_limits: UnenforceableLimits::Warn,
        }
    }
}

/// The policy for action-cache writes by callers who are not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UntrustedWrites {
    /// The write goes to the caller's private view of the cache.
    Private,
    /// The write is refused with PERMISSION_DENIED.
    Deny,
}

/// Who may use a daemon, and whose cache writes are shared, when the file
/// does not say: a system (root) daemon serves every local user and trusts
/// root; a per-user daemon serves and trusts its owner alone, since every
/// action it runs runs as that owner.
fn default_users() -> (Vec<String>, Vec<String>) {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        (vec!["*".into()], vec!["root".into()])
    } else {
        (vec![uid.to_string()], vec![uid.to_string()])
    }
}

impl Default for Config {
    fn default() -> Self {
        let (allowed_users, trusted_users) = default_users();
        Config {
            state_dir: None,
            instance_names: vec![String::new()],
            instances: BTreeMap::new(),
            allowed_users,
            trusted_users,
            untrusted_action_cache_writes: UntrustedWrites::Private,
            idle_timeout: DurationValue(Duration::from_secs(600)),
            log_level: "info".into(),
            listen: Listen::default(),
            store: Store::default(),
            action_cache: ActionCache::default(),
            execution: Execution::default(),
            sandbox: Sandbox::default(),
            cgroup: Cgroup::default(),
            upstream: Upstream::default(),
            limits: Limits::default(),
            metrics: Metrics::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            unix: None,
            // A per-user daemon's socket is its owner's alone.
            unix_mode: FileMode(if nix::unistd::geteuid().is_root() {
                0o666
            } else {
                0o600
            }),
            tcp: vec![SocketAddr::from(([127, 0, 0, 1], 50051))],
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Store {
            max_size: ByteSize(10 << 30),
            high_watermark: 90,
            low_watermark: 80,
            fsync: false,
            max_batch_size: ByteSize(4 << 20),
            per_user_max_size: None,
        }
    }
}

impl Default for ActionCache {
    fn default() -> Self {
        ActionCache {
            inline_max_size: ByteSize(1 << 20),
        }
    }
}

/// A configuration error, with the place it was found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}{place}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        /// `:LINE` when the key appears in the file, empty otherwise.
        place: String,
        /// The dotted key (`store.low-watermark`) when it appears in the
        /// file, the bare key otherwise.
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` is used only in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let start = e.span().map(|span| span.start);
            let (line, column) = start
                .map(|start| line_and_column(text, start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: messages::describe(text, start, e.message()),
            }
        })?;
        config.validate(text, path)?;
        config.resolve_defaults();
        Ok(config)
    }

    /// As [`Config::load`], with the warnings for values that are accepted
    /// but probably not meant (see [`ConfigWarning`]).
    pub fn load_with_warnings(path: &Path) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text, path)?;
        let warnings = checks::warnings(&config, &text, path);
        Ok((config, warnings))
    }

    /// The file at `path`, or the built-in configuration when none is given.
    pub fn load_or_builtin(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Config::load(path),
            None => Ok(Config::builtin()),
        }
    }

    /// The built-in configuration used when no file is given.
    pub fn builtin() -> Config {
        let mut config = Config::default();
        config.resolve_defaults();
        config
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| invalid_at(text, path, key, message);
        checks::check(self).map_err(|(key, message)| invalid(key, message))?;
        let s = &self.store;
        if !(1..=100).contains(&s.high_watermark) {
            return Err(invalid(
                "high-watermark",
                format!("{} is not a percentage from 1 to 100", s.high_watermark),
            ));
        }
        if s.low_watermark >= s.high_watermark {
            return Err(invalid(
                "low-watermark",
                format!(
                    "{} must be below high-watermark ({})",
                    s.low_watermark, s.high_watermark
                ),
            ));
        }
        if s.max_batch_size.0 < 4 << 20 {
            return Err(invalid(
                "max-batch-size",
                format!(
                    "{} bytes is below the 4 MiB that clients may assume",
                    s.max_batch_size.0
                ),
            ));
        }
        if s.max_batch_size.0 > 64 << 20 {
            return Err(invalid(
                "max-batch-size",
                format!("{} bytes is above the 64 MiB maximum", s.max_batch_size.0),
            ));
        }
        if self.instance_names.is_empty() && self.instances.is_empty() {
            return Err(invalid(
                "instance-names",
                "the list is empty and there is no [instances] table, so no request could be served"
                    .into(),
            ));
        }
        for name in &self.instance_names {
            if let Err(why) = crate::resource::check_instance_name(name) {
                return Err(invalid("instance-names", format!("{name:?}: {why}")));
            }
        }
        for name in self.instances.keys() {
            if let Err(why) = crate::resource::check_instance_name(name) {
                return Err(invalid("instances", format!("[instances.{name:?}]: {why}")));
            }
        }
        for (key, list) in [
            ("allowed-users", &self.allowed_users),
            ("trusted-users", &self.trusted_users),
        ] {
            for entry in list {
                if entry.is_empty() || entry == "@" {
                    return Err(invalid(key, format!("{entry:?} names no user or group")));
                }
            }
        }
        for addr in &self.listen.tcp {
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    "tcp",
                    format!(
                        "{addr} is not a loopback address; callers are identified only on loopback"
                    ),
                ));
            }
        }
        if self.execution.max_timeout.0.is_zero() {
            return Err(invalid("max-timeout", "must be longer than zero".into()));
        }
        if self.execution.default_timeout.0.is_zero() {
            return Err(invalid(
                "default-timeout",
                "must be longer than zero".into(),
            ));
        }
        if self.execution.default_timeout.0 > self.execution.max_timeout.0 {
            return Err(invalid(
                "default-timeout",
                format!(
                    "{}s is longer than max-timeout ({}s)",
                    self.execution.default_timeout.0.as_secs(),
                    self.execution.max_timeout.0.as_secs()
                ),
            ));
        }
        let (start, count) = (self.sandbox.uid_range_start, self.sandbox.uid_range_count);
        if start == 0 {
            return Err(invalid(
                "uid-range-start",
                "0 would run actions as root; start the range above every real user".into(),
            ));
        }
        if count == 0 || start.checked_add(count).is_none() {
            return Err(invalid(
                "uid-range-count",
                format!("the range {start}+{count} must be non-empty and fit in 32 bits"),
            ));
        }
        if let Some(paths) = &self.sandbox.read_only_paths {
            for p in paths {
                if !p.is_absolute()
                    || p.components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(invalid(
                        "read-only-paths",
                        format!("{} is not an absolute path without ..", p.display()),
                    ));
                }
                if p == Path::new("/") {
                    return Err(invalid(
                        "read-only-paths",
                        "/ would expose the whole host".into(),
                    ));
                }
            }
        }
        if self.sandbox.open_files < 64 {
            return Err(invalid(
                "open-files",
                format!(
                    "{} descriptors are too few for any program",
                    self.sandbox.open_files
                ),
            ));
        }
        if self.sandbox.stack_size.0 < 64 << 10 {
            return Err(invalid(
                "stack-size",
                format!(
                    "{} bytes are too few for any program",
                    self.sandbox.stack_size.0
                ),
            ));
        }
        if !(-20..=19).contains(&self.sandbox.nice) {
            return Err(invalid(
                "nice",
                format!("{} is not a nice value from -20 to 19", self.sandbox.nice),
            ));
        }
        if !(self.cgroup.cpu_max >= 0.0 && self.cgroup.cpu_max.is_finite()) {
            return Err(invalid(
                "cpu-max",
                format!("{} is not a number of cores", self.cgroup.cpu_max),
            ));
        }
        if let Err(message) = self.metrics.endpoint() {
            return Err(invalid("listen", message));
        }
        if let Err((key, message)) = self.upstream.check() {
            return Err(invalid(key, message));
        }
        if let Err((key, message)) = self.limits.check() {
            return Err(invalid(key, message));
        }
        if self.listen.unix_mode.0 & !0o777 != 0 {
            return Err(invalid(
                "unix-mode",
                format!("{:o} has bits outside 0777", self.listen.unix_mode.0),
            ));
        }
        Ok(())
    }

    /// Fills in the defaults that depend on who runs the daemon.
    fn resolve_defaults(&mut self) {
        let root = nix::unistd::geteuid().is_root();
        if self.state_dir.is_none() {
            self.state_dir = Some(default_state_dir(root));
        }
        match &self.listen.unix {
            None => self.listen.unix = Some(default_socket(root)),
            Some(p) if p.as_os_str().is_empty() => self.listen.unix = None,
            Some(_) => {}
        }
    }

    /// Every instance name served and its settings: `instance-names`
    /// with the defaults, then the `[instances]` tables.
    pub fn served_instances(&self) -> BTreeMap<String, Instance> {
        let mut served: BTreeMap<String, Instance> = self
            .instance_names
            .iter()
            .map(|name| (name.clone(), Instance::default()))
            .collect();
        served.extend(self.instances.clone());
        served
    }

    pub fn state_dir(&self) -> &Path {
        self.state_dir
            .as_deref()
            .expect("state_dir is resolved when the config is built")
    }
}

fn default_state_dir(root: bool) -> PathBuf {
    // systemd's StateDirectory= tells us where it made the directory.
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // It may be a colon-separated list; ours is the first.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !first.is_empty() {
            return PathBuf::from(first);
        }
    }
    if root {
        return PathBuf::from("/var/lib/nativelink-lre");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| {
            PathBuf::from(format!("/tmp/nativelink-lre-{}", nix::unistd::geteuid()))
        });
    cache.join("nativelink-lre")
}

/// The system daemon's unix socket (the packaged socket unit's).
pub const SYSTEM_SOCKET: &str = "/run/nativelink-lre/socket";

/// The system daemon's configuration file, where the NixOS module writes
/// it. The daemon reads only the file given with `--config`; the client
/// commands read this one to find a system daemon that listens elsewhere.
pub const SYSTEM_CONFIG: &str = "/etc/nativelink-lre/config.toml";

fn default_socket(root: bool) -> PathBuf {
    if root {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(format!("/tmp/nativelink-lre-{}", nix::unistd::geteuid()))
        });
    runtime.join("nativelink-lre").join("socket")
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// An [`ConfigError::Invalid`] for `key` (a bare key such as
/// `low-watermark`), placed at the line where the file sets it.
fn invalid_at(text: &str, path: &Path, key: &str, message: String) -> ConfigError {
    let line = find_key(text, key);
    ConfigError::Invalid {
        path: path.to_owned(),
        place: line.map(|line| format!(":{line}")).unwrap_or_default(),
        key: line
            .and_then(|line| messages::key_path_at(text, line_offset(text, line)))
            .unwrap_or_else(|| key.to_owned()),
        message,
    }
}

/// The byte offset where line `line` (1-based) starts.
fn line_offset(text: &str, line: usize) -> usize {
    text.split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum()
}

/// The line on which `key = …` is written, if it is.
fn find_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.instance_names, vec![String::new()]);
        assert_eq!(c.store.max_batch_size, ByteSize(4 << 20));
        assert!(c.state_dir.is_some());
        assert!(c.listen.unix.is_some());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("instance-names = [\"\"]\n\n[store]\nmax-sise = 5\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("test.toml:4:1"), "{msg}");
        assert!(msg.contains("max-sise"), "{msg}");
    }

    #[test]
    fn unknown_top_level_key_is_an_error() {
        let msg = parse("stat-dir = \"/x\"\n").unwrap_err().to_string();
        assert!(
            msg.contains("test.toml:1:1") && msg.contains("stat-dir"),
            "{msg}"
        );
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c = parse(
            "idle-timeout = \"2m\"\n[store]\nmax-size = \"3GiB\"\n[action-cache]\ninline-max-size = 4096\n",
        )
        .unwrap();
        assert_eq!(c.idle_timeout.0, Duration::from_secs(120));
        assert_eq!(c.store.max_size.0, 3 << 30);
        assert_eq!(c.action_cache.inline_max_size.0, 4096);
    }

    #[test]
    fn bad_size_names_line() {
        let msg = parse("[store]\nmax-size = \"3 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("test.toml:2:") && msg.contains("parsecs"),
            "{msg}"
        );
    }

    #[test]
    fn watermarks_are_checked() {
        let msg = parse("[store]\nhigh-watermark = 50\nlow-watermark = 60\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("test.toml:3") && msg.contains("low-watermark"),
            "{msg}"
        );
    }

    #[test]
    fn non_loopback_tcp_is_refused() {
        let msg = parse("[listen]\ntcp = [\"0.0.0.0:50051\"]\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("loopback"), "{msg}");
    }

    #[test]
    fn empty_unix_path_disables_the_socket() {
        let c = parse("[listen]\nunix = \"\"\n").unwrap();
        assert!(c.listen.unix.is_none());
    }

    #[test]
    fn execution_sections_parse_and_validate() {
        let c = parse(
            "[execution]\nmax-concurrent-actions = 3\nplatform = { OSFamily = \"Linux\", pool = [\"a\", \"b\"] }\n[sandbox]\nread-only-paths = [\"/usr\"]\n[cgroup]\nmemory-max = \"1GiB\"\ncpu-max = 1.5\n",
        )
        .unwrap();
        assert_eq!(c.execution.max_concurrent_actions, 3);
        assert!(c.execution.platform["pool"].contains("b"));
        assert_eq!(c.sandbox.read_only_paths(), vec![PathBuf::from("/usr")]);
        assert_eq!(c.cgroup.memory_max.0, 1 << 30);
        let msg = parse("[sandbox]\nread-only-paths = [\"usr\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("read-only-paths") && msg.contains(":2"),
            "{msg}"
        );
        let msg = parse("[execution]\ndefault-timeout = \"2h\"\nmax-timeout = \"1h\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("default-timeout"), "{msg}");
    }

    #[test]
    fn reserved_instance_name_is_refused() {
        let msg = parse("instance-names = [\"main/blobs\"]\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("instance-names"), "{msg}");
    }

    #[test]
    fn upstream_is_validated_key_by_key() {
        let c = parse("[upstream]\nendpoint = \"grpcs://cache.example.com:443\"\nheaders = { \"x-team\" = \"a\" }\n").unwrap();
        assert_eq!(
            c.upstream.endpoint(),
            Some(Endpoint::Grpcs("cache.example.com:443".into()))
        );
        assert_eq!(
            c.upstream.endpoint().unwrap().host(),
            Some("cache.example.com")
        );
        assert_eq!(parse("").unwrap().upstream.endpoint(), None);
        assert_eq!(
            Endpoint::parse("unix:///run/x.sock"),
            Ok(Endpoint::Unix("/run/x.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("grpc://[::1]:8980").unwrap().host(),
            Some("::1")
        );
        for (text, key, why) in [
            ("endpoint = \"http://x:1\"", "endpoint", "grpc://"),
            ("endpoint = \"grpc://x\"", "endpoint", "no port"),
            ("endpoint = \"unix:rel/sock\"", "endpoint", "absolute"),
            (
                "endpoint = \"grpc://x:1\"\ntls-ca-file = \"/ca.pem\"",
                "tls-ca-file",
                "grpcs://",
            ),
            (
                "endpoint = \"grpcs://x:1\"\ntls-client-cert = \"/c.pem\"",
                "tls-client-cert",
                "tls-client-key",
            ),
            (
                "endpoint = \"grpc://x:1\"\nheaders = { \"Authorization\" = \"t\" }",
                "headers",
                "not a header name",
            ),
            (
                "endpoint = \"grpc://x:1\"\nheaders = { \"grpc-timeout\" = \"1\" }",
                "headers",
                "reserved",
            ),
            (
                "endpoint = \"grpc://x:1\"\nheader-files = { authorization = \"token\" }",
                "header-files",
                "absolute",
            ),
            (
                "endpoint = \"grpc://x:1\"\nmax-concurrent-calls = 0",
                "max-concurrent-calls",
                "at least 1",
            ),
            (
                "endpoint = \"grpc://x:1\"\nretry-min = \"2m\"\nretry-max = \"1m\"",
                "retry-min",
                "retry-max",
            ),
        ] {
            let msg = parse(&format!("[upstream]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(key) && msg.contains(why) && msg.contains("test.toml:"),
                "{text}: {msg}"
            );
        }
        let msg = parse("[upstream]\nendpont = \"grpc://x:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("test.toml:2:1") && msg.contains("endpont"),
            "{msg}"
        );
    }
}
