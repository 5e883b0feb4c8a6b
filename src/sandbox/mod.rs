//! Running one command hermetically: its own user, mount, pid, network,
//! ipc, uts and cgroup namespaces, a fresh root filesystem that holds only
//! the exec root, the read-only toolchain paths, a minimal `/dev`, a fresh
//! `/proc` and a private `/tmp`.
//!
//! The daemon is multi-threaded, and `unshare(CLONE_NEWUSER)` fails in a
//! threaded process, so nothing here forks the daemon into namespaces.
//! Instead the daemon starts its own binary again (`nativelink-lre
//! __sandbox -`, the spec on stdin), a fresh single-threaded process that
//! does the work in [`helper`]:
//!
//! ```text
//! daemon (threads) ──spawn──▶ helper (root or daemon uid, single-threaded)
//!                               enters the exec root, joins the action's
//!                               cgroup, drops to the action's host
//!                               uid/gid, then clone(NEW*)
//!                                 └──▶ init (pid 1 of the new pid namespace)
//!                                        maps ids, mounts, pivot_root,
//!                                        fresh keyring, drops every
//!                                        capability, then forks, seccomp,
//!                                        reaps
//!                                          └──▶ the command: closes fds,
//!                                               seccomp, execve
//! ```
//!
//! The helper reports how the command ended in a small JSON file; the
//! daemon owns everything else (timeouts, cgroup kill, outputs). At start
//! the daemon runs the whole sequence once as a [`probe`], which reports
//! from inside which protections are in force.

pub mod exec_root;
mod fds;
pub mod helper;
mod keyring;
mod mount_api;
mod mounts;
pub mod probe;
pub mod rlimits;
mod root_mode;
mod scheduling;
pub mod seccomp;

pub use probe::{Protection, Protections};
pub use root_mode::{RootMode, mount_point_conflict};

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;

use serde::{Deserialize, Serialize};

/// Where the exec root appears inside every sandbox. Fixed, so that paths
/// embedded in outputs are the same for every action and every machine.
pub const EXEC_ROOT: &str = "/exec";
/// The uid and gid an action sees itself as: the kernel's overflow id
/// (`nobody`), which is also what every file of an owner its user
/// namespace does not map shows. So its inputs, its outputs, `/usr` and
/// `/tmp` all look owned by it in every mode, whether they are the
/// store's files (a root daemon) or copies the daemon made as the
/// action's own uid (a per-user daemon). Bazel's
/// `--sandbox_fake_username` makes the same choice.
pub const INSIDE_ID: u32 = 65534;
/// The hostname every action sees.
pub const HOSTNAME: &str = "localhost";
/// The NIS domain name every action sees: what a kernel that was never
/// given one reports, as in nix builds.
pub const DOMAINNAME: &str = "(none)";
/// The umask every command starts with.
pub const UMASK: u32 = 0o022;
/// The argument that makes our binary act as the sandbox helper.
pub const HELPER_ARG: &str = "__sandbox";

