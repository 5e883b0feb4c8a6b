//! The cache-RPC rows of issue 17 that the first storage sections do not
//! cover: BatchUpdateBlobs of 1000 × 1 KiB on tmpfs, Execute answered from
//! the cache next to a GetActionResult hit, and GetActionResult under 200
//! concurrent clients.

use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use prost::bytes::Bytes;
use tonic::transport::Channel;

use nativelink_lre::digest::Digest;
use nativelink_lre::proto::google::longrunning::operation;
use nativelink_lre::proto::reapi::{
    self, action_cache_client::ActionCacheClient,
    content_addressable_storage_client::ContentAddressableStorageClient as CasClient,
    execution_client::ExecutionClient,
};

use super::common::exec::upload;
use super::common::{Daemon, Listen, unix_channel};
use super::report::{Table, p50, pct, sorted, us, verdict};

const BATCH: usize = 1000;
const BATCH_BLOB: usize = 1024;
const BATCH_WARMUP: usize = 3;
const BATCH_CALLS: usize = 20;
const EXEC_CALLS: usize = 2000;
const EXEC_ROUND: usize = 250;
const CLIENTS: usize = 200;
const CLIENT_WARMUP: usize = 5;
const CLIENT_CALLS: usize = 50;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// BatchUpdateBlobs of 1000 new 1 KiB blobs per call, state on tmpfs
/// (`$LRE_BENCH_TMPFS_DIR`, default /dev/shm), over the unix socket.
pub fn batch_update_tmpfs(rt: &tokio::runtime::Runtime, bin: &Path, run: &Path, table: &mut Table) {
    let base = std::env::var_os("LRE_BENCH_TMPFS_DIR").unwrap_or_else(|| "/dev/shm".into());
    if base.is_empty() {
        eprintln!("  LRE_BENCH_TMPFS_DIR is empty: skipping BatchUpdateBlobs on tmpfs");
        return;
    }
    let tmpfs = tempfile::Builder::new()
        .prefix("lre-bench-batch")
        .tempdir_in(&base)
        .expect("a directory on tmpfs");
    let state = tmpfs.path().join("state");
    let mut d = Daemon::launch(bin, run, &state, "batch", Listen::Unix, "");
    d.wait_ready(Duration::from_secs(60));
    // The store index is built in the background; measure the steady state.
    let _ = d.wait_log("store index ready", Duration::from_secs(10));
    let times = rt.block_on(async {
        let ch = d.unix().await;
        let mut client = CasClient::new(ch);
        let mut times = Vec::new();
        for call in 0..BATCH_WARMUP + BATCH_CALLS {
            let requests = (0..BATCH)
                .map(|i| {
                    let mut data = format!("batch {call} blob {i} ").into_bytes();
                    data.resize(BATCH_BLOB, b'.');
                    reapi::batch_update_blobs_request::Request {
                        digest: Some(Digest::of_bytes(&data).to_proto()),
                        data: Bytes::from(data),
                        compressor: 0,
                    }
                })
                .collect();
            let req = reapi::BatchUpdateBlobsRequest {
                requests,
                ..Default::default()
            };
            let t = Instant::now();
            let resp = client
                .batch_update_blobs(req)
                .await
                .expect("BatchUpdateBlobs")
                .into_inner();
            let e = t.elapsed();
            assert!(
                resp.responses
                    .iter()
                    .all(|r| r.status.as_ref().is_some_and(|s| s.code == 0)),
                "a blob was refused"
            );
            if call >= BATCH_WARMUP {
                times.push(e);
            }
        }
        times
    });
    let t = sorted(times);
    table.row(
        format!(
            "BatchUpdateBlobs, {BATCH} new × 1 KiB, tmpfs, unix: median (min, max) of {BATCH_CALLS}"
        ),
        format!(
            "{} ({}, {})",
            ms(pct(&t, 50.0)),
            ms(t[0]),
            ms(t[t.len() - 1])
        ),
        format!(
            "target ≤ 10 ms: {}",
            verdict(pct(&t, 50.0) <= Duration::from_millis(10))
        ),
    );
}

