//! The sandbox attacked from inside: actions submitted by throwaway uids
//! (over the unix socket and TCP) try to reach the daemon's session
//! keyring and descriptors, write below read-only paths, make the system
//! calls the seccomp filter refuses (natively, through `int 0x80` and with
//! x32 numbers), and a host process of another uid tries to reach a
//! running action's files. Each against a root daemon and, where the
//! behaviour differs, a per-user daemon under a throwaway uid.

mod common;
#[path = "sandbox/daemon.rs"]
mod daemon;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::exec::*;
use daemon::{Lre, Start};

/// Per-user daemons run as these uids (no passwd entry needed).
const OWNER_KEYS: u32 = 4651;
const OWNER_FDS: u32 = 4652;
const OWNER_RO: u32 = 4653;
const OWNER_SECCOMP: u32 = 4654;
const OWNER_EXEC: u32 = 4655;
/// Throwaway submitters and host attackers.
const ALICE: u32 = 4661;
const MALLORY: u32 = 4662;

fn token(what: &str) -> String {
    format!("lre-{what}-{}", std::process::id())
}

/// The channel an attacker submits on: a stranger's for a root daemon,
/// the owner's for a per-user daemon (nobody else may use it).
async fn submitter(d: &Lre, uid: u32, tcp: bool) -> tonic::transport::Channel {
    let uid = d.uid.unwrap_or(uid);
    if tcp {
        d.tcp_as(uid).await
    } else {
        d.unix_as(uid).await
    }
}

async fn run_ok(ch: &tonic::transport::Channel, spec: &ActionSpec) -> (String, String) {
    let r = run(ch, spec, true).await;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "the action did not run: {status:?}");
    (stdout_of(ch, &r).await, stderr_of(ch, &r).await)
}

// ---------------------------------------------------------------- keyring

