//! `nativelink-lre run`: one command as an action in the daemon's sandbox,
//! with an empty input root or a local directory as its input root.

use std::path::PathBuf;
use std::time::Duration;

use prost::Message;
use serde::Serialize;
use tonic::transport::Channel;

use super::ClientError;
use super::inputs::{self, Blobs};
use crate::digest::Digest;
use crate::proto::bytestream::{self, byte_stream_client::ByteStreamClient};
use crate::proto::google::longrunning::operation;
use crate::proto::nativelink_lre::v1::ResourceUsage;
use crate::proto::reapi;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The program and its arguments.
    pub args: Vec<String>,
    /// Environment variables besides `PATH=/usr/bin:/bin` (which a `PATH`
    /// here replaces).
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub properties: Vec<(String, String)>,
    /// A local directory uploaded as the input root (empty otherwise).
    pub input: Option<PathBuf>,
    /// Copy the command's output to ours while it runs.
    pub stream: bool,
}

/// What `run --json` prints.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub exit_code: i32,
    pub status_code: i32,
    pub status_message: String,
    /// The daemon's message about the execution (ExecuteResponse.message),
    /// such as a limit it could not enforce.
    pub message: String,
    /// Limits and settings the daemon could not apply to this action.
    pub warnings: Vec<String>,
    pub stdout: String,
    pub stderr: String,
    pub wall_ms: u64,
    pub cpu_usage_usec: u64,
    pub memory_peak_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub pids_max_events: Option<u64>,
    pub resource_source: String,
    /// The output as bytes, and how much of each was already copied to
    /// ours while the command ran (`stream`).
    #[serde(skip)]
    pub stdout_bytes: Vec<u8>,
    #[serde(skip)]
    pub stderr_bytes: Vec<u8>,
    #[serde(skip)]
    pub streamed: (u64, u64),
}

/// The Command: arguments and an environment sorted by name, as REAPI
/// requires, with `PATH` unless the request gives its own.
fn command(req: &RunRequest) -> reapi::Command {
    let mut env: std::collections::BTreeMap<String, String> = req.env.iter().cloned().collect();
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/bin:/bin".into());
    reapi::Command {
        arguments: req.args.clone(),
        environment_variables: env
            .into_iter()
            .map(|(name, value)| reapi::command::EnvironmentVariable { name, value })
            .collect(),
        ..Default::default()
    }
}

