//! The sandbox helper: `nativelink-lre __sandbox -`, the spec on stdin.
//!
//! This runs in a freshly exec'd, single-threaded process (main() dispatches
//! here before anything else starts a thread), so it may fork, clone and
//! allocate freely: no other thread can hold a lock. The whole set-up
//! sequence is here, in the order nix-daemon and bubblewrap use:
//!
//! 1. (helper, still privileged) read the spec from stdin, which then
//!    becomes /dev/null; open the result file; enter the exec root by a
//!    descriptor (`O_PATH|O_DIRECTORY|O_NOFOLLOW`, then `fchdir`): the
//!    only host path under the state directory the sandbox uses, resolved
//!    before the identity switch; compile the seccomp filter; set the
//!    fixed scheduling attributes ([`scheduling`]) and resource limits
//!    ([`rlimits`]), which raising a limit or lowering a nice value needs
//!    the privilege for;
//! 2. join the action's cgroup, and allow every CPU its cpuset has;
//! 3. drop supplementary groups and switch to the action's host uid/gid;
//! 4. clone into new user, mount, pid, net, ipc and uts namespaces (the
//!    working directory follows into the new mount namespace);
//! 5. (child, pid 1 of the new pid namespace) map its own uid/gid to the
//!    fixed inside ids, enter a new cgroup namespace (always: without a
//!    cgroup of its own the action would see the daemon's path), build the
//!    root filesystem and pivot into it ([`mounts`]; the input root as `/`
//!    in [`root_mode`]), bring up `lo`, set the hostname and the NIS
//!    domain name;
//! 6. join a fresh, empty session keyring ([`keyring`]);
//! 7. drop every capability (bounding, permitted, effective, inheritable,
//!    ambient) and set no_new_privs, in pid 1 itself: nothing forked
//!    after this has a capability, in any namespace;
//! 8. fork the command; in it: default signal dispositions, the fixed
//!    umask, standard input from the sandbox's own `/dev/null`, the
//!    working directory, the process limit, close every descriptor above
//!    2 (`close_range`;
//!    the set-up error pipe stays as fd 3, close-on-exec, until exec), the
//!    seccomp filter ([`seccomp`]), exec. Pid 1 installs the same filter,
//!    closes its descriptors, forwards signals, reaps, and exits with the
//!    command's status;
//! 9. the helper waits for pid 1, removes the mount points the input
//!    root mode created ([`root_mode`]), and writes the outcome.
//!
//! Every step is mandatory: if one fails, the command never runs and the
//! action fails with the reason (never a result).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use super::mounts::ReadOnlyMethod;
use super::seccomp::Filters;
use super::{DOMAINNAME, HOSTNAME, INSIDE_ID, UMASK};
use super::{Outcome, Report, Spec, fds, keyring, monotonic_ns};
use super::{exec_root, mounts, probe, rlimits, root_mode, scheduling};

/// The process that signals are forwarded to (0: none yet).
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // A failed kill (ESRCH) must not change the errno that the
        // interrupted waitpid loop is about to read.
        let saved = nix::errno::Errno::last_raw();
        // SAFETY: kill(2) is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
        nix::errno::Errno::set_raw(saved);
    }
}

fn install_forwarding(to: Pid) {
    FORWARD_TO.store(to.as_raw(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(forward_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: the handler only calls kill(2) and reads an atomic, both
        // async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// Entry point of the helper process. `spec_arg` must be `-`: the spec
/// comes on stdin, so that no host path shows in the sandbox's
/// `/proc/1/cmdline`. Never returns.
pub fn main(spec_arg: &OsStr) -> ! {
    let spec = match read_spec(spec_arg) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("nativelink-lre sandbox: cannot read the spec: {e}");
            std::process::exit(125);
        }
    };
    let mut result = match File::options()
        .write(true)
        .truncate(true)
        .open(&spec.result_path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "nativelink-lre sandbox: cannot open {}: {e}",
                spec.result_path.display()
            );
            std::process::exit(125);
        }
    };
    let (outcome, exec_ns) = run(&spec);
    let exit_ns = monotonic_ns();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).ok();
    let usec = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    let report = Report {
        outcome,
        exec_ns,
        exit_ns,
        cpu_user_usec: usage.map_or(0, |u| usec(u.user_time())),
        cpu_system_usec: usage.map_or(0, |u| usec(u.system_time())),
        written_bytes: usage.map_or(0, |u| u.block_writes().max(0) as u64 * 512),
    };
    // A report that does not reach the file (a full disk) must not pass
    // for one: the daemon treats a helper that exits non-zero without a
    // report as its own failure.
    let written = serde_json::to_vec(&report)
        .map_err(std::io::Error::other)
        .and_then(|bytes| result.write_all(&bytes));
    if let Err(e) = written {
        eprintln!(
            "nativelink-lre sandbox: cannot write the report {}: {e}",
            spec.result_path.display()
        );
        std::process::exit(125);
    }
    std::process::exit(0)
}

