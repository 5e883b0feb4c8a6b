//! Bit-identical actions (issue 10): the probe (tests/determinism/probe.sh)
//! prints everything an action could depend on, and its output must be the
//! same byte for byte on a root daemon, on that daemon later (after its
//! store used the inputs again), on a per-user daemon with supplementary
//! groups, and on a root daemon started with another umask, TZ, LANG,
//! rlimits, nice value, host and domain name. Then: inputs are read-only in
//! every mode, `nativelink-lre check` and `[execution] repeat` find a
//! nondeterministic action without replacing its cache entry (and only for
//! trusted callers), the toolchain identity is shown and enforced, and
//! Debian's /etc/alternatives programs run.

#[path = "determinism/cli.rs"]
mod cli;
mod common;
#[allow(dead_code)]
#[path = "sandbox/daemon.rs"]
mod daemon;
#[path = "determinism/hostile.rs"]
mod hostile;
#[path = "determinism/probe.rs"]
mod probe;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::exec::*;
use common::{Digest, bytestream, read_name, reapi, verify_store};
use daemon::{Lre, Start};
use nativelink_lre::proto::nativelink_lre::v1 as admin;
use tonic::Code;
use tonic::transport::Channel;

/// Per-user daemons run as these uids (no passwd entry needed).
const OWNER_PROBE: u32 = 4671;
const OWNER_RO: u32 = 4672;
const OWNER_ALT: u32 = 4673;
const OWNER_GROUPS_DAEMON: u32 = 4674;
/// Supplementary groups the per-user daemon has, which actions must not.
const OWNER_GROUPS: [u32; 2] = [4681, 4682];
/// An untrusted caller of a root daemon.
const MALLORY: u32 = 4679;

/// A channel as the daemon's owner (root for a root daemon).
async fn owner(d: &Lre) -> Channel {
    d.unix_as(d.uid.unwrap_or(0)).await
}

fn root_daemon(extra: &str) -> Lre {
    Lre::start(Start {
        extra: extra.into(),
        ..Default::default()
    })
}

/// The store file of `d`'s blob.
fn blob_file(state: &Path, d: &Digest) -> std::path::PathBuf {
    state.join("cas").join(&d.hex()[..2]).join(d.hex())
}

// ------------------------------------------------------------- the probe

/// (a) and (b): the absolute facts on a root daemon, and the same output
/// after the store used the inputs again (their last-use time moved).
#[tokio::test(flavor = "multi_thread")]
async fn the_probe_sees_fixed_facts_and_the_same_world_later() {
    let d = root_daemon("");
    let ch = owner(&d).await;
    let first = probe::run_probe(&ch, "a root daemon").await;
    probe::assert_fixed_facts(&first, &d.state);
    let blob = blob_file(&d.state, &probe::input_blobs()[1]);
    let before = std::fs::metadata(&blob).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    probe::touch_inputs(&ch).await;
    let after = std::fs::metadata(&blob).unwrap();
    assert!(
        (after.ctime(), after.ctime_nsec()) > (before.ctime(), before.ctime_nsec()),
        "the store did not record a new use of {}",
        blob.display()
    );
    assert_eq!(after.mtime(), 1, "the store file's mtime moved");
    let later = probe::run_probe(&ch, "the same daemon later").await;
    probe::assert_same(
        &first,
        &later,
        "the same daemon after its store used the inputs",
    );
}

/// (c): a per-user daemon.
#[tokio::test(flavor = "multi_thread")]
async fn a_per_user_daemon_shows_the_probe_the_same_world() {
    let base = {
        let d = root_daemon("");
        probe::run_probe(&owner(&d).await, "a root daemon").await
    };
    let d = Lre::start(Start {
        uid: Some(OWNER_PROBE),
        ..Default::default()
    });
    let out = probe::run_probe(&owner(&d).await, "a per-user daemon").await;
    probe::assert_same(&base, &out, "a per-user daemon");
    probe::assert_fixed_facts(&out, &d.state);
}

