//! Faults and hostile clients against the real daemon: a burst of 200
//! clients, descriptors and streams held by one user, clients that stall,
//! a full disk, a torn action-cache entry. Each test makes the fault real
//! (a tmpfs, a low RLIMIT_NOFILE, raw HTTP/2 clients, files truncated
//! while the daemon runs) and checks that everyone else is still served
//! and that each failure carries the right status.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reapi::action_cache_client::ActionCacheClient;

/// Stores a result for `action` whose one output is `output`.
async fn put_result(ch: &tonic::transport::Channel, action: &Digest, output: &[u8]) {
    common::exec::upload(ch, &[output.to_vec()]).await;
    ActionCacheClient::new(ch.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(reapi::ActionResult {
                output_files: vec![reapi::OutputFile {
                    path: "out".into(),
                    digest: Some(Digest::of_bytes(output).to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn get_result(
    ch: &tonic::transport::Channel,
    action: &Digest,
) -> Result<reapi::ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// 200 clients, each on its own TCP connection, all starting at once (as
/// a build with many workers does): their connections must all be
/// admitted without falling into TCP's retransmission timeouts, so the
/// slowest GetActionResult stays within a small multiple of the typical
/// one. (It was the accept loop: it read /proc/net/tcp for every
/// connection, 18 ms each with 800 sockets on the machine, and the
/// backlog of 128 overflowed: p99 1.7-2.5 s against a p50 of 22-52 ms.)
#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_clients_keep_p99_near_p50() {
    const CLIENTS: usize = 200;
    const CALLS: usize = 25;
    let d = Daemon::start("");
    let action = Digest::of_bytes(b"200 clients");
    put_result(&d.tcp().await, &action, b"output of 200 clients").await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let addr = d.tcp;
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let ch = channel_over(stream).await;
            let mut took = Vec::new();
            for _ in 0..CALLS {
                let t = Instant::now();
                get_result(&ch, &action).await.unwrap();
                took.push(t.elapsed());
            }
            took
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let (p50, p99, max) = (
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all[all.len() - 1],
    );
    eprintln!(
        "{CLIENTS} clients x {CALLS} GetActionResult in {:?}: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        start.elapsed()
    );
    assert!(
        p99 <= p50 * 10,
        "p99 {p99:?} is more than 10 times p50 {p50:?} (max {max:?})"
    );
}

use bytestream::byte_stream_client::ByteStreamClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient as CasClient;
use tonic::Code;

/// A ByteStream write of `blob` in 64 KiB messages.
async fn write_blob(ch: &tonic::transport::Channel, blob: &[u8]) -> Result<i64, tonic::Status> {
    let d = Digest::of_bytes(blob);
    let name = upload_name(&d);
    let msgs: Vec<bytestream::WriteRequest> = blob
        .chunks(64 << 10)
        .enumerate()
        .map(|(k, c)| bytestream::WriteRequest {
            resource_name: if k == 0 { name.clone() } else { String::new() },
            write_offset: (k * (64 << 10)) as i64,
            finish_write: (k + 1) * (64 << 10) >= blob.len(),
            data: c.to_vec().into(),
        })
        .collect();
    ByteStreamClient::new(ch.clone())
        .write(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner().committed_size)
}

fn status_json(d: &Daemon) -> serde_json::Value {
    let out = std::process::Command::new(BIN)
        .args(["status", "--json", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count()
}

/// A disk that fills up (a 6 MiB tmpfs under the store): uploads through
/// ByteStream and the batch call and action-cache writes get
/// RESOURCE_EXHAUSTED, not INTERNAL; nothing half-written becomes
/// visible; once space is back, the same uploads work.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_resource_exhausted_and_corrupts_nothing() {
    let mut d = Daemon::prepare("", &[]);
    d.state_on_tmpfs(6 << 20);
    d.spawn();
    let ch = d.unix().await;
    let small = data(1, 100_000);
    assert!(write_blob(&ch, &small).await.is_ok());
    let big = data(2, 8 << 20);
    let err = write_blob(&ch, &big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(find_missing(&ch, &[Digest::of_bytes(&big)]).await.len(), 1);
    // Fill the rest of the disk behind the daemon's back.
    let filler = d.state.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 6 << 20]);
    let blobs: Vec<Vec<u8>> = (0..4).map(|i| data(10 + i, 50_000)).collect();
    let resp = CasClient::new(ch.clone())
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
        .await
        .unwrap()
        .into_inner();
    for r in &resp.responses {
        let code = r.status.as_ref().unwrap().code;
        assert_eq!(code, Code::ResourceExhausted as i32, "{r:?}");
    }
    let ac = ActionCacheClient::new(ch.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(Digest::of_bytes(b"full disk action").to_proto()),
            action_result: Some(reapi::ActionResult::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(ac.code(), Code::ResourceExhausted, "{ac:?}");
    // Space again: the daemon serves as before and the store is whole.
    std::fs::remove_file(&filler).unwrap();
    common::exec::upload(&ch, &blobs).await;
    assert!(find_missing(&ch, &blobs.iter().map(|b| Digest::of_bytes(b)).collect::<Vec<_>>()).await.is_empty());
    assert!(verify_store(&d.state) >= 5);
}

/// An action-cache entry torn on disk while the daemon runs (empty after a
/// power loss, truncated, garbage) is a miss, never a result and never
/// INTERNAL; `verify` finds and removes the torn ones.
#[tokio::test(flavor = "multi_thread")]
async fn torn_action_cache_entries_are_misses_and_verify_finds_them() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let actions: Vec<Digest> = (0..3u8).map(|i| Digest::of_bytes(&[b't', i])).collect();
    for a in &actions {
        put_result(&ch, a, b"torn entry output").await;
        assert!(get_result(&ch, a).await.is_ok());
    }
    let entry = |a: &Digest| {
        d.state
            .join("ac/shared")
            .join(&a.hex()[..2])
            .join(a.hex())
    };
    let whole = std::fs::read(entry(&actions[0])).unwrap();
    std::fs::write(entry(&actions[0]), b"").unwrap();
    std::fs::write(entry(&actions[1]), &whole[..whole.len() / 2]).unwrap();
    let status = get_result(&ch, &actions[0]).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let out = std::process::Command::new(BIN)
        .args(["verify", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("removed 1"), "{text}");
    assert!(text.contains(&actions[1].hex()), "{text}");
    assert_eq!(get_result(&ch, &actions[1]).await.unwrap_err().code(), Code::NotFound);
    assert!(get_result(&ch, &actions[2]).await.is_ok());
    // The action can be cached again.
    put_result(&ch, &actions[0], b"torn entry output").await;
    assert!(get_result(&ch, &actions[0]).await.is_ok());
}

/// QueryWriteStatus: NOT_FOUND for an upload never started; during an open
/// write, the bytes received so far.
#[tokio::test(flavor = "multi_thread")]
async fn query_write_status_is_not_found_or_live() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let blob = data(3, 1 << 20);
    let dg = Digest::of_bytes(&blob);
    let name = upload_name(&dg);
    let query = |name: String| {
        let ch = ch.clone();
        async move {
            ByteStreamClient::new(ch)
                .query_write_status(bytestream::QueryWriteStatusRequest { resource_name: name })
                .await
                .map(|r| r.into_inner())
        }
    };
    let never = query(name.clone()).await.unwrap_err();
    assert_eq!(never.code(), Code::NotFound, "{never:?}");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = ByteStreamClient::new(ch.clone());
    let call = tokio::spawn(async move {
        client.write(tokio_stream::wrappers::ReceiverStream::new(rx)).await
    });
    tx.send(bytestream::WriteRequest {
        resource_name: name.clone(),
        write_offset: 0,
        finish_write: false,
        data: blob[..300_000].to_vec().into(),
    })
    .await
    .unwrap();
    let mut seen = 0;
    for _ in 0..100 {
        seen = query(name.clone()).await.map(|s| s.committed_size).unwrap_or(-1);
        if seen == 300_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 300_000, "QueryWriteStatus during the write");
    tx.send(bytestream::WriteRequest {
        resource_name: String::new(),
        write_offset: 300_000,
        finish_write: true,
        data: blob[300_000..].to_vec().into(),
    })
    .await
    .unwrap();
    drop(tx);
    assert_eq!(call.await.unwrap().unwrap().into_inner().committed_size, dg.size() as i64);
    assert!(query(name).await.unwrap().complete);
}

/// A 1 MB resource name (and a 1 MB digest hash) is INVALID_ARGUMENT with
/// a message that quotes a few hundred characters of it.
#[tokio::test(flavor = "multi_thread")]
async fn huge_client_input_is_quoted_cut() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let names = [
        format!("{}/blobs/{}/5", "i".repeat(1 << 20), "0".repeat(64)),
        format!("blobs/{}/5", "a".repeat(1 << 20)),
    ];
    for name in names {
        let err = ByteStreamClient::new(ch.clone())
            .read(bytestream::ReadRequest {
                resource_name: name,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", &err.message()[..100]);
        assert!(err.message().len() < 1200, "{} bytes", err.message().len());
    }
    let err = ActionCacheClient::new(ch.clone())
        .get_action_result(reapi::GetActionResultRequest {
            instance_name: "n".repeat(1 << 20),
            action_digest: Some(Digest::of_bytes(b"x").to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 1200, "{} bytes", err.message().len());
}
