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
//! The controller files live in [`memory`], [`pids`] and [`cpu`]; this file
//! holds the hierarchy discovery, the lifecycle and the shared file helpers.

mod cpu;
mod memory;
mod pids;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, warn};

/// How long [`ActionCgroup::kill`] waits for the cgroup to become empty.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `rmdir` is retried while the kernel still reports `EBUSY`.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(2);
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

/// Errors of this module. Every variant names the cgroupfs path involved,
/// because "Device or resource busy" alone tells the reader nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unexpected contents in {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("invalid cgroup name {name:?} under {parent}: {reason}")]
    InvalidName {
        parent: PathBuf,
        name: String,
        reason: &'static str,
    },
    #[error("invalid limit for {path}: {detail}")]
    InvalidLimit { path: PathBuf, detail: String },
    #[error("cannot send {signal} to pid {pid} of {path}: {source}")]
    Signal {
        path: PathBuf,
        pid: i32,
        signal: Signal,
        #[source]
        source: Errno,
    },
    #[error("{path} still has processes {waited:?} after they were killed")]
    StillPopulated { path: PathBuf, waited: Duration },
    #[error(
        "{path} holds processes {pids:?} that are not this one; \
         is another nativelink-lre running with the same state directory?"
    )]
    InUse { path: PathBuf, pids: Vec<i32> },
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
                Err(source) => return Err(Error::Create { path: base, source }),
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
                return Err(Error::Create {
                    path: supervisor,
                    source,
                });
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
        fs::create_dir(&path).map_err(|source| Error::Create {
            path: path.clone(),
            source,
        })?;
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

/// The cgroup of one action. Dropping it without [`ActionCgroup::remove`]
/// kills and removes it anyway, logging failures.
#[derive(Debug)]
pub struct ActionCgroup {
    path: PathBuf,
    /// Set by `remove()`, so that `Drop` does not try a second time.
    removed: bool,
}

impl ActionCgroup {
    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `cgroup.procs` file a process writes its own pid to, to join
    /// (or the parent writes the child's pid to, to move it).
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Pids of every process in the cgroup, including any descendant
    /// cgroups. Exited processes (even unreaped zombies) are not listed.
    pub fn pids(&self) -> Result<Vec<i32>, Error> {
        let mut pids = Vec::new();
        collect_pids(&self.path, &mut pids)?;
        Ok(pids)
    }

