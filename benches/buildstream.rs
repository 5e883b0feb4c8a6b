//! The input root as `/` (issue 18) in figures, against the real daemon.
//!
//! Run with `cargo bench --bench buildstream` (as root, like the tests). It
//! starts one daemon (state under `$TMPDIR`) whose empty instance name runs
//! in the host mode and whose instance `bst` runs with the input root as
//! `/`, and prints one table:
//!
//! 1. the Execute round trip of `bin/busybox true` with the static busybox
//!    (2 MB, hard-linked) as the only input, `skip_cache_lookup` and
//!    `do_not_cache`, in each mode, in alternating rounds: p50/p99 of the
//!    client's wall time and the sandbox helper's spawn→exec;
//! 2. BuildStream 2.8.1 (the venv of `tests/buildstream/bst.sh`) building
//!    the project of `tests/buildstream/project` (three manual elements on
//!    a busybox sysroot): with remote execution on the daemon (each run
//!    with a new sysroot file, so every action is new), the rebuild after
//!    BuildStream's cache is wiped (every action from the daemon's action
//!    cache), and BuildStream's own local sandbox (buildbox-run with
//!    bubblewrap) for reference.
//!
//! Nothing here asserts on timings. See docs/PERFORMANCE.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use prost::Message;
use tonic::transport::Channel;

use nativelink_lre::digest::Digest;
use nativelink_lre::proto::google::longrunning::operation;
use nativelink_lre::proto::nativelink_lre::v1::ResourceUsage;
use nativelink_lre::proto::reapi::{self, execution_client::ExecutionClient};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/report.rs"]
mod report;
use common::exec::upload;
use common::{Daemon, Listen, daemon_binary};
use report::{Align, Table, pct, sorted};

