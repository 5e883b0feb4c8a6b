//! Storage benchmarks against the real daemon binary.
//!
//! Run with `cargo bench --bench storage`. It starts `nativelink-lre` on
//! private state directories, drives it with tonic clients over its unix
//! socket and loopback TCP, and prints one table:
//!
//! 1. GetActionResult cache-hit latency (p50/p99), unix socket and TCP, next
//!    to GetCapabilities (the same round trip without any store access);
//! 2. FindMissingBlobs with 10,000 digests, half present;
//! 3. ByteStream Write/Read throughput for 256 MiB blobs in 1 MiB chunks,
//!    against `sha256sum`, the in-process SHA-256 and plain buffered file
//!    writes on the same filesystem;
//! 4. the daemon's resident memory, idle, with an empty store and with
//!    1,000,000 blobs (and after the request workload);
//! 5. the time from spawning the process to the first answered request: on
//!    a state directory that does not exist yet, on an empty store and on
//!    one with 1,000,000 blobs.
//!
//! 6. BatchUpdateBlobs of 1000 × 1 KiB on tmpfs, Execute answered from the
//!    cache, and GetActionResult under 200 concurrent clients (`rpcs`).
//!
//! The peers (NativeLink, BuildGrid) are measured by `benches/peers.sh`,
//! with one Python client for every server.
//!
//! Environment:
//!
//! - `LRE_BENCH_ONLY=rpcs` measures only the request rows (no hashing
//!   baselines, start-ups, idle memory or ByteStream).
//! - `LRE_BENCH_QUICK=1` skips everything that needs the 1,000,000-blob
//!   store. That store is created once, directly in the on-disk layout,
//!   under `/tmp/lre-bench-1m` (or `$LRE_BENCH_1M_DIR`) and reused later.
//! - `LRE_BENCH_DAEMON=/path/to/nativelink-lre` measures another build. It
//!   must be the daemon itself (or a script that `exec`s it): the bench
//!   stops daemons by pid.
//!
//! Nothing here asserts on timings: the figures are printed, together with
//! the targets they are compared against. See docs/PERFORMANCE.md.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prost::bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

use nativelink_lre::digest::Digest;
use nativelink_lre::proto::bytestream::{self, byte_stream_client::ByteStreamClient};
use nativelink_lre::proto::reapi::{
    self, action_cache_client::ActionCacheClient, capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient as CasClient,
};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/report.rs"]
mod report;
#[path = "storage/rpcs.rs"]
mod rpcs;
use common::exec::upload;
use common::{Daemon, Listen, channel_over, daemon_binary};
use report::{Align, Table, p50, pct, us, verdict};

const MIB: usize = 1 << 20;
/// Size of the ByteStream blobs and of the sha256sum file.
const BIG: usize = 256 * MIB;
/// ByteStream write chunk.
const CHUNK: usize = MIB;
const AC_WARMUP: usize = 500;
const AC_CALLS: usize = 5000;
const FMB_DIGESTS: usize = 10_000;
const FMB_WARMUP: usize = 2;
const FMB_CALLS: usize = 20;
const BS_ITERATIONS: usize = 3;
const SUSTAINED_WRITES: usize = 4;
/// Latency calls alternate between the transports in rounds of this many.
const LATENCY_ROUND: usize = 500;
const SHA_RUNS: usize = 3;
const STARTUP_RUNS: usize = 5;
/// Starts on a state directory that does not exist yet.
const NEW_STORE_RUNS: usize = 3;
const MILLION: usize = 1_000_000;
const IDLE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

async fn get_capabilities(ch: &Channel) -> Result<(), tonic::Status> {
    CapabilitiesClient::new(ch.clone())
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .map(drop)
}

// ---------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------

/// Milliseconds, one decimal.
fn ms(d: Duration) -> String {
    report::millis(d, 1)
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Pseudo-random bytes, fast (8 bytes per step).
fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    for b in chunks.into_remainder() {
        *b = x as u8;
    }
}

// ---------------------------------------------------------------------------
// The measurements
// ---------------------------------------------------------------------------