/// Everything the helper needs to know, written to a file by the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// `argv`; the first element is the program.
    pub args: Vec<String>,
    /// The complete environment of the command.
    pub env: Vec<(String, String)>,
    /// The working directory relative to the exec root ("" for the root).
    pub working_dir: String,
    /// Host directory that becomes [`EXEC_ROOT`], or `/` in the input
    /// mode (read-write). The helper
    /// opens it before it gives up the daemon's identity.
    pub exec_root: PathBuf,
    /// Whether the exec root's parent holds the overlay layers
    /// ([`exec_root::layer_dirs`]): then `/exec` is an overlayfs that shows
    /// no host path, and the helper enters the parent instead.
    #[serde(default)]
    pub exec_overlay: bool,
    /// Input files (relative to the exec root) to bind read-only onto
    /// themselves ([`exec_root::bind_inputs_read_only`]).
    #[serde(default)]
    pub read_only_inputs: Vec<String>,
    /// Which tree becomes `/`: the host mode's tmpfs with the
    /// read-only paths and the exec root at [`EXEC_ROOT`], or the exec
    /// root itself ([`RootMode::Input`]).
    #[serde(default)]
    pub root: RootMode,
    /// Host paths bound read-only at the same place inside (host mode
    /// only).
    pub read_only_paths: Vec<PathBuf>,
    /// Size limit of `/tmp`, in bytes.
    pub tmp_size: u64,
    /// The host uid and gid the action runs as.
    pub host_uid: u32,
    pub host_gid: u32,
    /// Share the host's network namespace instead of a private one with
    /// only `lo`.
    pub host_network: bool,
    /// RLIMIT_NPROC for the command: the process limit used when the pids
    /// controller is missing. Only meaningful when the host uid is the
    /// action's alone (the limit counts every process of the uid).
    pub nproc_limit: Option<u64>,
    /// The action cgroup's `cgroup.procs`, which the helper joins first.
    pub cgroup_procs: Option<PathBuf>,
    /// The resource limits of the command ([`rlimits`]).
    #[serde(default = "rlimits::defaults")]
    pub rlimits: Vec<rlimits::Rlimit>,
    /// The command's nice value.
    #[serde(default)]
    pub nice: i32,
    /// Where the helper writes the [`Outcome`].
    pub result_path: PathBuf,
    /// Instead of the command, report the protections in force
    /// ([`probe::inside`]) on stdout.
    #[serde(default)]
    pub probe: bool,
}

/// How the sandboxed command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// It exited with this status (the sandbox's init reports a command
    /// killed by a signal as 128 + the signal, as a shell would).
    Exited(i32),
    /// The sandbox could not be set up; the command never ran.
    SetupFailed(String),
    /// The helper itself died (the daemon killed it, or its cgroup).
    HelperKilled(String),
}

/// What the helper writes: the outcome and when the command started and
/// ended, on the monotonic clock (comparable with [`monotonic_ns`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub outcome: Outcome,
    /// When sandbox set-up was done and the command was about to exec.
    pub exec_ns: u64,
    /// When the command's init exited.
    pub exit_ns: u64,
    /// CPU time of the command's whole tree, from the helper's
    /// RUSAGE_CHILDREN: the accounting used when there is no cgroup.
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    /// Bytes the command's whole tree caused to be written to storage
    /// (RUSAGE_CHILDREN's block output, counted when pages are dirtied).
    #[serde(default)]
    pub written_bytes: u64,
}

/// CLOCK_MONOTONIC in nanoseconds, the same clock in every process.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Outcome {
    /// The exit code REAPI reports. A killed helper or init (an OOM kill,
    /// or a kill of the whole cgroup) is reported as a SIGKILL of the
    /// command; a command that never ran has none (-1).
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited(code) => *code,
            Outcome::HelperKilled(_) => 128 + libc::SIGKILL,
            Outcome::SetupFailed(_) => -1,
        }
    }
}

/// A running sandbox.
pub struct Running {
    child: tokio::process::Child,
    result_path: PathBuf,
}

impl Running {
    /// Sends a signal to the helper, which forwards SIGTERM and SIGINT to
    /// the command. SIGKILL kills the helper, whose init then dies of its
    /// parent-death signal, which ends the whole pid namespace.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// Waits for the helper and reads the report it wrote.
    ///
    /// A helper killed by a signal (an OOM kill or a kill of the action's
    /// whole cgroup takes it too) reports nothing: the command is taken to
    /// have been killed. A helper that *exited* without a complete report
    /// could not run or watch the action (it could not read its spec, or
    /// write its report on a full disk): that is an error of ours, never a
    /// result of the action's.
    pub async fn wait(&mut self) -> io::Result<Report> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.wait().await?;
        let text = std::fs::read_to_string(&self.result_path);
        let report = text
            .as_ref()
            .ok()
            .and_then(|t| serde_json::from_str::<Report>(t).ok());
        match (report, status.signal()) {
            (Some(report), _) if status.success() => Ok(report),
            (None, Some(signal)) => {
                let now = monotonic_ns();
                Ok(Report {
                    outcome: Outcome::HelperKilled(format!(
                        "sandbox helper killed by signal {signal}"
                    )),
                    exec_ns: now,
                    exit_ns: now,
                    cpu_user_usec: 0,
                    cpu_system_usec: 0,
                    written_bytes: 0,
                })
            }
            (_, _) => Err(io::Error::other(format!(
                "the sandbox helper ended with {status} without a report in {} ({})",
                self.result_path.display(),
                match &text {
                    Ok(t) if t.trim().is_empty() => "empty".to_owned(),
                    Ok(_) => "unreadable".to_owned(),
                    Err(e) => e.to_string(),
                }
            ))),
        }
    }
}