/// Stores an action (Command, empty input root, Action) and a result for
/// it whose output is present; returns the action's digest.
pub async fn seed_cached_action(ch: &Channel) -> Digest {
    let command = reapi::Command {
        arguments: vec!["/bin/true".into()],
        output_paths: vec!["out.txt".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let root = reapi::Directory::default().encode_to_vec();
    let action = reapi::Action {
        command_digest: Some(Digest::of_bytes(&command).to_proto()),
        input_root_digest: Some(Digest::of_bytes(&root).to_proto()),
        ..Default::default()
    }
    .encode_to_vec();
    let out = b"bench execute-hit output".to_vec();
    upload(ch, &[command, root, action.clone(), out.clone()]).await;
    let digest = Digest::of_bytes(&action);
    ActionCacheClient::new(ch.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(digest.to_proto()),
            action_result: Some(reapi::ActionResult {
                output_files: vec![reapi::OutputFile {
                    path: "out.txt".into(),
                    digest: Some(Digest::of_bytes(&out).to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateActionResult");
    digest
}

/// Execute answered from the cache against a GetActionResult hit of the
/// same action, in alternating rounds over the unix socket.
pub async fn execute_hit(ch: &Channel, table: &mut Table) {
    let action = seed_cached_action(ch).await;
    let mut exec = ExecutionClient::new(ch.clone());
    let mut ac = ActionCacheClient::new(ch.clone());
    let get = reapi::GetActionResultRequest {
        action_digest: Some(action.to_proto()),
        ..Default::default()
    };
    let (mut e_times, mut g_times) = (Vec::new(), Vec::new());
    for round in 0..EXEC_CALLS / EXEC_ROUND + 1 {
        for _ in 0..EXEC_ROUND {
            let t = Instant::now();
            let mut stream = exec
                .execute(reapi::ExecuteRequest {
                    action_digest: Some(action.to_proto()),
                    ..Default::default()
                })
                .await
                .expect("Execute")
                .into_inner();
            let mut last = None;
            while let Some(op) = stream.message().await.expect("Execute stream") {
                last = Some(op);
            }
            let e = t.elapsed();
            let op = last.expect("no operation");
            let Some(operation::Result::Response(any)) = op.result else {
                panic!("Execute did not finish: {op:?}");
            };
            let resp = reapi::ExecuteResponse::decode(any.value.as_slice()).unwrap();
            assert!(
                resp.cached_result,
                "Execute was not answered from the cache"
            );
            let t2 = Instant::now();
            ac.get_action_result(get.clone())
                .await
                .expect("GetActionResult");
            let g = t2.elapsed();
            // The first round warms up.
            if round > 0 {
                e_times.push(e);
                g_times.push(g);
            }
        }
    }
    let (e, g) = (p50(e_times.iter().copied()), p50(g_times.iter().copied()));
    table.row(
        format!("Execute answered from the cache, unix, p50 of {EXEC_CALLS} (GetActionResult hit in the same rounds)"),
        format!("{} ({})", us(e), us(g)),
        format!(
            "target ≤ hit + 100 µs: {} (+{} µs)",
            verdict(e <= g + Duration::from_micros(100)),
            e.as_micros() as i64 - g.as_micros() as i64
        ),
    );
}

/// GetActionResult from 200 clients at once, each on its own connection
/// to the unix socket, each making its calls one after another.
pub async fn concurrent_hits(socket: &Path, action: &Digest, table: &mut Table) {
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(unix_channel(socket, None).await);
    }
    let req = reapi::GetActionResultRequest {
        action_digest: Some(action.to_proto()),
        ..Default::default()
    };
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|ch| {
            let req = req.clone();
            tokio::spawn(async move {
                let mut client = ActionCacheClient::new(ch);
                let mut times = Vec::with_capacity(CLIENT_CALLS);
                for i in 0..CLIENT_WARMUP + CLIENT_CALLS {
                    let t = Instant::now();
                    client
                        .get_action_result(req.clone())
                        .await
                        .expect("GetActionResult");
                    if i >= CLIENT_WARMUP {
                        times.push(t.elapsed());
                    }
                }
                times
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = started.elapsed();
    let t = sorted(all);
    let (p50, p99) = (pct(&t, 50.0), pct(&t, 99.0));
    table.row(
        format!("GetActionResult, {CLIENTS} concurrent clients × {CLIENT_CALLS} calls, unix: p50 / p99 (max)"),
        format!("{} / {} ({})", us(p50), us(p99), us(t[t.len() - 1])),
        format!(
            "target p99 ≤ 10× p50: {} ({:.1}×); {:.0} calls/s",
            verdict(p99 <= p50 * 10),
            p99.as_secs_f64() / p50.as_secs_f64(),
            t.len() as f64 / wall.as_secs_f64()
        ),
    );
}
