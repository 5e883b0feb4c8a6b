//! Debian's Bazel 4.2.3 as a real client of the storage service: build and
//! test the offline workspace in tests/bazel/workspace with
//! `--remote_cache`, clean, rebuild, and check that the rebuild is served
//! entirely from our cache. Bazel's unix-socket support lacks a native
//! library in Debian's build, so it talks to us over loopback TCP.

mod common;
/// Per-user daemons, as the sandbox tests start them.
#[allow(dead_code)]
#[path = "sandbox/daemon.rs"]
mod per_user;

use std::path::Path;
use std::process::Command;

use common::*;

/// Copies a directory tree (Bazel must not write into the source tree).
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

struct Bazel {
    workspace: std::path::PathBuf,
    output_root: std::path::PathBuf,
}

impl Bazel {
    /// A fresh copy of the offline workspace, with its own output root,
    /// under `tmp` (tagged by `name`).
    fn fresh(tmp: &Path, name: &str) -> Bazel {
        let workspace = tmp.join(format!("ws-{name}"));
        copy_tree(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bazel/workspace"),
            &workspace,
        );
        Bazel {
            workspace,
            output_root: tmp.join(format!("root-{name}")),
        }
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("bazel")
            .arg("--batch")
            .arg("--nohome_rc")
            .arg(format!("--output_user_root={}", self.output_root.display()))
            .args(args)
            .current_dir(&self.workspace)
            .output()
            .expect("bazel is not installed: install Debian's bazel-bootstrap (.ci/run does)");
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        (out.status.success(), text)
    }

    fn test(&self, port: u16, extra: &[&str]) -> String {
        let remote = format!("--remote_cache=grpc://127.0.0.1:{port}");
        let mut args = vec![
            "test",
            "--nosandbox_debug",
            "--incompatible_strict_action_env",
            "--symlink_prefix=/",
            "--color=no",
            "--curses=no",
            "--noshow_progress",
            remote.as_str(),
        ];
        args.extend_from_slice(extra);
        args.push("//...");
        let (ok, text) = self.run(&args);
        assert!(ok, "bazel test failed:\n{text}");
        text
    }
}

/// Bazel's "N processes: A remote cache hit, B internal, C linux-sandbox."
fn process_summary(log: &str) -> String {
    log.lines()
        .find(|l| l.starts_with("INFO: ") && l.contains(" process") && l.contains(':'))
        .unwrap_or_else(|| panic!("no process summary line in:\n{log}"))
        .to_owned()
}

/// Counts per kind in the summary line, e.g. {"remote cache hit": 16}.
fn summary_counts(line: &str) -> Vec<(String, u64)> {
    let body = line.split_once(": ").unwrap().1.trim_end_matches('.');
    let body = body.split_once(": ").map_or(body, |(_, rest)| rest);
    body.split(", ")
        .filter_map(|part| {
            let (n, kind) = part.split_once(' ')?;
            Some((kind.to_owned(), n.parse().ok()?))
        })
        .collect()
}

#[test]
fn bazel_rebuild_after_clean_is_all_remote_cache_hits() {
    let d = Daemon::start("");
    let tmp = tempfile::tempdir().unwrap();
    let bazel = Bazel::fresh(tmp.path(), "main");
    let port = d.tcp.port();

    let first = bazel.test(port, &[]);
    let first_summary = process_summary(&first);
    eprintln!("first build:  {first_summary}");
    let first_counts = summary_counts(&first_summary);
    assert!(
        !first_counts.iter().any(|(k, _)| k == "remote cache hit"),
        "an empty cache cannot hit: {first_summary}"
    );
    let stored = verify_store(&d.state);
    assert!(stored > 10, "Bazel uploaded only {stored} blobs");

    let (ok, text) = bazel.run(&["clean"]);
    assert!(ok, "{text}");
    let second = bazel.test(port, &[]);
    let second_summary = process_summary(&second);
    eprintln!("after clean:  {second_summary}");
    let counts = summary_counts(&second_summary);
    let hits = counts
        .iter()
        .find(|(k, _)| k == "remote cache hit")
        .map_or(0, |(_, n)| *n);
    let executed: Vec<_> = counts
        .iter()
        .filter(|(k, _)| k != "remote cache hit" && k != "internal")
        .collect();
    assert!(hits > 0, "no remote cache hits: {second_summary}");
    assert!(
        executed.is_empty(),
        "actions ran locally after clean: {second_summary}"
    );
    assert!(
        second.contains("Executed 0 out of 2 tests: 2 tests pass"),
        "tests were re-run instead of cached:\n{second}"
    );
}

