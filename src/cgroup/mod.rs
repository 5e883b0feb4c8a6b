//! One cgroup v2 leaf per build action.
//!
//! # Layout
//!
//! ```text
//! <own>                 the cgroup we started in (/proc/self/cgroup, the `0::` line)
//! └── <base>            own/<subtree_name>, or own itself when systemd delegated it to us
//!     ├── supervisor    this process (all threads) and anything it forks before
//!     │                 the child joins its action
//!     ├── action-<id>   one leaf per running action: limits, accounting, kill
//!     └── ...
//! ```
//!
//! cgroup v2 forbids processes in a cgroup that hands controllers to its
//! children ("no internal processes"), so the daemon first moves itself into
//! `base/supervisor` and only then writes `base/cgroup.subtree_control`.
//!
//! # Whose cgroup is it?
//!
//! Under systemd with `Delegate=yes` the unit's cgroup holds only our process
//! and belongs to us: it becomes the base, and we write nothing in it except
//! `cgroup.procs` and `cgroup.subtree_control` (systemd owns the rest of its
//! attributes). Anywhere else (a shell, a container, or these hybrid machines
//! where everybody lives in the root of `/sys/fs/cgroup/unified`) we share
//! our cgroup with other processes, so we create our own child cgroup, named
//! by the caller after the state directory so that two daemons with different
//! state directories never touch each other's actions.
//!
//! # Blocking
//!
//! Everything here is plain blocking file I/O on cgroupfs, and [`ActionCgroup::kill`],
//! [`ActionCgroup::remove`] and `Drop` may wait up to a couple of seconds for
//! processes to die. Call them from `spawn_blocking` in async code.
//!
//! # Files
//!
//! - this file: the types callers see and the [`Manager`] of the base cgroup;
//! - `action.rs`: [`ActionCgroup`], one action's leaf (signal, kill, stats, removal);
//! - `memory.rs`, `pids.rs`, `cpu.rs`: one controller each (limits and accounting);
//! - `cgroupfs.rs`: interface-file I/O, directory listing and removal, flat formats;
//! - `mountinfo.rs`: finding our cgroup directory, and [`survey`] for the doctor;
//! - `error.rs`: [`Error`], every variant naming its path;
//! - `tests.rs`: parsing tests, and tests against this machine's hierarchy.

mod cpu;
mod memory;
mod pids;

mod action;
mod cgroupfs;
mod error;
mod mountinfo;
#[cfg(test)]
mod tests;

pub use action::ActionCgroup;
pub use error::Error;
pub use mountinfo::{Survey, survey};

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{debug, warn};

use crate::io_error::IoError;
use cgroupfs::{
    flat_keyed, is_denied, limit_value, make_dir, read_file, read_optional, read_procs,
    rmdir_retry, validate_name, why_denied, write_file, write_optional,
};
use mountinfo::{parse_cgroup2_mounts, parse_own_cgroup, resolve_cgroup_dir};

/// How long [`ActionCgroup::kill`] waits for the cgroup to become empty.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest single sleep while polling cgroupfs.
const MAX_POLL_DELAY: Duration = Duration::from_millis(50);

/// Name of the leaf the daemon itself lives in.
const SUPERVISOR: &str = "supervisor";
/// Prefix of every action cgroup; anything with it under the base at
/// start-up is a leftover from a crashed run and gets killed.
const ACTION_PREFIX: &str = "action-";

/// Per-action limits; `None` = no limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// `memory.max`, in bytes.
    pub memory_max: Option<u64>,
    /// `memory.swap.max`, in bytes (ignored if the kernel has no swap accounting).
    pub swap_max: Option<u64>,
    /// `pids.max`: processes and threads.
    pub pids_max: Option<u64>,
    /// `cpu.max`, in cores: 1.5 becomes `"150000 100000"`.
    pub cpu_max: Option<f64>,
}

/// Which controllers are enabled for our action cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Controllers {
    pub memory: bool,
    pub pids: bool,
    pub cpu: bool,
}

impl Controllers {
    /// Each controller we want, by name, in the order they are reported,
    /// with whether it is enabled.
    fn flags(&self) -> [(&'static str, bool); 3] {
        [
            ("memory", self.memory),
            ("pids", self.pids),
            ("cpu", self.cpu),
        ]
    }

    /// Names of the controllers that are not enabled, e.g. `["memory", "pids", "cpu"]`.
    pub fn missing(&self) -> Vec<&'static str> {
        self.flags()
            .into_iter()
            .filter(|(_, on)| !on)
            .map(|(name, _)| name)
            .collect()
    }

