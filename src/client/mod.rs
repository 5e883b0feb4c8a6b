//! The client side of the command line: `run`, `status`, `gc` and
//! `verify` talk to a running daemon over its socket.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use prost::Message;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::digest::Digest;
use crate::proto::bytestream::{self, byte_stream_client::ByteStreamClient};
use crate::proto::google::longrunning::operation;
use crate::proto::nativelink_lre::v1::{self as admin, ResourceUsage, admin_client::AdminClient};
use crate::proto::reapi::{
    self, content_addressable_storage_client::ContentAddressableStorageClient,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
}

/// Connects to `unix:///path`, `unix:/path` or `grpc://host:port`.
pub async fn connect(address: &str) -> Result<Channel, ClientError> {
    let err = |reason: String| ClientError::Connect {
        address: address.to_owned(),
        reason,
    };
    if let Some(path) = address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
    {
        let path = path.to_owned();
        return Endpoint::from_static("http://nativelink-lre.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await
            .map_err(|e| err(source_chain(&e)));
    }
    let rest = address
        .strip_prefix("grpc://")
        .or_else(|| address.strip_prefix("http://"))
        .ok_or_else(|| err("use unix:///PATH or grpc://HOST:PORT".into()))?;
    Endpoint::from_shared(format!("http://{rest}"))
        .map_err(|e| err(e.to_string()))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| err(source_chain(&e)))
}

pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// What `run --json` prints.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub exit_code: i32,
    pub status_code: i32,
    pub status_message: String,
    pub stdout: String,
    pub stderr: String,
    pub wall_ms: u64,
    pub cpu_usage_usec: u64,
    pub memory_peak_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub pids_max_events: Option<u64>,
    pub resource_source: String,
}

