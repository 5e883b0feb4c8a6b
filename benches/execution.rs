//! Execution benchmarks against the real daemon binary.
//!
//! Run with `cargo bench --bench execution`. It starts `nativelink-lre` (as
//! whoever runs the bench; as root, actions get their own uids and hard-linked
//! inputs) on private state directories, one on the default temporary
//! directory's filesystem and one on tmpfs (`/dev/shm`), drives them with
//! tonic clients over their unix sockets and prints one table:
//!
//! 1. the Execute round trip of `/bin/true` with an empty input root,
//!    `skip_cache_lookup` and `do_not_cache`: p50/p99 of the client's wall
//!    time, split into phases with the ExecutedActionMetadata timestamps
//!    and, when the daemon reports them, the sandbox helper's own split
//!    from `nativelink_lre.v1.ResourceUsage`. Once back to back, and once
//!    with a 100 ms pause before each call;
//! 2. the same with an input root of 10,000 distinct small files in 1,000
//!    directories: input materialization and round trip;
//! 3. the Execute round trip of a cache hit (first daemon only);
//! 4. the baseline: `unshare -Urmpf --mount-proc /bin/true`, plus the same
//!    with every namespace the sandbox creates, and a plain `/bin/true`.
//!
//! The two daemons run side by side and are called in alternating rounds,
//! so that both see the same background load of a shared machine.
//!
//! Environment:
//!
//! - `LRE_BENCH_DAEMON=/path/to/nativelink-lre` measures another build. It
//!   must be the daemon itself (or a script that `exec`s it): the bench
//!   stops daemons by pid.
//! - `LRE_BENCH_STATE_DIR=/some/dir`: where the first state directory is
//!   created (default: `$TMPDIR`, else `/tmp`).
//! - `LRE_BENCH_TMPFS_DIR=/some/dir`: where the tmpfs state directory is
//!   created (default `/dev/shm`); empty to skip the tmpfs comparison.
//!
//! Nothing here asserts on timings: the figures are printed, together with
//! the targets they are compared against. See docs/PERFORMANCE.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use tonic::transport::Channel;

use nativelink_lre::digest::Digest;
use nativelink_lre::proto::google::longrunning::operation;
use nativelink_lre::proto::reapi::{
    self, capabilities_client::CapabilitiesClient, execution_client::ExecutionClient,
};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/report.rs"]
mod report;
use common::exec::upload;
use common::{Daemon, Listen, daemon_binary};
use report::{Align, Table, p50, pct, sorted, us, verdict};

const TRUE_WARMUP: usize = 20;
const TRUE_CALLS: usize = 200;
/// Back-to-back calls alternate between the targets in rounds of this many.
const TRUE_ROUND: usize = 50;
const ISOLATED_CALLS: usize = 30;
const ISOLATED_GAP: Duration = Duration::from_millis(100);
const TREE_DIRS: usize = 1_000;
const TREE_FILES: usize = 10_000;
const TREE_WARMUP: usize = 2;
const TREE_CALLS: usize = 10;
const HIT_WARMUP: usize = 50;
const HIT_CALLS: usize = 500;
const CAPS_CALLS: usize = 500;
const UNSHARE_WARMUP: usize = 10;
const UNSHARE_RUNS: usize = 100;
/// How long to wait for the daemon to remove the scratch directory of the
/// previous large-tree action before the next one starts.
const SCRATCH_DRAIN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The daemon (the harness is in benches/common/mod.rs)
// ---------------------------------------------------------------------------