    /// Sends `sig` to every process in the cgroup. Processes that exit
    /// meanwhile are skipped; the first other failure is returned after
    /// trying them all.
    pub fn signal(&self, sig: Signal) -> Result<(), Error> {
        let mut first_error = None;
        for pid in self.pids()? {
            match nix::sys::signal::kill(Pid::from_raw(pid), sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => {
                    first_error.get_or_insert(Error::Signal {
                        path: self.path.clone(),
                        pid,
                        signal: sig,
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Kills every process, including those that left our pid namespace or
    /// session, and waits (up to 2 s) until the kernel reports the cgroup
    /// empty (`populated 0` in cgroup.events). Uses `cgroup.kill`; on kernels
    /// before 5.14, which lack it, freezes the cgroup, SIGKILLs each pid and
    /// thaws it. A cgroup that no longer exists counts as empty.
    pub fn kill(&self) -> Result<(), Error> {
        if !self.path.exists() {
            return Ok(());
        }
        if !write_optional(&self.path.join("cgroup.kill"), "1")? {
            self.freeze_and_kill()?;
        }
        self.wait_empty(KILL_TIMEOUT)
    }

    /// Fallback of [`ActionCgroup::kill`] without `cgroup.kill`: with the
    /// cgroup frozen nobody can fork, so one round of SIGKILL reaches
    /// everyone (fatal signals are delivered to frozen tasks). Without
    /// `cgroup.freeze` either (before 5.2) we repeat rounds until it is empty.
    fn freeze_and_kill(&self) -> Result<(), Error> {
        let freeze = self.path.join("cgroup.freeze");
        let frozen = write_optional(&freeze, "1")?;
        if frozen {
            // A task in the middle of a syscall freezes a little later; wait
            // for it so that it cannot fork after we listed the pids.
            let _ = self.wait_event("frozen", 1, KILL_TIMEOUT);
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        let mut delay = Duration::from_millis(1);
        let result = loop {
            let pids = match self.pids() {
                Ok(pids) => pids,
                Err(e) => break Err(e),
            };
            if pids.is_empty() || Instant::now() >= deadline {
                break Ok(());
            }
            for pid in pids {
                // ESRCH: already gone. Anything else (EPERM) shows up as
                // StillPopulated in wait_empty().
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if frozen {
                break Ok(());
            }
            thread::sleep(delay);
            delay = (delay * 2).min(MAX_POLL_DELAY);
        };
        if frozen {
            write_file(&freeze, "0")?;
        }
        result
    }

    /// Waits until cgroup.events reports `populated 0`.
    fn wait_empty(&self, timeout: Duration) -> Result<(), Error> {
        if self.wait_event("populated", 0, timeout)? {
            Ok(())
        } else {
            Err(Error::StillPopulated {
                path: self.path.clone(),
                waited: timeout,
            })
        }
    }

    /// Polls cgroup.events until `key` has `value`; false on timeout. A
    /// vanished cgroup counts as reaching the value.
    fn wait_event(&self, key: &str, value: u64, timeout: Duration) -> Result<bool, Error> {
        let events = self.path.join("cgroup.events");
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_micros(200);
        loop {
            let Some(text) = read_optional(&events)? else {
                return Ok(true);
            };
            let current = flat_keyed(&text, key).ok_or_else(|| Error::Parse {
                path: events.clone(),
                detail: format!("no {key:?} line"),
            })?;
            if current == value {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            thread::sleep(delay);
            delay = (delay * 2).min(MAX_POLL_DELAY);
        }
    }

    /// The accounting of the cgroup. Read it before [`ActionCgroup::remove`].
    /// Files that cannot be read leave their fields at zero or `None`, with a
    /// debug log: statistics never fail an action.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        match cpu::read_stat(&self.path) {
            Ok(cpu) => {
                stats.usage_usec = cpu.usage_usec;
                stats.user_usec = cpu.user_usec;
                stats.system_usec = cpu.system_usec;
            }
            Err(e) => debug!("cgroup stats: {e}"),
        }
        stats.memory_peak = memory::peak(&self.path).unwrap_or_else(|e| {
            debug!("cgroup stats: {e}");
            None
        });
        stats.oom_kills = memory::oom_kills(&self.path).unwrap_or_else(|e| {
            debug!("cgroup stats: {e}");
            None
        });
        stats.pids_max_events = pids::max_events(&self.path).unwrap_or_else(|e| {
            debug!("cgroup stats: {e}");
            None
        });
        stats
    }

    /// [`ActionCgroup::kill`], then removes the directory (and any
    /// descendants), retrying `EBUSY` with a short backoff: the kernel may
    /// refuse `rmdir` for a moment after the last process died.
    pub fn remove(mut self) -> Result<(), Error> {
        self.removed = true;
        self.kill()?;
        remove_tree(&self.path)
    }
}

impl Drop for ActionCgroup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Err(e) = self.kill().and_then(|()| remove_tree(&self.path)) {
            warn!("dropping action cgroup: {e}");
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

/// Where this process sits in the v2 hierarchy, read without changing
/// anything: what [`Manager::setup`] would start from. For
/// `nativelink-lre doctor` when no daemon runs.
#[derive(Debug, Clone)]
pub struct Survey {
    /// This process's cgroup directory.
    pub dir: PathBuf,
    /// Its `cgroup.controllers`: what a daemon alone in it (systemd
    /// `Delegate=yes`) could enable for its actions.
    pub offered: Controllers,
    /// Its `cgroup.subtree_control`: what a child cgroup gets, which is
    /// where a daemon that shares its cgroup puts its actions.
    pub passed_down: Controllers,
}

/// [`Survey`] of this process; `Err` says why there is no v2 cgroup.
pub fn survey() -> Result<Survey, String> {
    let mounts = parse_cgroup2_mounts(
        &read_file(Path::new("/proc/self/mountinfo")).map_err(|e| e.to_string())?,
    );
    if mounts.is_empty() {
        return Err("no cgroup v2 hierarchy is mounted".into());
    }
    let own =
        parse_own_cgroup(&read_file(Path::new("/proc/self/cgroup")).map_err(|e| e.to_string())?)
            .ok_or("/proc/self/cgroup has no cgroup v2 (0::) entry")?;
    let dir = resolve_cgroup_dir(&mounts, &own)
        .ok_or_else(|| format!("the cgroup {} is not below a cgroup2 mount", own.display()))?;
    let list = |name: &str| {
        read_optional(&dir.join(name))
            .ok()
            .flatten()
            .map(|t| Controllers::from_list(&t))
            .unwrap_or_default()
    };
    Ok(Survey {
        offered: list("cgroup.controllers"),
        passed_down: list("cgroup.subtree_control"),
        dir,
    })
}

/// Appends the pids of `dir` and its descendant cgroups to `pids`.
fn collect_pids(dir: &Path, pids: &mut Vec<i32>) -> Result<(), Error> {
    pids.extend(read_procs(dir)?);
    for child in child_cgroups(dir)? {
        collect_pids(&child, pids)?;
    }
    Ok(())
}

/// The pids listed in dir/cgroup.procs.
fn read_procs(dir: &Path) -> Result<Vec<i32>, Error> {
    let path = dir.join("cgroup.procs");
    parse_procs(&read_file(&path)?).map_err(|detail| Error::Parse { path, detail })
}

/// The child cgroups of `dir` (its subdirectories: cgroupfs holds nothing
/// else but interface files). A missing `dir` has none.
fn child_cgroups(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let list_error = |source| Error::List {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(list_error(e)),
    };
    let mut children = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_error)?;
        if entry.file_type().map_err(list_error)?.is_dir() {
            children.push(entry.path());
        }
    }
    Ok(children)
}

/// Removes `dir` and its descendant cgroups, deepest first. They must be
/// empty of processes already.
fn remove_tree(dir: &Path) -> Result<(), Error> {
    for child in child_cgroups(dir)? {
        remove_tree(&child)?;
    }
    rmdir_retry(dir)
}

/// `rmdir`, retrying `EBUSY` for up to [`RMDIR_TIMEOUT`]; a missing
/// directory counts as removed.
fn rmdir_retry(dir: &Path) -> Result<(), Error> {
    let deadline = Instant::now() + RMDIR_TIMEOUT;
    let mut delay = Duration::from_millis(1);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(delay);
                delay = (delay * 2).min(MAX_POLL_DELAY);
            }
            Err(source) => {
                return Err(Error::Remove {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
}

/// `mkdir`, returning whether we created it (false: it already existed).
fn make_dir(path: &Path) -> io::Result<bool> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Errors meaning "this cgroupfs is not ours to write".
fn is_denied(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    )
}

/// The `Unavailable` message for a denied write under `dir`.
fn why_denied(dir: &Path, e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::EROFS) {
        format!(
            "{} is read-only (ProtectControlGroups= in the unit?)",
            dir.display()
        )
    } else {
        format!(
            "{} is not writable by uid {}",
            dir.display(),
            nix::unistd::geteuid()
        )
    }
}

/// Checks that `name` can be used as one cgroup directory name (after a
/// prefix of `prefix_len` bytes).
fn validate_name(parent: &Path, name: &str, prefix_len: usize) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("not a directory name")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else if prefix_len + name.len() > 255 {
        Some("longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            parent: parent.to_owned(),
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn read_file(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a file that only some kernels or controllers provide: `None` if absent.
fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A limit as memory.max, memory.swap.max and pids.max take it: the number,
/// or `max` for `u64::MAX` (unlimited). The kernel rounds memory limits
/// down to whole pages.
pub(super) fn limit_value(n: u64) -> String {
    if n == u64::MAX {
        "max".to_owned()
    } else {
        n.to_string()
    }
}

/// Writes `value` to an existing cgroupfs file in one `write(2)` (the kernel
/// parses each write on its own). Never creates the file.
fn write_file(path: &Path, value: &str) -> Result<(), Error> {
    let error = |source| Error::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    };
    let mut file = OpenOptions::new().write(true).open(path).map_err(error)?;
    file.write_all(value.as_bytes()).map_err(error)
}

/// [`write_file`] for files that only some kernels or controllers provide:
/// `Ok(false)` if the file does not exist.
fn write_optional(path: &Path, value: &str) -> Result<bool, Error> {
    match write_file(path, value) {
        Ok(()) => Ok(true),
        Err(Error::Write { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Value of `key` in a flat keyed file (`cgroup.events`, `memory.events`,
/// `cpu.stat`, ...: one `key value` pair per line).
fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Parses cgroup.procs: one pid per line.
fn parse_procs(text: &str) -> Result<Vec<i32>, String> {
    text.split_whitespace()
        .map(|pid| pid.parse().map_err(|_| format!("bad pid {pid:?}")))
        .collect()
}

/// A cgroup2 mount: `root` is the cgroup that appears at `mount_point`
/// (usually `/`, but a bind mount or a cgroup namespace can show a subtree).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cgroup2Mount {
    root: PathBuf,
    mount_point: PathBuf,
}

/// The cgroup2 mounts in /proc/self/mountinfo, in order.
///
/// A line is `id parent major:minor root mount_point options [optional...] - fstype source super_options`
/// and spaces, tabs, newlines and backslashes in paths are escaped as `\ooo`.
fn parse_cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, after_separator) = line.split_once(" - ")?;
            if after_separator.split(' ').next()? != "cgroup2" {
                return None;
            }
            let mut fields = fields.split(' ');
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            Some(Cgroup2Mount {
                root: unescape_octal(root),
                mount_point: unescape_octal(mount_point),
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escaping of mountinfo paths.
fn unescape_octal(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Our cgroup v2 path from /proc/self/cgroup: the `0::/path` line (hybrid
/// systems list their v1 hierarchies on other lines).
fn parse_own_cgroup(proc_cgroup: &str) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|line| {
        let path = line.strip_prefix("0::")?;
        path.starts_with('/').then(|| PathBuf::from(path))
    })
}

/// The directory of cgroup `own` under the first cgroup2 mount that shows it.
fn resolve_cgroup_dir(mounts: &[Cgroup2Mount], own: &Path) -> Option<PathBuf> {
    mounts.iter().find_map(|mount| {
        let relative = own.strip_prefix(&mount.root).ok()?;
        Some(if relative.as_os_str().is_empty() {
            mount.mount_point.clone()
        } else {
            mount.mount_point.join(relative)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::process::ExitStatusExt as _;
    use std::process::{Child, Command};
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    // ---- Pure parsing -------------------------------------------------

    /// A Debian 12 machine without systemd as init: v1 controllers plus the
    /// unified hierarchy at /sys/fs/cgroup/unified (these machines).
    const HYBRID_MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 22 0:5 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_PROC_CGROUP: &str = "\
9:name=systemd:/
4:memory:/process_api/253da424870a7bc1a637e88ebe88fdf4
1:cpu:/
0::/
";
    /// A systemd machine with the unified hierarchy only.
    const UNIFIED_MOUNTINFO: &str = "\
26 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
27 26 0:24 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
30 27 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const UNIFIED_PROC_CGROUP: &str = "0::/system.slice/nativelink-lre.service\n";

    #[test]
    fn finds_the_unified_mount_of_a_hybrid_system() {
        let mounts = parse_cgroup2_mounts(HYBRID_MOUNTINFO);
        assert_eq!(
            mounts,
            [Cgroup2Mount {
                root: "/".into(),
                mount_point: "/sys/fs/cgroup/unified".into()
            }]
        );
        let own = parse_own_cgroup(HYBRID_PROC_CGROUP).unwrap();
        assert_eq!(own, Path::new("/"));
        assert_eq!(
            resolve_cgroup_dir(&mounts, &own).unwrap(),
            Path::new("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn finds_the_service_cgroup_of_a_unified_system() {
        let mounts = parse_cgroup2_mounts(UNIFIED_MOUNTINFO);
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_point, Path::new("/sys/fs/cgroup"));
        let own = parse_own_cgroup(UNIFIED_PROC_CGROUP).unwrap();
        assert_eq!(
            resolve_cgroup_dir(&mounts, &own).unwrap(),
            Path::new("/sys/fs/cgroup/system.slice/nativelink-lre.service")
        );
    }

    #[test]
    fn no_cgroup2_mount_or_entry() {
        let v1_only: String = HYBRID_MOUNTINFO
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(parse_cgroup2_mounts(&v1_only).is_empty());
        assert_eq!(parse_own_cgroup("4:memory:/a\n1:cpu:/\n"), None);
        assert_eq!(parse_own_cgroup(""), None);
    }

    #[test]
    fn unescapes_mount_points_and_honours_the_mount_root() {
        // A subtree bind-mounted at a path with a space and a backslash.
        let mountinfo = "50 22 0:26 /user.slice /mnt/my\\040cgroups\\134x rw - cgroup2 cgroup2 rw\n\
                         51 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let mounts = parse_cgroup2_mounts(mountinfo);
        assert_eq!(mounts[0].root, Path::new("/user.slice"));
        assert_eq!(mounts[0].mount_point, Path::new("/mnt/my cgroups\\x"));
        assert_eq!(
            resolve_cgroup_dir(&mounts, Path::new("/user.slice/user-1000.slice")).unwrap(),
            Path::new("/mnt/my cgroups\\x/user-1000.slice")
        );
        // Not below /user.slice: the second mount shows it. `/user.slice2`
        // must not count as below `/user.slice`.
        assert_eq!(
            resolve_cgroup_dir(&mounts, Path::new("/user.slice2/a")).unwrap(),
            Path::new("/sys/fs/cgroup/user.slice2/a")
        );
        assert_eq!(
            resolve_cgroup_dir(&mounts[..1], Path::new("/system.slice")),
            None
        );
        // A trailing lone backslash or short escape is kept as is.
        assert_eq!(unescape_octal("a\\04"), Path::new("a\\04"));
    }

    #[test]
    fn parses_flat_keyed_files_and_procs() {
        assert_eq!(flat_keyed("populated 1\nfrozen 0\n", "populated"), Some(1));
        assert_eq!(flat_keyed("populated 1\nfrozen 0\n", "frozen"), Some(0));
        assert_eq!(flat_keyed("populated 1\n", "pop"), None);
        assert_eq!(parse_procs("12\n345\n").unwrap(), [12, 345]);
        assert_eq!(parse_procs("").unwrap(), Vec::<i32>::new());
        assert!(parse_procs("12\nx\n").is_err());
    }

    #[test]
    fn validates_names() {
        let base = Path::new("/sys/fs/cgroup/x");
        assert!(validate_name(base, "0123abc-def", ACTION_PREFIX.len()).is_ok());
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            let err = validate_name(base, bad, 0).unwrap_err();
            assert!(err.to_string().contains("/sys/fs/cgroup/x"), "{err}");
        }
        assert!(validate_name(base, &"a".repeat(255), 0).is_ok());
        assert!(validate_name(base, &"a".repeat(250), ACTION_PREFIX.len()).is_err());
    }

    #[test]
    fn lists_missing_controllers() {
        assert_eq!(Controllers::default().missing(), ["memory", "pids", "cpu"]);
        let some = Controllers::from_list("cpuset cpu io memory\n");
        assert_eq!(
            some,
            Controllers {
                memory: true,
                pids: false,
                cpu: true
            }
        );
        assert_eq!(some.missing(), ["pids"]);
        assert_eq!(some.enabled(), ["memory", "cpu"]);
    }

    #[test]
    fn errors_name_the_path() {
        let err = read_file(Path::new("/nonexistent/cgroup.procs")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/cgroup.procs"),
            "{err}"
        );
        let err = write_file(Path::new("/nonexistent/cgroup.kill"), "1").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/cgroup.kill"),
            "{err}"
        );
        assert!(!write_optional(Path::new("/nonexistent-dir-file"), "1").unwrap());
    }

    // ---- Against this machine's cgroup v2 hierarchy --------------------
    //
    // `setup()` moves the whole test process (every thread, so every other
    // test running meanwhile) into base/supervisor. That is harmless as long
    // as each test moves it back (`Session` does, even on panic), uses its
    // own subtree name, and the tests run one at a time (`REAL`).
    //
    // They need root and a writable cgroup2 mount; elsewhere they print a
    // note and pass.

    static REAL: Mutex<()> = Mutex::new(());
    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        REAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the real tests can run here.
    fn real_cgroups() -> bool {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let ok = nix::unistd::geteuid().is_root() && !parse_cgroup2_mounts(&mountinfo).is_empty();
        if !ok {
            eprintln!("skipped: needs root and a cgroup2 mount");
        }
        ok
    }

    fn unique_name() -> String {
        format!(
            "nativelink-lre-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// Our cgroup as /proc/self/cgroup shows it.
    fn current_cgroup() -> PathBuf {
        parse_own_cgroup(&fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap()
    }

    /// The directory of our current cgroup.
    fn current_cgroup_dir() -> PathBuf {
        let mounts = parse_cgroup2_mounts(&fs::read_to_string("/proc/self/mountinfo").unwrap());
        resolve_cgroup_dir(&mounts, &current_cgroup()).unwrap()
    }

    fn ready(name: &str) -> Manager {
        match Manager::setup(name).unwrap() {
            Setup::Ready(manager) => manager,
            Setup::Unavailable(why) => panic!("cgroups unavailable: {why}"),
        }
    }

    /// A manager that is shut down, and whose action cgroups are killed,
    /// when the test ends, even by a panic.
    struct Session {
        manager: Manager,
        keep_actions: bool,
    }

    impl Session {
        fn new(name: &str) -> Session {
            Session {
                manager: ready(name),
                keep_actions: false,
            }
        }
    }

    impl Drop for Session {
        fn drop(&mut self) {
            if !self.keep_actions {
                remove_leftovers(&self.manager.base);
            }
            self.manager.shutdown();
        }
    }

    /// Runs `script` in `sh` after the shell joined `cgroup`; waits until it
    /// has, so that the caller can count on `pids()`.
    fn spawn_in(procs_file: &Path, script: &str) -> Child {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > '{}'; {script}", procs_file.display()))
            .spawn()
            .unwrap();
        let dir = procs_file.parent().unwrap();
        wait_until(|| read_procs(dir).unwrap().contains(&(child.id() as i32)));
        child
    }

    fn wait_until(mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// A process that no longer runs: gone, or a zombie nobody reaped yet
    /// (orphans go to pid 1, which on these machines is not an init and
    /// reaps them only after a while).
    fn is_dead(pid: i32) -> bool {
        match nix::sys::signal::kill(Pid::from_raw(pid), None) {
            Err(Errno::ESRCH) => true,
            _ => fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| {
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('Z'))
                })
                .unwrap_or(true),
        }
    }

    fn killed_by(child: &mut Child, signal: Signal) {
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(signal as i32), "{status}");
    }

    #[test]
    fn setup_joins_supervisor_and_shutdown_restores() {
        if !real_cgroups() {
            return;
        }
        let _lock = lock();
        let before = current_cgroup();
        let name = unique_name();
        let session = Session::new(&name);
        let manager = &session.manager;

        // We share our cgroup with the whole machine, so the base is a child.
        assert_eq!(manager.base(), current_cgroup_dir().parent().unwrap());
        assert_eq!(manager.base().file_name().unwrap(), name.as_str());
        assert_eq!(current_cgroup(), before.join(&name).join(SUPERVISOR));

        // Exactly what the base is offered, as far as we want it.
        let offered = fs::read_to_string(manager.base().join("cgroup.controllers")).unwrap();
        let expected = Controllers::from_list(&offered);
        eprintln!(
            "base {} offers {:?}; enabled {:?}, missing {:?}",
            manager.base().display(),
            offered.trim(),
            manager.controllers(),
            manager.controllers().missing()
        );
        assert_eq!(manager.controllers(), expected);
        assert_eq!(manager.controllers().missing(), expected.missing());

        manager.shutdown();
        assert_eq!(current_cgroup(), before);
        assert!(!manager.base().exists());
        // A second shutdown is a no-op.
        manager.shutdown();
    }

    #[test]
    fn kill_reaches_children_and_escaped_grandchildren() {
        if !real_cgroups() {
            return;
        }
        let _lock = lock();
        let session = Session::new(&unique_name());
        let manager = &session.manager;
        let limits = Limits {
            memory_max: Some(256 << 20),
            swap_max: Some(0),
            pids_max: Some(64),
            cpu_max: Some(1.5),
        };
        let cgroup = manager.create("lifecycle", &limits).unwrap();
        assert_eq!(cgroup.path(), manager.base().join("action-lifecycle"));
        assert!(
            manager.create("lifecycle", &limits).is_err(),
            "exists already"
        );
        // Limits land only where the controller is enabled.
        let controllers = manager.controllers();
        if controllers.memory {
            assert_eq!(
                fs::read_to_string(cgroup.path().join("memory.max")).unwrap(),
                "268435456\n"
            );
        }
        if controllers.pids {
            assert_eq!(
                fs::read_to_string(cgroup.path().join("pids.max")).unwrap(),
                "64\n"
            );
        }
        if controllers.cpu {
            assert_eq!(
                fs::read_to_string(cgroup.path().join("cpu.max")).unwrap(),
                "150000 100000\n"
            );
        }

        let mut child = spawn_in(&cgroup.procs_file(), "exec sleep 100");
        // A grandchild in its own session, as a daemonizing action would make.
        let mut parent = spawn_in(&cgroup.procs_file(), "setsid sleep 100 & sleep 100");
        wait_until(|| cgroup.pids().unwrap().len() >= 3);
        let pids = cgroup.pids().unwrap();
        eprintln!("processes in {}: {pids:?}", cgroup.path().display());
        assert!(pids.contains(&(child.id() as i32)));
        assert!(pids.contains(&(parent.id() as i32)));

        cgroup.kill().unwrap();
        assert_eq!(cgroup.pids().unwrap(), Vec::<i32>::new());
        killed_by(&mut child, Signal::SIGKILL);
        killed_by(&mut parent, Signal::SIGKILL);
        for pid in pids {
            assert!(is_dead(pid), "pid {pid} survived");
        }
        // Killing an empty cgroup is fine.
        cgroup.kill().unwrap();

        let path = cgroup.path().to_owned();
        cgroup.remove().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn signal_reaches_every_process() {
        if !real_cgroups() {
            return;
        }
        let _lock = lock();
        let session = Session::new(&unique_name());
        let cgroup = session
            .manager
            .create("signal", &Limits::default())
            .unwrap();
        let mut first = spawn_in(&cgroup.procs_file(), "exec sleep 100");
        let mut second = spawn_in(&cgroup.procs_file(), "exec sleep 100");
        cgroup.signal(Signal::SIGTERM).unwrap();
        killed_by(&mut first, Signal::SIGTERM);
        killed_by(&mut second, Signal::SIGTERM);
        cgroup.remove().unwrap();
    }

    #[test]
    fn stats_account_cpu_time() {
        if !real_cgroups() {
            return;
        }
        let _lock = lock();
        let session = Session::new(&unique_name());
        let cgroup = session.manager.create("stats", &Limits::default()).unwrap();
        let mut busy = spawn_in(
            &cgroup.procs_file(),
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
        );
        assert!(busy.wait().unwrap().success());
        let stats = cgroup.stats();
        eprintln!("stats of a busy loop: {stats:?}");
        assert!(stats.usage_usec > 0, "{stats:?}");
        assert!(stats.user_usec + stats.system_usec > 0, "{stats:?}");
        // Present exactly when the controller's files are.
        let has = |file: &str| cgroup.path().join(file).exists();
        assert_eq!(stats.memory_peak.is_some(), has("memory.peak"));
        assert_eq!(stats.oom_kills.is_some(), has("memory.events"));
        assert_eq!(stats.pids_max_events.is_some(), has("pids.events"));
        assert_eq!(stats.oom_kills.unwrap_or(0), 0);
        cgroup.remove().unwrap();
    }

    #[test]
    fn drop_kills_and_removes() {
        if !real_cgroups() {
            return;
        }
        let _lock = lock();
        let session = Session::new(&unique_name());
        let cgroup = session
            .manager
            .create("dropped", &Limits::default())
            .unwrap();
        let mut child = spawn_in(&cgroup.procs_file(), "exec sleep 100");
        let path = cgroup.path().to_owned();
        drop(cgroup);
        assert!(!path.exists());
        killed_by(&mut child, Signal::SIGKILL);
    }

    #[test]
    fn freeze_fallback_kills_everything() {
        // The path for kernels without cgroup.kill (before 5.14).
        if !real_cgroups() {
            return;
        }
        let _lock = lock();
        let session = Session::new(&unique_name());
        let cgroup = session
            .manager
            .create("freeze", &Limits::default())
            .unwrap();
        let mut child = spawn_in(&cgroup.procs_file(), "exec sleep 100");
        let mut parent = spawn_in(&cgroup.procs_file(), "setsid sleep 100 & sleep 100");
        wait_until(|| cgroup.pids().unwrap().len() >= 3);
        cgroup.freeze_and_kill().unwrap();
        cgroup.wait_empty(KILL_TIMEOUT).unwrap();
        killed_by(&mut child, Signal::SIGKILL);
        killed_by(&mut parent, Signal::SIGKILL);
        let events = fs::read_to_string(cgroup.path().join("cgroup.events")).unwrap();
        assert_eq!(flat_keyed(&events, "frozen"), Some(0), "thawed again");
        cgroup.remove().unwrap();
    }

    #[test]
    fn leftovers_of_a_crashed_run_are_killed_and_removed() {
        if !real_cgroups() {
            return;
        }
        let _lock = lock();
        let before = current_cgroup();
        let name = unique_name();

        // The "crashed" run: an action cgroup with a process in it, that
        // nobody removes.
        let mut first = Session::new(&name);
        let stale = first.manager.base().join("action-stale");
        fs::create_dir(&stale).unwrap();
        let mut sleeper = spawn_in(&stale.join("cgroup.procs"), "exec sleep 100");
        first.keep_actions = true;
        drop(first);
        assert_eq!(current_cgroup(), before);
        assert!(stale.exists());

        let second = Session::new(&name);
        assert!(!stale.exists());
        killed_by(&mut sleeper, Signal::SIGKILL);
        let base = second.manager.base().to_owned();
        drop(second);
        assert!(!base.exists());
        assert_eq!(current_cgroup(), before);
    }

    #[test]
    fn refuses_a_supervisor_with_foreign_processes() {
        if !real_cgroups() {
            return;
        }
        let _lock = lock();
        let name = unique_name();
        let base = current_cgroup_dir().join(&name);
        let supervisor = base.join(SUPERVISOR);
        fs::create_dir_all(&supervisor).unwrap();
        let mut other = spawn_in(&supervisor.join("cgroup.procs"), "exec sleep 100");
        let result = Manager::setup(&name);
        let _ = nix::sys::signal::kill(Pid::from_raw(other.id() as i32), Signal::SIGKILL);
        let _ = other.wait();
        let removed = rmdir_retry(&supervisor).and_then(|()| rmdir_retry(&base));
        match result {
            Err(Error::InUse { path, pids }) => {
                assert_eq!(path, supervisor);
                assert_eq!(pids, [other.id() as i32]);
            }
            Ok(Setup::Ready(manager)) => {
                manager.shutdown();
                panic!("setup accepted another instance's supervisor");
            }
            other => panic!("{other:?}"),
        }
        removed.unwrap();
    }

    /// Environment variable that turns `delegated_child` on: the cgroup
    /// directory it was started in.
    const DELEGATED_ENV: &str = "NATIVELINK_LRE_CGROUP_TEST_DELEGATED";

    #[test]
    fn a_cgroup_holding_only_us_is_used_as_the_base() {
        // Stands in for systemd's Delegate=yes: run this test binary alone in
        // a fresh cgroup, where it runs `delegated_child`.
        if !real_cgroups() {
            return;
        }
        let _lock = lock();
        let unit = current_cgroup_dir().join(unique_name());
        fs::create_dir(&unit).unwrap();
        let output = Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$1/cgroup.procs\"; shift; exec \"$@\"")
            .arg("sh")
            .arg(&unit)
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cgroup::tests::delegated_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DELEGATED_ENV, &unit)
            .output()
            .unwrap();
        let removed = remove_tree(&unit);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{}\n{stdout}\n{stderr}",
            output.status
        );
        removed.unwrap();
    }

    /// The half of `a_cgroup_holding_only_us_is_used_as_the_base` that runs
    /// in the delegated cgroup. Does nothing when run by hand.
    #[test]
    #[ignore = "run by a_cgroup_holding_only_us_is_used_as_the_base"]
    fn delegated_child() {
        let Some(unit) = std::env::var_os(DELEGATED_ENV).map(PathBuf::from) else {
            return;
        };
        assert_eq!(current_cgroup_dir(), unit);
        let manager = ready("unused-subtree-name");
        assert!(manager.delegated);
        assert_eq!(manager.base(), unit);
        assert_eq!(current_cgroup_dir(), unit.join(SUPERVISOR));

        let cgroup = manager.create("in-unit", &Limits::default()).unwrap();
        assert_eq!(cgroup.path(), unit.join("action-in-unit"));
        let mut child = spawn_in(&cgroup.procs_file(), "exec sleep 100");
        cgroup.remove().unwrap();
        killed_by(&mut child, Signal::SIGKILL);

        manager.shutdown();
        assert_eq!(current_cgroup_dir(), unit);
        assert!(!unit.join(SUPERVISOR).exists());
        // Never removed: it belongs to systemd.
        assert!(unit.exists());
    }
}
