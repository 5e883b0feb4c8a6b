//! The VM tier: tests/vm/run.sh boots Debian bookworm (its own kernel,
//! systemd as PID 1) in qemu without KVM, installs packaging/systemd with
//! this build's daemon and small per-action cgroup limits, and checks that
//! they are enforced for real: OOM kill at memory.max, a fork bomb stopped
//! at pids.max, cpu.max throttling, cgroup.kill leaving nothing behind, and
//! a clean stop. See that script and tests/vm/guest.py for the checks.
//!
//! Needs root. The first run downloads a Debian tree with a kernel and the
//! qemu packages (unpacked, not installed) into
//! /var/cache/nativelink-lre-tests: a few minutes; later runs are offline
//! and take under a minute. `LRE_SKIP_VM=1` skips it (loudly).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The daemon binary to put into the VM: this test is built in the debug
/// profile, so `CARGO_BIN_EXE` is the debug binary, but a release build
/// beside it is used instead when it is at least as new (it is smaller and
/// faster under emulation). Both link only against the host's glibc, which
/// is the guest's (Debian bookworm both).
fn daemon_binary() -> PathBuf {
    let debug = PathBuf::from(env!("CARGO_BIN_EXE_nativelink-lre"));
    let release = debug
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("release").join("nativelink-lre"));
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    match (release, mtime(&debug)) {
        (Some(release), Some(debug_time)) if mtime(&release).is_some_and(|t| t >= debug_time) => {
            release
        }
        _ => debug,
    }
}

#[test]
fn cgroup_limits_under_real_systemd_in_qemu() {
    if std::env::var_os("LRE_SKIP_VM").is_some_and(|v| v == "1") {
        eprintln!();
        eprintln!("==================================================================");
        eprintln!("NOT RUN: LRE_SKIP_VM=1 -- the VM tier (tests/vm/run.sh) was skipped");
        eprintln!("==================================================================");
        println!("NOT RUN: LRE_SKIP_VM=1");
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/vm/run.sh builds a Debian tree with debootstrap and needs root (tests/run is run as root)"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm/run.sh");
    let binary = daemon_binary();
    println!("daemon binary for the VM: {}", binary.display());
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(script)
        .arg(&binary)
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown by the test runner on failure, or with --no-capture.
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{script} {} failed ({}) after {:.0?}:\n{}",
        binary.display(),
        out.status,
        started.elapsed(),
        stdout
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
