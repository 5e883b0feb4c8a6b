//! `[upstream]`: the remote REAPI cluster's endpoint, TLS files, headers,
//! timeouts and routing switches, and the checks that need no file read.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::DurationValue;

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
        if let Some(path) = super::listen::unix_address(s) {
            return path.map(Endpoint::Unix);
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
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
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
