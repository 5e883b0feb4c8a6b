//! Which protections are in force on this host, as seen from inside a
//! sandbox. At start the daemon runs the helper once with
//! [`Spec::probe`](super::Spec) set: the whole set-up sequence runs as for
//! an action, and where the command would be exec'd, [`inside`] checks
//! each protection from the kernel's own view (`/proc/self/status`,
//! `/proc/1/status`, mountinfo, calls the filter must refuse) and prints
//! the findings. `nativelink-lre status` shows them. Every step is also
//! mandatory for every action: one that cannot be put in place fails the
//! action, it never runs without it.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use super::helper::Applied;
use super::keyring::Session;
use super::{Outcome, Report, RootMode, Spec, fds};

/// One protection and whether the probe found it in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    pub name: String,
    pub in_force: bool,
    /// How, or why not.
    pub detail: String,
}

/// What the probe found; `error` when the sandbox could not be set up at
/// all (then no action can run either).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protections {
    pub items: Vec<Protection>,
    pub error: Option<String>,
}

impl Protections {
    fn failed(error: String) -> Protections {
        Protections {
            items: Vec::new(),
            error: Some(error),
        }
    }

    /// The protections not in force, by name.
    pub fn missing(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter(|p| !p.in_force)
            .map(|p| p.name.as_str())
            .collect()
    }
}

/// The input file the probe's exec root holds, which must be read-only.
const PROBE_INPUT: &str = "input";

/// Runs the probe: `spec` as for an action (its exec root must exist),
/// with `probe` set. Blocks for the few milliseconds a sandbox takes.
pub fn run(mut spec: Spec) -> Protections {
    spec.probe = true;
    let child =
        super::helper_command(&spec, Stdio::piped(), Stdio::piped()).and_then(|mut c| c.spawn());
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Protections::failed(format!("cannot start the sandbox helper: {e}")),
    };
    let mut out = Vec::new();
    let _ = child.stdout.take().map(|mut s| s.read_to_end(&mut out));
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
    let _ = child.wait();
    let report: Option<Report> = std::fs::read(&spec.result_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match report.map(|r| r.outcome) {
        Some(Outcome::Exited(0)) => match serde_json::from_slice::<Vec<Protection>>(&out) {
            Ok(items) => Protections { items, error: None },
            Err(e) => Protections::failed(format!("unreadable probe report ({e}): {err}")),
        },
        Some(Outcome::SetupFailed(msg)) => Protections::failed(msg),
        other => Protections::failed(format!("the probe ended with {other:?}: {err}")),
    }
}

/// In the probe's command process, after every protection is in place:
/// prints the findings as JSON on stdout and exits.
pub fn inside(spec: &Spec, applied: &Applied, closed: fds::Method) -> ! {
    let own = status_fields("/proc/self/status");
    let items = vec![
        seccomp(applied, &own),
        session_keyring(applied),
        {
            let open = fds::open_from(4);
            Protection {
                name: "close-range".into(),
                in_force: open.is_empty(),
                detail: if open.is_empty() {
                    format!(
                        "no descriptor above 2 reaches the command ({})",
                        closed.as_str()
                    )
                } else {
                    format!("descriptors still open: {open:?}")
                },
            }
        },
        read_only(spec, applied),
        exec_root_path(applied),
        read_only_inputs(spec),
        capabilities(&own),
        supplementary_groups(&own),
        Protection {
            name: "no-new-privs".into(),
            in_force: field(&own, "NoNewPrivs") == Some("1"),
            detail: "set-uid and file capabilities cannot raise privileges".into(),
        },
    ];
    let json = serde_json::to_vec(&items).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut out, &json);
    let _ = std::io::Write::flush(&mut out);
    // SAFETY: _exit skips the helper's atexit handlers, which belong to the
    // helper, not to this child.
    unsafe { libc::_exit(0) }
}

fn session_keyring(applied: &Applied) -> Protection {
    let (in_force, detail) = match &applied.keyring {
        Session::Fresh(serial) => (
            applied.keyring_before != Some(*serial) && applied.keyring_keys == Some(0),
            format!(
                "a fresh session keyring ({} keys) instead of the daemon's",
                applied
                    .keyring_keys
                    .map_or("unreadable".to_owned(), |n| n.to_string())
            ),
        ),
        Session::Unavailable(why) => (true, why.clone()),
    };
    Protection {
        name: "session-keyring".into(),
        in_force,
        detail,
    }
}

