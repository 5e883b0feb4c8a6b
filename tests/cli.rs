//! The command line: --version, check-config, and `serve` with no
//! configuration file at all, as an ordinary user.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("nativelink-lre {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_good_and_locates_bad() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "trusted-users = [\"root\", \"@wheel\"]\n[store]\nmax-size = \"20GiB\"\n[listen]\ntcp = []\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[store]\nmax-size = \"20GiB\"\n  high-watermrk = 95\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:3:", bad.display())), "{err}");
    assert!(err.contains("high-watermrk"), "{err}");

    let out = Command::new(BIN)
        .arg("check-config")
        .arg(dir.path().join("absent.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.toml"));

    // `serve` refuses a bad file the same way, before doing anything.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The README's first command, `nativelink-lre`, run by an ordinary user
/// with no configuration: per-user state and socket, built-in defaults.
#[tokio::test(flavor = "multi_thread")]
async fn builtin_defaults_work_for_an_ordinary_user() {
    let uid = 4011;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let home = dir.path().join("home");
    let runtime = dir.path().join("run");
    for d in [&home, &runtime] {
        std::fs::create_dir(d).unwrap();
        nix::unistd::chown(d.as_path(), Some(uid.into()), Some(uid.into())).unwrap();
    }
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut child = Command::new(BIN)
        .uid(uid)
        .gid(uid)
        .env_clear()
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).expect("no READY=1 from the daemon");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    let socket = runtime.join("nativelink-lre/socket");
    let served =
        reapi::capabilities_client::CapabilitiesClient::new(unix_channel(&socket, Some(uid)).await)
            .get_capabilities(reapi::GetCapabilitiesRequest::default())
            .await;
    // An action runs too, in a user namespace that maps only this user's
    // own uid.
    let ran = Command::new(BIN)
        .uid(uid)
        .gid(uid)
        .env_clear()
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &runtime)
        .args([
            "run",
            "--json",
            "--",
            "sh",
            "-c",
            "id -u; echo data > f; cat f; ls /exec",
        ])
        .output()
        .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("READY=1"), "{msg}\n{log}");
    served.expect("the default unix socket does not serve");
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&ran.stdout).unwrap();
    assert_eq!(report["exit_code"], 0, "{report}\n{log}");
    // Every action is the overflow id, nobody (see sandbox::INSIDE_ID).
    assert_eq!(report["stdout"], "65534\ndata\nf\n", "{report}");
    assert!(
        log.contains("without root") && log.contains(&format!("every action runs as uid {uid}")),
        "the daemon did not say that actions share its uid:\n{log}"
    );
    assert!(msg.contains(&socket.display().to_string()), "{msg}");
    assert!(msg.contains("127.0.0.1:50051"), "{msg}");
    assert!(log.contains("built-in defaults"), "{log}");
    let state = home.join(".cache/nativelink-lre");
    assert!(
        state.join("cas").is_dir(),
        "no store under {}",
        state.display()
    );
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(state.join("cas")).unwrap());
    assert_eq!(owner, uid);
}

fn cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--address")
        .arg(format!("unix://{}", d.socket.display()))
        .output()
        .unwrap()
}

#[test]
fn run_executes_in_the_sandbox_and_passes_the_exit_status() {
    let d = Daemon::start("");
    let out = Command::new(BIN)
        .args(["run", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .args([
            "--",
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; hostname; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nlocalhost\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let out = Command::new(BIN)
        .args(["run", "--json", "--address"])
        .arg(format!("grpc://{}", d.tcp))
        .args(["--", "sh", "-c", "echo hi"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["status_code"], 0);

    let out = Command::new(BIN)
        .args(["run", "--timeout", "1", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .args(["--", "sleep", "30"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(124),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_gc_and_verify_talk_to_the_daemon() {
    let d = Daemon::start("");
    let out = cli(&d, &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "store:",
        "hit rate",
        "namespaces: user, mount, pid",
        "cgroup limits:",
        "identity: each action",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let out = cli(&d, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["execution_enabled"], true);

    // Put two blobs in by running actions, then corrupt one on disk.
    let run = Command::new(BIN)
        .args(["run", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .args(["--", "sh", "-c", "echo some output"])
        .output()
        .unwrap();
    assert!(run.status.success());
    let victim = common::Digest::of_bytes(b"some output\n");
    let path = d
        .state
        .join("cas")
        .join(&victim.hex()[..2])
        .join(victim.hex());
    assert!(path.exists(), "stdout blob not stored");
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"some 0utput\n").unwrap();
    let out = cli(&d, &["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&victim.hex()) && text.contains("removed 1"),
        "{text}"
    );
    assert!(!path.exists());

    let out = cli(&d, &["gc", "--target", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("the store holds 0 bytes"));

    // Untrusted users may look but not collect or verify.
    let as_user = |args: &[&str]| {
        Command::new(BIN)
            .uid(4301)
            .gid(4301)
            .args(args)
            .arg("--address")
            .arg(format!("unix://{}", d.socket.display()))
            .output()
            .unwrap()
    };
    assert!(as_user(&["status"]).status.success());
    let out = as_user(&["gc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trusted-users"));
    assert!(!as_user(&["verify"]).status.success());
}
