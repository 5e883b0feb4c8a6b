//! Upstream benchmark: what read-through costs, against the real daemon
//! binary on both sides.
//!
//! Run with `cargo bench --bench upstream`. It starts two daemons: the
//! "cluster" and a local one whose `[upstream]` is the cluster's unix
//! socket. It stores N action results in the cluster (each with a 1 KiB
//! output file and a stdout blob), then, over the local daemon's unix
//! socket, measures GetActionResult for each:
//!
//! 1. the first lookup: a local miss, the cluster's GetActionResult, the
//!    fetch of the result's blobs (one BatchReadBlobs), and the local store;
//! 2. the second lookup of the same action: a plain local hit;
//! 3. for scale, the same lookups made directly to the cluster;
//! 4. a miss: not in the local cache nor upstream (NOT_FOUND), through the
//!    local daemon and directly.
//!
//! And FindMissingBlobs of 10,000 digests that only the cluster has, with
//! read-through (the local answer plus one upstream call) and directly.
//!
//! `LRE_BENCH_STATE_DIR=/dir` puts both state directories there (default
//! `$TMPDIR`, else `/tmp`), e.g. `/dev/shm` to take the disk out.
//!
//! Nothing here asserts on timings; see docs/PERFORMANCE.md.

use std::time::{Duration, Instant};

use tonic::transport::Channel;

use nativelink_lre::digest::Digest;
use nativelink_lre::proto::reapi::{
    self, action_cache_client::ActionCacheClient,
    content_addressable_storage_client::ContentAddressableStorageClient as CasClient,
};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/report.rs"]
mod report;
use common::exec::upload;
use common::{Daemon, Listen, daemon_binary};
use report::{Align, Table, pct, sorted, us};

const ACTIONS: usize = 300;
const FIND_MISSING: usize = 10_000;

async fn lookup(ch: &Channel, action: &Digest) -> Duration {
    let t = Instant::now();
    ActionCacheClient::new(ch.clone())
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .expect("a hit");
    t.elapsed()
}

/// A lookup that misses (NOT_FOUND).
async fn miss(ch: &Channel, action: &Digest) -> Duration {
    let t = Instant::now();
    let r = ActionCacheClient::new(ch.clone())
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await;
    assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
    t.elapsed()
}

async fn find_missing(ch: &Channel, digests: &[Digest]) -> (Duration, usize) {
    let t = Instant::now();
    let missing = CasClient::new(ch.clone())
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            blob_digests: digests.iter().map(Digest::to_proto).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
        .len();
    (t.elapsed(), missing)
}

fn row(table: &mut Table, what: &str, v: Vec<Duration>) {
    let s = sorted(v);
    table.row(
        what,
        format!("p50 {} / p99 {}", us(pct(&s, 50.0)), us(pct(&s, 99.0))),
        "",
    );
}

fn main() {
    if report::list_only() {
        return;
    }
    let bin = daemon_binary();
    let base = std::env::var_os("LRE_BENCH_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = common::run_dir("lre-bench-upstream", &base);
    let mut cluster = Daemon::launch(
        &bin,
        dir.path(),
        &dir.path().join("cluster-state"),
        "cluster",
        Listen::Unix,
        "",
    );
    cluster.wait_ready(Duration::from_secs(20));
    let mut local = Daemon::launch(
        &bin,
        dir.path(),
        &dir.path().join("local-state"),
        "local",
        Listen::Unix,
        &format!(
            "[upstream]\nendpoint = \"unix:{}\"\n",
            cluster.socket.display()
        ),
    );
    local.wait_ready(Duration::from_secs(20));
    let rt = report::runtime();
    let mut table = Table::new(Align::Left, 0);
    rt.block_on(async {
        let cch = cluster.unix().await;
        let lch = local.unix().await;
        let mut actions = Vec::new();
        let mut blobs = Vec::new();
        for i in 0..ACTIONS {
            let out = format!("output {i} ").repeat(100).into_bytes();
            let stdout = format!("stdout {i}\n").into_bytes();
            let action = Digest::of_bytes(format!("bench action {i}").as_bytes());
            let result = reapi::ActionResult {
                output_files: vec![reapi::OutputFile {
                    path: "out".into(),
                    digest: Some(Digest::of_bytes(&out).to_proto()),
                    ..Default::default()
                }],
                stdout_digest: Some(Digest::of_bytes(&stdout).to_proto()),
                ..Default::default()
            };
            blobs.push(out);
            blobs.push(stdout);
            actions.push((action, result));
        }
        upload(&cch, &blobs).await;
        for (action, result) in &actions {
            ActionCacheClient::new(cch.clone())
                .update_action_result(reapi::UpdateActionResultRequest {
                    action_digest: Some(action.to_proto()),
                    action_result: Some(result.clone()),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        // Warm both connections (and the upstream's channel).
        lookup(&cch, &actions[0].0).await;
        lookup(&lch, &actions[0].0).await;
        let (mut first, mut second, mut direct) = (Vec::new(), Vec::new(), Vec::new());
        for (action, _) in &actions[1..] {
            first.push(lookup(&lch, action).await);
            second.push(lookup(&lch, action).await);
            direct.push(lookup(&cch, action).await);
        }
        row(
            &mut table,
            "GetActionResult, first (read through, 2 blobs fetched)",
            first,
        );
        row(&mut table, "GetActionResult, again (local hit)", second);
        row(&mut table, "GetActionResult on the cluster itself", direct);
        let (mut through, mut on_cluster) = (Vec::new(), Vec::new());
        for i in 0..ACTIONS {
            let unknown = Digest::of_bytes(format!("nowhere {i}").as_bytes());
            through.push(miss(&lch, &unknown).await);
            on_cluster.push(miss(&cch, &unknown).await);
        }
        row(
            &mut table,
            "GetActionResult miss, read through (NOT_FOUND upstream too)",
            through,
        );
        row(
            &mut table,
            "GetActionResult miss on the cluster itself",
            on_cluster,
        );

        let only_there: Vec<Vec<u8>> = (0..FIND_MISSING)
            .map(|i| format!("cluster-only blob {i}").into_bytes())
            .collect();
        upload(&cch, &only_there).await;
        let digests: Vec<Digest> = only_there.iter().map(|b| Digest::of_bytes(b)).collect();
        let (mut through, mut on_cluster) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            let (t, missing) = find_missing(&lch, &digests).await;
            assert_eq!(missing, 0);
            through.push(t);
            on_cluster.push(find_missing(&cch, &digests).await.0);
        }
        let (t, c) = (sorted(through), sorted(on_cluster));
        table.row(
            format!("FindMissingBlobs {FIND_MISSING}, only upstream has them"),
            format!("median {:.1} ms", pct(&t, 50.0).as_secs_f64() * 1e3),
            "",
        );
        table.row(
            format!("FindMissingBlobs {FIND_MISSING} on the cluster itself"),
            format!("median {:.1} ms", pct(&c, 50.0).as_secs_f64() * 1e3),
            "",
        );
    });
    table.print();
}