#[test]
fn summary_line_parsing() {
    let counts = summary_counts("INFO: 29 processes: 16 remote cache hit, 13 internal.");
    assert_eq!(
        counts,
        vec![
            ("remote cache hit".to_owned(), 16),
            ("internal".to_owned(), 13)
        ]
    );
    let counts = summary_counts("INFO: 27 processes: 15 internal, 12 linux-sandbox.");
    assert_eq!(counts[1], ("linux-sandbox".to_owned(), 12));
}

/// Bazel flags that send every action to our Execution service.
fn remote_exec_flags(port: u16) -> Vec<String> {
    vec![
        format!("--remote_executor=grpc://127.0.0.1:{port}"),
        "--spawn_strategy=remote".into(),
        "--noremote_local_fallback".into(),
    ]
}

/// SHA-256 of every regular file Bazel built, by path below bazel-out.
fn built_outputs(bazel: &Bazel) -> std::collections::BTreeMap<String, String> {
    let (ok, base) = bazel.run(&["info", "output_base"]);
    assert!(ok, "{base}");
    let base = base.lines().last().unwrap().trim().to_owned();
    let out = Path::new(&base).join("execroot/lre_bazel_smoke/bazel-out");
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![out.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            let ft = e.file_type().unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if ft.is_dir() && !name.ends_with(".runfiles") && name != "testlogs" && name != "_tmp" {
                stack.push(path);
            } else if ft.is_file()
                && path.components().any(|c| c.as_os_str() == "bin")
                && !name.ends_with("_manifest")
            {
                let digest = Digest::of_bytes(&std::fs::read(&path).unwrap());
                files.insert(
                    path.strip_prefix(&out).unwrap().display().to_string(),
                    digest.hex(),
                );
            }
        }
    }
    files
}

#[test]
fn bazel_remote_execution_runs_every_action_in_our_sandbox() {
    let d = Daemon::start("");
    let tmp = tempfile::tempdir().unwrap();
    let bazel = Bazel::fresh(tmp.path(), "main");
    let port = d.tcp.port();
    let flags = remote_exec_flags(port);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    let first = bazel.test(port, &flags);
    let summary = process_summary(&first);
    eprintln!("remote execution: {summary}");
    let counts = summary_counts(&summary);
    let remote = counts
        .iter()
        .find(|(k, _)| k == "remote")
        .map_or(0, |(_, n)| *n);
    assert!(remote > 0, "nothing ran remotely: {summary}");
    let elsewhere: Vec<_> = counts
        .iter()
        .filter(|(k, _)| k != "remote" && k != "internal" && k != "remote cache hit")
        .collect();
    assert!(
        elsewhere.is_empty(),
        "actions ran outside our executor: {summary}"
    );
    assert!(first.contains("2 tests pass"), "{first}");

    let (ok, text) = bazel.run(&["clean"]);
    assert!(ok, "{text}");
    let again = bazel.test(port, &flags);
    let summary = process_summary(&again);
    eprintln!("after clean:      {summary}");
    let counts = summary_counts(&summary);
    assert!(
        counts
            .iter()
            .all(|(k, _)| k == "remote cache hit" || k == "internal"),
        "the rebuild was not all cache hits: {summary}"
    );
}

