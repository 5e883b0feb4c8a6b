//! The cgroup of one action: its processes, signals, the kill (freeze,
//! `cgroup.kill`, wait), its accounting, and its removal.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::cgroupfs::{
    collect_pids, flat_keyed, read_optional, remove_tree, write_file, write_optional,
};
use super::{Error, KILL_TIMEOUT, MAX_POLL_DELAY, Stats, cpu, memory, pids};

/// The cgroup of one action. Dropping it without [`ActionCgroup::remove`]
/// kills and removes it anyway, logging failures.
#[derive(Debug)]
pub struct ActionCgroup {
    pub(super) path: PathBuf,
    /// Set by `remove()`, so that `Drop` does not try a second time.
    pub(super) removed: bool,
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
    pub(super) fn freeze_and_kill(&self) -> Result<(), Error> {
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
    pub(super) fn wait_empty(&self, timeout: Duration) -> Result<(), Error> {
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