const WARMUP: usize = 10;
const CALLS: usize = 200;
const ROUND: usize = 25;
const BST_RUNS: usize = 3;
const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// The action: `bin/busybox true` on an input root holding only the
/// static busybox, in the mode `root` picks (`lre-root`, so both modes run
/// through the same instance name).
fn encode(busybox: &[u8], root: &str) -> (Digest, Vec<Vec<u8>>) {
    let file = Digest::of_bytes(busybox);
    let bin = reapi::Directory {
        files: vec![reapi::FileNode {
            name: "busybox".into(),
            digest: Some(file.to_proto()),
            is_executable: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    let bin_bytes = bin.encode_to_vec();
    let root_dir = reapi::Directory {
        directories: vec![reapi::DirectoryNode {
            name: "bin".into(),
            digest: Some(Digest::of_bytes(&bin_bytes).to_proto()),
        }],
        ..Default::default()
    };
    let root_bytes = root_dir.encode_to_vec();
    let command = reapi::Command {
        arguments: vec!["bin/busybox".into(), "true".into()],
        ..Default::default()
    };
    let command_bytes = command.encode_to_vec();
    let action = reapi::Action {
        command_digest: Some(Digest::of_bytes(&command_bytes).to_proto()),
        input_root_digest: Some(Digest::of_bytes(&root_bytes).to_proto()),
        do_not_cache: true,
        platform: Some(reapi::Platform {
            properties: vec![reapi::platform::Property {
                name: "lre-root".into(),
                value: root.into(),
            }],
        }),
        ..Default::default()
    };
    let action_bytes = action.encode_to_vec();
    let digest = Digest::of_bytes(&action_bytes);
    (
        digest,
        vec![
            busybox.to_vec(),
            bin_bytes,
            root_bytes,
            command_bytes,
            action_bytes,
        ],
    )
}

/// One call's figures.
#[derive(Clone, Copy)]
struct Call {
    /// The client's wall time.
    wall: Duration,
    /// The helper's spawn→exec.
    setup: Duration,
    /// exec→the exit of the sandbox's init (with the namespace teardown).
    command: Duration,
    /// execution_start → execution_completed: the whole sandbox.
    sandbox: Duration,
}

async fn execute(ch: &Channel, action: &Digest) -> Call {
    let t = Instant::now();
    let mut stream = ExecutionClient::new(ch.clone())
        .execute(reapi::ExecuteRequest {
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: true,
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
    let Some(operation::Result::Response(any)) = last.and_then(|op| op.result) else {
        panic!("Execute ended without a response");
    };
    let resp = reapi::ExecuteResponse::decode(any.value.as_slice()).unwrap();
    let result = resp.result.expect("no result");
    assert_eq!(result.exit_code, 0, "the action failed: {:?}", resp.status);
    let meta = result.execution_metadata.unwrap_or_default();
    let usage = meta
        .auxiliary_metadata
        .iter()
        .find_map(|a| ResourceUsage::decode(a.value.as_slice()).ok())
        .unwrap_or_default();
    let at = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map_or(Duration::ZERO, |t| {
            Duration::new(t.seconds as u64, t.nanos as u32)
        })
    };
    Call {
        wall,
        setup: Duration::from_micros(usage.sandbox_setup_usec),
        command: Duration::from_micros(usage.command_usec),
        sandbox: at(&meta.execution_completed_timestamp)
            .saturating_sub(at(&meta.execution_start_timestamp)),
    }
}

/// Measurement 1; the blobs are uploaded already.
async fn modes(ch: &Channel, busybox: &[u8], table: &mut Table) {
    let actions: Vec<(&str, Digest)> = ["host", "input"]
        .into_iter()
        .map(|mode| (mode, encode(busybox, mode).0))
        .collect();
    for (_, a) in &actions {
        for _ in 0..WARMUP {
            execute(ch, a).await;
        }
    }
    let mut runs: Vec<Vec<Call>> = vec![Vec::new(); actions.len()];
    for _ in 0..CALLS / ROUND {
        for ((_, a), runs) in actions.iter().zip(&mut runs) {
            for _ in 0..ROUND {
                runs.push(execute(ch, a).await);
            }
        }
    }
    for ((mode, _), runs) in actions.iter().zip(&runs) {
        let figure = |f: fn(&Call) -> Duration| {
            let s = sorted(runs.iter().map(f));
            format!(
                "{} / {}",
                report::millis(pct(&s, 50.0), 2),
                report::millis(pct(&s, 99.0), 2)
            )
        };
        let label = format!("busybox true, lre-root={mode}");
        table.row(
            format!("{label}: wall p50 / p99 of {CALLS}"),
            figure(|c| c.wall),
            "",
        );
        table.row(
            format!("{label}: sandbox phase p50 / p99"),
            figure(|c| c.sandbox),
            "",
        );
        table.row(
            format!("{label}: spawn→exec p50 / p99"),
            figure(|c| c.setup),
            "",
        );
        table.row(
            format!("{label}: command (with teardown) p50 / p99"),
            figure(|c| c.command),
            "",
        );
    }
}

/// The BuildStream venv's bst (installed by bst.sh if needed).
fn bst() -> PathBuf {
    let out = Command::new(format!("{MANIFEST}/tests/buildstream/bst.sh"))
        .arg("bst")
        .output()
        .unwrap();
    assert!(out.status.success(), "bst.sh bst failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A copy of the test project with its busybox sysroot and a file that
/// makes every action new (`salt`).
fn project(dir: &Path, busybox: &[u8], salt: &str) -> PathBuf {
    let p = dir.join(format!("project-{salt}"));
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(format!("{MANIFEST}/tests/buildstream/project"))
            .arg(&p)
            .status()
            .unwrap()
            .success()
    );
    let bin = p.join("files/sysroot/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("busybox"), busybox).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for applet in ["sh", "mkdir", "cat", "echo", "id", "hostname", "test", "["] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    std::fs::write(p.join("files/sysroot/salt"), salt).unwrap();
    p
}

/// Runs `bst build c.bst` with a user config; its wall time.
fn build(bst: &Path, project: &Path, config: &Path) -> Duration {
    let t = Instant::now();
    let out = Command::new(bst)
        .args(["--no-interactive", "--config"])
        .arg(config)
        .args(["build", "c.bst"])
        .current_dir(project)
        .output()
        .unwrap();
    let wall = t.elapsed();
    assert!(
        out.status.success(),
        "bst build failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wall
}

fn user_config(dir: &Path, name: &str, cache: &Path, remote: Option<&str>) -> PathBuf {
    let mut text = format!(
        "cachedir: {}\nlogdir: {}\nscheduler:\n  builders: 2\n",
        cache.display(),
        dir.join("logs").display()
    );
    if let Some(url) = remote {
        text.push_str(&format!(
            "remote-execution:\n  execution-service:\n    url: {url}\n    instance-name: bst\n\
             \x20 storage-service:\n    url: {url}\n    instance-name: bst\n\
             \x20 action-cache-service:\n    url: {url}\n    instance-name: bst\n"
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn buildstream(d: &Daemon, dir: &Path, busybox: &[u8], table: &mut Table) {
    let bst = bst();
    let url = format!("http://{}", d.tcp);
    let mut first = Vec::new();
    let mut again = Vec::new();
    let mut local = Vec::new();
    for i in 0..BST_RUNS {
        let p = project(dir, busybox, &format!("run{i}"));
        let cache = dir.join(format!("cache-{i}"));
        let remote = user_config(dir, &format!("remote-{i}.conf"), &cache, Some(&url));
        first.push(build(&bst, &p, &remote));
        std::fs::remove_dir_all(&cache).unwrap();
        again.push(build(&bst, &p, &remote));
        std::fs::remove_dir_all(&cache).unwrap();
        let own = dir.join(format!("local-cache-{i}"));
        let cfg = user_config(dir, &format!("local-{i}.conf"), &own, None);
        local.push(build(&bst, &p, &cfg));
        std::fs::remove_dir_all(&own).unwrap();
    }
    for (what, runs) in [
        ("3 new actions executed by the daemon", first),
        (
            "after a cache wipe: 3 actions from the daemon's action cache",
            again,
        ),
        ("BuildStream's own local sandbox (bubblewrap)", local),
    ] {
        let s = sorted(runs);
        table.row(
            format!("bst build c.bst, {what}: median / min of {BST_RUNS}"),
            format!(
                "{} / {}",
                report::millis(pct(&s, 50.0), 0),
                report::millis(s[0], 0)
            ),
            "",
        );
    }
}

fn main() {
    if report::list_only() {
        return;
    }
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let bin = daemon_binary();
    let run = common::run_dir("lre-bench-bst", &std::env::temp_dir());
    let state = run.path().join("state");
    let mut d = Daemon::launch(
        &bin,
        run.path(),
        &state,
        "bst",
        Listen::UnixAndTcp,
        "[instances.bst]\nroot = \"input\"\n",
    );
    d.wait_ready(Duration::from_secs(60));
    let rt = report::runtime();
    let mut table = Table::new(Align::Left, 4);
    rt.block_on(async {
        let ch = d.unix().await;
        for mode in ["host", "input"] {
            upload(&ch, &encode(&busybox, mode).1).await;
        }
        eprintln!("busybox true in each root mode");
        modes(&ch, &busybox, &mut table).await;
    });
    eprintln!("BuildStream");
    buildstream(&d, run.path(), &busybox, &mut table);
    drop(d);
    table.print();
}