/// Step 1: the spec from stdin, then stdin becomes /dev/null (the
/// command's stdin).
fn read_spec(spec_arg: &OsStr) -> Result<Spec, String> {
    if spec_arg != "-" {
        return Err(format!(
            "expected `-` (the spec on stdin), got {spec_arg:?}"
        ));
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|e| format!("stdin: {e}"))?;
    let null = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("dup2 /dev/null on stdin: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// What the set-up did, for the probe ([`probe::inside`]).
pub struct Applied {
    pub filters: Filters,
    pub read_only: ReadOnlyMethod,
    pub exec_root: exec_root::Method,
    pub keyring_before: Option<i32>,
    pub keyring: keyring::Session,
    pub keyring_keys: Option<usize>,
}

/// Returns the outcome and when the command was about to exec.
fn run(spec: &Spec) -> (Outcome, u64) {
    let failed = |msg: String| (Outcome::SetupFailed(msg), monotonic_ns());
    if let Err(e) = enter_exec_root(spec) {
        return failed(e);
    }
    let filters = match Filters::compile() {
        Ok(f) => f,
        Err(e) => return failed(format!("compiling the seccomp filter: {e}")),
    };
    let keyring_before = keyring::session_serial();
    if let Err(e) = scheduling::apply(spec.nice).and_then(|()| rlimits::apply(&spec.rlimits)) {
        return failed(e);
    }
    // As root, the tmpfs mounts are made while we may, so that they name
    // no host uid.
    // As root (with CAP_SYS_ADMIN; a hardened unit's bounding set may lack
    // it), /tmp and /dev/shm are made before the identity switch, so that
    // their mount options name no host uid; otherwise the sandbox makes
    // them inside.
    let early = if nix::unistd::geteuid().is_root() {
        mounts::Early::make(spec).unwrap_or_default()
    } else {
        mounts::Early::default()
    };
    if let Err(e) = prepare_identity(spec).and_then(|()| scheduling::all_cpus()) {
        return failed(e);
    }
    let (err_read, err_write) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return failed(format!("pipe: {e}")),
    };
    // Init writes the moment it starts the command here.
    let (time_read, time_write) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return failed(format!("pipe: {e}")),
    };
    // The input mode's mount points that the child will create.
    let mount_points = root_mode::created_mount_points(spec);
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if !spec.host_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    // SAFETY: a fork-like clone (no new stack: the child continues on a
    // copy of ours) is sound here because this process is single-threaded.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return failed(format!(
            "clone into new namespaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    if pid == 0 {
        drop(err_read);
        drop(time_read);
        init(spec, early, filters, keyring_before, err_write, time_write);
    }
    drop(err_write);
    drop(time_write);
    drop(early);
    let child = Pid::from_raw(pid as i32);
    install_forwarding(child);
    let status = loop {
        match waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    root_mode::remove_mount_points(&mount_points);
    let mut message = String::new();
    let _ = File::from(err_read).read_to_string(&mut message);
    if !message.is_empty() {
        return failed(message);
    }
    let mut stamp = [0u8; 8];
    let exec_ns = match File::from(time_read).read_exact(&mut stamp) {
        Ok(()) => u64::from_le_bytes(stamp),
        Err(_) => monotonic_ns(),
    };
    let outcome = match status {
        Ok(WaitStatus::Exited(_, code)) => Outcome::Exited(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => {
            Outcome::HelperKilled(format!("sandbox init killed by {sig}"))
        }
        Ok(other) => Outcome::HelperKilled(format!("unexpected wait status {other:?}")),
        Err(e) => Outcome::HelperKilled(format!("waitpid: {e}")),
    };
    (outcome, exec_ns)
}

/// Step 1: makes the exec root our working directory while we may still
/// traverse the daemon's private `exec/` directory. The clone carries the
/// working directory into the new mount namespace, where [`mounts`] takes
/// it from `.`; nothing later resolves a path under the state directory.
fn enter_exec_root(spec: &Spec) -> Result<(), String> {
    let path = match spec.exec_root.parent() {
        Some(parent) if spec.exec_overlay => parent,
        _ => &spec.exec_root,
    };
    let dir = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening the exec root {}: {e}", path.display()))?;
    nix::unistd::fchdir(&dir).map_err(|e| format!("entering the exec root: {e}"))
}

/// Steps 2 and 3: cgroup, then the action's host identity.
fn prepare_identity(spec: &Spec) -> Result<(), String> {
    if let Some(procs) = &spec.cgroup_procs {
        std::fs::write(procs, std::process::id().to_string())
            .map_err(|e| format!("joining cgroup {}: {e}", procs.display()))?;
    }
    let uid = Uid::from_raw(spec.host_uid);
    let gid = Gid::from_raw(spec.host_gid);
    if nix::unistd::geteuid() != uid || nix::unistd::getegid() != gid {
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid {gid}: {e}"))?;
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid {uid}: {e}"))?;
    }
    // A process that changed its uid is not dumpable, which makes its
    // /proc files root's; the child must be able to write its own uid_map.
    nix::sys::prctl::set_dumpable(true).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
    Ok(())
}

/// Reports a setup failure to the helper and exits.
fn fail(err: &impl std::os::fd::AsFd, message: String) -> ! {
    let _ = nix::unistd::write(err, message.as_bytes());
    // SAFETY: _exit is always safe; it skips atexit handlers that belong to
    // the helper, not to this child.
    unsafe { libc::_exit(126) }
}

/// Pid 1 of the new namespaces. Never returns.
fn init(
    spec: &Spec,
    early: mounts::Early,
    filters: Filters,
    keyring_before: Option<i32>,
    err: OwnedFd,
    time: OwnedFd,
) -> ! {
    let applied = match setup(spec, early, filters, keyring_before) {
        Ok(a) => a,
        Err(e) => fail(&err, e),
    };
    let _ = nix::unistd::write(&time, &monotonic_ns().to_le_bytes());
    drop(time);
    // SAFETY: this process is single-threaded (a clone of the single-
    // threaded helper), so fork is sound.
    match unsafe { nix::unistd::fork() } {
        Err(e) => fail(&err, format!("fork: {e}")),
        Ok(ForkResult::Child) => exec_command(spec, &applied, err),
        Ok(ForkResult::Parent { child }) => {
            install_forwarding(child);
            if let Err(e) = applied.filters.install() {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                fail(&err, format!("in pid 1: {e}"));
            }
            drop(err);
            if let Err(e) = fds::close_from(3) {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                eprintln!("nativelink-lre sandbox: {e}");
                std::process::exit(126);
            }
            reap_until(child)
        }
    }
}

/// Steps 5 to 7: everything between clone and the fork of the command.
fn setup(
    spec: &Spec,
    early: mounts::Early,
    filters: Filters,
    keyring_before: Option<i32>,
) -> Result<Applied, String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    // Map our own host ids (the only ones an unprivileged user namespace
    // may map) to the fixed inside ids.
    let write = |file: &str, data: String| {
        std::fs::write(format!("/proc/self/{file}"), data)
            .map_err(|e| format!("writing /proc/self/{file}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{INSIDE_ID} {} 1\n", spec.host_uid))?;
    write("gid_map", format!("{INSIDE_ID} {} 1\n", spec.host_gid))?;
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("unshare(CLONE_NEWCGROUP): {e}"))?;
    let built = mounts::build_root(spec, early)?;
    if !spec.host_network {
        loopback_up().map_err(|e| format!("bringing up lo: {e}"))?;
    }
    nix::unistd::sethostname(HOSTNAME).map_err(|e| format!("sethostname: {e}"))?;
    set_domainname(DOMAINNAME)?;
    let keyring = keyring::join_fresh_session()?;
    let keyring_keys = keyring::session_key_count();
    drop_privileges()?;
    Ok(Applied {
        filters,
        read_only: built.read_only,
        exec_root: built.exec_root,
        keyring_before,
        keyring,
        keyring_keys,
    })
}

