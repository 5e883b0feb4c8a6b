//! The client side of the command line: `run`, `status`, `gc`, `verify`
//! and `doctor` talk to a running daemon over its socket. Errors are
//! sentences for the person at the terminal, each with a hint on what to
//! do, never Rust `Debug` output.

mod format;
mod inputs;
mod run;
pub mod wire;

use std::io;
use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::nativelink_lre::v1::{self as admin, admin_client::AdminClient};

pub use format::{format_check, format_status};
pub use run::{RunReport, RunRequest, run};

/// How long connecting to a daemon may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon could be reached at any of the addresses tried.
    #[error("cannot reach the daemon: {}{}", tried_list(.tried), hint_line(.hint))]
    Connect {
        /// Each address tried, with why it failed.
        tried: Vec<(String, String)>,
        hint: String,
    },
    /// The daemon answered a call with an error status.
    #[error("{call}: {}{}", status_text(.status), hint_line(&status_hint(.call, .status)))]
    Rpc {
        call: &'static str,
        status: tonic::Status,
    },
    /// The daemon answered with something this client cannot use.
    #[error("{0}")]
    Protocol(String),
    /// A local file the command was asked to use.
    #[error("{path}: {source}")]
    Local {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

impl ClientError {
    /// A [`ClientError::Rpc`] maker for `call`, for `map_err`.
    pub fn rpc(call: &'static str) -> impl Fn(tonic::Status) -> ClientError {
        move |status| ClientError::Rpc { call, status }
    }
}

fn tried_list(tried: &[(String, String)]) -> String {
    tried
        .iter()
        .map(|(address, why)| format!("{address}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn hint_line(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("\nhint: {hint}")
    }
}

/// The canonical name of a gRPC code, as gRPC's own tools print it.
pub use crate::metrics::code_name;

/// A status as one sentence: the daemon's message and the code's name; for
/// a transport failure (no message of the daemon's), its innermost cause.
fn status_text(status: &tonic::Status) -> String {
    let message = if status.message().is_empty() {
        std::error::Error::source(status)
            .map(source_chain)
            .unwrap_or_else(|| "no message".into())
    } else {
        status.message().to_owned()
    };
    format!("{message} ({})", code_name(status.code()))
}

fn status_hint(call: &str, status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::PermissionDenied => "only the users in the daemon's trusted-users may do \
            this; ask its administrator, or see nativelink-lre.toml(5)"
            .into(),
        tonic::Code::Unavailable | tonic::Code::Unknown => "the connection to the daemon broke; \
            it may be stopping or restarting: try again, and see its log \
            (journalctl -u nativelink-lre.service)"
            .into(),
        tonic::Code::Unimplemented => format!(
            "this daemon does not offer {call}: execution may be disabled there \
             ([execution] enabled = false), or it is an older version"
        ),
        _ => String::new(),
    }
}

/// The messages of `e` and its sources, each once: libraries often repeat
/// their cause in their own message ("transport error: No such file or
/// directory (os error 2): No such file or directory (os error 2)").
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = inner.source();
    }
    parts.join(": ")
}

/// The innermost I/O error of `e`, if any.
fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut found = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            found = Some(io);
        }
        cur = err.source();
    }
    found
}

/// Why connecting to `address` failed, in words.
fn why_not(address: &str, e: &tonic::transport::Error) -> String {
    let path = unix_path(address);
    match io_cause(e).map(io::Error::kind) {
        Some(io::ErrorKind::NotFound) => "there is no socket there".into(),
        Some(io::ErrorKind::ConnectionRefused) if path.is_some() => {
            "the socket exists but no daemon is listening on it".into()
        }
        Some(io::ErrorKind::ConnectionRefused) => "nothing is listening there".into(),
        Some(io::ErrorKind::PermissionDenied) => {
            let owner = path
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    format!(
                        " (the socket is mode {:o}, owned by uid {})",
                        m.mode() & 0o777,
                        m.uid()
                    )
                })
                .unwrap_or_default();
            format!("permission denied{owner}")
        }
        Some(io::ErrorKind::TimedOut) => "no answer in time".into(),
        _ => source_chain(e),
    }
}

/// The path of a `unix://PATH` or `unix:PATH` address.
pub fn unix_path(address: &str) -> Option<&Path> {
    address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
        .map(Path::new)
}

/// Connects to `unix:///path`, `unix:/path` or `grpc://host:port`. The
/// error says why, in words, and what to try (see [`connect_any`] for
/// several addresses).
pub async fn connect(address: &str) -> Result<Channel, ClientError> {
    connect_any(&[address.to_owned()]).await
}

/// Connects to the first of `addresses` that answers.
pub async fn connect_any(addresses: &[String]) -> Result<Channel, ClientError> {
    let mut tried = Vec::new();
    for address in addresses {
        match connect_one(address).await {
            Ok(ch) => return Ok(ch),
            Err(why) => tried.push((address.clone(), why)),
        }
    }
    let any_unix = addresses.iter().any(|a| unix_path(a).is_some());
    let hint = if tried
        .iter()
        .all(|(_, why)| why.starts_with("permission denied"))
    {
        "the daemon's socket is not open to you: a per-user daemon serves only its owner, \
         and the system daemon's socket is mode 0666 unless its administrator changed it"
            .to_owned()
    } else if any_unix {
        "is the daemon running? Start a daemon of your own with `nativelink-lre`, or the \
         system's with `systemctl start nativelink-lre.socket`; --address picks another one"
            .to_owned()
    } else {
        "is the daemon running and listening there? `nativelink-lre doctor` shows what it \
         listens on"
            .to_owned()
    };
    Err(ClientError::Connect { tried, hint })
}

