//! `nativelink-lre status --json` and `nativelink-lre check` against a
//! test daemon, as a given uid.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use crate::common::BIN;
use crate::daemon::Lre;

/// Runs `nativelink-lre ARGS --address unix://SOCKET` as `uid` (root when
/// none).
pub fn cli(d: &Lre, uid: Option<u32>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--address")
        .arg(format!("unix://{}", d.socket.display()))
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().unwrap()
}

/// `status --json`, as the daemon's owner.
pub fn status(d: &Lre) -> serde_json::Value {
    let out = cli(d, d.uid, &["status", "--json"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `check ARGS`, as the daemon's owner: (exit code, stdout, stderr).
pub fn check(d: &Lre, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let out = cli(d, d.uid, &all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