/// Runs `args` in the daemon's sandbox with an empty input root. The cache
/// is not consulted and the result is not cached.
pub async fn run(
    ch: &Channel,
    args: &[String],
    timeout: Option<Duration>,
    properties: &[(String, String)],
) -> Result<RunReport, ClientError> {
    let command = reapi::Command {
        arguments: args.to_vec(),
        environment_variables: vec![reapi::command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        ..Default::default()
    };
    let root = reapi::Directory::default();
    let action = reapi::Action {
        command_digest: Some(Digest::of_message(&command).to_proto()),
        input_root_digest: Some(Digest::of_message(&root).to_proto()),
        timeout: timeout.map(|t| prost_types::Duration {
            seconds: t.as_secs() as i64,
            nanos: t.subsec_nanos() as i32,
        }),
        do_not_cache: true,
        platform: (!properties.is_empty()).then(|| reapi::Platform {
            properties: properties
                .iter()
                .map(|(name, value)| reapi::platform::Property {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }),
        ..Default::default()
    };
    let blobs = [
        command.encode_to_vec(),
        root.encode_to_vec(),
        action.encode_to_vec(),
    ];
    let action_digest = Digest::of_bytes(&blobs[2]);
    ContentAddressableStorageClient::new(ch.clone())
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: blobs
                .iter()
                .map(|b| reapi::batch_update_blobs_request::Request {
                    digest: Some(Digest::of_bytes(b).to_proto()),
                    data: b.clone().into(),
                    compressor: 0,
                })
                .collect(),
            ..Default::default()
        })
        .await?;
    let mut stream = reapi::execution_client::ExecutionClient::new(ch.clone())
        .execute(reapi::ExecuteRequest {
            action_digest: Some(action_digest.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(op) = stream.message().await? {
        last = Some(op);
    }
    let response = match last.and_then(|op| op.result) {
        Some(operation::Result::Response(any)) => {
            reapi::ExecuteResponse::decode(any.value.as_slice())
                .map_err(|e| ClientError::Protocol(format!("bad ExecuteResponse: {e}")))?
        }
        Some(operation::Result::Error(s)) => {
            return Err(ClientError::Protocol(format!(
                "operation failed: {}",
                s.message
            )));
        }
        None => {
            return Err(ClientError::Protocol(
                "the operation ended without a result".into(),
            ));
        }
    };
    let status = response.status.unwrap_or_default();
    let mut report = RunReport {
        exit_code: -1,
        status_code: status.code,
        status_message: status.message,
        stdout: String::new(),
        stderr: String::new(),
        wall_ms: 0,
        cpu_usage_usec: 0,
        memory_peak_bytes: None,
        oom_kills: None,
        pids_max_events: None,
        resource_source: "none".into(),
    };
    let Some(result) = response.result else {
        return Ok(report);
    };
    report.exit_code = result.exit_code;
    report.stdout = read_text(ch, result.stdout_digest.as_ref()).await?;
    report.stderr = read_text(ch, result.stderr_digest.as_ref()).await?;
    if let Some(meta) = result.execution_metadata {
        if let (Some(a), Some(b)) = (
            meta.execution_start_timestamp,
            meta.execution_completed_timestamp,
        ) {
            let ms =
                |t: prost_types::Timestamp| t.seconds as i128 * 1000 + t.nanos as i128 / 1_000_000;
            report.wall_ms = (ms(b) - ms(a)).max(0) as u64;
        }
        if let Some(usage) = meta
            .auxiliary_metadata
            .iter()
            .find(|a| a.type_url.ends_with("/nativelink_lre.v1.ResourceUsage"))
            .and_then(|a| ResourceUsage::decode(a.value.as_slice()).ok())
        {
            report.cpu_usage_usec = usage.cpu_usage_usec;
            report.memory_peak_bytes = usage.memory_peak_bytes;
            report.oom_kills = usage.oom_kills;
            report.pids_max_events = usage.pids_max_events;
            report.resource_source = usage.source;
        }
    }
    Ok(report)
}

async fn read_text(ch: &Channel, digest: Option<&reapi::Digest>) -> Result<String, ClientError> {
    let Some(d) = digest else {
        return Ok(String::new());
    };
    if d.size_bytes == 0 {
        return Ok(String::new());
    }
    let mut stream = ByteStreamClient::new(ch.clone())
        .read(bytestream::ReadRequest {
            resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
            read_offset: 0,
            read_limit: 0,
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await? {
        data.extend_from_slice(&chunk.data);
    }
    Ok(String::from_utf8_lossy(&data).into_owned())
}

pub async fn status(ch: &Channel) -> Result<admin::StatusResponse, ClientError> {
    Ok(AdminClient::new(ch.clone())
        .status(admin::StatusRequest {})
        .await?
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
        .await?
        .into_inner())
}

pub async fn verify(ch: &Channel) -> Result<admin::VerifyResponse, ClientError> {
    Ok(AdminClient::new(ch.clone())
        .verify(admin::VerifyRequest {})
        .await?
        .into_inner())
}

fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// `status` as a person reads it.
fn format_upstream(u: &admin::UpstreamStatus) -> String {
    let on = |b: bool| if b { "on" } else { "off" };
    let mut out = format!(
        "upstream: {}{} is {}",
        u.endpoint,
        if u.instance_name.is_empty() {
            String::new()
        } else {
            format!(" (instance {:?})", u.instance_name)
        },
        u.state
    );
    if u.state == "down" {
        out += &format!(
            " for {}s: {}; next retry in {}s",
            u.down_seconds, u.error, u.next_retry_seconds
        );
    }
    out += &format!(
        "\n  read-through {}, write-back {}, remote execution {}\n",
        on(u.read_through),
        on(u.write_back),
        on(u.remote_execution)
    );
    out += &format!(
        "  action cache: {} hits, {} misses; fetched {} blobs ({}), {} rejected\n",
        u.action_cache_hits,
        u.action_cache_misses,
        u.blobs_fetched,
        gib(u.bytes_fetched),
        u.blobs_rejected
    );
    if u.write_back {
        out += &format!(
            "  write-back: {} pushed ({} blobs), {} queued, {} dropped, {} failed\n",
            u.pushes_done, u.blobs_pushed, u.pushes_queued, u.pushes_dropped, u.pushes_failed
        );
    }
    if u.remote_execution {
        out += &format!(
            "  remote execution: {} sent, {} ran locally instead\n",
            u.remote_executions, u.remote_fallbacks
        );
    }
    if !u.last_error.is_empty() {
        out += &format!(
            "  last error: {} ({} failed calls)\n",
            u.last_error, u.calls_failed
        );
    }
    out
}

pub fn format_status(s: &admin::StatusResponse) -> String {
    let mut out = String::new();
    let lookups = s.action_cache_hits + s.action_cache_misses;
    let rate = if lookups == 0 {
        "no lookups yet".to_owned()
    } else {
        format!(
            "{:.1}% ({} of {} lookups)",
            100.0 * s.action_cache_hits as f64 / lookups as f64,
            s.action_cache_hits,
            lookups
        )
    };
    out += &format!("nativelink-lre {}, up {}s\n", s.version, s.uptime_seconds);
    out += &format!("state directory: {}\n", s.state_dir);
    out += &format!(
        "store: {}{} of {}\n",
        gib(s.store_bytes),
        if s.store_bytes_exact {
            ""
        } else {
            " (still counting)"
        },
        gib(s.store_limit_bytes)
    );
    out += &format!("action cache hit rate: {rate}\n");
    if s.store_per_user_max > 0 {
        out += &format!("store share per user: {} bytes\n", s.store_per_user_max);
    }
    for u in &s.store_by_user {
        out += &format!("  uid {}: {} bytes\n", u.uid, u.bytes);
    }
    out += &format!("connections: {}\n", s.connections);
    if let Some(u) = &s.upstream {
        out += &format_upstream(u);
    }
    if !s.execution_enabled {
        out += "execution: disabled\n";
        return out;
    }
    out += &format!(
        "execution: {} executed, {} answered from the cache; {} of {} slots running, {} waiting\n",
        s.actions_executed,
        s.execute_cache_hits,
        s.running_count,
        s.max_concurrent_actions,
        s.queued_count
    );
    if s.only_own {
        out += "  (only your own operations are listed: you are not in trusted-users)\n";
    }
    for r in &s.running {
        let users: Vec<String> = r
            .uids
            .iter()
            .map(|u| {
                if *u < 0 {
                    "anonymous".into()
                } else {
                    format!("uid {u}")
                }
            })
            .collect();
        out += &format!(
            "  {} {} ({}) for {}\n",
            r.stage,
            r.action_digest,
            r.operation,
            users.join(", ")
        );
    }
    for q in &s.queued {
        let who = q.uid.map_or("anonymous".to_owned(), |u| format!("uid {u}"));
        out += &format!("  queued: {} for {who}\n", q.count);
    }
    out += &format!("namespaces: {}\n", s.namespaces.join(", "));
    out += &format!(
        "identity: {}\n",
        if s.per_action_uids {
            "each action runs as its own host uid"
        } else {
            "every action runs as the daemon's uid"
        }
    );
    let active = if s.cgroup_controllers.is_empty() {
        "none".to_owned()
    } else {
        s.cgroup_controllers.join(", ")
    };
    if !s.sandbox_error.is_empty() {
        out += &format!("sandbox: NOT WORKING, actions fail: {}\n", s.sandbox_error);
    }
    for p in &s.sandbox_protections {
        let state = if p.in_force {
            "in force"
        } else {
            "NOT in force"
        };
        out += &format!("sandbox {}: {state} ({})\n", p.name, p.detail);
    }
    out += &format!("cgroup limits: {active}");
    if !s.cgroup_missing.is_empty() {
        out += &format!(" (unavailable: {})", s.cgroup_missing.join(", "));
    }
    if !s.cgroup_base.is_empty() {
        out += &format!(" under {}", s.cgroup_base);
    }
    out.push('\n');
    out
}