/// The baselines of measurement 3: `sha256sum` on a 256 MiB file in the
/// run directory (page cache warm), best of three; the in-process SHA-256
/// the daemon uses (sha2 crate) on the same bytes; and buffered writes.
fn hash_baselines(run_dir: &Path, data: &[u8], table: &mut Table) -> (f64, f64) {
    let file = run_dir.join("sha256sum-input");
    std::fs::write(&file, data).unwrap();
    // Warm the page cache (it was just written, but read it once anyway).
    let _ = std::fs::read(&file).unwrap();
    let mut times = Vec::new();
    for _ in 0..SHA_RUNS {
        let t = Instant::now();
        let out = Command::new("sha256sum")
            .arg(&file)
            .stdout(Stdio::piped())
            .output()
            .expect("run sha256sum");
        times.push(t.elapsed());
        assert!(out.status.success());
    }
    let best = *times.iter().min().unwrap();
    let sha256sum = mbps(data.len(), best);
    table.row(
        "sha256sum, 256 MiB file, best of 3",
        format!("{sha256sum:.0} MB/s"),
        format!(
            "(runs: {})",
            times.iter().map(|&t| ms(t)).collect::<Vec<_>>().join(", ")
        ),
    );
    let mut times = Vec::new();
    for _ in 0..SHA_RUNS {
        let t = Instant::now();
        std::hint::black_box(Sha256::digest(data));
        times.push(t.elapsed());
    }
    let inproc = mbps(data.len(), *times.iter().min().unwrap());
    table.row(
        "sha2 crate in-process (the daemon's hasher), best of 3",
        format!("{inproc:.0} MB/s"),
        "",
    );
    std::fs::remove_file(&file).unwrap();
    // Buffered writes of fresh 256 MiB files on the same filesystem: the
    // store's other physical limit (it hashes and writes in one thread).
    // Each file is removed after it is timed, as the ByteStream writes are.
    let mut times = Vec::new();
    for _ in 0..SHA_RUNS {
        let path = run_dir.join("write-test");
        let t = Instant::now();
        let mut f = std::fs::File::create(&path).unwrap();
        for c in data.chunks(CHUNK) {
            f.write_all(c).unwrap();
        }
        drop(f);
        times.push(t.elapsed());
        std::fs::remove_file(&path).unwrap();
    }
    let write = mbps(data.len(), p50(times.iter().copied()));
    table.row(
        "buffered write of a fresh 256 MiB file, 1 MiB writes, median of 3",
        format!("{write:.0} MB/s"),
        format!(
            "(runs: {}); hash-then-write bound 1/(1/hash + 1/write) = {:.0} MB/s",
            times.iter().map(|&t| ms(t)).collect::<Vec<_>>().join(", "),
            1.0 / (1.0 / inproc + 1.0 / write)
        ),
    );
    (sha256sum, inproc)
}

