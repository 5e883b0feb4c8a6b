//! The probe action (probe.sh beside this file) and what the tests compare
//! and check in its output.

use std::path::Path;

use tonic::transport::Channel;

use crate::common::exec::*;
use crate::common::{Digest, find_missing};

pub const SCRIPT: &[u8] = include_bytes!("probe.sh");

/// The probe with a few input files and directories: plain and executable
/// files, an empty one, two with the same content (one blob, so possibly
/// one inode), a nested directory and a symbolic link.
pub fn action() -> ActionSpec {
    let mut spec = ActionSpec::sh("sh ./probe.sh")
        .exe("probe.sh", SCRIPT)
        .file("src/a.txt", b"alpha\n")
        .file("src/same-as-a.txt", b"alpha\n")
        .file("src/empty", b"")
        .file("src/sub/deep/b.txt", b"beta\n")
        .exe("tools/run.sh", b"#!/bin/sh\necho run\n");
    spec.symlinks.push(("src/link".into(), "a.txt".into()));
    spec
}

/// The blobs of the probe's input files.
pub fn input_blobs() -> Vec<Digest> {
    action()
        .files
        .iter()
        .map(|(_, data, _)| Digest::of_bytes(data))
        .collect()
}

/// Runs the probe (never from the cache) and returns its stdout; the
/// action must succeed and write nothing on stderr.
pub async fn run_probe(ch: &Channel, label: &str) -> String {
    let r = run(ch, &action(), true).await;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "{label}: the probe did not run: {status:?}");
    let out = stdout_of(ch, &r).await;
    let err = stderr_of(ch, &r).await;
    let exit = r.result.as_ref().unwrap().exit_code;
    assert_eq!(exit, 0, "{label}: the probe exited {exit}:\n{out}\n{err}");
    assert!(err.is_empty(), "{label}: the probe wrote on stderr:\n{err}");
    out
}

/// Fails with a unified diff (`diff -u`) when `other` differs from `base`.
pub fn assert_same(base: &str, other: &str, what: &str) {
    if base == other {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("root-daemon"), dir.path().join(what));
    std::fs::write(&a, base).unwrap();
    std::fs::write(&b, other).unwrap();
    let diff = std::process::Command::new("diff")
        .arg("-u")
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    panic!(
        "the probe's output differs on {what}:\n{}",
        String::from_utf8_lossy(&diff.stdout)
    );
}

/// The lines of one `== name` section of the probe's output.
pub fn section<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let head = format!("== {name}");
    out.lines()
        .skip_while(|l| *l != head)
        .skip(1)
        .take_while(|l| !l.starts_with("== "))
        .collect()
}

/// The (soft, hard) columns of a `/proc/self/limits` row.
fn limit<'a>(out: &'a str, row: &str) -> (&'a str, &'a str) {
    let line = section(out, "limits")
        .into_iter()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no {row:?} in the limits:\n{out}"));
    let mut cols = line[row.len()..].split_whitespace();
    (cols.next().unwrap(), cols.next().unwrap())
}

/// What every action sees, whatever the daemon (issue 10, items 1-7).
pub fn assert_fixed_facts(out: &str, state: &Path) {
    let status_line = |key: &str| {
        section(out, "identity")
            .into_iter()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(status_line("Uid:"), ["65534"; 4], "{out}");
    assert_eq!(status_line("Gid:"), ["65534"; 4], "{out}");
    assert!(
        status_line("Groups:").len() <= 1,
        "more than one group:\n{out}"
    );
    let id = section(out, "identity")[0];
    assert_eq!(
        id.split("groups=").nth(1).map(|g| g.split(',').count()),
        Some(1),
        "id shows more than one group: {id}"
    );
    let names = section(out, "names");
    assert_eq!(names.get(2), Some(&"(none)"), "the domain name: {names:?}");
    assert_eq!(section(out, "umask"), ["0022"], "{out}");
    assert_eq!(limit(out, "Max open files"), ("4096", "4096"), "{out}");
    assert_eq!(limit(out, "Max core file size"), ("0", "0"), "{out}");
    let sched = section(out, "scheduling");
    assert_eq!(sched.first(), Some(&"nice 0"), "{sched:?}");
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let allowed = format!("Cpus_allowed_list:\t{}", online.trim());
    assert!(
        sched.contains(&allowed.as_str()),
        "not {allowed:?}: {sched:?}"
    );
    let fds = section(out, "descriptors");
    assert!(
        fds.iter().any(|l| l.starts_with("1 -> /memfd:stdout")),
        "stdout is not the memory file: {fds:?}"
    );
    for bad in ["/var", &state.display().to_string()] {
        let hits: Vec<&str> = out.lines().filter(|l| l.contains(bad)).collect();
        assert!(hits.is_empty(), "{bad} shows in the probe: {hits:#?}");
    }
    assert_input_stats(out);
}

/// Every input file: mode 444 (555 if executable) and mtime 1.
fn assert_input_stats(out: &str) {
    let inputs = section(out, "inputs");
    let mut files = 0;
    for (path, _, x) in &action().files {
        let name = format!("./{path} ");
        let line = inputs
            .iter()
            .find(|l| l.starts_with(&name))
            .unwrap_or_else(|| panic!("{path} is not in the inputs: {inputs:#?}"));
        // "%n %F %a %U:%G %s %Y": the type may be two or three words.
        let words: Vec<&str> = line.split_whitespace().collect();
        let [.., mode, _owner, _size, mtime] = words.as_slice() else {
            panic!("unexpected stat line {line:?}");
        };
        let want = if *x { "555" } else { "444" };
        assert_eq!((*mode, *mtime), (want, "1"), "{line}");
        files += 1;
    }
    assert_eq!(files, action().files.len());
}

/// Makes the store use the probe's input blobs again: FindMissing and a
/// read of each, and another action that links them.
pub async fn touch_inputs(ch: &Channel) {
    let blobs = input_blobs();
    assert!(find_missing(ch, &blobs).await.is_empty());
    for d in &blobs {
        read_blob(ch, &d.to_proto()).await;
    }
    let other = action().salt("the same inputs, another action");
    let r = run(ch, &other, true).await;
    assert_eq!(r.status.unwrap_or_default().code, 0);
}