    /// Names of the enabled controllers.
    pub fn enabled(&self) -> Vec<&'static str> {
        self.flags()
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| name)
            .collect()
    }

    /// The controllers named in a `cgroup.subtree_control`-style list.
    pub fn from_list(list: &str) -> Controllers {
        let names: BTreeSet<&str> = list.split_whitespace().collect();
        Controllers {
            memory: names.contains("memory"),
            pids: names.contains("pids"),
            cpu: names.contains("cpu"),
        }
    }
}

/// Accounting of one action cgroup (hierarchical: includes exited processes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// `cpu.stat` `usage_usec`.
    pub usage_usec: u64,
    /// `cpu.stat` `user_usec`.
    pub user_usec: u64,
    /// `cpu.stat` `system_usec`.
    pub system_usec: u64,
    /// `memory.peak` in bytes; `None` without the memory controller (or before Linux 5.19).
    pub memory_peak: Option<u64>,
    /// `memory.events` `oom_kill`; `None` without the memory controller.
    pub oom_kills: Option<u64>,
    /// `pids.events` `max`: forks refused by `pids.max`; `None` without the pids controller.
    pub pids_max_events: Option<u64>,
}

/// The outcome of [`Manager::setup`].
#[derive(Debug)]
pub enum Setup {
    /// We have a base cgroup and live in its `supervisor` leaf.
    Ready(Manager),
    /// Actions run without cgroups; the string says why, for the log, e.g.
    /// "no cgroup v2 hierarchy is mounted".
    Unavailable(String),
}

/// Owner of the base cgroup. Shared by every action (it is `Sync`); create
/// exactly one per process, since [`Manager::setup`] moves the whole process.
#[derive(Debug)]
pub struct Manager {
    /// The cgroup directory we started in; [`Manager::shutdown`] returns there.
    original: PathBuf,
    base: PathBuf,
    supervisor: PathBuf,
    /// The base is the cgroup systemd delegated to us: never remove it, and
    /// give back its `cgroup.subtree_control` before moving back into it.
    delegated: bool,
    controllers: Controllers,
    shut_down: AtomicBool,
}