/// Issue 10: the same workspace built with every action run by us and no
/// cached result accepted, from two checkout paths and two output bases,
/// against a root daemon (twice, each with a fresh store) and a per-user
/// daemon: every output, including a genrule through awk, a C program
/// compiled through `cc` (both Debian alternatives) and a reproducible tar
/// of inputs, has the same digest.
#[test]
fn bazel_outputs_are_bit_identical_across_stores_checkouts_and_daemon_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for run in ["root-a", "root-b", "per-user"] {
        // A fresh daemon and store each time, and no cached results.
        let (_root, _user);
        let port = if run == "per-user" {
            // A throwaway uid with no passwd entry; it serves root (Bazel)
            // too, and its actions run as its own uid with copied inputs.
            _user = per_user::Lre::start(per_user::Start {
                top: "allowed-users = [\"*\"]".into(),
                uid: Some(4681),
                ..Default::default()
            });
            _user.tcp.port()
        } else {
            _root = Daemon::start("");
            _root.tcp.port()
        };
        let bazel = Bazel::fresh(tmp.path(), run);
        let remote = format!("--remote_executor=grpc://127.0.0.1:{port}");
        let (ok, text) = bazel.run(&[
            "build",
            "--nosandbox_debug",
            "--incompatible_strict_action_env",
            "--symlink_prefix=/",
            "--color=no",
            "--curses=no",
            "--spawn_strategy=remote",
            "--noremote_local_fallback",
            "--noremote_accept_cached",
            &remote,
            "//...",
        ]);
        assert!(ok, "{run}: {text}");
        let outputs = built_outputs(&bazel);
        for name in ["gen/awk.txt", "gen/hello", "gen/inputs.tar"] {
            assert!(
                outputs.keys().any(|k| k.ends_with(name)),
                "{run}: {name} was not built: {outputs:?}"
            );
        }
        digests.push((run, outputs));
    }
    let (first, expected) = &digests[0];
    assert!(
        expected.len() >= 7,
        "too few outputs compared: {expected:?}"
    );
    for (run, outputs) in &digests[1..] {
        assert_eq!(
            expected, outputs,
            "outputs differ between {first} and {run}"
        );
    }
    eprintln!(
        "{} outputs identical across {} clean builds",
        expected.len(),
        digests.len()
    );
}

/// Two workstations sharing one upstream (BuildGrid, a real third-party
/// cache): machine A builds with remote execution on its own service, which
/// pushes what its sandbox produced; machine B, a fresh service with an
/// empty store, then builds from nothing and every action is a cache hit
/// read through from the upstream.
#[test]
fn machine_a_populates_the_upstream_and_machine_b_builds_from_it() {
    use common::upstream::BuildGrid;
    let bg = BuildGrid::start();
    let upstream = format!(
        "\n[upstream]\nendpoint = \"{}\"\ninstance-name = \"upstream\"\nwrite-back = true\n",
        bg.endpoint()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let a = Daemon::start(&upstream);
    let on_a = Bazel::fresh(tmp.path(), "machine-a");
    let flags = remote_exec_flags(a.tcp.port());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let first = on_a.test(a.tcp.port(), &flags);
    let summary = process_summary(&first);
    eprintln!("machine A: {summary}");
    let remote = summary_counts(&summary)
        .iter()
        .find(|(k, _)| k == "remote")
        .map_or(0, |(_, n)| *n);
    assert!(remote > 0, "machine A executed nothing: {summary}");
    // Wait until A's write-back queue is empty.
    let status = || {
        rt.block_on(async {
            let ch = a.unix().await;
            nativelink_lre::client::status(&ch).await.unwrap()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let pushed = loop {
        let up = status().upstream.unwrap();
        if up.pushes_queued == 0 && up.pushes_done >= remote {
            break up;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pushes did not finish: {up:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(
        (pushed.pushes_dropped, pushed.pushes_failed),
        (0, 0),
        "{pushed:?}"
    );
    eprintln!(
        "machine A pushed {} results ({} blobs)",
        pushed.pushes_done, pushed.blobs_pushed
    );

    let b = Daemon::start(&upstream);
    assert_eq!(verify_store(&b.state), 0, "machine B starts empty");
    let on_b = Bazel::fresh(tmp.path(), "machine-b");
    let second = on_b.test(b.tcp.port(), &[]);
    let summary = process_summary(&second);
    eprintln!("machine B: {summary}");
    let counts = summary_counts(&summary);
    let hits = counts
        .iter()
        .find(|(k, _)| k == "remote cache hit")
        .map_or(0, |(_, n)| *n);
    assert_eq!(hits, remote, "machine B: {summary}");
    assert!(
        counts
            .iter()
            .all(|(k, _)| k == "remote cache hit" || k == "internal"),
        "machine B ran actions instead of hitting the cache: {summary}"
    );
    assert!(
        second.contains("Executed 0 out of 2 tests: 2 tests pass"),
        "{second}"
    );
    let up = rt
        .block_on(async {
            let ch = b.unix().await;
            nativelink_lre::client::status(&ch).await.unwrap()
        })
        .upstream
        .unwrap();
    assert!(up.action_cache_hits >= remote, "{up:?}");
    eprintln!(
        "machine B: {} upstream hits, {} blobs ({} bytes) fetched",
        up.action_cache_hits, up.blobs_fetched, up.bytes_fetched
    );
}