/// Spawns a daemon and connects to its unix socket in a loop until a
/// GetCapabilities succeeds. Returns the daemon, the time from spawn to the
/// first answer, and the time from spawn to READY=1.
fn first_answer(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    run_dir: &Path,
    state: &Path,
    tag: &str,
) -> (Daemon, Duration, Duration) {
    let mut d = Daemon::launch(bin, run_dir, state, tag, Listen::UnixAndTcp, "");
    let deadline = d.spawned + Duration::from_secs(60);
    let answered = rt.block_on(async {
        loop {
            assert!(Instant::now() < deadline, "no answer within 60 s");
            match std::os::unix::net::UnixStream::connect(&d.socket) {
                Ok(s) => {
                    s.set_nonblocking(true).unwrap();
                    let ch = channel_over(tokio::net::UnixStream::from_std(s).unwrap()).await;
                    if get_capabilities(&ch).await.is_ok() {
                        return Instant::now();
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_micros(100)),
            }
        }
    });
    let first = answered - d.spawned;
    let ready = d.wait_ready(Duration::from_secs(60));
    (d, first, ready)
}

/// `runs` starts, each on `state(i)`; returns the slowest first answer.
fn startup_runs(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    run_dir: &Path,
    state: impl Fn(usize) -> PathBuf,
    runs: usize,
    label: &str,
    table: &mut Table,
) -> Duration {
    let mut firsts = Vec::new();
    let mut readies = Vec::new();
    for i in 0..runs {
        let tag = format!("{}-{i}", label.replace(' ', "-"));
        let (d, first, ready) = first_answer(rt, bin, run_dir, &state(i), &tag);
        if first > Duration::from_millis(20) {
            // Show where a slow start spent its time.
            for (t, line) in d.log_lines() {
                eprintln!("      +{}: {line}", ms(t));
            }
        }
        drop(d);
        eprintln!(
            "    run {i}: first answer {}, READY=1 {}",
            ms(first),
            ms(ready)
        );
        firsts.push(first);
        readies.push(ready);
    }
    let max = *firsts.iter().max().unwrap();
    let med = p50(firsts.iter().copied());
    table.row(
        format!("spawn → first GetCapabilities answer, {label}, median / max of {runs}"),
        format!("{} / {}", ms(med), ms(max)),
        format!(
            "target < 50 ms: {}",
            verdict(max < Duration::from_millis(50))
        ),
    );
    table.row(
        format!("spawn → READY=1, {label}, median / max"),
        format!(
            "{} / {}",
            ms(p50(readies.iter().copied())),
            ms(*readies.iter().max().unwrap())
        ),
        "",
    );
    max
}

/// The resident memory of a daemon on `state` at READY=1 and after it has
/// been idle for a few seconds (after the background size scan, if
/// `wait_scan`).
fn idle_rss(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    run_dir: &Path,
    state: &Path,
    label: &str,
    table: &mut Table,
) -> u64 {
    let tag = format!("rss-{}", label.replace(' ', "-"));
    let (d, _, _) = first_answer(rt, bin, run_dir, state, &tag);
    let at_start = d.status_kib("VmRSS");
    let scan = d.wait_log("store size computed", Duration::from_secs(300));
    if let Some((t, line)) = &scan {
        eprintln!(
            "    background size scan done {} after spawn: {line}",
            ms(*t)
        );
    }
    std::thread::sleep(IDLE);
    let idle = d.status_kib("VmRSS");
    let hwm = d.status_kib("VmHWM");
    table.row(
        format!(
            "idle VmRSS, {label}: after start / after scan + {}s idle (VmHWM)",
            IDLE.as_secs()
        ),
        format!("{} / {} ({})", mib(at_start), mib(idle), mib(hwm)),
        format!("target < 20 MiB: {}", verdict(idle < 20 * 1024)),
    );
    if let Some((t, _)) = scan {
        table.row(
            format!("background store-size scan, {label}"),
            format!("done {} after spawn", ms(t)),
            "",
        );
    }
    idle
}

/// Round-trip times of unary calls; `ac` does GetActionResult hits,
/// otherwise GetCapabilities (gRPC over the transport with no store access
/// and no blocking-pool hop: the floor under every call).
struct Latency {
    ch: Channel,
    action: Option<reapi::GetActionResultRequest>,
    times: Vec<Duration>,
}

impl Latency {
    fn new(ch: Channel, action: Option<&Digest>) -> Latency {
        Latency {
            ch,
            action: action.map(|a| reapi::GetActionResultRequest {
                action_digest: Some(a.to_proto()),
                ..Default::default()
            }),
            times: Vec::with_capacity(AC_CALLS),
        }
    }

    async fn call(&self) {
        match &self.action {
            Some(req) => {
                let r = ActionCacheClient::new(self.ch.clone())
                    .get_action_result(req.clone())
                    .await;
                assert!(r.is_ok(), "GetActionResult did not hit: {r:?}");
            }
            None => get_capabilities(&self.ch).await.expect("GetCapabilities"),
        }
    }

    async fn run(&mut self, n: usize, record: bool) {
        for _ in 0..n {
            let t = Instant::now();
            self.call().await;
            let e = t.elapsed();
            if record {
                self.times.push(e);
            }
        }
    }

    /// p50, p99, mean.
    fn figures(&self) -> (Duration, Duration, Duration) {
        let mut t = self.times.clone();
        let mean = t.iter().sum::<Duration>() / t.len() as u32;
        t.sort();
        (pct(&t, 50.0), pct(&t, 99.0), mean)
    }
}

/// Removes a blob file from the store behind the daemon's back, so that
/// the next write starts from the same page-cache state.
fn drop_blob(state: &Path, d: &Digest) {
    let hex = d.hex();
    let _ = std::fs::remove_file(state.join("cas").join(&hex[..2]).join(&hex));
}

/// A fresh 256 MiB blob: its own first MiB, then the shared tail.
fn fresh_blob(tail: &Bytes, seed: u64) -> (Bytes, Digest) {
    let mut first = vec![0u8; CHUNK];
    fill_random(&mut first, seed);
    let mut h = Sha256::new();
    h.update(&first);
    h.update(tail);
    (
        Bytes::from(first),
        Digest::new(h.finalize().into(), BIG as u64),
    )
}

async fn bs_write(ch: &Channel, first: Bytes, tail: &Bytes, digest: &Digest) -> Duration {
    let name = format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        digest.hex(),
        digest.size()
    );
    let mut msgs = Vec::with_capacity(BIG / CHUNK);
    let mut offset = 0usize;
    let chunks = std::iter::once(first).chain(
        (0..tail.len())
            .step_by(CHUNK)
            .map(|o| tail.slice(o..(o + CHUNK).min(tail.len()))),
    );
    for (i, data) in chunks.enumerate() {
        let len = data.len();
        msgs.push(bytestream::WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: offset as i64,
            finish_write: offset + len == BIG,
            data,
        });
        offset += len;
    }
    let t = Instant::now();
    let resp = ByteStreamClient::new(ch.clone())
        .write(tokio_stream::iter(msgs))
        .await
        .expect("ByteStream write")
        .into_inner();
    let e = t.elapsed();
    assert_eq!(resp.committed_size, BIG as i64);
    e
}