impl Manager {
    /// Finds the v2 mount (`/proc/self/mountinfo`) and our own cgroup
    /// (`/proc/self/cgroup`, the `0::` line).
    ///
    /// If our cgroup holds only this process (systemd `Delegate=yes`), it is
    /// ours: base = own cgroup. Otherwise we are not its owner: base =
    /// own/`subtree_name` (created if needed); the caller names it after the
    /// state directory, e.g. `nativelink-lre-<12 hex of sha256(state dir)>`.
    ///
    /// Then: creates base/supervisor and moves this process (all threads)
    /// into it, kills and removes leftover base/action-* cgroups of a crashed
    /// run, and enables whichever of memory, pids and cpu base/cgroup.controllers
    /// offers in base/cgroup.subtree_control (each separately; see
    /// [`Manager::controllers`] for what worked).
    ///
    /// Returns `Unavailable` when there is no v2 hierarchy or we may not
    /// create or join the base (not root and not delegated, read-only cgroupfs).
    /// Returns `Err` for anything unexpected, including live foreign processes
    /// in base/supervisor (another daemon with the same state directory).
    pub fn setup(subtree_name: &str) -> Result<Setup, Error> {
        let mountinfo_path = Path::new("/proc/self/mountinfo");
        let mounts = parse_cgroup2_mounts(&read_file(mountinfo_path)?);
        if mounts.is_empty() {
            return Ok(Setup::Unavailable(
                "no cgroup v2 hierarchy is mounted".to_owned(),
            ));
        }
        let proc_cgroup_path = Path::new("/proc/self/cgroup");
        let Some(own) = parse_own_cgroup(&read_file(proc_cgroup_path)?) else {
            return Ok(Setup::Unavailable(
                "/proc/self/cgroup has no cgroup v2 (0::) entry".to_owned(),
            ));
        };
        let Some(own_dir) = resolve_cgroup_dir(&mounts, &own) else {
            return Ok(Setup::Unavailable(format!(
                "our cgroup {} is not below any cgroup2 mount ({})",
                own.display(),
                mounts
                    .iter()
                    .map(|m| format!("{} at {}", m.root.display(), m.mount_point.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        Self::setup_in(&own, own_dir, subtree_name)
    }

    /// [`Manager::setup`] once the own cgroup is known: `own` as in
    /// /proc/self/cgroup, `own_dir` its directory.
    fn setup_in(own: &Path, own_dir: PathBuf, subtree_name: &str) -> Result<Setup, Error> {
        validate_name(&own_dir, subtree_name, 0)?;
        let me = nix::unistd::getpid().as_raw();

        // Delegated iff we are alone in a non-root cgroup. A cgroup called
        // `supervisor` is some other manager's (or an earlier setup()'s) leaf,
        // never a delegation.
        let delegated = own != Path::new("/")
            && own.file_name() != Some(SUPERVISOR.as_ref())
            && read_procs(&own_dir)? == [me];

        let (base, created_base) = if delegated {
            (own_dir.clone(), false)
        } else {
            let base = own_dir.join(subtree_name);
            match make_dir(&base) {
                Ok(created) => (base, created),
                Err(e) if is_denied(&e) => return Ok(Setup::Unavailable(why_denied(&own_dir, &e))),
                Err(source) => {
                    return Err(IoError::new("cannot create cgroup", &base, source).into());
                }
            }
        };
        let undo_base = |created: bool| {
            if created {
                let _ = fs::remove_dir(&base);
            }
        };

        let supervisor = base.join(SUPERVISOR);
        let created_supervisor = match make_dir(&supervisor) {
            Ok(created) => created,
            Err(e) if is_denied(&e) => {
                undo_base(created_base);
                return Ok(Setup::Unavailable(why_denied(&base, &e)));
            }
            Err(source) => {
                undo_base(created_base);
                return Err(IoError::new("cannot create cgroup", &supervisor, source).into());
            }
        };

        // A leftover supervisor of a crashed run is normally empty (systemd or
        // the pid-namespace init killed its helpers). Live processes there
        // mean a second daemon is using the same state directory: refuse
        // rather than kill its actions below.
        let foreign: Vec<i32> = read_procs(&supervisor)?
            .into_iter()
            .filter(|&pid| pid != me)
            .collect();
        if !foreign.is_empty() {
            return Err(Error::InUse {
                path: supervisor,
                pids: foreign,
            });
        }

        // Writing our pid moves every thread of the process.
        if let Err(e) = write_file(&supervisor.join("cgroup.procs"), &me.to_string()) {
            let undo = || {
                if created_supervisor {
                    let _ = fs::remove_dir(&supervisor);
                }
                undo_base(created_base);
            };
            return match &e {
                Error::Write { source, .. } if is_denied(source) => {
                    undo();
                    Ok(Setup::Unavailable(format!(
                        "cannot move pid {me} into {}: {source} (uid {})",
                        supervisor.display(),
                        nix::unistd::geteuid()
                    )))
                }
                _ => {
                    undo();
                    Err(e)
                }
            };
        }

        remove_leftovers(&base);
        let controllers = enable_controllers(&base);
        debug!(
            base = %base.display(),
            delegated,
            ?controllers,
            "cgroup v2 base ready"
        );
        Ok(Setup::Ready(Manager {
            original: own_dir,
            base,
            supervisor,
            delegated,
            controllers,
            shut_down: AtomicBool::new(false),
        }))
    }

    /// The controllers enabled in base/cgroup.subtree_control, i.e. the
    /// limits [`Manager::create`] will apply.
    pub fn controllers(&self) -> Controllers {
        self.controllers
    }

    /// The base cgroup directory (parent of `supervisor` and the actions).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Creates base/action-`name` and applies the limits of the enabled
    /// controllers (`memory.max`, `memory.swap.max`, `pids.max`, `cpu.max`).
    /// Limits of missing controllers are ignored silently: the daemon warned
    /// about them once at start-up. `name` must be a single path component
    /// and the cgroup must not exist yet.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<ActionCgroup, Error> {
        validate_name(&self.base, name, ACTION_PREFIX.len())?;
        let path = self.base.join(format!("{ACTION_PREFIX}{name}"));
        fs::create_dir(&path).map_err(IoError::at("cannot create cgroup", &path))?;
        // From here on, dropping `cgroup` on error removes the directory.
        let cgroup = ActionCgroup {
            path,
            removed: false,
        };
        if self.controllers.memory {
            memory::apply(&cgroup.path, limits.memory_max, limits.swap_max)?;
        }
        if self.controllers.pids {
            pids::apply(&cgroup.path, limits.pids_max)?;
        }
        if self.controllers.cpu {
            cpu::apply(&cgroup.path, limits.cpu_max)?;
        }
        Ok(cgroup)
    }

    /// At shutdown: moves this process back to the cgroup it started in and
    /// removes `supervisor`, and the base too if it is our own child cgroup
    /// (not the delegated one) and empty. Best effort: failures are logged.
    /// Only the first call does anything.
    ///
    /// Other processes still in `supervisor` (children forked by the daemon
    /// that never joined an action) are moved back too, or `rmdir` would
    /// fail. Action cgroups still alive are left alone, and so is the base
    /// that contains them.
    pub fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.delegated {
            // "No internal processes": the delegated cgroup cannot take us
            // back while it hands domain controllers to its children.
            let enabled = self.controllers.enabled();
            if !enabled.is_empty() {
                let value = enabled
                    .iter()
                    .map(|c| format!("-{c}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                if let Err(e) = write_file(&self.base.join("cgroup.subtree_control"), &value) {
                    warn!(
                        "cgroup shutdown: {e}; staying in {}",
                        self.supervisor.display()
                    );
                    return;
                }
            }
        }

        let me = nix::unistd::getpid().as_raw();
        let procs = self.original.join("cgroup.procs");
        if let Err(e) = write_file(&procs, &me.to_string()) {
            warn!(
                "cgroup shutdown: {e}; staying in {}",
                self.supervisor.display()
            );
            return;
        }
        match read_procs(&self.supervisor) {
            Ok(others) => {
                for pid in others {
                    if let Err(e) = write_file(&procs, &pid.to_string()) {
                        debug!("cgroup shutdown: {e}");
                    }
                }
            }
            Err(e) => debug!("cgroup shutdown: {e}"),
        }
        if let Err(e) = rmdir_retry(&self.supervisor) {
            warn!("cgroup shutdown: {e}");
            return;
        }
        if !self.delegated {
            match fs::remove_dir(&self.base) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(
                    "cgroup shutdown: leaving {} in place: {e} (action cgroups still alive?)",
                    self.base.display()
                ),
            }
        }
    }
}

/// Kills and removes base/action-* left behind by a crashed run. Failures
/// are logged: a stuck leftover must not keep the daemon from starting.
fn remove_leftovers(base: &Path) {
    let entries = match fs::read_dir(base) {
        Ok(entries) => entries,
        Err(e) => {
            warn!("cannot list {} for leftover actions: {e}", base.display());
            return;
        }
    };
    for entry in entries.flatten() {
        let is_action = entry
            .file_name()
            .to_string_lossy()
            .starts_with(ACTION_PREFIX)
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_action {
            continue;
        }
        let leftover = ActionCgroup {
            path: entry.path(),
            removed: false,
        };
        warn!(
            "removing leftover action cgroup {} (pids {:?})",
            leftover.path.display(),
            leftover.pids().unwrap_or_default()
        );
        if let Err(e) = leftover.remove() {
            warn!("leftover action cgroup: {e}");
        }
    }
}

/// Enables each wanted controller that base/cgroup.controllers offers, one
/// write each (a single write with all three would fail as a whole), and
/// returns what base/cgroup.subtree_control says afterwards.
fn enable_controllers(base: &Path) -> Controllers {
    let available_path = base.join("cgroup.controllers");
    let available = read_file(&available_path).unwrap_or_else(|e| {
        warn!("{e}");
        String::new()
    });
    let subtree_control = base.join("cgroup.subtree_control");
    for name in Controllers::from_list(&available).enabled() {
        if let Err(e) = write_file(&subtree_control, &format!("+{name}")) {
            warn!("cannot enable the {name} controller: {e}");
        }
    }
    match read_file(&subtree_control) {
        Ok(enabled) => Controllers::from_list(&enabled),
        Err(e) => {
            warn!("{e}");
            Controllers::default()
        }
    }
}