fn status_fields(path: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// The action is in its own group only. A root daemon drops the rest; an
/// unprivileged one cannot (setgroups needs CAP_SETGID on the host), so
/// its own supplementary groups reach every action, unmapped (as gid
/// 65534), and the action's `id` differs from a root daemon's.
fn supplementary_groups(own: &[(String, String)]) -> Protection {
    let n = field(own, "Groups").map_or(0, |g| g.split_whitespace().count());
    Protection {
        name: "no-supplementary-groups".into(),
        in_force: n == 0,
        detail: if n == 0 {
            "the command is in its own group only".into()
        } else {
            format!(
                "this daemon's {n} supplementary groups reach every action (as gid 65534; only \
                 root can drop them): start the daemon without them, or use the system daemon"
            )
        },
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The errno of a raw system call that is expected to fail.
fn refused(nr: libc::c_long, args: [libc::c_long; 3]) -> Option<i32> {
    // SAFETY: the calls probed take integers only (socket, keyctl
    // GET_KEYRING_ID, unshare); a call the filter lets through returns a
    // descriptor or an id, which the process exits without using.
    let r = unsafe { libc::syscall(nr, args[0], args[1], args[2]) };
    (r < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

fn seccomp(applied: &Applied, own: &[(String, String)]) -> Protection {
    let installed = field(own, "Seccomp") == Some("2")
        && field(own, "Seccomp_filters")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n >= applied.filters.len());
    // Pid 1 installs its copy right after forking us: give it a moment.
    let mut init_filtered = false;
    for _ in 0..200 {
        init_filtered = field(&status_fields("/proc/1/status"), "Seccomp") == Some("2");
        if init_filtered {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let checks = [
        (
            "socket(AF_VSOCK)",
            refused(
                libc::SYS_socket,
                [libc::AF_VSOCK as _, libc::SOCK_STREAM as _, 0],
            ),
            libc::EAFNOSUPPORT,
        ),
        (
            "keyctl",
            refused(libc::SYS_keyctl, [0, -3, 0]),
            libc::ENOSYS,
        ),
        (
            "unshare(CLONE_NEWUSER)",
            refused(libc::SYS_unshare, [libc::CLONE_NEWUSER as _, 0, 0]),
            libc::EPERM,
        ),
    ];
    let wrong: Vec<String> = checks
        .iter()
        .filter(|(_, got, want)| *got != Some(*want))
        .map(|(call, got, _)| format!("{call} gave {got:?}"))
        .collect();
    let in_force = installed && init_filtered && wrong.is_empty();
    Protection {
        name: "seccomp".into(),
        in_force,
        detail: if in_force {
            format!(
                "{} programs in the command and in pid 1; native x86_64 ABI only",
                applied.filters.len()
            )
        } else {
            format!("installed: {installed}, in pid 1: {init_filtered}, not refused: {wrong:?}")
        },
    }
}

fn read_only(spec: &Spec, applied: &Applied) -> Protection {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if spec.root == RootMode::Input {
        return no_host_paths(&info, &spec.read_only_inputs);
    }
    let writable: Vec<String> = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((*f.get(4)?, *f.get(5)?))
        })
        .filter(|(point, opts)| {
            spec.read_only_paths
                .iter()
                .any(|p| Path::new(point).starts_with(p))
                && !opts.split(',').any(|o| o == "ro")
        })
        .map(|(point, _)| point.to_owned())
        .collect();
    Protection {
        name: "read-only-recursive".into(),
        in_force: writable.is_empty(),
        detail: if writable.is_empty() {
            format!(
                "every mount under the read-only paths is read-only ({})",
                applied.read_only.as_str()
            )
        } else {
            format!("writable mounts: {writable:?}")
        },
    }
}

fn exec_root_path(applied: &Applied) -> Protection {
    let (in_force, detail) = match &applied.exec_root {
        super::exec_root::Method::Overlay => (
            true,
            "/exec is an overlayfs of the exec root: mountinfo shows no host path".to_owned(),
        ),
        super::exec_root::Method::Bind(why) => (
            false,
            format!("/exec is a bind mount, whose source path shows in mountinfo ({why})"),
        ),
    };
    Protection {
        name: "exec-root-path".into(),
        in_force,
        detail,
    }
}

fn read_only_inputs(spec: &Spec) -> Protection {
    let path = spec.root.input_root().join(PROBE_INPUT);
    let chmod = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
    let write = std::fs::OpenOptions::new().append(true).open(&path);
    let in_force = chmod.is_err() && write.is_err();
    let how = if spec.read_only_inputs.is_empty() {
        "owned by the daemon, not the action"
    } else {
        "bound read-only onto themselves"
    };
    Protection {
        name: "read-only-inputs".into(),
        in_force,
        detail: if in_force {
            format!("input files are {how}: chmod and writes fail")
        } else {
            format!(
                "an input file could be changed: chmod {chmod:?}, write {:?}",
                write.map(drop)
            )
        },
    }
}

/// The input mode binds nothing of the host: every mount is `/` (the
/// input root), under `/dev`, `/proc` or `/tmp`, or an input file bound
/// read-only onto itself.
fn no_host_paths(mountinfo: &str, inputs: &[String]) -> Protection {
    let ours = |point: &str| {
        point == "/"
            || ["/dev", "/proc", "/tmp"]
                .iter()
                .any(|top| Path::new(point).starts_with(top))
            || inputs.iter().any(|i| point.strip_prefix('/') == Some(i))
    };
    let other: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|point| !ours(point))
        .collect();
    Protection {
        name: "no-host-paths".into(),
        in_force: other.is_empty(),
        detail: if other.is_empty() {
            "the input root is /; only /dev, /proc and /tmp are mounted on it".into()
        } else {
            format!("other mounts: {other:?}")
        },
    }
}

fn capabilities(own: &[(String, String)]) -> Protection {
    let init = status_fields("/proc/1/status");
    let sets = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];
    let held: Vec<String> = [("command", own), ("pid 1", init.as_slice())]
        .iter()
        .flat_map(|(who, fields)| {
            sets.iter().filter_map(move |set| match field(fields, set) {
                Some(v) if v.trim_start_matches('0').is_empty() => None,
                v => Some(format!("{who} {set}={}", v.unwrap_or("unreadable"))),
            })
        })
        .collect();
    Protection {
        name: "no-capabilities".into(),
        in_force: held.is_empty(),
        detail: if held.is_empty() {
            "the command and pid 1 hold no capability in any set".into()
        } else {
            held.join(", ")
        },
    }
}

/// The probe at daemon start: a scratch exec root `probe/exec` under
/// `exec_dir` (the daemon's private directory of exec roots), owned by the
/// uid the probe runs as, removed afterwards. Logs what it found. `root`
/// is the root mode probed (the host mode's findings are what `status`
/// shows; the input mode is probed too when an instance uses it).
pub fn at_start(
    exec_dir: &Path,
    read_only_paths: Vec<std::path::PathBuf>,
    (uid, gid): (u32, u32),
    (rlimits, nice): (Vec<super::rlimits::Rlimit>, i32),
    root: RootMode,
) -> Protections {
    let dir = exec_dir.join(format!("probe-{root}"));
    let sandbox = dir.join("sandbox");
    let layers = super::exec_root::layer_dirs(&sandbox);
    let exec_root = layers[0].clone();
    let made = std::fs::create_dir_all(&sandbox)
        .and_then(|()| std::os::unix::fs::chown(&sandbox, Some(uid), Some(gid)))
        .and_then(|()| {
            layers.iter().try_for_each(|d| {
                std::fs::create_dir(d)
                    .and_then(|()| std::os::unix::fs::chown(d, Some(uid), Some(gid)))
            })
        })
        .and_then(|()| {
            // An input file as the daemon lays one out: its own, 0444.
            let input = exec_root.join(PROBE_INPUT);
            std::fs::write(&input, b"probe\n")?;
            std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o444))
        });
    let found = match made {
        Err(e) => Protections::failed(format!("{}: {e}", exec_root.display())),
        Ok(()) => run(Spec {
            args: vec!["probe".into()],
            env: Vec::new(),
            working_dir: String::new(),
            exec_root,
            exec_overlay: true,
            // As the daemon lays out inputs: bound only where the action
            // owns them (a per-user daemon).
            read_only_inputs: if nix::unistd::geteuid().is_root() {
                Vec::new()
            } else {
                vec![PROBE_INPUT.into()]
            },
            root,
            read_only_paths,
            tmp_size: 1 << 20,
            host_uid: uid,
            host_gid: gid,
            host_network: false,
            nproc_limit: None,
            cgroup_procs: None,
            rlimits,
            nice,
            result_path: dir.join("result.json"),
            probe: true,
        }),
    };
    let _ = std::fs::set_permissions(
        sandbox.join("work/work"),
        std::fs::Permissions::from_mode(0o700),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let mode = match root {
        RootMode::Host => String::new(),
        other => format!(" (root mode {other})"),
    };
    match &found.error {
        Some(e) => {
            tracing::error!("the sandbox{mode} does not work on this host, actions will fail: {e}")
        }
        None if root != RootMode::Host && found.missing().is_empty() => {
            let names: Vec<&str> = found.items.iter().map(|p| p.name.as_str()).collect();
            tracing::info!(
                "sandbox protections{mode}: all in force ({})",
                names.join(", ")
            );
        }
        None => {
            for p in &found.items {
                if p.in_force {
                    tracing::info!(
                        "sandbox protection {}{mode}: in force, {}",
                        p.name,
                        p.detail
                    );
                } else {
                    tracing::warn!(
                        "sandbox protection {}{mode}: NOT in force, {}",
                        p.name,
                        p.detail
                    );
                }
            }
        }
    }
    found
}