async fn connect_one(address: &str) -> Result<Channel, String> {
    if let Some(path) = unix_path(address) {
        let path = path.to_owned();
        return Endpoint::from_static("http://nativelink-lre.invalid")
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await
            .map_err(|e| why_not(address, &e));
    }
    let rest = address
        .strip_prefix("grpc://")
        .or_else(|| address.strip_prefix("http://"))
        .ok_or_else(|| {
            "not an address: write unix:///PATH or grpc://HOST:PORT (such as grpc://127.0.0.1:50051)"
                .to_owned()
        })?;
    Endpoint::from_shared(format!("http://{rest}"))
        .map_err(|_| format!("{rest:?} is not HOST:PORT"))?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| why_not(address, &e))
}

pub async fn status(ch: &Channel) -> Result<admin::StatusResponse, ClientError> {
    Ok(AdminClient::new(ch.clone())
        .status(admin::StatusRequest {})
        .await
        .map_err(ClientError::rpc("status"))?
        .into_inner())
}

pub async fn gc(
    ch: &Channel,
    target: Option<u64>,
) -> Result<admin::CollectGarbageResponse, ClientError> {
    Ok(AdminClient::new(ch.clone())
        .collect_garbage(admin::CollectGarbageRequest {
            target_bytes: target,
        })
        .await
        .map_err(ClientError::rpc("gc"))?
        .into_inner())
}

pub async fn verify(ch: &Channel) -> Result<admin::VerifyResponse, ClientError> {
    Ok(AdminClient::new(ch.clone())
        .verify(admin::VerifyRequest {})
        .await
        .map_err(ClientError::rpc("verify"))?
        .into_inner())
}

/// `gc` with progress: `on_progress` sees each progress message. A daemon
/// without the streaming call gets the plain one.
pub async fn gc_with_progress(
    ch: &Channel,
    target: Option<u64>,
    on_progress: impl FnMut(&admin::Progress),
) -> Result<admin::CollectGarbageResponse, ClientError> {
    use admin::collect_garbage_update::Update;
    let call = "gc";
    let request = admin::CollectGarbageRequest {
        target_bytes: target,
    };
    let stream = match AdminClient::new(ch.clone())
        .collect_garbage_with_progress(request)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return gc(ch, target).await,
        Err(s) => return Err(ClientError::rpc(call)(s)),
    };
    until_done(call, stream, on_progress, |m| match m.update? {
        Update::Progress(p) => Some(Step::Progress(p)),
        Update::Done(r) => Some(Step::Done(r)),
    })
    .await
}

/// One message of a stream of progress updates.
enum Step<R> {
    Progress(admin::Progress),
    Done(R),
}

/// Reads a stream of progress updates (`step` tells what each message is)
/// to its final answer.
async fn until_done<M, R>(
    call: &'static str,
    mut stream: tonic::Streaming<M>,
    mut on_progress: impl FnMut(&admin::Progress),
    step: impl Fn(M) -> Option<Step<R>>,
) -> Result<R, ClientError> {
    while let Some(m) = stream.message().await.map_err(ClientError::rpc(call))? {
        match step(m) {
            Some(Step::Progress(p)) => on_progress(&p),
            Some(Step::Done(r)) => return Ok(r),
            None => {}
        }
    }
    Err(ClientError::Protocol(format!(
        "the daemon ended {call} without an answer"
    )))
}

/// `verify` with progress, as [`gc_with_progress`].
pub async fn verify_with_progress(
    ch: &Channel,
    on_progress: impl FnMut(&admin::Progress),
) -> Result<admin::VerifyResponse, ClientError> {
    use admin::verify_update::Update;
    let call = "verify";
    let stream = match AdminClient::new(ch.clone())
        .verify_with_progress(admin::VerifyRequest {})
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return verify(ch).await,
        Err(s) => return Err(ClientError::rpc(call)(s)),
    };
    until_done(call, stream, on_progress, |m| match m.update? {
        Update::Progress(p) => Some(Step::Progress(p)),
        Update::Done(r) => Some(Step::Done(r)),
    })
    .await
}

/// Runs cached actions again without storing the results and compares
/// them (see `execution::check`); calls `each` with every report as it
/// arrives.
pub async fn check(
    ch: &Channel,
    req: admin::CheckRequest,
    mut each: impl FnMut(&admin::ActionCheck),
) -> Result<(), ClientError> {
    let mut stream = AdminClient::new(ch.clone())
        .check(req)
        .await
        .map_err(ClientError::rpc("check"))?
        .into_inner();
    while let Some(report) = stream.message().await.map_err(ClientError::rpc("check"))? {
        each(&report);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_cause_is_shown_once() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "transport error: {}", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(io::Error::from(io::ErrorKind::NotFound));
        let text = source_chain(&e);
        assert_eq!(text.matches("not found").count(), 1, "{text}");
    }

    #[test]
    fn statuses_read_as_sentences() {
        let e = ClientError::Rpc {
            call: "gc",
            status: tonic::Status::permission_denied("uid 4301 may not collect garbage"),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("gc: uid 4301 may not collect garbage (PERMISSION_DENIED)\nhint: "),
            "{text}"
        );
        assert!(
            !text.contains("code:") && !text.contains("message:"),
            "{text}"
        );
    }
}