async fn bs_read(ch: &Channel, digest: &Digest) -> Duration {
    let t = Instant::now();
    let mut stream = ByteStreamClient::new(ch.clone())
        .read(bytestream::ReadRequest {
            resource_name: format!("blobs/{}/{}", digest.hex(), digest.size()),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .expect("ByteStream read")
        .into_inner();
    let mut n = 0usize;
    while let Some(msg) = stream.message().await.expect("read stream") {
        n += msg.data.len();
    }
    let e = t.elapsed();
    assert_eq!(n, BIG);
    e
}

/// ByteStream throughput over one transport (measurement 3): a fresh blob
/// per write (its first MiB differs), each removed from the store once the
/// next one is written; then reads of the last one.
#[allow(clippy::too_many_arguments)]
async fn bytestream(
    ch: Channel,
    state: &Path,
    tail: &Bytes,
    seed: u64,
    transport: &str,
    sha256sum: f64,
    inproc: f64,
    table: &mut Table,
) {
    let mut writes = Vec::new();
    let mut last = None;
    for i in 0..BS_ITERATIONS {
        let (first, digest) = fresh_blob(tail, seed * 1000 + i as u64);
        let e = bs_write(&ch, first, tail, &digest).await;
        eprintln!(
            "    write {i} ({transport}): {} = {:.0} MB/s",
            ms(e),
            mbps(BIG, e)
        );
        writes.push(e);
        if let Some(prev) = last.replace(digest) {
            drop_blob(state, &prev);
        }
    }
    let best = *writes.iter().min().unwrap();
    let w = mbps(BIG, best);
    let med = mbps(BIG, p50(writes.iter().copied()));
    table.row(
        format!("ByteStream Write 256 MiB, {transport}, best (median) of {BS_ITERATIONS}"),
        format!("{w:.0} MB/s ({med:.0} MB/s)"),
        format!(
            "= {:.2}× ({:.2}×) sha256sum, {:.2}× in-process SHA-256; target ≥ 0.70× sha256sum: {}",
            w / sha256sum,
            med / sha256sum,
            w / inproc,
            verdict(med >= 0.7 * sha256sum)
        ),
    );
    let digest = last.unwrap();
    let mut reads = Vec::new();
    for i in 0..BS_ITERATIONS {
        let e = bs_read(&ch, &digest).await;
        eprintln!(
            "    read {i} ({transport}): {} = {:.0} MB/s",
            ms(e),
            mbps(BIG, e)
        );
        reads.push(e);
    }
    drop_blob(state, &digest);
    let best = *reads.iter().min().unwrap();
    table.row(
        format!("ByteStream Read 256 MiB, {transport}, best (median) of {BS_ITERATIONS}"),
        format!(
            "{:.0} MB/s ({:.0} MB/s)",
            mbps(BIG, best),
            mbps(BIG, p50(reads.iter().copied()))
        ),
        "",
    );
}

/// Writes of fresh blobs back to back, all kept: the page cache grows by
/// 256 MiB each time (the case of a build that uploads a lot).
async fn bytestream_sustained(ch: Channel, state: &Path, tail: &Bytes, table: &mut Table) {
    let mut runs = Vec::new();
    let mut kept = Vec::new();
    for i in 0..SUSTAINED_WRITES {
        let (first, digest) = fresh_blob(tail, 9000 + i as u64);
        let e = bs_write(&ch, first, tail, &digest).await;
        eprintln!("    kept write {i}: {} = {:.0} MB/s", ms(e), mbps(BIG, e));
        runs.push(mbps(BIG, e));
        kept.push(digest);
    }
    for d in &kept {
        drop_blob(state, d);
    }
    table.row(
        format!("ByteStream Write 256 MiB, unix, {SUSTAINED_WRITES} kept back to back"),
        runs.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
            + " MB/s",
        "",
    );
}

/// FindMissingBlobs (measurement 2) with 10,000 digests, every other one
/// present.
async fn find_missing(ch: Channel, table: &mut Table) {
    let present: Vec<Vec<u8>> = (0..FMB_DIGESTS / 2)
        .map(|i| format!("present blob {i}").into_bytes())
        .collect();
    upload(&ch, &present).await;
    let mut digests = Vec::with_capacity(FMB_DIGESTS);
    for (i, p) in present.iter().enumerate() {
        digests.push(Digest::of_bytes(p).to_proto());
        digests.push(Digest::of_bytes(format!("missing blob {i}").as_bytes()).to_proto());
    }
    let req = reapi::FindMissingBlobsRequest {
        blob_digests: digests,
        ..Default::default()
    };
    let mut client = CasClient::new(ch);
    let mut times = Vec::new();
    for i in 0..FMB_WARMUP + FMB_CALLS {
        let t = Instant::now();
        let r = client
            .find_missing_blobs(req.clone())
            .await
            .expect("FindMissingBlobs")
            .into_inner();
        let e = t.elapsed();
        assert_eq!(r.missing_blob_digests.len(), FMB_DIGESTS / 2);
        if i >= FMB_WARMUP {
            times.push(e);
        }
    }
    let med = p50(times.iter().copied());
    table.row(
        format!(
            "FindMissingBlobs, {FMB_DIGESTS} digests (half present), unix, median of {FMB_CALLS}"
        ),
        format!("{} (max {})", ms(med), ms(*times.iter().max().unwrap())),
        format!(
            "= {:.1} µs per digest",
            med.as_secs_f64() * 1e6 / FMB_DIGESTS as f64
        ),
    );
}

/// The store of 1,000,000 small blobs in the daemon's layout
/// (`cas/<2 hex>/<64 hex>`, 0444), content = the decimal index. Created once
/// and kept; a `.bench-complete` file marks a finished population.
fn million_store() -> PathBuf {
    let root = std::env::var_os("LRE_BENCH_1M_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/lre-bench-1m"));
    let done = root.join(".bench-complete");
    if std::fs::read_to_string(&done).is_ok_and(|s| s.trim() == MILLION.to_string()) {
        eprintln!("  reusing the 1,000,000-blob store in {}", root.display());
        return root;
    }
    eprintln!(
        "  creating 1,000,000 blobs in {} (once; reused later)",
        root.display()
    );
    let started = Instant::now();
    let cas = root.join("cas");
    std::fs::create_dir_all(&cas).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    for shard in 0..=255u8 {
        let _ = std::fs::create_dir(cas.join(format!("{shard:02x}")));
    }
    std::fs::write(cas.join(".layout-v1"), b"nativelink-lre store layout 1\n").unwrap();
    let threads = 4;
    std::thread::scope(|s| {
        for t in 0..threads {
            let cas = &cas;
            s.spawn(move || {
                for i in (t..MILLION).step_by(threads) {
                    let content = i.to_string();
                    let hex = Digest::of_bytes(content.as_bytes()).hex();
                    let path = cas.join(&hex[..2]).join(&hex);
                    let create = || {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o444)
                            .open(&path)
                    };
                    let mut f = match create() {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            // Left by an interrupted population: keep it if whole.
                            if std::fs::metadata(&path).unwrap().len() == content.len() as u64 {
                                continue;
                            }
                            std::fs::remove_file(&path).unwrap();
                            create().unwrap()
                        }
                        Err(e) => panic!("create {}: {e}", path.display()),
                    };
                    f.write_all(content.as_bytes()).unwrap();
                    if t == 0 && i % 100_000 == 0 {
                        eprintln!("    {i} …");
                    }
                }
            });
        }
    });
    std::fs::write(&done, MILLION.to_string()).unwrap();
    eprintln!("  created in {:.0} s", started.elapsed().as_secs_f64());
    root
}

