//! The command line: --version and completions, the forms of `run` and
//! `gc`, client errors, the progress and summaries of `gc` and `verify`,
//! and `serve` with no configuration file at all, as an ordinary user.
//! (check-config: tests/check_config.rs.)

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
fn completions_are_valid_scripts_for_each_shell() {
    let script = |shell: &str| {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    for (shell, check, needle) in [
        ("bash", &["bash", "-n"][..], "complete -F _nativelink__lre"),
        ("zsh", &["zsh", "-n"][..], "#compdef nativelink-lre"),
        (
            "fish",
            &["fish", "--no-execute"][..],
            "complete -c nativelink-lre",
        ),
    ] {
        let text = script(shell);
        // Every command is offered, including the new ones.
        for word in [needle, "check-config", "doctor", "completions", "verify"] {
            assert!(text.contains(word), "{shell} completion lacks {word:?}");
        }
        let file = dir.path().join(shell);
        std::fs::write(&file, &text).unwrap();
        // .ci/run installs zsh and fish for this.
        let out = Command::new(check[0])
            .args(&check[1..])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("{} is needed to check the {shell} script: {e}", check[0]));
        assert!(
            out.status.success(),
            "the {shell} completion does not parse:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Issue 13.9: a client that cannot reach a daemon says so in a sentence,
/// names every socket it tried and gives a hint; no Rust Debug output and
/// no cause repeated.
#[test]
fn client_errors_are_sentences_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = Command::new(BIN)
        .args(["status", "--address"])
        .arg(format!("unix://{}", sock.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().next().unwrap(),
        format!(
            "nativelink-lre: cannot reach the daemon: unix://{}: there is no socket there",
            sock.display()
        )
    );
    assert!(
        err.lines()
            .nth(1)
            .unwrap()
            .starts_with("hint: is the daemon running?"),
        "{err}"
    );
    // A socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let out = Command::new(BIN)
        .args(["gc", "--address"])
        .arg(format!("unix://{}", sock.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the socket exists but no daemon is listening on it"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["verify", "--address"])
        .arg(format!("grpc://127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(": nothing is listening there"), "{err}");
    // An ordinary user without --address tries their own socket, then the
    // system's, and names both.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(BIN)
        .uid(4013)
        .gid(4013)
        .env_clear()
        .env("XDG_RUNTIME_DIR", dir.path())
        .arg("status")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let own = dir.path().join("nativelink-lre/socket");
    if !std::path::Path::new("/run/nativelink-lre/socket").exists() {
        assert!(
            err.contains(&format!(
                "unix://{}: there is no socket there",
                own.display()
            )) && err.contains("unix:///run/nativelink-lre/socket: there is no socket there"),
            "{err}"
        );
    }
    for text in [
        &err.to_string(),
        &String::from_utf8_lossy(&out.stdout).to_string(),
    ] {
        for debug in ["Os {", "code:", "Status {", "kind:", "(os error"] {
            assert!(!text.contains(debug), "Debug output {debug:?} in {text}");
        }
    }
}

#[test]
fn gc_target_fractions_are_refused_with_the_number_to_write() {
    let out = Command::new(BIN)
        .args(["gc", "--target", "1.5G", "--address", "unix:///nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fractions are not accepted") && err.contains("\"1536MiB\""),
        "{err}"
    );
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

/// Issue 13.10: `run CMD` without `--`, durations with units, `--env`, and
/// `--input DIR` as the input root.
#[test]
fn run_takes_plain_commands_durations_env_and_an_input_directory() {
    let d = Daemon::start("");
    let address = format!("unix://{}", d.socket.display());
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(["run", "--address", &address])
            .args(args)
            .output()
            .unwrap()
    };
    // No `--`: everything from the program on is the command, its own
    // options included.
    let out = run(&["sh", "-c", "echo \"$0\" \"$1\"; exit 3", "--json", "x"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "--json x\n");
    let out = run(&["--timeout", "2s", "sleep", "30"]);
    assert_eq!(
        out.status.code(),
        Some(124),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--timeout", "5min", "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--timeout", "1.5s", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[
        "--env",
        "GREETING=hello there",
        "--env",
        "PATH=/bin",
        "sh",
        "-c",
        "echo $GREETING; echo $PATH",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello there\n/bin\n");
    let out = run(&["--env", "NOEQUALS", "true"]);
    assert_eq!(out.status.code(), Some(2));

    let input = tempfile::tempdir().unwrap();
    std::fs::create_dir(input.path().join("src")).unwrap();
    std::fs::write(input.path().join("src/a.txt"), b"alpha\n").unwrap();
    std::fs::write(
        input.path().join("run.sh"),
        b"#!/bin/sh\ncat src/a.txt link\n",
    )
    .unwrap();
    std::fs::set_permissions(
        input.path().join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("src/a.txt", input.path().join("link")).unwrap();
    // Bigger than one batch: streamed with ByteStream Write.
    let big = common::data(7, 5 << 20);
    std::fs::write(input.path().join("big.bin"), &big).unwrap();
    let out = run(&[
        "--input",
        input.path().to_str().unwrap(),
        "sh",
        "-c",
        "./run.sh; wc -c < big.bin; sha256sum big.bin",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("alpha\nalpha\n5242880\n"), "{text}");
    assert!(
        text.contains(&common::Digest::of_bytes(&big).hex()),
        "{text}"
    );
    let out = run(&["--input", "/nonexistent-dir", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

/// Issue 13.10: `run --stream` prints the command's output while it runs:
/// its first line arrives while the command is still sleeping, and
/// nothing is printed twice.
#[test]
fn run_streams_output_while_the_command_runs() {
    use std::io::BufRead;
    let d = Daemon::start("");
    let mut child = Command::new(BIN)
        .args(["run", "--stream", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .args([
            "sh",
            "-c",
            "echo first; echo err1 >&2; sleep 4; echo second; echo err2 >&2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first line came only when the command had ended"
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(rest, "second\n");
    assert_eq!(err, "err1\nerr2\n");

    // An action too quick to follow still prints all of it, once.
    let out = Command::new(BIN)
        .args(["run", "--stream", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .args(["sh", "-c", "echo quick"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "quick\n");
    let out = Command::new(BIN)
        .args(["run", "--stream", "--json", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A pseudo-terminal: (the master side, the path of the slave side).
fn pty() -> (std::fs::File, std::path::PathBuf) {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt returns a new descriptor that we own; grantpt,
    // unlockpt and ptsname_r only act on it and fill our buffer.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(fd >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        (std::fs::File::from_raw_fd(fd), path.into())
    }
}

/// Runs a client command with its standard error on a terminal; returns
/// its exit status, stdout, and what the terminal showed.
fn on_terminal(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let (master, slave) = pty();
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave)
        .unwrap();
    let out = Command::new(BIN).args(args).stderr(tty).output().unwrap();
    // Everything written is in the master's buffer; read it without
    // blocking once the child is gone.
    use std::os::fd::AsRawFd;
    // SAFETY: sets O_NONBLOCK on a descriptor we own.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut shown = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &master, &mut shown);
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&shown).into_owned(),
    )
}

/// Issue 13.5: on a terminal `verify` and `gc` show how far they are,
/// then clear the line; the summaries count in words. Without a terminal
/// only the summary is printed.
#[test]
fn gc_and_verify_show_progress_on_a_terminal_and_count_in_words() {
    let d = Daemon::start("");
    let address = format!("unix://{}", d.socket.display());
    for i in 0..3 {
        let run = Command::new(BIN)
            .args([
                "run",
                "--address",
                &address,
                "sh",
                "-c",
                &format!("echo output {i}"),
            ])
            .output()
            .unwrap();
        assert!(run.status.success());
    }
    let (status, stdout, shown) = on_terminal(&["verify", "--address", &address]);
    assert!(status.success(), "{shown}");
    assert!(
        shown.contains("\rverify: checking "),
        "no progress on the terminal: {shown:?}"
    );
    assert!(shown.contains(" files ("), "{shown:?}");
    assert!(
        shown.ends_with('\r'),
        "the progress line is not cleared: {shown:?}"
    );
    assert!(
        stdout.starts_with("checked ")
            && stdout.contains(" files and ")
            && stdout.contains(" action-cache entries in ")
            && stdout.ends_with("; every one matches its name\n"),
        "{stdout}"
    );
    let out = cli(&d, &["verify"]);
    assert!(
        out.stderr.is_empty(),
        "progress without a terminal: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (status, stdout, shown) = on_terminal(&["gc", "--target", "0", "--address", &address]);
    assert!(status.success(), "{shown}");
    assert!(shown.contains("\rgc: counting "), "{shown:?}");
    assert!(
        stdout.starts_with("removed ") && stdout.contains(" files ("),
        "{stdout}"
    );
    assert!(stdout.contains("the store holds 0 bytes"), "{stdout}");
    let out = cli(&d, &["gc", "--target", "0"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split(" in ")
            .next()
            .unwrap(),
        "removed nothing"
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
        text.contains(&victim.hex()) && text.contains("; removed 1 that did not match its name"),
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
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("nativelink-lre: gc: uid 4301 may not collect garbage: only trusted-users may (PERMISSION_DENIED)\nhint: "),
        "{err}"
    );
    assert!(!err.contains("code:") && !err.contains("message:"), "{err}");
    assert!(!as_user(&["verify"]).status.success());
}
