//! `nativelink-lre check-config` and what it says (issue 13.8): the first
//! error with its line and dotted key in plain words, hints for keys in
//! the wrong table, warnings for users and groups that do not exist, and
//! the file taken from --config when none is given.

mod common;

use std::process::Command;

use common::*;

fn check(dir: &std::path::Path, text: &str) -> (Option<i32>, String, String) {
    let file = dir.join("check.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_good_and_locates_bad() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "trusted-users = [\"root\", \"@root\"]\n[store]\nmax-size = \"20GiB\"\n[listen]\ntcp = []\n",
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
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: OK\n", good.display())
    );

    // `check-config` takes the file of --config when FILE is not given.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&good)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("good.toml: OK"));

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
    assert!(err.contains("store.high-watermrk: unknown key"), "{err}");
    assert!(err.contains("Did you mean high-watermark?"), "{err}");

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

/// Issue 13.8: every message names the dotted key, says what it takes in
/// words and what was written, and never shows a Rust type name.
#[test]
fn check_config_messages_name_the_key_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    for (text, line, wants) in [
        (
            "[store]\nmax-size = \"8\"\n",
            2,
            &[
                "store.max-size: expected a size such as \"50GiB\"",
                "got the string \"8\"",
            ][..],
        ),
        (
            "[store]\nhigh-watermark = \"90\"\n",
            2,
            &["store.high-watermark: expected an integer from 0 to 255, got the string \"90\""],
        ),
        (
            "[store]\nhigh-watermark = 300\n",
            2,
            &["store.high-watermark: expected an integer from 0 to 255, got 300"],
        ),
        (
            "[cgroup]\ncpu-max = \"1.5\"\n",
            2,
            &["cgroup.cpu-max: expected a number, got the string \"1.5\""],
        ),
        (
            "[execution]\nenabled = \"yes\"\n",
            2,
            &["execution.enabled: expected true or false, got the string \"yes\""],
        ),
        (
            "trusted-users = \"root\"\n",
            1,
            &["trusted-users: expected a list", "got the string \"root\""],
        ),
        (
            "[execution]\nplatform = { OSFamily = 5 }\n",
            2,
            &["execution.platform.OSFamily: expected a string or a list of strings, got 5"],
        ),
        (
            "[listen]\ntcp = [\"localhost:50051\"]\n",
            2,
            &[
                "listen.tcp: expected an address with a port",
                "got \"localhost:50051\"",
            ],
        ),
        (
            "[listen]\nunix-mode = 660\n",
            2,
            &["listen.unix-mode: expected an octal mode in a string, such as \"0660\", got 660"],
        ),
        (
            "idle-timeout = true\n",
            1,
            &[
                "idle-timeout: expected a duration such as \"90s\"",
                "got true",
            ],
        ),
        (
            "[store]\nmax-size = \"5GiB\"\nlog-level = \"debug\"\n",
            3,
            &[
                "store.log-level: unknown key",
                "log-level is a top-level key",
                "move log-level above the first table",
            ],
        ),
        (
            "[execution]\nmax-size = \"5GiB\"\n",
            2,
            &[
                "execution.max-size: unknown key",
                "max-size belongs in [store]",
            ],
        ),
        (
            "log-level = \"verbose\"\n",
            1,
            &[
                "log-level: \"verbose\" is not a log level",
                "error, warn, info, debug or trace",
            ],
        ),
        (
            "state-dir = \"var/lib/lre\"\n",
            1,
            &["state-dir: var/lib/lre is a relative path"],
        ),
        (
            "[store]\nhigh-watermark = 50\nlow-watermark = 60\n",
            3,
            &["store.low-watermark: 60 must be below high-watermark (50)"],
        ),
    ] {
        let (code, _, err) = check(dir.path(), text);
        assert_eq!(code, Some(2), "{text:?} was accepted");
        assert!(
            err.starts_with(&format!(
                "{}:{line}",
                dir.path().join("check.toml").display()
            )),
            "{text:?}: no line {line} in {err}"
        );
        for want in wants {
            assert!(err.contains(want), "{text:?}: {want:?} not in {err}");
        }
        for rust in [
            "u8",
            "u64",
            "f64",
            "OneOrMany",
            "struct ",
            "enum ",
            "a sequence",
            "path string",
        ] {
            assert!(!err.contains(rust), "{text:?}: Rust's {rust:?} in {err}");
        }
    }

    // Users and groups that do not exist are warned about, not refused.
    let (code, out, err) = check(
        dir.path(),
        "allowed-users = [\"*\"]\ntrusted-users = [\"root\", \"lre-nobody-here\", \"@lre-no-group\", \"4242\"]\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.ends_with(": OK, with 2 warnings\n"), "{out}");
    assert!(
        err.contains(":2: warning: trusted-users: there is no user \"lre-nobody-here\""),
        "{err}"
    );
    assert!(err.contains("there is no group \"lre-no-group\""), "{err}");
    assert!(!err.contains("4242") && !err.contains("\"root\""), "{err}");
}