fn main() {
    if report::list_only() {
        return;
    }
    let quick = std::env::var("LRE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let rpcs_only = std::env::var("LRE_BENCH_ONLY").is_ok_and(|v| v == "rpcs");
    let bin = daemon_binary();
    eprintln!("daemon binary: {}", bin.display());
    let run = common::run_dir("lre-bench", &std::env::temp_dir());
    let rt = report::runtime();
    let mut table = Table::new(Align::Right, 40);

    if rpcs_only {
        requests(&rt, &bin, run.path(), None, &mut table);
        table.print();
        return;
    }
    eprintln!("hashing baselines");
    let mut big = vec![0u8; BIG];
    fill_random(&mut big, 42);
    let (sha256sum, inproc) = hash_baselines(run.path(), &big, &mut table);
    // The ByteStream blobs: a fresh first MiB per write, this as the rest.
    let tail = Bytes::from(big).slice(CHUNK..);

    eprintln!("start-up, brand-new store (creates the layout)");
    let new_state = |i: usize| run.path().join(format!("new-state-{i}"));
    startup_runs(
        &rt,
        &bin,
        run.path(),
        new_state,
        NEW_STORE_RUNS,
        "new store",
        &mut table,
    );
    eprintln!("start-up, empty store");
    let empty = new_state(0);
    startup_runs(
        &rt,
        &bin,
        run.path(),
        |_| empty.clone(),
        STARTUP_RUNS,
        "empty store",
        &mut table,
    );
    eprintln!("idle memory, empty store");
    idle_rss(&rt, &bin, run.path(), &empty, "empty store", &mut table);

    if quick {
        eprintln!("LRE_BENCH_QUICK set: skipping the 1,000,000-blob store");
    } else {
        let million = million_store();
        eprintln!("start-up, 1,000,000 blobs");
        startup_runs(
            &rt,
            &bin,
            run.path(),
            |_| million.clone(),
            STARTUP_RUNS,
            "1M blobs",
            &mut table,
        );
        eprintln!("idle memory, 1,000,000 blobs");
        idle_rss(&rt, &bin, run.path(), &million, "1M blobs", &mut table);
    }

    requests(
        &rt,
        &bin,
        run.path(),
        Some((&tail, sha256sum, inproc)),
        &mut table,
    );
    table.print();
    // `run` (every state directory but the cached 1M store) is removed here.
}

/// The request rows; with `bytestream` (the shared tail of the big blobs and
/// the two hashing baselines), the ByteStream rows too.
fn requests(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    run: &Path,
    bytestream_with: Option<(&Bytes, f64, f64)>,
    table: &mut Table,
) {
    eprintln!("BatchUpdateBlobs on tmpfs");
    rpcs::batch_update_tmpfs(rt, bin, run, table);
    eprintln!("requests");
    let state = run.join("state");
    let mut d = Daemon::launch(bin, run, &state, "main", Listen::UnixAndTcp, "");
    d.wait_ready(Duration::from_secs(60));
    rt.block_on(async {
        let unix = d.unix().await;
        // Seed one action result whose output blob is present.
        let output = b"bench output file".to_vec();
        upload(&unix, std::slice::from_ref(&output)).await;
        let action = Digest::of_bytes(b"bench action");
        ActionCacheClient::new(unix.clone())
            .update_action_result(reapi::UpdateActionResultRequest {
                action_digest: Some(action.to_proto()),
                action_result: Some(reapi::ActionResult {
                    output_files: vec![reapi::OutputFile {
                        path: "out/bench.txt".into(),
                        digest: Some(Digest::of_bytes(&output).to_proto()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("UpdateActionResult");

        eprintln!("GetActionResult / GetCapabilities latency");
        let tcp = d.tcp().await;
        // Alternating rounds, so that both transports see the same
        // background load of this shared machine.
        let mut lat = [
            Latency::new(unix.clone(), Some(&action)),
            Latency::new(tcp.clone(), Some(&action)),
            Latency::new(unix.clone(), None),
            Latency::new(tcp.clone(), None),
        ];
        for l in &mut lat {
            l.run(AC_WARMUP, false).await;
        }
        for _ in 0..AC_CALLS / LATENCY_ROUND {
            for l in &mut lat {
                l.run(LATENCY_ROUND, true).await;
            }
        }
        let floor = [lat[2].figures().0, lat[3].figures().0];
        let names = [
            "GetActionResult hit, unix socket",
            "GetActionResult hit, TCP loopback",
            "GetCapabilities (no store access), unix socket",
            "GetCapabilities (no store access), TCP loopback",
        ];
        for (i, (l, name)) in lat.iter().zip(names).enumerate() {
            let (p50, p99, mean) = l.figures();
            table.row(
                format!("{name}, p50 / p99 of {AC_CALLS} (mean)"),
                format!("{} / {} ({})", us(p50), us(p99), us(mean)),
                if i < 2 {
                    let over = p50.saturating_sub(floor[i]);
                    format!(
                        "{} above GetCapabilities; target ≤ floor + 30 µs: {}",
                        us(over),
                        verdict(over <= Duration::from_micros(30))
                    )
                } else {
                    String::new()
                },
            );
        }

        eprintln!("FindMissingBlobs");
        find_missing(unix.clone(), table).await;
        eprintln!("Execute from the cache");
        rpcs::execute_hit(&unix, table).await;
        eprintln!("GetActionResult, {} concurrent clients", 200);
        rpcs::concurrent_hits(&d.socket, &action, table).await;

        let Some((tail, sha256sum, inproc)) = bytestream_with else {
            return;
        };
        eprintln!("ByteStream");
        bytestream(
            unix.clone(),
            &state,
            tail,
            1,
            "unix",
            sha256sum,
            inproc,
            table,
        )
        .await;
        bytestream(tcp, &state, tail, 2, "TCP", sha256sum, inproc, table).await;
        bytestream_sustained(unix, &state, tail, table).await;
    });
    let after = d.status_kib("VmRSS");
    std::thread::sleep(IDLE);
    table.row(
        format!(
            "daemon VmRSS after the request workload / after {}s idle (VmHWM)",
            IDLE.as_secs()
        ),
        format!(
            "{} / {} ({})",
            mib(after),
            mib(d.status_kib("VmRSS")),
            mib(d.status_kib("VmHWM"))
        ),
        "",
    );
    drop(d);
}