/// Sets the NIS domain name of our new UTS namespace, which starts with
/// the host's.
fn set_domainname(name: &str) -> Result<(), String> {
    // SAFETY: name's bytes outlive the call, which reads exactly len bytes.
    let r = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if r != 0 {
        return Err(format!(
            "setdomainname: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Sets IFF_UP on `lo` in our new network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2); the fd is wrapped right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let sock: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data (a name and a union of integers,
    // addresses and a pointer that these requests do not use), for which
    // all zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq that outlives both calls; SIOCGIFFLAGS
    // fills ifru_flags, the union member SIOCSIFFLAGS then reads, so the
    // union is read as the member the kernel wrote.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Pid 1's loop: reap every child, and exit with the command's status when
/// it ends. The kernel then kills whatever else is left in the namespace.
fn reap_until(command: Pid) -> ! {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => std::process::exit(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => {
                std::process::exit(128 + sig as i32)
            }
            Err(nix::errno::Errno::ECHILD) => std::process::exit(126),
            _ => {}
        }
    }
}

/// Step 8, in the command's process. Never returns. A command that
/// cannot be executed gets the message on its stderr and exit status 127,
/// as a shell would give; a protection that cannot be put in place is a
/// set-up failure, reported on `err`.
fn exec_command(spec: &Spec, applied: &Applied, err: OwnedFd) -> ! {
    let die = |msg: String| -> ! {
        let _ = std::io::stderr().write_all(format!("nativelink-lre sandbox: {msg}\n").as_bytes());
        // SAFETY: _exit skips the helper's atexit handlers, which belong to
        // the helper, not to this child.
        unsafe { libc::_exit(127) }
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(&err, format!("PR_SET_PDEATHSIG: {e}"));
    }
    let _ = nix::unistd::setsid();
    // Rust ignores SIGPIPE at start-up and handlers do not survive exec,
    // but ignored signals do: give the command default dispositions and an
    // empty signal mask.
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: setting SIG_DFL installs no handler code.
            let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&SigSet::empty()),
        None,
    );
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(UMASK));
    if let Err(e) = stdin_from_dev_null() {
        fail(&err, e);
    }
    let workdir = spec.root.working_dir(&spec.working_dir);
    if let Err(e) = nix::unistd::chdir(&workdir) {
        die(format!(
            "cannot enter working directory {}: {e}",
            workdir.display()
        ));
    }
    if let Some(n) = spec.nproc_limit
        && let Err(e) =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NPROC, n, n)
    {
        fail(&err, format!("setrlimit(RLIMIT_NPROC, {n}): {e}"));
    }
    let env: Vec<CString> = spec
        .env
        .iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    let args: Vec<CString> = match spec.args.iter().map(|a| CString::new(a.as_str())).collect() {
        Ok(a) => a,
        Err(_) => die("an argument contains a NUL byte".into()),
    };
    let Some(program) = spec.args.first() else {
        die("the command has no arguments".into())
    };
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let candidates: Vec<CString> = candidates(program, path)
        .into_iter()
        .filter_map(|c| CString::new(c).ok())
        .collect();
    // The error pipe becomes fd 3, closed by the exec; nothing else above
    // 2 stays open.
    let err = match keep_as_fd3(err) {
        Ok(fd) => fd,
        Err(e) => die(e),
    };
    let closed = fds::close_from(4).unwrap_or_else(|e| fail(&err, e));
    if let Err(e) = applied.filters.install() {
        fail(&err, e);
    }
    if spec.probe {
        probe::inside(spec, applied, closed);
    }
    let mut last = nix::errno::Errno::ENOENT;
    for c in &candidates {
        match nix::unistd::execve(c, &args, &env) {
            Err(e) => last = e,
            Ok(never) => match never {},
        }
    }
    die(format!("cannot execute {program:?}: {last}"))
}

