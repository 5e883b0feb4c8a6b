//! `nativelink-lre doctor` on this host (issue 13.4): its findings must be
//! what the daemon really enforces. Each test runs the real daemon, asks it
//! with `status --json`, reads the kernel's own files, and compares them
//! with what the doctor says.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::users::{User, UserDaemon};
use common::*;
use serde_json::Value;

/// `doctor --json` (with `args`): its exit status and findings by check.
fn doctor(args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(BIN)
        .arg("doctor")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

fn finding<'a>(report: &'a Value, check: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check:?} finding in {report:#}"))
}

fn status(d: &Daemon) -> Value {
    let out = Command::new(BIN)
        .args(["status", "--json", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// The soft "Max open files" of a process, from the kernel.
fn soft_nofile(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .unwrap()
}

#[test]
fn the_doctor_reports_what_the_daemon_enforces() {
    let d = Daemon::start("");
    let s = status(&d);
    let (code, r) = doctor(&[
        "--config",
        d.config.to_str().unwrap(),
        "--address",
        &format!("unix://{}", d.socket.display()),
    ]);
    assert_eq!(finding(&r, "daemon")["level"], "PASS", "{r:#}");
    assert_eq!(r["daemon"], format!("unix://{}", d.socket.display()));
    let failed = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["level"] == "FAIL");
    assert_eq!(code, Some(if failed { 1 } else { 0 }), "{r:#}");

    // Every protection of the daemon's own probe, with its verdict.
    let protections = s["sandbox_protections"].as_array().unwrap();
    assert!(!protections.is_empty(), "{s}");
    for p in protections {
        let f = finding(&r, &format!("sandbox {}", p["name"].as_str().unwrap()));
        let want = if p["in_force"] == true {
            "PASS"
        } else {
            "FAIL"
        };
        assert_eq!(f["level"], want, "{p} vs {f}");
        assert!(
            f["detail"]
                .as_str()
                .unwrap()
                .contains(p["detail"].as_str().unwrap())
        );
    }

    // The cgroup controllers the daemon's manager enabled, and the cgroup
    // namespace only where actions get one.
    let missing = strings(&s["cgroup_missing"]);
    let f = finding(&r, "cgroup controllers");
    let detail = f["detail"].as_str().unwrap();
    if missing.is_empty() {
        assert_eq!(f["level"], "PASS", "{f}");
    } else {
        assert_ne!(f["level"], "PASS", "{f}");
        assert!(
            detail.starts_with(&format!("{} not available", missing.join(", "))),
            "{f}"
        );
    }
    assert!(
        detail.contains(s["cgroup_base"].as_str().unwrap()),
        "{f} vs {s}"
    );
    let ns = strings(&s["namespaces"]);
    let f = finding(&r, "cgroup namespace");
    assert_eq!(
        f["level"] == "PASS",
        ns.iter().any(|n| n == "cgroup"),
        "{f} vs {ns:?}"
    );

    // cgroup v1 bindings, from the kernel's mount table.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let bound_v1 = mounts.lines().any(|l| {
        l.split_once(" - ").is_some_and(|(_, a)| {
            a.starts_with("cgroup ")
                && a.split(' ')
                    .nth(2)
                    .is_some_and(|o| o.split(',').any(|c| ["memory", "pids", "cpu"].contains(&c)))
        })
    });
    let f = finding(&r, "cgroup hierarchy");
    assert_eq!(f["level"] == "WARN", bound_v1, "{f}");
    if bound_v1 {
        assert!(
            f["detail"].as_str().unwrap().contains("bound to cgroup v1"),
            "{f}"
        );
    }

    // The daemon's descriptor limit, as the kernel has it.
    let f = finding(&r, "descriptor limit");
    assert!(
        f["detail"].as_str().unwrap().contains(&format!(
            "the daemon's soft limit is {}",
            soft_nofile(d.pid())
        )) || f["detail"].as_str().unwrap().contains(&format!(
            "the daemon's soft RLIMIT_NOFILE is {}",
            soft_nofile(d.pid())
        )),
        "{f}"
    );

    // The sockets and the mode the socket file really has.
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    let f = finding(&r, "socket unix");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("unix:{} is mode {mode:04o}", d.socket.display())),
        "{f}"
    );
    let f = finding(&r, "socket tcp");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("tcp:{}", d.tcp)),
        "{f}"
    );

    // Every read-only path the daemon uses, and where it leads.
    let paths = strings(&s["read_only_paths"]);
    assert!(!paths.is_empty());
    for p in &paths {
        let f = finding(&r, &format!("read-only path {p}"));
        let real = std::fs::canonicalize(p).unwrap();
        if real != std::path::Path::new(p) {
            assert_eq!(
                f["detail"],
                format!("resolves to {}", real.display()),
                "{f}"
            );
        }
    }

    // The store: its file system really takes hard links (the daemon is
    // root and links inputs), and the probe files are gone.
    let f = finding(&r, "store links");
    assert_eq!(f["level"], "PASS", "{f}");
    assert!(f["detail"].as_str().unwrap().contains("hard-linked"), "{f}");
    let left: Vec<_> = std::fs::read_dir(&d.state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".doctor"))
        .collect();
    assert!(left.is_empty(), "the doctor left {left:?}");
    assert_eq!(finding(&r, "upstream")["detail"], "none configured");
    assert_eq!(finding(&r, "action identity")["level"], "PASS");

    // The text form: one tagged line per finding, fixes indented, counts.
    let out = Command::new(BIN)
        .args([
            "doctor",
            "--config",
            d.config.to_str().unwrap(),
            "--address",
        ])
        .arg(format!("unix://{}", d.socket.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let tagged = text
        .lines()
        .filter(|l| {
            l.starts_with("[PASS] ") || l.starts_with("[WARN] ") || l.starts_with("[FAIL] ")
        })
        .count();
    assert_eq!(tagged, r["findings"].as_array().unwrap().len(), "{text}");
    assert!(text.lines().last().unwrap().contains(" passes, "), "{text}");
}

/// With no daemon the doctor runs the daemon's own start-up probe: its
/// verdicts are the ones a daemon with the same configuration reports.
#[test]
fn without_a_daemon_the_doctor_runs_the_same_probe() {
    let d = Daemon::start("");
    let s = status(&d);
    let dir = tempfile::tempdir().unwrap();
    let (_, r) = doctor(&[
        "--config",
        d.config.to_str().unwrap(),
        "--address",
        &format!("unix://{}", dir.path().join("none.sock").display()),
    ]);
    let f = finding(&r, "daemon");
    assert_eq!(f["level"], "WARN", "{f}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .contains("there is no socket there"),
        "{f}"
    );
    assert!(r["daemon"].is_null());
    for p in s["sandbox_protections"].as_array().unwrap() {
        let f = finding(&r, &format!("sandbox {}", p["name"].as_str().unwrap()));
        assert_eq!(f["level"] == "PASS", p["in_force"] == true, "{p} vs {f}");
    }
    let f = finding(&r, "descriptor limit");
    assert!(
        f["detail"].as_str().unwrap().contains("no daemon answered"),
        "{f}"
    );
    // The daemon's own TCP address is taken (by the daemon): the doctor
    // says a second one could not bind it.
    let f = finding(&r, &format!("socket tcp:{}", d.tcp));
    assert_eq!(f["level"], "WARN", "{f}");
}

/// An upstream that does not answer is a FAIL, with the daemon's error.
#[test]
fn a_down_upstream_fails() {
    let port = free_port();
    let d = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"grpc://127.0.0.1:{port}\"\nconnect-timeout = \"1s\"\ntimeout = \"1s\"\n"
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&d)["upstream"]["state"] != "down" {
        // Any call that needs the upstream marks it down; FindMissing does.
        let _ = Command::new(BIN)
            .args(["run", "--address"])
            .arg(format!("unix://{}", d.socket.display()))
            .arg("true")
            .output();
        assert!(
            Instant::now() < deadline,
            "the upstream never went down: {}",
            status(&d)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, r) = doctor(&[
        "--config",
        d.config.to_str().unwrap(),
        "--address",
        &format!("unix://{}", d.socket.display()),
    ]);
    let f = finding(&r, "upstream");
    assert_eq!(f["level"], "FAIL", "{f}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("grpc://127.0.0.1:{port} is down: ")),
        "{f}"
    );
    assert_eq!(code, Some(1));
}

/// A per-user daemon on this host: actions share its uid and, without a
/// cgroup of its own, get no cgroup namespace, which `status` no longer
/// claims and the doctor names.
#[test]
fn a_per_user_daemon_is_described_as_it_is() {
    let user = User::create();
    let d = UserDaemon::start(&user, None, true);
    let address = format!("unix://{}", d.socket.display());
    let as_user = |args: &[&str]| {
        Command::new(BIN)
            .uid(user.uid)
            .gid(user.gid)
            .env("HOME", &d.home)
            .env("XDG_RUNTIME_DIR", &d.runtime)
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_user(&["status", "--json", "--address", &address]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every action gets a cgroup namespace, with or without a cgroup of
    // its own (issue 10.6).
    assert!(
        strings(&s["namespaces"]).iter().any(|n| n == "cgroup"),
        "{s}"
    );
    let out = as_user(&["doctor", "--json", "--address", &address]);
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(finding(&r, "action identity")["level"], "WARN");
    assert_eq!(finding(&r, "cgroup namespace")["level"], "PASS");
    let f = finding(&r, "store links");
    assert!(
        f["detail"].as_str().unwrap().contains("copies inputs"),
        "{f}"
    );
    let f = finding(&r, "socket unix");
    assert!(
        f["detail"].as_str().unwrap().contains("is mode 0600"),
        "{f}"
    );
}