/// Runs the request in the daemon's sandbox. The cache is not consulted
/// and the result is not cached.
pub async fn run(ch: &Channel, req: &RunRequest) -> Result<RunReport, ClientError> {
    let mut blobs = Blobs::default();
    let command = command(req);
    let root = match &req.input {
        Some(dir) => inputs::tree(dir, &mut blobs)?,
        None => blobs.add_message(&reapi::Directory::default()),
    };
    let action = reapi::Action {
        command_digest: Some(blobs.add_message(&command).to_proto()),
        input_root_digest: Some(root.to_proto()),
        timeout: req.timeout.map(|t| prost_types::Duration {
            seconds: t.as_secs() as i64,
            nanos: t.subsec_nanos() as i32,
        }),
        do_not_cache: true,
        platform: (!req.properties.is_empty()).then(|| reapi::Platform {
            properties: req
                .properties
                .iter()
                .map(|(name, value)| reapi::platform::Property {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }),
        ..Default::default()
    };
    let action_digest = blobs.add_message(&action);
    blobs.upload(ch).await?;
    let (response, streamed) = execute(ch, action_digest, req.stream).await?;
    let mut report = report(ch, response).await?;
    report.streamed = streamed;
    Ok(report)
}

/// Copies the stream `name` to our stdout or stderr as it comes; returns
/// how many bytes it copied. A stream that ends early (the command already
/// ended) just copies less: the rest comes from the result.
async fn follow(ch: Channel, name: String, to_stderr: bool) -> u64 {
    use std::io::Write;
    let Ok(resp) = ByteStreamClient::new(ch)
        .read(bytestream::ReadRequest {
            resource_name: name,
            read_offset: 0,
            read_limit: 0,
        })
        .await
    else {
        return 0;
    };
    let mut stream = resp.into_inner();
    let mut copied = 0;
    while let Ok(Some(chunk)) = stream.message().await {
        let written = if to_stderr {
            let mut e = std::io::stderr().lock();
            e.write_all(&chunk.data).and_then(|()| e.flush())
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(&chunk.data).and_then(|()| o.flush())
        };
        if written.is_err() {
            break;
        }
        copied += chunk.data.len() as u64;
    }
    copied
}

/// Executes `action`; with `stream`, follows the output streams the
/// daemon names while it runs. Returns the response and the bytes of
/// stdout and stderr copied.
async fn execute(
    ch: &Channel,
    action: Digest,
    stream_output: bool,
) -> Result<(reapi::ExecuteResponse, (u64, u64)), ClientError> {
    let call = "run (Execute)";
    let mut stream = reapi::execution_client::ExecutionClient::new(ch.clone())
        .execute(reapi::ExecuteRequest {
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .map_err(ClientError::rpc(call))?
        .into_inner();
    let mut last = None;
    let mut followers: Option<(tokio::task::JoinHandle<u64>, tokio::task::JoinHandle<u64>)> = None;
    while let Some(op) = stream.message().await.map_err(ClientError::rpc(call))? {
        if stream_output
            && followers.is_none()
            && let Some(meta) = op
                .metadata
                .as_ref()
                .and_then(|m| reapi::ExecuteOperationMetadata::decode(m.value.as_slice()).ok())
            && !meta.stdout_stream_name.is_empty()
        {
            followers = Some((
                tokio::spawn(follow(ch.clone(), meta.stdout_stream_name, false)),
                tokio::spawn(follow(ch.clone(), meta.stderr_stream_name, true)),
            ));
        }
        last = Some(op);
    }
    let streamed = match followers {
        Some((out, err)) => (out.await.unwrap_or(0), err.await.unwrap_or(0)),
        None => (0, 0),
    };
    let response = match last.and_then(|op| op.result) {
        Some(operation::Result::Response(any)) => {
            reapi::ExecuteResponse::decode(any.value.as_slice()).map_err(|e| {
                ClientError::Protocol(format!(
                    "the daemon sent an unreadable ExecuteResponse: {e}"
                ))
            })
        }
        Some(operation::Result::Error(s)) => Err(ClientError::Rpc {
            call,
            status: tonic::Status::new(s.code.into(), s.message),
        }),
        None => Err(ClientError::Protocol(
            "the operation ended without a result".into(),
        )),
    }?;
    Ok((response, streamed))
}

async fn report(ch: &Channel, response: reapi::ExecuteResponse) -> Result<RunReport, ClientError> {
    let status = response.status.unwrap_or_default();
    let mut report = RunReport {
        exit_code: -1,
        status_code: status.code,
        status_message: status.message,
        message: response.message,
        warnings: Vec::new(),
        stdout: String::new(),
        stderr: String::new(),
        wall_ms: 0,
        cpu_usage_usec: 0,
        memory_peak_bytes: None,
        oom_kills: None,
        pids_max_events: None,
        resource_source: "none".into(),
        stdout_bytes: Vec::new(),
        stderr_bytes: Vec::new(),
        streamed: (0, 0),
    };
    let Some(result) = response.result else {
        return Ok(report);
    };
    report.exit_code = result.exit_code;
    report.stdout_bytes = read_blob(ch, result.stdout_digest.as_ref()).await?;
    report.stderr_bytes = read_blob(ch, result.stderr_digest.as_ref()).await?;
    report.stdout = String::from_utf8_lossy(&report.stdout_bytes).into_owned();
    report.stderr = String::from_utf8_lossy(&report.stderr_bytes).into_owned();
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
            report.warnings = usage.warnings;
        }
    }
    Ok(report)
}

async fn read_blob(ch: &Channel, digest: Option<&reapi::Digest>) -> Result<Vec<u8>, ClientError> {
    let Some(d) = digest else {
        return Ok(Vec::new());
    };
    if d.size_bytes == 0 {
        return Ok(Vec::new());
    }
    let call = "run (reading the output)";
    let mut stream = ByteStreamClient::new(ch.clone())
        .read(bytestream::ReadRequest {
            resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .map_err(ClientError::rpc(call))?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(ClientError::rpc(call))? {
        data.extend_from_slice(&chunk.data);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_sorted_and_path_defaults() {
        let c = command(&RunRequest {
            args: vec!["env".into()],
            env: vec![("ZED".into(), "1".into()), ("ALPHA".into(), "2".into())],
            ..Default::default()
        });
        let names: Vec<&str> = c
            .environment_variables
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["ALPHA", "PATH", "ZED"]);
        let c = command(&RunRequest {
            env: vec![("PATH".into(), "/opt/bin".into())],
            ..Default::default()
        });
        assert_eq!(c.environment_variables.len(), 1);
        assert_eq!(c.environment_variables[0].value, "/opt/bin");
    }
}