/// Waits until the daemon has removed every action scratch directory
/// (`<state>/exec/<n>`); it does so on a background thread after each
/// action. Returns how long that took.
fn wait_scratch_removed(daemon: &Daemon, timeout: Duration) -> Duration {
    let exec = daemon.state.join("exec");
    let t = Instant::now();
    loop {
        let empty = std::fs::read_dir(&exec).map_or(true, |mut d| d.next().is_none());
        if empty || t.elapsed() > timeout {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------
// Actions (the approach of tests/common/exec.rs)
// ---------------------------------------------------------------------------

/// A directory of the input tree being built.
#[derive(Default)]
struct DirBuilder {
    files: BTreeMap<String, Digest>,
    dirs: BTreeMap<String, DirBuilder>,
}

impl DirBuilder {
    fn insert(&mut self, path: &str, d: Digest) {
        match path.split_once('/') {
            Some((dir, rest)) => self.dirs.entry(dir.into()).or_default().insert(rest, d),
            None => {
                self.files.insert(path.into(), d);
            }
        }
    }

    /// Encodes the tree; pushes every Directory blob; returns the root's digest.
    fn build(&self, blobs: &mut Vec<Vec<u8>>) -> Digest {
        let dir = reapi::Directory {
            files: self
                .files
                .iter()
                .map(|(name, d)| reapi::FileNode {
                    name: name.clone(),
                    digest: Some(d.to_proto()),
                    is_executable: false,
                    ..Default::default()
                })
                .collect(),
            directories: self
                .dirs
                .iter()
                .map(|(name, sub)| reapi::DirectoryNode {
                    name: name.clone(),
                    digest: Some(sub.build(blobs).to_proto()),
                })
                .collect(),
            ..Default::default()
        };
        let bytes = dir.encode_to_vec();
        let d = Digest::of_bytes(&bytes);
        blobs.push(bytes);
        d
    }
}

/// Encodes an action running `args` on the input `files`. Returns the
/// action digest and every blob it needs.
fn encode_action(
    args: &[&str],
    files: &[(String, Vec<u8>)],
    do_not_cache: bool,
    salt: &str,
) -> (Digest, Vec<Vec<u8>>) {
    let mut blobs = Vec::new();
    let mut root = DirBuilder::default();
    for (path, data) in files {
        root.insert(path, Digest::of_bytes(data));
        blobs.push(data.clone());
    }
    let input_root = root.build(&mut blobs);
    let command = reapi::Command {
        arguments: args.iter().map(|s| s.to_string()).collect(),
        environment_variables: vec![reapi::command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/bin:/usr/bin".into(),
        }],
        ..Default::default()
    };
    let command_bytes = command.encode_to_vec();
    let command_digest = Digest::of_bytes(&command_bytes);
    blobs.push(command_bytes);
    let action = reapi::Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(input_root.to_proto()),
        do_not_cache,
        salt: salt.as_bytes().to_vec().into(),
        ..Default::default()
    };
    let action_bytes = action.encode_to_vec();
    let action_digest = Digest::of_bytes(&action_bytes);
    blobs.push(action_bytes);
    (action_digest, blobs)
}

/// The input tree of measurement 2: `TREE_DIRS` directories (10 top-level
/// ones with 99 subdirectories each), every one holding
/// `TREE_FILES / TREE_DIRS` distinct small files.
fn big_tree() -> Vec<(String, Vec<u8>)> {
    let top = 10;
    let per_top = TREE_DIRS / top - 1;
    let per_dir = TREE_FILES / TREE_DIRS;
    let mut dirs = Vec::with_capacity(TREE_DIRS);
    for t in 0..top {
        dirs.push(format!("pkg{t:02}"));
        for s in 0..per_top {
            dirs.push(format!("pkg{t:02}/sub{s:03}"));
        }
    }
    assert_eq!(dirs.len(), TREE_DIRS);
    let mut files = Vec::with_capacity(TREE_FILES);
    for d in &dirs {
        for f in 0..per_dir {
            let path = format!("{d}/file{f}.txt");
            let data = format!("bench input {path}\n").into_bytes();
            files.push((path, data));
        }
    }
    files
}

/// What one Execute call observed.
struct Run {
    wall: Duration,
    cached: bool,
    /// Phases from the ExecutedActionMetadata (absent on cache hits).
    phases: Option<Phases>,
}

#[derive(Clone, Copy, Default)]
struct Phases {
    /// queued → worker_start: loading the action, resolving the input tree,
    /// waiting for a slot.
    queue: Duration,
    /// input_fetch_start → input_fetch_completed.
    inputs: Duration,
    /// execution_start → execution_completed.
    sandbox: Duration,
    /// output_upload_start → output_upload_completed.
    outputs: Duration,
    /// queued → worker_completed, minus the four phases above.
    daemon_other: Duration,
    /// Client wall − (worker_completed − queued): RPC and bookkeeping.
    rpc: Duration,
    /// From ResourceUsage (0 when the daemon does not report them):
    /// helper spawn → the command's exec, exec → the command's init exited
    /// (both inside `sandbox`), and killing and removing the cgroup (after
    /// execution_completed, so inside `daemon_other`).
    setup_usec: u64,
    command_usec: u64,
    teardown_usec: u64,
    source: &'static str,
}

/// `nativelink_lre.v1.ResourceUsage`, declared here with the fields the
/// bench reads, so that it builds whether or not the daemon's proto has
/// fields 8–10 yet (a daemon without them leaves them 0).
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceUsage {
    #[prost(string, tag = "7")]
    source: String,
    #[prost(uint64, tag = "8")]
    sandbox_setup_usec: u64,
    #[prost(uint64, tag = "9")]
    command_usec: u64,
    #[prost(uint64, tag = "10")]
    teardown_usec: u64,
}

fn ts(t: &Option<prost_types::Timestamp>) -> SystemTime {
    let t = t.as_ref().expect("timestamp missing");
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

fn span(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

fn phases(m: &reapi::ExecutedActionMetadata, wall: Duration) -> Phases {
    let queued = ts(&m.queued_timestamp);
    let total = span(queued, ts(&m.worker_completed_timestamp));
    let queue = span(queued, ts(&m.worker_start_timestamp));
    let inputs = span(
        ts(&m.input_fetch_start_timestamp),
        ts(&m.input_fetch_completed_timestamp),
    );
    let sandbox = span(
        ts(&m.execution_start_timestamp),
        ts(&m.execution_completed_timestamp),
    );
    let outputs = span(
        ts(&m.output_upload_start_timestamp),
        ts(&m.output_upload_completed_timestamp),
    );
    let usage = m
        .auxiliary_metadata
        .iter()
        .find(|a| a.type_url.ends_with("nativelink_lre.v1.ResourceUsage"))
        .and_then(|a| ResourceUsage::decode(a.value.as_slice()).ok())
        .unwrap_or_default();
    Phases {
        queue,
        inputs,
        sandbox,
        outputs,
        daemon_other: total.saturating_sub(queue + inputs + sandbox + outputs),
        rpc: wall.saturating_sub(total),
        setup_usec: usage.sandbox_setup_usec,
        command_usec: usage.command_usec,
        teardown_usec: usage.teardown_usec,
        source: match usage.source.as_str() {
            "cgroup" => "cgroup",
            "none" => "none",
            _ => "?",
        },
    }
}

async fn execute(client: &mut ExecutionClient<Channel>, action: &Digest, skip_cache: bool) -> Run {
    let t = Instant::now();
    let mut stream = client
        .execute(reapi::ExecuteRequest {
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: skip_cache,
            ..Default::default()
        })
        .await
        .expect("Execute")
        .into_inner();
    let mut last = None;
    while let Some(op) = stream.message().await.expect("Execute stream") {
        last = Some(op);
    }
    let wall = t.elapsed();
    let op = last.expect("Execute streamed nothing");
    assert!(op.done, "operation {} is not done", op.name);
    let resp = match op.result {
        Some(operation::Result::Response(any)) => {
            reapi::ExecuteResponse::decode(any.value.as_slice()).unwrap()
        }
        other => panic!("operation ended without a response: {other:?}"),
    };
    let status = resp.status.clone().unwrap_or_default();
    assert_eq!(
        status.code, 0,
        "Execute failed: {} {}",
        status.message, resp.message
    );
    let result = resp.result.expect("no ActionResult");
    assert_eq!(result.exit_code, 0, "the action failed");
    let phases = (!resp.cached_result).then(|| {
        phases(
            result.execution_metadata.as_ref().expect("no metadata"),
            wall,
        )
    });
    Run {
        wall,
        cached: resp.cached_result,
        phases,
    }
}

// ---------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------

/// Milliseconds, two decimals.
fn ms(d: Duration) -> String {
    report::millis(d, 2)
}

/// The p50 of each phase of `runs`, as one line.
fn phase_split(runs: &[&Phases]) -> String {
    let f = |g: fn(&Phases) -> Duration| us(p50(runs.iter().map(|p| g(p))));
    format!(
        "queue {} | inputs {} | sandbox {} | outputs {} | rest in daemon {} | RPC {}",
        f(|p| p.queue),
        f(|p| p.inputs),
        f(|p| p.sandbox),
        f(|p| p.outputs),
        f(|p| p.daemon_other),
        f(|p| p.rpc),
    )
}

/// The p50 of the helper's own split of each run of `runs`.
fn sandbox_split(runs: &[&Phases]) -> String {
    let f = |g: fn(&Phases) -> Duration| us(p50(runs.iter().map(|p| g(p))));
    format!(
        "spawn→exec {} | command {} | rest of sandbox {} | cgroup teardown {}",
        f(|p| Duration::from_micros(p.setup_usec)),
        f(|p| Duration::from_micros(p.command_usec)),
        f(|p| p
            .sandbox
            .saturating_sub(Duration::from_micros(p.setup_usec + p.command_usec))),
        f(|p| Duration::from_micros(p.teardown_usec)),
    )
}

/// Rows for a set of executed runs: the wall time and the phase split, at
/// p50 (each phase's own p50) and for the run at the p99 wall time.
fn report_runs(label: &str, runs: &[Run], table: &mut Table) -> Duration {
    let n = runs.len();
    let walls = sorted(runs.iter().map(|r| r.wall));
    let (w50, w99) = (pct(&walls, 50.0), pct(&walls, 99.0));
    let ph: Vec<&Phases> = runs.iter().filter_map(|r| r.phases.as_ref()).collect();
    let reported = ph
        .iter()
        .any(|p| p.setup_usec + p.command_usec + p.teardown_usec > 0);
    table.row(
        format!("{label}: wall p50 / p99 of {n} (max)"),
        format!("{} / {} ({})", ms(w50), ms(w99), ms(*walls.last().unwrap())),
        "",
    );
    table.row(format!("{label}: phases, p50"), phase_split(&ph), "");
    if reported {
        table.row(
            format!("{label}: sandbox split, p50"),
            sandbox_split(&ph),
            format!("cgroups: {}", ph[0].source),
        );
    } else {
        table.row(
            format!("{label}: sandbox split"),
            "not reported by this build (ResourceUsage fields 8-10 are 0)",
            format!("cgroups: {}", ph[0].source),
        );
    }
    // The phases of the run whose wall time is the p99.
    if let Some(r) = runs.iter().find(|r| r.wall == w99)
        && let Some(p) = &r.phases
    {
        table.row(format!("{label}: phases, p99 run"), phase_split(&[p]), "");
        if reported {
            table.row(
                format!("{label}: sandbox split, p99 run"),
                sandbox_split(&[p]),
                "",
            );
        }
    }
    w50
}

// ---------------------------------------------------------------------------
// The measurements
// ---------------------------------------------------------------------------

/// Wall times of `UNSHARE_RUNS` runs of a command (after warm-up), or
/// `None` if it fails.
fn time_command(argv: &[&str]) -> Option<Vec<Duration>> {
    let run = || {
        let t = Instant::now();
        let status = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        (t.elapsed(), status.is_ok_and(|s| s.success()))
    };
    if !run().1 {
        return None;
    }
    for _ in 0..UNSHARE_WARMUP {
        run();
    }
    Some(sorted((0..UNSHARE_RUNS).map(|_| run().0)))
}

/// Measurement 4: `unshare -Urmpf --mount-proc /bin/true`, wall time of the
/// whole process as spawned from here; for comparison, the same with every
/// namespace the sandbox creates (adding network, IPC and UTS), and a
/// plain spawn of /bin/true. Returns the p50 of the first.
fn unshare_baseline(table: &mut Table) -> Option<Duration> {
    let mut reference = None;
    for (i, argv) in [
        &["unshare", "-Urmpf", "--mount-proc", "/bin/true"][..],
        &["unshare", "-Urmpfniu", "--mount-proc", "/bin/true"][..],
        &["/bin/true"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let what = format!("{} (p50 / p99 of {UNSHARE_RUNS})", argv.join(" "));
        match time_command(argv) {
            Some(times) => {
                let p = pct(&times, 50.0);
                table.row(what, format!("{} / {}", ms(p), ms(pct(&times, 99.0))), "");
                if i == 0 {
                    reference = Some(p);
                }
            }
            None => table.row(what, "failed to run", ""),
        }
    }
    reference
}

/// One daemon under test: its process, a connection, and a label naming
/// the filesystem of its state directory.
struct Target {
    daemon: Daemon,
    ch: Channel,
    fs: String,
}

impl Target {
    fn client(&self) -> ExecutionClient<Channel> {
        ExecutionClient::new(self.ch.clone())
    }
}

/// Measurement 1: `/bin/true`, empty input root, skip_cache_lookup and
/// do_not_cache, back to back. With several targets, the calls go in
/// alternating rounds of `TRUE_ROUND` so that every target sees the same
/// background load. Returns the p50 of the first target.
async fn bin_true(targets: &[Target], table: &mut Table) -> Duration {
    let (action, blobs) = encode_action(&["/bin/true"], &[], true, "bench /bin/true");
    let mut clients = Vec::new();
    for t in targets {
        upload(&t.ch, &blobs).await;
        let mut c = t.client();
        for _ in 0..TRUE_WARMUP {
            execute(&mut c, &action, true).await;
        }
        clients.push(c);
    }
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..TRUE_CALLS / TRUE_ROUND {
        for (c, runs) in clients.iter_mut().zip(&mut runs) {
            for _ in 0..TRUE_ROUND {
                let r = execute(c, &action, true).await;
                assert!(
                    !r.cached,
                    "a skip_cache_lookup call was answered from the cache"
                );
                runs.push(r);
            }
        }
    }
    let mut first = None;
    for (t, runs) in targets.iter().zip(&runs) {
        let p = report_runs(&format!("/bin/true back to back, {}", t.fs), runs, table);
        table.row(
            format!("/bin/true back to back, {}: p50 vs target", t.fs),
            ms(p),
            format!(
                "target p50 < 15 ms: {}",
                verdict(p < Duration::from_millis(15))
            ),
        );
        first.get_or_insert(p);
    }
    first.unwrap()
}

/// The same action, one call every `ISOLATED_GAP` (alternating between the
/// targets): each action starts after the daemon and the kernel have been
/// idle for a while, as the first action of a build step would.
async fn bin_true_isolated(targets: &[Target], table: &mut Table) {
    let (action, blobs) = encode_action(&["/bin/true"], &[], true, "bench /bin/true");
    let mut clients = Vec::new();
    for t in targets {
        upload(&t.ch, &blobs).await;
        clients.push(t.client());
    }
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..ISOLATED_CALLS {
        for (c, runs) in clients.iter_mut().zip(&mut runs) {
            tokio::time::sleep(ISOLATED_GAP).await;
            runs.push(execute(c, &action, true).await);
        }
    }
    for (t, runs) in targets.iter().zip(&runs) {
        report_runs(
            &format!(
                "/bin/true one every {} ms, {}",
                ISOLATED_GAP.as_millis(),
                t.fs
            ),
            runs,
            table,
        );
    }
}

/// Measurement 2: the 10,000-file tree, `TREE_WARMUP + TREE_CALLS` runs on
/// each target, alternating between the targets.
async fn tree(targets: &[Target], table: &mut Table) {
    let files = big_tree();
    let (action, blobs) = encode_action(&["/bin/true"], &files, true, "bench tree");
    let mut clients = Vec::new();
    for t in targets {
        let start = Instant::now();
        upload(&t.ch, &blobs).await;
        eprintln!(
            "    {}: uploaded {} blobs in {}",
            t.fs,
            blobs.len(),
            ms(start.elapsed())
        );
        clients.push(t.client());
    }
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    let mut drains: Vec<Vec<Duration>> = targets.iter().map(|_| Vec::new()).collect();
    for i in 0..TREE_WARMUP + TREE_CALLS {
        for (((t, c), runs), drains) in targets
            .iter()
            .zip(&mut clients)
            .zip(&mut runs)
            .zip(&mut drains)
        {
            let r = execute(c, &action, true).await;
            // The daemon removes the scratch tree on a background thread
            // once the action is done; wait for that, so that the next
            // materialization (on either target) runs alone.
            let removal = wait_scratch_removed(&t.daemon, SCRATCH_DRAIN);
            let p = r.phases.unwrap();
            eprintln!(
                "    {} run {i}: wall {} resolve {} inputs {} sandbox {}; removal {}",
                t.fs,
                ms(r.wall),
                ms(p.queue),
                ms(p.inputs),
                ms(p.sandbox),
                ms(removal)
            );
            if i >= TREE_WARMUP {
                runs.push(r);
                drains.push(removal);
            }
        }
    }
    for ((t, runs), drains) in targets.iter().zip(&runs).zip(&drains) {
        let label = format!("{TREE_FILES} files / {TREE_DIRS} dirs, {}", t.fs);
        report_runs(&label, runs, table);
        let inputs = sorted(runs.iter().map(|r| r.phases.unwrap().inputs));
        let p = pct(&inputs, 50.0);
        table.row(
            format!(
                "{label}: input materialization, p50 / max of {}",
                runs.len()
            ),
            format!("{} / {}", ms(p), ms(*inputs.last().unwrap())),
            format!(
                "target < 150 ms: {}",
                verdict(p < Duration::from_millis(150))
            ),
        );
        table.row(
            format!("{label}: scratch removal (background, after the response), p50"),
            ms(p50(drains.iter().copied())),
            "",
        );
    }
}

/// Measurement 3.
async fn cache_hits(ch: &Channel, table: &mut Table) {
    let (action, blobs) = encode_action(&["/bin/true"], &[], false, "bench cache hit");
    upload(ch, &blobs).await;
    let mut client = ExecutionClient::new(ch.clone());
    let first = execute(&mut client, &action, false).await;
    assert!(
        !first.cached,
        "the first execution should not be a cache hit"
    );
    for _ in 0..HIT_WARMUP {
        execute(&mut client, &action, false).await;
    }
    let mut walls = Vec::with_capacity(HIT_CALLS);
    for _ in 0..HIT_CALLS {
        let r = execute(&mut client, &action, false).await;
        assert!(r.cached, "expected a cache hit");
        walls.push(r.wall);
    }
    let walls = sorted(walls);
    table.row(
        format!("Execute cache hit, p50 / p99 of {HIT_CALLS} (max)"),
        format!(
            "{} / {} ({})",
            us(pct(&walls, 50.0)),
            us(pct(&walls, 99.0)),
            us(*walls.last().unwrap())
        ),
        "",
    );
    // The floor: the bare gRPC round trip.
    let mut caps = CapabilitiesClient::new(ch.clone());
    let mut walls = Vec::with_capacity(CAPS_CALLS);
    for _ in 0..CAPS_CALLS {
        let t = Instant::now();
        caps.get_capabilities(reapi::GetCapabilitiesRequest::default())
            .await
            .expect("GetCapabilities");
        walls.push(t.elapsed());
    }
    let walls = sorted(walls);
    table.row(
        format!("GetCapabilities (floor), p50 / p99 of {CAPS_CALLS}"),
        format!("{} / {}", us(pct(&walls, 50.0)), us(pct(&walls, 99.0))),
        "",
    );
}

/// The type of the filesystem `path` is on, from the longest matching
/// mount point in /proc/mounts.
fn fs_type(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(point)
                .then(|| (point.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

fn main() {
    if report::list_only() {
        return;
    }
    let bin = daemon_binary();
    eprintln!("daemon binary: {}", bin.display());
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "warning: not root: actions run as our own uid and inputs are copied, not hard-linked"
        );
    }
    let tmp_base = std::env::var_os("LRE_BENCH_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let run = common::run_dir("lre-bench-exec", &tmp_base);
    let tmpfs_base = match std::env::var_os("LRE_BENCH_TMPFS_DIR") {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(PathBuf::from("/dev/shm")),
    };
    let tmpfs_run = tmpfs_base
        .filter(|p| p.is_dir())
        .map(|p| common::run_dir("lre-bench-exec", &p));
    let rt = report::runtime();
    let mut table = Table::new(Align::Left, 4);

    eprintln!("baseline: unshare");
    let bare = unshare_baseline(&mut table);

    // The daemons: state on `tmp_base` (the first, which the targets and
    // the cache-hit figure refer to) and, unless disabled, on tmpfs.
    let mut dirs = vec![(run.path(), tmp_base.clone(), "disk")];
    if let Some(t) = &tmpfs_run {
        dirs.push((t.path(), t.path().parent().unwrap().to_owned(), "tmpfs"));
    }
    let targets: Vec<Target> = dirs
        .into_iter()
        .map(|(dir, base, tag)| {
            let state = dir.join("state");
            let mut daemon = Daemon::launch(&bin, dir, &state, tag, Listen::Unix, "");
            daemon.wait_ready(Duration::from_secs(60));
            let fs = format!(
                "{} ({})",
                fs_type(dir).unwrap_or_else(|| "?".into()),
                base.display()
            );
            eprintln!("daemon pid {} on {} ({fs})", daemon.pid(), state.display());
            let ch = rt.block_on(daemon.unix());
            Target { daemon, ch, fs }
        })
        .collect();

    rt.block_on(async {
        eprintln!("/bin/true, back to back");
        let p = bin_true(&targets, &mut table).await;
        if let Some(bare) = bare {
            table.row(
                format!(
                    "/bin/true back to back, {}: p50 / bare unshare p50",
                    targets[0].fs
                ),
                format!("{:.2}×", p.as_secs_f64() / bare.as_secs_f64()),
                "",
            );
        }
        eprintln!("/bin/true, isolated calls");
        bin_true_isolated(&targets, &mut table).await;
        eprintln!("cache hits");
        cache_hits(&targets[0].ch, &mut table).await;
        eprintln!("large input tree");
        tree(&targets, &mut table).await;
    });
    // Stops the daemons (by pid).
    drop(targets);
    table.print();
    // The temporary directories (every state directory) are removed here.
}
