//! The packaged service-manager files: the systemd units in
//! packaging/systemd pass `systemd-analyze verify` without a word, carry the
//! settings the daemon relies on and none of the hardening that breaks it,
//! and the launchd plist in packaging/launchd is well-formed with the socket
//! names src/activation.rs asks for. Running the units under a real systemd
//! is tests/nspawn.rs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

const UNITS: [&str; 3] = [
    "nativelink-lre.service",
    "nativelink-lre.socket",
    "nativelink-lre-tcp.socket",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_unit(name: &str) -> String {
    let path = repo().join("packaging/systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `[Section]` -> key -> every value assigned, in order (comments and blank
/// lines dropped; the units use no line continuations).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(!line.ends_with('\\'), "line continuation in {line:?}");
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line: {line:?}"));
        out.entry(section.clone())
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    out
}

fn one<'a>(
    unit: &'a BTreeMap<String, BTreeMap<String, Vec<String>>>,
    section: &str,
    key: &str,
) -> &'a str {
    match unit
        .get(section)
        .and_then(|s| s.get(key))
        .map(Vec::as_slice)
    {
        Some([value]) => value,
        other => panic!("[{section}] {key}= should be set exactly once, found {other:?}"),
    }
}

#[test]
fn systemd_analyze_verify_is_silent() {
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_nativelink-lre");
    for name in UNITS {
        // The shipped unit runs /usr/bin/nativelink-lre, which need not exist
        // here; verify checks that ExecStart= is an executable.
        let text = read_unit(name).replace("/usr/bin/nativelink-lre", binary);
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    // Documentation=man:... is checked with `man`: give it our pages.
    for (page, section) in [
        ("nativelink-lre.8", "man8"),
        ("nativelink-lre.toml.5", "man5"),
    ] {
        let to = dir.path().join("man").join(section);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(repo().join("man").join(page), to.join(page)).unwrap();
    }
    let have_man = Command::new("man").arg("-w").arg("man").output().is_ok();
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify")
        .current_dir(dir.path())
        .env("MANPATH", dir.path().join("man"));
    if !have_man {
        cmd.arg("--man=no");
    }
    for name in UNITS {
        cmd.arg(dir.path().join(name));
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("systemd-analyze: {e}: install the systemd package (.ci/run does)")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 after most warnings, so any output is a failure.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn service_has_what_the_daemon_relies_on() {
    let unit = parse_unit(&read_unit("nativelink-lre.service"));
    for (key, want, why) in [
        ("Type", "notify", "the daemon sends READY=1 once serving"),
        ("NotifyAccess", "main", "only the daemon itself notifies"),
        (
            "ExecStart",
            "/usr/bin/nativelink-lre",
            "no default config file",
        ),
        (
            "Delegate",
            "yes",
            "the daemon creates supervisor/ and action-N/ leaves",
        ),
        (
            "KillMode",
            "control-group",
            "stopping kills the delegated action cgroups too",
        ),
        (
            "OOMPolicy",
            "continue",
            "one action's OOM kill must not stop the service",
        ),
        (
            "StateDirectory",
            "nativelink-lre",
            "the CAS under ProtectSystem=strict",
        ),
        (
            "Restart",
            "on-failure",
            "an idle exit (status 0) is not restarted",
        ),
        ("ProtectSystem", "strict", "hardening"),
        ("NoNewPrivileges", "yes", "hardening"),
    ] {
        assert_eq!(one(&unit, "Service", key), want, "{key}=: {why}");
    }
    assert!(
        !unit["Service"].contains_key("RuntimeDirectory"),
        "RuntimeDirectory= would delete the socket's directory when the service stops"
    );
    let mut caps: Vec<&str> = one(&unit, "Service", "CapabilityBoundingSet")
        .split_whitespace()
        .collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FOWNER",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID"
        ]
    );
    // A system-call filter must be a deny list that leaves the sandbox's
    // calls (mount, clone, unshare, setns, pivot_root, sethostname) alone.
    if let Some(filters) = unit["Service"].get("SystemCallFilter") {
        for filter in filters {
            assert!(
                filter.starts_with('~'),
                "SystemCallFilter={filter} is an allow list"
            );
            for group in filter.trim_start_matches('~').split_whitespace() {
                assert!(
                    ![
                        "@mount",
                        "@privileged",
                        "@system-service",
                        "@process",
                        "@setuid"
                    ]
                    .contains(&group),
                    "SystemCallFilter= denies {group}, which the sandbox needs"
                );
            }
        }
    }
    let requires: Vec<&str> = one(&unit, "Unit", "Requires").split_whitespace().collect();
    let after: Vec<&str> = one(&unit, "Unit", "After").split_whitespace().collect();
    for socket in ["nativelink-lre.socket", "nativelink-lre-tcp.socket"] {
        assert!(
            requires.contains(&socket) && after.contains(&socket),
            "{socket}"
        );
    }
}

#[test]
fn service_omits_hardening_that_breaks_the_sandbox() {
    let unit = parse_unit(&read_unit("nativelink-lre.service"));
    for (key, why) in [
        (
            "PrivateUsers",
            "no capabilities left in the host user namespace",
        ),
        (
            "DynamicUser",
            "a non-root user cannot switch to the action uids",
        ),
        ("RestrictNamespaces", "every action clones new namespaces"),
        ("ProtectControlGroups", "cgroupfs would be read-only"),
        (
            "ProtectKernelTunables",
            "mounts over /proc: no fresh /proc in actions",
        ),
        (
            "ProtectKernelLogs",
            "mounts over /proc/kmsg: no fresh /proc in actions",
        ),
        ("ProtectProc", "remounts /proc"),
        ("ProcSubset", "remounts /proc"),
        (
            "ProtectHostname",
            "seccomp filter against the sandbox's sethostname()",
        ),
        (
            "MemoryDenyWriteExecute",
            "inherited by actions: breaks JITs",
        ),
        (
            "SystemCallArchitectures",
            "inherited by actions: kills 32-bit binaries",
        ),
        ("PrivateNetwork", "TCP callers are found in /proc/net/tcp"),
        (
            "RuntimeDirectory",
            "would remove the socket directory on stop",
        ),
    ] {
        assert!(
            !unit["Service"].contains_key(key),
            "{key}= must not be set: {why} (see the comments in the unit)"
        );
    }
}

#[test]
fn sockets_match_the_daemon() {
    let unix = parse_unit(&read_unit("nativelink-lre.socket"));
    let tcp = parse_unit(&read_unit("nativelink-lre-tcp.socket"));
    for (unit, name) in [(&unix, "unix"), (&tcp, "tcp")] {
        assert_eq!(one(unit, "Socket", "FileDescriptorName"), name);
        assert_eq!(one(unit, "Socket", "Accept"), "no");
        assert_eq!(one(unit, "Socket", "Service"), "nativelink-lre.service");
        assert_eq!(one(unit, "Install", "WantedBy"), "sockets.target");
    }
    assert_eq!(
        one(&unix, "Socket", "ListenStream"),
        "/run/nativelink-lre/socket",
        "the daemon's default socket when run as root (nativelink-lre(8))"
    );
    assert_eq!(one(&unix, "Socket", "SocketMode"), "0666");
    let default_tcp = nativelink_lre::config::Listen::default().tcp;
    assert_eq!(
        one(&tcp, "Socket", "ListenStream"),
        default_tcp[0].to_string(),
        "the daemon's default TCP address"
    );
    assert_eq!(one(&tcp, "Socket", "NoDelay"), "true");
    let service = parse_unit(&read_unit("nativelink-lre.service"));
    let also: Vec<&str> = one(&service, "Install", "Also")
        .split_whitespace()
        .collect();
    assert_eq!(also, ["nativelink-lre.socket", "nativelink-lre-tcp.socket"]);
}

#[test]
fn launchd_plist_is_well_formed_with_the_daemons_socket_names() {
    let plist = repo().join("packaging/launchd/org.nativelink.lre.plist");
    let script = r#"
import json, plistlib, sys
with open(sys.argv[1], "rb") as f:
    print(json.dumps(plistlib.load(f)))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&plist)
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(
        out.status.success(),
        "plistlib cannot read {}: {}",
        plist.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["Label"], "org.nativelink.lre");
    assert_eq!(
        p["ProgramArguments"],
        serde_json::json!(["/usr/local/bin/nativelink-lre"])
    );
    // src/activation.rs asks launch_activate_socket() for "unix" and "tcp".
    let sockets = p["Sockets"].as_object().expect("a Sockets dictionary");
    let mut names: Vec<&str> = sockets.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["tcp", "unix"]);
    assert_eq!(
        p["Sockets"]["unix"]["SockPathName"],
        "/var/run/nativelink-lre.socket"
    );
    assert_eq!(p["Sockets"]["unix"]["SockPathMode"], 0o666);
    assert_eq!(p["Sockets"]["tcp"]["SockNodeName"], "127.0.0.1");
    assert_eq!(p["Sockets"]["tcp"]["SockServiceName"], "50051");
    // On demand only.
    assert!(p.get("RunAtLoad").is_none() && p.get("KeepAlive").is_none());
    let activation = std::fs::read_to_string(repo().join("src/activation.rs")).unwrap();
    assert!(
        activation.contains(r#"for name in ["unix", "tcp"]"#),
        "src/activation.rs no longer asks launchd for \"unix\" and \"tcp\"; update the plist"
    );
}
