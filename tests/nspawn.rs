//! The real-systemd tier: tests/nspawn/run.sh boots Debian with systemd as
//! PID 1 in systemd-nspawn and checks the units of packaging/systemd with
//! this build's daemon (activation, READY/STATUS, idle exit, hardening,
//! stop and restart). See that script for the checks.
//!
//! Needs root. The first run downloads a minimal Debian (about a minute) into
//! /var/cache/nativelink-lre-tests; later runs are offline and take about 20
//! seconds.

use std::process::Command;
use std::time::Instant;

#[test]
fn units_under_real_systemd_in_nspawn() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/nspawn/run.sh boots a container and needs root (tests/run is run as root)"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nspawn/run.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_nativelink-lre"))
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown by the test runner on failure, or with --no-capture.
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{script} failed ({}) after {:.0?}:\n{}",
        out.status,
        started.elapsed(),
        stdout
            .lines()
            .filter(|l| l.starts_with("FAIL") || l.starts_with("NOTE"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