/// A file for a command's standard output or error: an anonymous memory
/// file, so that the command's `/proc/self/fd/1` reads `/memfd:stdout
/// (deleted)` wherever the daemon keeps its state. Its pages are charged
/// to the memory of the action that writes them. The daemon keeps its own
/// descriptor, so what was written survives a killed sandbox.
pub fn stream(name: &str) -> io::Result<File> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    Ok(File::from(fd))
}

/// Copies what was written to `stream` into a new file at `path`, holes
/// kept as holes: a command that truncates its stdout up to
/// `sandbox.max-file-size` costs no memory, and must not cost that much
/// disk either.
pub fn save_stream(stream: File, path: &std::path::Path) -> io::Result<()> {
    use nix::unistd::{Whence, lseek};
    use std::os::unix::fs::FileExt;
    let len = stream.metadata()?.len();
    let out = File::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let data = match lseek(&stream, at as i64, Whence::SeekData) {
            Ok(p) => p as u64,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(&stream, data as i64, Whence::SeekHole)? as u64;
        let mut pos = data;
        while pos < hole {
            let want = ((hole - pos) as usize).min(buf.len());
            let n = stream.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                break;
            }
            out.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
        }
        at = hole;
    }
    out.set_len(len)
}

/// Starts the helper for `spec`; stdout and stderr become the command's.
pub fn spawn(spec: &Spec, stdout: File, stderr: File) -> io::Result<Running> {
    let command = helper_command(spec, stdout.into(), stderr.into())?;
    let child = tokio::process::Command::from(command).spawn()?;
    Ok(Running {
        child,
        result_path: spec.result_path.clone(),
    })
}

/// The helper's command line: a neutral argv (it is what the sandbox's
/// `/proc/1/cmdline` shows), an empty environment, and the spec on stdin
/// from a memfd, so that no file holds it.
fn helper_command(spec: &Spec, stdout: Stdio, stderr: Stdio) -> io::Result<std::process::Command> {
    let json = serde_json::to_vec(spec).map_err(io::Error::other)?;
    let memfd = nix::sys::memfd::memfd_create(
        c"nativelink-lre-spec",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )?;
    let mut file = File::from(memfd);
    io::Write::write_all(&mut file, &json)?;
    io::Seek::rewind(&mut file)?;
    File::create(&spec.result_path)?;
    let mut command = std::process::Command::new(helper_binary());
    std::os::unix::process::CommandExt::arg0(&mut command, "nativelink-lre");
    command
        .arg(HELPER_ARG)
        .arg("-")
        .env_clear()
        .stdin(file)
        .stdout(stdout)
        .stderr(stderr);
    Ok(command)
}

/// Our own executable. `/proc/self/exe` still works if the file on disk was
/// replaced by an upgrade while we run.
fn helper_binary() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    #[test]
    fn a_sparse_stream_is_saved_sparse_and_whole() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let out = stream("stdout").unwrap();
        out.write_all_at(b"start", 0).unwrap();
        out.write_all_at(b"end", 1 << 30).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("stdout");
        save_stream(out, &path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), (1 << 30) + 3);
        // A few blocks, not a gigabyte.
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let saved = std::fs::File::open(&path).unwrap();
        let mut buf = [0u8; 5];
        saved.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"start");
        saved.read_exact_at(&mut buf[..3], 1 << 30).unwrap();
        assert_eq!(&buf[..3], b"end");
    }
}