/// Standard input from the sandbox's own `/dev/null` (the helper's is the
/// host's, whose path the command would see in `/proc/self/fd/0`).
fn stdin_from_dev_null() -> Result<(), String> {
    let null = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening /dev/null: {e}"))?;
    // SAFETY: dup2 onto 0 replaces the helper's standard input, which this
    // process no longer uses; `null` stays owned and is closed on exec.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } != 0 {
        return Err(format!(
            "dup2 of /dev/null: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Moves `fd` to descriptor 3, close-on-exec.
fn keep_as_fd3(fd: OwnedFd) -> Result<OwnedFd, String> {
    if fd.as_raw_fd() == 3 {
        return Ok(fd);
    }
    // SAFETY: dup3 onto 3 replaces whatever fd 3 was; the only descriptors
    // this process still uses are 0-2 and `fd`, which is not 3.
    let r = unsafe { libc::dup3(fd.as_raw_fd(), 3, libc::O_CLOEXEC) };
    if r != 3 {
        return Err(format!(
            "dup3 of the error pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    drop(fd);
    // SAFETY: 3 is the descriptor dup3 just made, owned by nobody else.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(3) })
}

/// Where to look for the program: as given if it has a slash, otherwise in
/// each directory of the *action's* PATH (execvpe would use ours).
fn candidates(program: &str, path: Option<&str>) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_owned()];
    }
    path.unwrap_or("/usr/bin:/bin")
        .split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| format!("{dir}/{program}"))
        .collect()
}

/// Step 7: drops every capability (bounding set first, while we still
/// may), then sets no_new_privs so that nothing exec'd can gain any back.
fn drop_privileges() -> Result<(), String> {
    use caps::CapSet;
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap)
            .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("clearing capability set {set:?}: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::candidates;

    #[test]
    fn program_lookup_uses_the_actions_path() {
        assert_eq!(candidates("/bin/sh", Some("/x")), vec!["/bin/sh"]);
        assert_eq!(candidates("tools/run", None), vec!["tools/run"]);
        assert_eq!(candidates("sh", Some("/a:/b")), vec!["/a/sh", "/b/sh"]);
        assert_eq!(candidates("sh", None), vec!["/usr/bin/sh", "/bin/sh"]);
        assert_eq!(candidates("sh", Some(":/b")), vec!["./sh", "/b/sh"]);
    }
}