/// The daemon's session keyring holds a key; an action must not see or
/// read it, and a key an action leaves must not reach the next action.
async fn session_keyring_is_fresh(owner: Option<u32>) {
    let secret_desc = token("daemon-key");
    let (ring, desc) = (
        std::ffi::CString::new(token("session")).unwrap(),
        std::ffi::CString::new(secret_desc.clone()).unwrap(),
    );
    let pre_exec = move || {
        // SAFETY: raw keyctl/add_key with NUL-terminated strings that the
        // closure owns; no allocation.
        unsafe {
            if libc::syscall(libc::SYS_keyctl, 1, ring.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let payload = b"daemon-key-payload";
            if libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                desc.as_ptr(),
                payload.as_ptr(),
                payload.len(),
                -3i64,
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    let d = Lre::start(Start {
        uid: owner,
        pre_exec: Some(Box::new(pre_exec)),
        ..Default::default()
    });
    let probe = probe_binary();
    let left = token("left-key");
    let spy = ActionSpec::sh(&format!(
        "cat /proc/keys /proc/key-users 2>&1; ./probe key-find {secret_desc}; ./probe key-add {left}"
    ))
    .exe("probe", &probe);
    let (out, err) = run_ok(&submitter(&d, ALICE, false).await, &spy).await;
    assert!(
        !out.contains("FOUND")
            && !out.contains("daemon-key-payload")
            && !out.contains(&secret_desc),
        "an action saw the daemon's session key:\n{out}{err}"
    );
    assert!(out.contains("@s absent"), "{out}{err}");
    let next = ActionSpec::sh(&format!("./probe key-find {left}")).exe("probe", &probe);
    let (out2, err2) = run_ok(&submitter(&d, MALLORY, true).await, &next).await;
    assert!(
        !out2.contains("FOUND"),
        "the next action found the key the previous one left ({out}):\n{out2}{err2}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_cannot_use_the_daemons_session_keyring() {
    session_keyring_is_fresh(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_cannot_use_a_per_user_daemons_session_keyring() {
    session_keyring_is_fresh(Some(OWNER_KEYS)).await;
}

// ------------------------------------------------------------ descriptors

/// The daemon was started with fd 9 open (not close-on-exec) on a
/// root-only file: no action may see it, nor any descriptor above 2.
async fn no_inherited_descriptors(owner: Option<u32>) {
    let scratch = tempfile::tempdir().unwrap();
    let secret = scratch.path().join("root-only");
    let content = token("fd-secret");
    std::fs::write(&secret, &content).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = std::fs::File::open(&secret).unwrap();
    let pre_exec = move || {
        // SAFETY: dup2 onto 9 of a descriptor the closure keeps open, then
        // clear close-on-exec on 9 (dup2 does not when the file already
        // is 9).
        unsafe {
            if libc::dup2(file.as_raw_fd(), 9) < 0 || libc::fcntl(9, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    let d = Lre::start(Start {
        uid: owner,
        pre_exec: Some(Box::new(pre_exec)),
        ..Default::default()
    });
    let spy = ActionSpec::sh("ls /proc/self/fd | tr '\\n' ' '; echo; cat <&9; echo cat=$?");
    for tcp in [false, true] {
        let (out, err) = run_ok(&submitter(&d, ALICE, tcp).await, &spy).await;
        assert!(!out.contains(&content), "an action read fd 9:\n{out}");
        // ls's own directory handle is 3.
        assert_eq!(
            out.lines().next(),
            Some("0 1 2 3 "),
            "descriptors above 2 reached the action:\n{out}{err}"
        );
        assert!(out.contains("cat=1") || out.contains("cat=2"), "{out}{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_descriptor_of_the_daemon_reaches_an_action() {
    no_inherited_descriptors(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_descriptor_of_a_per_user_daemon_reaches_an_action() {
    no_inherited_descriptors(Some(OWNER_FDS)).await;
}

// ------------------------------------------------------- read-only paths

/// A directory with a writable tmpfs mounted below it, outside /tmp (which
/// the sandbox replaces). Unmounted and removed when dropped.
struct Submounted {
    top: PathBuf,
    sub: PathBuf,
}

impl Submounted {
    fn new(tag: &str) -> Submounted {
        let top = PathBuf::from(format!("/var/tmp/{}", token(tag)));
        let sub = top.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=1777,size=1m"),
        )
        .unwrap();
        std::fs::write(sub.join("existing"), "original\n").unwrap();
        std::fs::set_permissions(sub.join("existing"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        Submounted { top, sub }
    }
}

impl Drop for Submounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.sub, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.top);
    }
}

async fn read_only_subtree(owner: Option<u32>, tag: &str) {
    let tree = Submounted::new(tag);
    let mut paths: Vec<String> = ["/usr", "/bin", "/lib", "/lib64"]
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| format!("{p:?}"))
        .collect();
    paths.push(format!("{:?}", tree.top.display().to_string()));
    let d = Lre::start(Start {
        uid: owner,
        extra: format!("[sandbox]\nread-only-paths = [{}]\n", paths.join(", ")),
        ..Default::default()
    });
    let (top, sub) = (tree.top.display(), tree.sub.display());
    let attack = ActionSpec::sh(&format!(
        "cat {sub}/existing; \
         echo x 2>&1 > {sub}/new; echo new=$?; \
         echo x 2>&1 >> {sub}/existing; echo append=$?; \
         mkdir {sub}/dir 2>&1; echo mkdir=$?; \
         echo x 2>&1 > {top}/top; echo top=$?"
    ));
    let (out, err) = run_ok(&submitter(&d, ALICE, false).await, &attack).await;
    assert!(
        out.starts_with("original\n"),
        "the submount is not visible:\n{out}{err}"
    );
    for op in ["new", "append", "mkdir", "top"] {
        assert!(
            !out.contains(&format!("{op}=0")),
            "{op} succeeded below a read-only path:\n{out}{err}"
        );
    }
    assert!(
        out.contains("Read-only file system") || err.contains("Read-only file system"),
        "{out}{err}"
    );
    assert_eq!(
        std::fs::read_to_string(tree.sub.join("existing")).unwrap(),
        "original\n"
    );
    assert!(!tree.sub.join("new").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submount_of_a_read_only_path_is_read_only() {
    read_only_subtree(None, "ro-root").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submount_of_a_read_only_path_is_read_only_for_a_per_user_daemon() {
    read_only_subtree(Some(OWNER_RO), "ro-user").await;
}

// ---------------------------------------------------------------- seccomp

/// Builds tests/sandbox/probe.c statically (once per test process).
fn probe_binary() -> Vec<u8> {
    static PROBE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("probe");
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sandbox/probe.c");
            let built = std::process::Command::new("gcc")
                .args(["-static", "-O1", "-Wall", "-o"])
                .arg(&out)
                .arg(&src)
                .arg("-lpthread")
                .output()
                .expect("gcc (with libc6-dev's static libc) is needed; .ci/run installs it");
            assert!(
                built.status.success(),
                "{}",
                String::from_utf8_lossy(&built.stderr)
            );
            std::fs::read(out).unwrap()
        })
        .clone()
}

async fn denied_calls_fail_on_every_abi(owner: Option<u32>) {
    let d = Lre::start(Start {
        uid: owner,
        ..Default::default()
    });
    let spec = ActionSpec::sh("./probe syscalls; echo sh-ok").exe("probe", &probe_binary());
    let (out, err) = run_ok(&submitter(&d, ALICE, true).await, &spec).await;
    let result = |name: &str, abi: &str| -> String {
        let prefix = format!("{name} {abi} ");
        out.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no line for {name} {abi}:\n{out}{err}"))
            .to_owned()
    };
    let (eperm, enosys, eafnosupport) = (
        format!("errno={}", libc::EPERM),
        format!("errno={}", libc::ENOSYS),
        format!("errno={}", libc::EAFNOSUPPORT),
    );
    let sigsys = format!("killed={}", libc::SIGSYS);
    for (name, native) in [
        ("socket(AF_VSOCK)", &eafnosupport),
        ("keyctl", &enosys),
        ("unshare(CLONE_NEWUSER)", &eperm),
        ("io_uring_setup", &enosys),
        ("ptrace(TRACEME)", &eperm),
        ("perf_event_open", &eperm),
        ("bpf(MAP_CREATE)", &eperm),
    ] {
        assert_eq!(&result(name, "native"), native, "{name} natively:\n{out}");
        // The filter, not the kernel, refuses them: the process is killed.
        assert_eq!(result(name, "i386"), sigsys, "{name} via int 0x80:\n{out}");
        assert_eq!(result(name, "x32"), sigsys, "{name} via x32:\n{out}");
    }
    assert_eq!(result("socketcall(AF_VSOCK)", "i386"), sigsys, "{out}");
    assert_eq!(result("inotify_init1", "native"), enosys, "{out}");
    assert_eq!(result("mount", "native"), eperm, "{out}");
    assert_eq!(result("ioctl(TIOCSTI)", "native"), eperm, "{out}");
    for name in [
        "socket(AF_UNIX)",
        "socket(AF_INET)",
        "socket(AF_INET6)",
        "socket(AF_NETLINK)",
        "socketpair(AF_UNIX)",
        "fork",
        "pthread_create",
    ] {
        assert_eq!(result(name, "ordinary"), "ok", "{name} must work:\n{out}");
    }
    assert!(out.ends_with("sh-ok\n"), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_refuses_denied_calls_natively_via_int80_and_x32() {
    denied_calls_fail_on_every_abi(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_refuses_denied_calls_in_a_per_user_daemon() {
    denied_calls_fail_on_every_abi(Some(OWNER_SECCOMP)).await;
}

/// With a seccomp filter impossible (the daemon itself runs under one that
/// refuses seccomp(2)), no action runs unfiltered and status says why.
#[tokio::test(flavor = "multi_thread")]
async fn without_seccomp_no_action_runs_and_status_says_so() {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let filter = SeccompFilter::new(
        [(libc::SYS_seccomp, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .unwrap();
    let program = BpfProgram::try_from(filter).unwrap();
    let pre_exec = move || {
        seccompiler::apply_filter(&program).map_err(|e| std::io::Error::other(e.to_string()))
    };
    let d = Lre::start(Start {
        pre_exec: Some(Box::new(pre_exec)),
        ..Default::default()
    });
    let status = d.status_text();
    assert!(
        status.contains("sandbox: NOT WORKING") && status.contains("seccomp"),
        "status does not say that the sandbox lacks seccomp:\n{status}\n{}",
        d.log()
    );
    let r = run(&d.unix_as(ALICE).await, &ActionSpec::sh("echo ran"), true).await;
    let s = r.status.clone().unwrap_or_default();
    assert_ne!(s.code, 0, "an action ran without its seccomp filter: {r:?}");
    assert!(s.message.contains("seccomp"), "{s:?}");
    assert!(
        r.result
            .as_ref()
            .is_none_or(|res| res.stdout_digest.is_none()),
        "a result was returned: {r:?}"
    );
}

// ----------------------------------------------------- status and exec root

async fn protections_in_force(owner: Option<u32>) {
    let d = Lre::start(Start {
        uid: owner,
        ..Default::default()
    });
    let status = d.status_text();
    for name in [
        "seccomp",
        "session-keyring",
        "close-range",
        "read-only-recursive",
        "no-capabilities",
        "no-new-privs",
    ] {
        assert!(
            status.contains(&format!("sandbox {name}: in force")),
            "status does not show {name} in force:\n{status}"
        );
    }
    assert!(!status.contains("NOT"), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_protections_in_force() {
    protections_in_force(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_protections_in_force_for_a_per_user_daemon() {
    protections_in_force(Some(OWNER_EXEC)).await;
}

/// Runs `cmd` as `uid` on the host; true if it succeeded.
fn host_as(uid: u32, cmd: &str) -> bool {
    std::process::Command::new("/bin/sh")
        .args(["-c", cmd])
        .uid(uid)
        .gid(uid)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// While an action runs, its scratch directory (exec root, stdout) is out
/// of reach of every other host user; the sandbox's view names no host
/// path in /proc/1/cmdline.
async fn exec_root_is_private(owner: Option<u32>) {
    let d = Lre::start(Start {
        uid: owner,
        ..Default::default()
    });
    let exec = d.state.join("exec");
    let meta = std::fs::metadata(&exec).unwrap();
    assert_eq!(
        meta.mode() & 0o777,
        0o700,
        "{} is reachable",
        exec.display()
    );
    assert_eq!(meta.uid(), owner.unwrap_or(0));
    let marker = token("running");
    let spec = ActionSpec::sh(&format!(
        "echo {marker} > started; tr '\\0' ' ' </proc/1/cmdline > cmdline.txt; \
         cat /proc/self/mountinfo > mountinfo.txt; \
         sleep 4; echo released"
    ))
    .outputs(&["cmdline.txt", "mountinfo.txt"]);
    let ch = submitter(&d, ALICE, false).await;
    let ch2 = ch.clone();
    let running = tokio::spawn(async move { run(&ch2, &spec, true).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    let scratch = loop {
        let found = std::fs::read_dir(&exec).unwrap().flatten().find(|e| {
            std::fs::read_to_string(e.path().join("sandbox/exec/started"))
                .is_ok_and(|s| s.contains(&marker))
        });
        if let Some(e) = found {
            break e.path();
        }
        assert!(Instant::now() < deadline, "the action never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let smeta = std::fs::metadata(&scratch).unwrap();
    assert_eq!(
        smeta.mode() & 0o777,
        0o700,
        "{} is reachable",
        scratch.display()
    );
    let (s, e) = (scratch.display(), exec.display());
    for attempt in [
        format!("cat {s}/sandbox/exec/started"),
        format!("ls {e}"),
        format!("ls {s}/sandbox/exec"),
        format!("touch {s}/sandbox/exec/planted"),
        format!("cd {s}/sandbox/exec"),
    ] {
        assert!(
            !host_as(MALLORY, &attempt),
            "another host user could `{attempt}` while the action ran"
        );
    }
    // (Nothing written into the exec root from the host while the action
    // runs reaches it: /exec is an overlayfs, which does not look for
    // changes made below it. The action ends by itself.)
    let r = running.await.unwrap();
    assert_eq!(r.status.clone().unwrap_or_default().code, 0, "{r:?}");
    assert!(stdout_of(&ch, &r).await.ends_with("released\n"));
    let cmdline = String::from_utf8(output_file(&ch, &r, "cmdline.txt").await).unwrap();
    assert_eq!(cmdline.trim_end(), "nativelink-lre __sandbox -");
    let state = d.state.display().to_string();
    let mountinfo = String::from_utf8(output_file(&ch, &r, "mountinfo.txt").await).unwrap();
    assert!(!cmdline.contains(&state));
    // /exec is an overlayfs whose layers are named relative to the
    // directory the helper entered: no host path shows (issue 10.7).
    assert!(
        !mountinfo.contains(&state),
        "mountinfo names the state directory:\n{mountinfo}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_action_is_out_of_reach_of_other_host_users() {
    exec_root_is_private(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_per_user_daemons_running_action_is_out_of_reach() {
    exec_root_is_private(Some(4656)).await;
}
