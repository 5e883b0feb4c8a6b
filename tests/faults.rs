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