/// A per-user daemon with supplementary groups cannot drop them (only
/// root can): its actions see them, unmapped, as gid 65534, never the
/// host's numbers, and status names the protection that is not in force.
#[tokio::test(flavor = "multi_thread")]
async fn a_per_user_daemons_supplementary_groups_are_reported() {
    let d = Lre::start(Start {
        uid: Some(OWNER_GROUPS_DAEMON),
        groups: OWNER_GROUPS.to_vec(),
        ..Default::default()
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(groups.contains("4681 4682"), "{groups}");
    let out = probe::run_probe(&owner(&d).await, "a per-user daemon with groups").await;
    let seen = probe::section(&out, "identity");
    let line = seen.iter().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["Groups:", "65534", "65534"]
    );
    assert!(!out.contains("4681") && !out.contains("4682"), "{out}");
    let text = d.status_text();
    assert!(
        text.contains("sandbox no-supplementary-groups: NOT in force"),
        "{text}"
    );
    assert!(d.log().contains("no-supplementary-groups"), "{}", d.log());
}

/// (d): umask 077, TZ, LANG, rlimits, nice 10, another host and domain.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_in_an_unusual_environment_shows_the_probe_the_same_world() {
    let base = {
        let d = root_daemon("");
        probe::run_probe(&owner(&d).await, "a root daemon").await
    };
    let d = hostile::start();
    let out = probe::run_probe(&owner(&d).await, "an unusual daemon").await;
    for leak in [hostile::HOSTNAME, hostile::DOMAINNAME, "Tokyo", "de_DE"] {
        assert!(!out.contains(leak), "{leak} reached the action:\n{out}");
    }
    probe::assert_same(
        &base,
        &out,
        "a daemon with umask 077, TZ, LANG, rlimits, nice, UTS",
    );
}

// ------------------------------------------------------ read-only inputs

