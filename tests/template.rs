//! The flake template (templates/default) with Debian's Bazel 4.2.3, which
//! knows nothing of MODULE.bazel (issue 13.13): its WORKSPACE, BUILD.bazel
//! and .bazelrc build and test every target with every action executed by
//! the daemon, and a clean rebuild is all cache hits.
//!
//! Offline only, the test adds what Bazel 4 would otherwise download: the
//! three stub repositories of tests/bazel/workspace/third_party (see
//! tests/bazel/README.md), as `local_repository` lines after the template's
//! own WORKSPACE. Nothing of the template itself is changed.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn cp(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "cp {}", from.display());
}

/// A copy of the template, made buildable offline.
fn template_copy(tmp: &Path) -> std::path::PathBuf {
    let ws = tmp.join("project");
    cp(&Path::new(ROOT).join("templates/default"), &ws);
    cp(
        &Path::new(ROOT).join("tests/bazel/workspace/third_party"),
        &ws.join("third_party"),
    );
    let mut workspace = std::fs::read_to_string(ws.join("WORKSPACE"))
        .expect("the template has no WORKSPACE, so Bazel 4 cannot build it");
    for name in ["rules_cc", "rules_java", "remote_coverage_tools"] {
        workspace +=
            &format!("local_repository(name = \"{name}\", path = \"third_party/{name}\")\n");
    }
    std::fs::write(ws.join("WORKSPACE"), workspace).unwrap();
    ws
}

fn bazel(ws: &Path, root: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("bazel")
        .arg("--batch")
        .arg("--nohome_rc")
        .arg(format!("--output_user_root={}", root.display()))
        .args(args)
        .current_dir(ws)
        .output()
        .expect("bazel is not installed: install Debian's bazel-bootstrap (.ci/run does)");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text)
}

/// The "INFO: N processes: ..." line.
fn summary(log: &str) -> &str {
    log.lines()
        .find(|l| l.starts_with("INFO: ") && l.contains(" process") && l.contains(':'))
        .unwrap_or_else(|| panic!("no process summary in:\n{log}"))
}

#[test]
fn the_template_builds_with_debians_bazel_on_the_daemon() {
    let d = Daemon::start("");
    let tmp = tempfile::tempdir().unwrap();
    let ws = template_copy(tmp.path());
    let root = tmp.path().join("root");
    let remote = [
        format!("--remote_executor=grpc://127.0.0.1:{}", d.tcp.port()),
        format!("--remote_cache=grpc://127.0.0.1:{}", d.tcp.port()),
    ];
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "test",
            "--nosandbox_debug",
            "--symlink_prefix=/",
            "--color=no",
            "--curses=no",
            "--noshow_progress",
            "--spawn_strategy=remote",
            "--noremote_local_fallback",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(remote.iter().cloned());
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push("//...".into());
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        bazel(&ws, &root, &refs)
    };
    let (ok, first) = run(&[]);
    assert!(ok, "bazel test of the template failed:\n{first}");
    let line = summary(&first).to_owned();
    assert!(line.contains(" remote"), "nothing ran remotely: {line}");
    assert!(
        !line.contains("linux-sandbox") && !line.contains(" local"),
        "{line}"
    );
    assert!(
        first.contains("//:greet_test") && first.contains("PASSED"),
        "{first}"
    );
    let executed = nativelink_lre_status(&d)["actions_executed"]
        .as_u64()
        .unwrap();
    assert!(
        executed >= 5,
        "the daemon executed only {executed} actions: {line}"
    );

    // The genrule ran the cc_binary it built, in the daemon's sandbox.
    // (`info` reads the build options of .bazelrc, the address included.)
    let (ok, bin) = bazel(&ws, &root, &["info", &remote[0], &remote[1], "bazel-bin"]);
    assert!(ok, "{bin}");
    let bin = bin.lines().last().unwrap().trim().to_owned();
    let greeting = std::fs::read_to_string(Path::new(&bin).join("greeting.txt"))
        .expect("greeting.txt was not fetched");
    assert_eq!(greeting, "hello, nativelink-lre\n");

    let (ok, text) = bazel(&ws, &root, &["clean", &remote[0], &remote[1]]);
    assert!(ok, "{text}");
    let (ok, second) = run(&[]);
    assert!(ok, "{second}");
    let line = summary(&second);
    assert!(
        line.contains("remote cache hit")
            && !line.contains(" remote,")
            && !line.ends_with(" remote."),
        "the rebuild was not all cache hits: {line}"
    );
    assert_eq!(
        nativelink_lre_status(&d)["actions_executed"]
            .as_u64()
            .unwrap(),
        executed,
        "the rebuild executed actions again"
    );
}

fn nativelink_lre_status(d: &Daemon) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["status", "--json", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}