/// chmod, write, truncate, touch and a hard link over an input file all
/// fail (each printing its errno text), the file keeps its content, the
/// store stays intact and outputs still work. A per-user daemon's actions,
/// which own their inputs' copies, cannot remove or rename them either
/// (each is a read-only mount); a root daemon's may, since that changes
/// only their own exec root's directories, never the file.
async fn inputs_are_read_only(owner_uid: Option<u32>) {
    let d = Lre::start(Start {
        uid: owner_uid,
        ..Default::default()
    });
    let script = r#"
        try() { if "$@" 2>/tmp/err; then echo "ALLOWED: $*"; else echo "refused: $*: $(cat /tmp/err)"; fi; }
        try chmod 666 in/data.txt
        try chmod 777 in/tool.sh
        try sh -c 'echo poison >> in/data.txt'
        try sh -c ': > in/data.txt'
        try touch in/data.txt
        try touch -d @5 in/tool.sh
        try ln -f in/tool.sh in/data.txt
        echo "content: $(cat in/data.txt)"
        try mv in/tool.sh in/moved.sh
        try rm -f in/data.txt
        mkdir -p out && echo made > out/result.txt
    "#;
    let spec = ActionSpec::sh(script)
        .file("in/data.txt", b"original")
        .exe("in/tool.sh", b"#!/bin/sh\n")
        .outputs(&["out/result.txt"]);
    let ch = owner(&d).await;
    let r = run(&ch, &spec, true).await;
    assert_eq!(
        r.status.clone().unwrap_or_default().code,
        0,
        "{:?}",
        r.status
    );
    let out = stdout_of(&ch, &r).await;
    let refused: Vec<&str> = out.lines().filter(|l| l.starts_with("refused: ")).collect();
    let allowed: Vec<&str> = out.lines().filter(|l| l.starts_with("ALLOWED: ")).collect();
    if owner_uid.is_some() {
        assert_eq!(refused.len(), 9, "not every change was refused:\n{out}");
    } else {
        assert_eq!(refused.len(), 7, "not every change was refused:\n{out}");
        assert_eq!(
            allowed,
            [
                "ALLOWED: mv in/tool.sh in/moved.sh",
                "ALLOWED: rm -f in/data.txt"
            ],
            "{out}"
        );
    }
    for l in &refused {
        let why = l.rsplit_once(": ").map_or("", |(_, w)| w.trim());
        assert!(!why.is_empty(), "no errno text: {l}");
    }
    assert!(out.contains("content: original\n"), "{out}");
    assert_eq!(output_file(&ch, &r, "out/result.txt").await, b"made\n");
    assert_eq!(r.result.unwrap().exit_code, 0);
    assert!(verify_store(&d.state) > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn inputs_are_read_only_to_a_root_daemons_actions() {
    inputs_are_read_only(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn inputs_are_read_only_to_a_per_user_daemons_actions() {
    inputs_are_read_only(Some(OWNER_RO)).await;
}

// ---------------------------------------------------------------- check

/// An action whose output file and stdout differ on every run.
fn nondeterministic() -> ActionSpec {
    let mut spec = ActionSpec::sh("date +%s%N > stamp.txt; date +%s%N");
    spec.output_files = vec!["stamp.txt".into()];
    spec
}

/// Executes `spec` (caching its result) and returns its action digest and
/// result.
async fn cached(ch: &Channel, spec: &ActionSpec) -> (Digest, reapi::ActionResult) {
    let action = prepare(ch, spec).await;
    let ops = execute_ops(ch, &action, false).await;
    let r = response_of(ops.last().unwrap());
    assert_eq!(
        r.status.clone().unwrap_or_default().code,
        0,
        "{:?}",
        r.status
    );
    let result = r.result.unwrap();
    assert_eq!(result.exit_code, 0);
    (action, result)
}

fn output_digest(r: &reapi::ActionResult, path: &str) -> Digest {
    let f = r.output_files.iter().find(|f| f.path == path).unwrap();
    Digest::from_proto(f.digest.as_ref().unwrap()).unwrap()
}

/// The "cached X, new run Y" digests that `check` prints for `path`.
fn reported(out: &str, path: &str) -> (Digest, Digest) {
    let head = format!("  {path}: cached ");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(&head))
        .unwrap_or_else(|| panic!("check did not name {path}:\n{out}"));
    let (cached, rerun) = line.split_once(", new run ").unwrap();
    let parse = |s: &str| {
        let (h, n) = s.split_once('/').unwrap();
        Digest::parse(h, n.parse().unwrap()).unwrap()
    };
    (parse(cached), parse(rerun))
}

async fn bytestream_read(ch: &Channel, d: &Digest) -> Vec<u8> {
    use bytestream::byte_stream_client::ByteStreamClient;
    let mut stream = ByteStreamClient::new(ch.clone())
        .read(bytestream::ReadRequest {
            resource_name: read_name(d),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        out.extend_from_slice(&m.data);
    }
    out
}

/// (i)-(iii): "same" for echo; exit 3 naming the output and both digests
/// for the clock, with the entry unchanged and both blobs readable;
/// `--all` and `--sample 1`.
#[tokio::test(flavor = "multi_thread")]
async fn check_tells_a_deterministic_action_from_one_that_is_not() {
    let d = root_daemon("");
    let ch = owner(&d).await;
    let (echo, _) = cached(&ch, &ActionSpec::sh("echo same every time")).await;
    let (code, out, err) = cli::check(&d, &[&echo.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("same       {echo}\n"), "{err}");

    let (clock, old) = cached(&ch, &nondeterministic()).await;
    let (code, out, err) = cli::check(&d, &[&clock.to_string()]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.starts_with(&format!("DIFFERENT  {clock}\n")), "{out}");
    let (was, now) = reported(&out, "stamp.txt");
    assert_eq!(was, output_digest(&old, "stamp.txt"), "{out}");
    assert_ne!(was, now, "{out}");
    let (stdout_was, _) = reported(&out, "(stdout)");
    assert_eq!(stdout_was.to_proto(), old.stdout_digest.clone().unwrap());
    // The entry is the old one; both blobs can be read both ways.
    let entry = reapi::action_cache_client::ActionCacheClient::new(ch.clone())
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(clock.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        output_digest(&entry, "stamp.txt"),
        was,
        "check replaced the entry"
    );
    for blob in [was, now] {
        let bytes = bytestream_read(&ch, &blob).await;
        assert_eq!(Digest::of_bytes(&bytes), blob);
        assert_eq!(read_blob(&ch, &blob.to_proto()).await, bytes);
    }

    let (code, out, err) = cli::check(&d, &["--all"]);
    assert_eq!(code, 3, "{out}{err}");
    let heads: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
    let mut want = vec![format!("same       {echo}"), format!("DIFFERENT  {clock}")];
    want.sort_by_key(|l| l[11..].to_owned());
    let mut got: Vec<String> = heads.iter().map(|s| s.to_string()).collect();
    got.sort_by_key(|l| l[11..].to_owned());
    assert_eq!(got, want, "{out}");

    let (code, out, err) = cli::check(&d, &["--sample", "1"]);
    let heads: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(heads.len(), 1, "{out}{err}");
    match code {
        0 => assert_eq!(heads[0], format!("same       {echo}")),
        3 => assert_eq!(heads[0], format!("DIFFERENT  {clock}")),
        _ => panic!("check --sample 1 exited {code}: {out}{err}"),
    }
}

/// (iv): an untrusted local user may not make the daemon run actions again.
#[tokio::test(flavor = "multi_thread")]
async fn check_is_refused_to_an_untrusted_caller() {
    let d = root_daemon("");
    let (echo, _) = cached(&owner(&d).await, &ActionSpec::sh("echo checked")).await;
    let answer = admin::admin_client::AdminClient::new(d.unix_as(MALLORY).await)
        .check(admin::CheckRequest {
            action_digests: vec![echo.to_string()],
            ..Default::default()
        })
        .await;
    let Err(err) = answer else {
        panic!("an untrusted caller's check was accepted");
    };
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("trusted-users"), "{}", err.message());
    let out = cli::cli(&d, Some(MALLORY), &["check", "--all"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("trusted-users"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (v): `[execution] repeat = 1` checks what was executed, in the
/// background, counts the mismatch and logs both digests.
#[tokio::test(flavor = "multi_thread")]
async fn repeat_finds_a_nondeterministic_action_in_the_background() {
    let d = root_daemon("\n[execution]\nrepeat = 1\n");
    let ch = owner(&d).await;
    let (_, old) = cached(&ch, &nondeterministic()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = cli::status(&d);
        if s["determinism_mismatches"].as_u64() >= Some(1) {
            break s;
        }
        assert!(Instant::now() < deadline, "no mismatch counted: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["repeat"], 1);
    assert!(status["determinism_checks"].as_u64() >= Some(1), "{status}");
    let was = output_digest(&old, "stamp.txt").to_string();
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("determinism check") && l.contains(&was))
        .unwrap_or_else(|| panic!("no mismatch line with {was}:\n{log}"));
    let digests = line
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == 64)
        .count();
    assert!(digests >= 2, "the line lacks the new run's digest: {line}");
}

// ------------------------------------------------------------ toolchain

fn toolchain_of(s: &serde_json::Value) -> String {
    s["toolchain_identity"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Status shows the identity, what it is made of and the read-only paths;
/// an action naming it runs, one naming another is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_toolchain_identity_is_shown_and_matched() {
    let d = root_daemon("");
    let s = cli::status(&d);
    let id = toolchain_of(&s);
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{s}"
    );
    let items = s["toolchain_items"].as_array().cloned().unwrap_or_default();
    assert!(
        items
            .iter()
            .any(|i| i.as_str().unwrap().contains("os-release")),
        "{items:?}"
    );
    let paths: Vec<&str> = s["read_only_paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(paths.contains(&"/usr"), "{paths:?}");
    if Path::new("/etc/alternatives").is_dir() {
        assert!(paths.contains(&"/etc/alternatives"), "{paths:?}");
    }
    let ch = owner(&d).await;
    let mut named = ActionSpec::sh("echo toolchain");
    named.platform = vec![("lre-toolchain".into(), id.clone())];
    let r = run(&ch, &named, true).await;
    assert_eq!(
        r.status.clone().unwrap_or_default().code,
        0,
        "{:?}",
        r.status
    );
    assert_eq!(stdout_of(&ch, &r).await, "toolchain\n");
    let other = "0".repeat(64);
    named.platform = vec![("lre-toolchain".into(), other.clone())];
    let s = run(&ch, &named, true).await.status.unwrap();
    assert_eq!(s.code, Code::FailedPrecondition as i32, "{s:?}");
    assert!(
        s.message.contains(&other) && s.message.contains(&id),
        "{}",
        s.message
    );
}

/// With `require-toolchain`, an action must name the identity; the
/// refusal says how (the `.bazelrc` line).
#[tokio::test(flavor = "multi_thread")]
async fn a_required_toolchain_must_be_named() {
    let d = root_daemon("\n[execution]\nrequire-toolchain = true\n");
    let s = cli::status(&d);
    assert_eq!(s["require_toolchain"], true, "{s}");
    let id = toolchain_of(&s);
    let ch = owner(&d).await;
    let plain = ActionSpec::sh("echo unnamed");
    let s = run(&ch, &plain, true).await.status.unwrap();
    assert_eq!(s.code, Code::FailedPrecondition as i32, "{s:?}");
    let line = format!("--remote_default_exec_properties=lre-toolchain={id}");
    assert!(s.message.contains(&line), "{}", s.message);
    let mut named = plain.clone();
    named.platform = vec![("lre-toolchain".into(), id)];
    let r = run(&ch, &named, true).await;
    assert_eq!(
        r.status.clone().unwrap_or_default().code,
        0,
        "{:?}",
        r.status
    );
    assert_eq!(stdout_of(&ch, &r).await, "unnamed\n");
}

// ------------------------------------------------------ /etc/alternatives

/// awk and cc are Debian alternatives (/usr/bin/awk -> /etc/alternatives/
/// awk -> mawk or gawk): they run in actions, and cc compiles a program.
async fn alternatives_run(owner_uid: Option<u32>) {
    let d = Lre::start(Start {
        uid: owner_uid,
        ..Default::default()
    });
    let script = "awk 'BEGIN{print 1+1}' && cc --version | head -n1 && \
        printf 'int main(void){return 42;}\\n' > t.c && cc -o t t.c && { ./t; echo \"ran $?\"; }";
    let ch = owner(&d).await;
    let r = run(&ch, &ActionSpec::sh(script), true).await;
    assert_eq!(
        r.status.clone().unwrap_or_default().code,
        0,
        "{:?}",
        r.status
    );
    let (out, err) = (stdout_of(&ch, &r).await, stderr_of(&ch, &r).await);
    assert_eq!(r.result.unwrap().exit_code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"2"), "{out}{err}");
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.contains("gcc") || l.contains("cc (")),
        "{out}{err}"
    );
    assert_eq!(lines.last(), Some(&"ran 42"), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn debian_alternatives_run_in_a_root_daemons_actions() {
    alternatives_run(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn debian_alternatives_run_in_a_per_user_daemons_actions() {
    alternatives_run(Some(OWNER_ALT)).await;
}
