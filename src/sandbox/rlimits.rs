//! The resource limits every command starts with, whatever the daemon's
//! own limits are. A daemon started from a shell with `ulimit -n 512`, or
//! by systemd with its own `LimitNOFILE=`, would otherwise hand its limits
//! to every action, and a program that adapts to them (a build tool that
//! sizes its parallelism to the descriptors it may open, a test that
//! recurses as deep as its stack allows) would behave differently.
//!
//! This is the one table of them. The daemon builds it ([`table`]) from the
//! `[sandbox]` keys where a user may need more (`open-files`,
//! `stack-size`) and puts it in the spec; the helper applies it
//! ([`apply`]) while it is still privileged, since raising a hard limit
//! needs `CAP_SYS_RESOURCE`. Soft and hard limits are both fixed, so that
//! a program cannot raise a soft limit to a hard one that differs between
//! hosts. A per-user daemon cannot raise a hard limit above its own: an
//! action whose table asks for that fails with the limit and the key.
//!
//! `RLIMIT_NPROC` counts every process of a uid. A daemon run as root
//! gives its actions host uids of their own and the fixed value; without
//! the pids controller the helper then lowers it to `pids-max`
//! (`Spec::nproc_limit`). A per-user daemon's actions share its uid: they
//! get the same fixed value where the daemon's hard limit allows it (most
//! hosts), else that hard limit, which a per-user daemon cannot raise.

use serde::{Deserialize, Serialize};

/// A resource whose limit the table fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resource {
    Cpu,
    FileSize,
    Data,
    Stack,
    Core,
    Rss,
    Nproc,
    OpenFiles,
    LockedMemory,
    AddressSpace,
    Locks,
    PendingSignals,
    MessageQueue,
    Nice,
    RealtimePriority,
    RealtimeTimeout,
}

impl Resource {
    fn raw(self) -> nix::sys::resource::Resource {
        use nix::sys::resource::Resource as R;
        match self {
            Resource::Cpu => R::RLIMIT_CPU,
            Resource::FileSize => R::RLIMIT_FSIZE,
            Resource::Data => R::RLIMIT_DATA,
            Resource::Stack => R::RLIMIT_STACK,
            Resource::Core => R::RLIMIT_CORE,
            Resource::Rss => R::RLIMIT_RSS,
            Resource::Nproc => R::RLIMIT_NPROC,
            Resource::OpenFiles => R::RLIMIT_NOFILE,
            Resource::LockedMemory => R::RLIMIT_MEMLOCK,
            Resource::AddressSpace => R::RLIMIT_AS,
            Resource::Locks => R::RLIMIT_LOCKS,
            Resource::PendingSignals => R::RLIMIT_SIGPENDING,
            Resource::MessageQueue => R::RLIMIT_MSGQUEUE,
            Resource::Nice => R::RLIMIT_NICE,
            Resource::RealtimePriority => R::RLIMIT_RTPRIO,
            Resource::RealtimeTimeout => R::RLIMIT_RTTIME,
        }
    }

    /// The name `getrlimit(2)` uses.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "RLIMIT_CPU",
            Resource::FileSize => "RLIMIT_FSIZE",
            Resource::Data => "RLIMIT_DATA",
            Resource::Stack => "RLIMIT_STACK",
            Resource::Core => "RLIMIT_CORE",
            Resource::Rss => "RLIMIT_RSS",
            Resource::Nproc => "RLIMIT_NPROC",
            Resource::OpenFiles => "RLIMIT_NOFILE",
            Resource::LockedMemory => "RLIMIT_MEMLOCK",
            Resource::AddressSpace => "RLIMIT_AS",
            Resource::Locks => "RLIMIT_LOCKS",
            Resource::PendingSignals => "RLIMIT_SIGPENDING",
            Resource::MessageQueue => "RLIMIT_MSGQUEUE",
            Resource::Nice => "RLIMIT_NICE",
            Resource::RealtimePriority => "RLIMIT_RTPRIO",
            Resource::RealtimeTimeout => "RLIMIT_RTTIME",
        }
    }

    /// The `[sandbox]` key that sets it, if any.
    fn key(self) -> Option<&'static str> {
        match self {
            Resource::OpenFiles => Some("open-files"),
            Resource::Stack => Some("stack-size"),
            Resource::FileSize => Some("max-file-size"),
            _ => None,
        }
    }
}

/// One fixed limit; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: Resource,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// What the configuration decides.
#[derive(Debug, Clone)]
pub struct Settings {
    /// RLIMIT_NOFILE, soft and hard (`open-files`).
    pub open_files: u64,
    /// RLIMIT_STACK soft (`stack-size`); the hard limit is unlimited.
    pub stack_size: u64,
    /// RLIMIT_FSIZE, soft and hard (`max-file-size`): a command that
    /// writes past it gets SIGXFSZ.
    pub file_size: u64,
    /// Whether actions have host uids of their own (a daemon run as
    /// root), so that RLIMIT_NPROC counts only their processes.
    pub own_uids: bool,
}

/// Descriptors an action may open unless `open-files` says otherwise:
/// what a kernel gives a process by default as its hard limit, so that a
/// per-user daemon can give it almost anywhere.
pub const DEFAULT_OPEN_FILES: u64 = 4096;
/// RLIMIT_NPROC of an action with a host uid of its own.
pub const DEFAULT_PROCESSES: u64 = 65536;
/// The usual default stack of a Linux process.
pub const DEFAULT_STACK_SIZE: u64 = 8 << 20;
/// The largest file an action may write unless `max-file-size` says
/// otherwise.
pub const DEFAULT_FILE_SIZE: u64 = 16 << 30;

/// The limits every command gets. Values a kernel gives by default, low
/// enough that an ordinary user can set them (which only needs them to be
/// below its hard limits), except where a build needs more.
pub fn table(s: &Settings) -> Vec<Rlimit> {
    let fixed = |resource, v: Option<u64>| Rlimit {
        resource,
        soft: v,
        hard: v,
    };
    let mut t = vec![
        fixed(Resource::Cpu, None),
        fixed(Resource::FileSize, Some(s.file_size)),
        fixed(Resource::Data, None),
        Rlimit {
            resource: Resource::Stack,
            soft: Some(s.stack_size),
            hard: None,
        },
        fixed(Resource::Core, Some(0)),
        fixed(Resource::Rss, None),
        fixed(Resource::OpenFiles, Some(s.open_files)),
        // The kernel's default before 5.16, below every host's hard limit.
        fixed(Resource::LockedMemory, Some(64 << 10)),
        fixed(Resource::AddressSpace, None),
        fixed(Resource::Locks, None),
        // The default is derived from the host's memory.
        fixed(Resource::PendingSignals, Some(1024)),
        fixed(Resource::MessageQueue, Some(819_200)),
        fixed(Resource::Nice, Some(0)),
        fixed(Resource::RealtimePriority, Some(0)),
        fixed(Resource::RealtimeTimeout, None),
    ];
    // Per action uid as root; pids.max is the real bound where it exists.
    let nproc = if s.own_uids {
        DEFAULT_PROCESSES
    } else {
        DEFAULT_PROCESSES.min(own_hard(Resource::Nproc))
    };
    t.push(fixed(Resource::Nproc, Some(nproc)));
    t
}

/// This process's hard limit of `r` (unlimited if it cannot be read).
fn own_hard(r: Resource) -> u64 {
    nix::sys::resource::getrlimit(r.raw()).map_or(u64::MAX, |(_, hard)| hard)
}

/// The table for the `[sandbox]` settings; `own_uids` as in [`Settings`].
pub fn for_config(s: &crate::config::Sandbox, own_uids: bool) -> Vec<Rlimit> {
    table(&Settings {
        open_files: s.open_files,
        stack_size: s.stack_size.0,
        file_size: s.max_file_size.0,
        own_uids,
    })
}

/// The default table for a spec that names none (one written by hand, as
/// tests/nspawn does).
pub fn defaults() -> Vec<Rlimit> {
    table(&Settings {
        open_files: DEFAULT_OPEN_FILES,
        stack_size: DEFAULT_STACK_SIZE,
        file_size: DEFAULT_FILE_SIZE,
        own_uids: nix::unistd::geteuid().is_root(),
    })
}

/// Sets every limit of `table` on this process (its children inherit
/// them). Raising a hard limit needs CAP_SYS_RESOURCE, which a hardened
/// unit's bounding set may lack (systemd gives services an RLIMIT_NPROC
/// that depends on the host's memory): a limit without a key is then
/// lowered to the daemon's own hard limit, the one value that can still
/// be set. A limit with a key that cannot be set is an error naming it,
/// the daemon's hard limit and the key that would lower it.
pub fn apply(table: &[Rlimit]) -> Result<(), String> {
    use nix::sys::resource::{RLIM_INFINITY, getrlimit, setrlimit};
    let value = |v: Option<u64>| v.unwrap_or(RLIM_INFINITY);
    for l in table {
        let (mut soft, mut hard) = (value(l.soft), value(l.hard));
        let mut set = setrlimit(l.resource.raw(), soft, hard);
        if set.is_err()
            && l.resource.key().is_none()
            && let Ok((_, own)) = getrlimit(l.resource.raw())
            && own < hard
        {
            (soft, hard) = (soft.min(own), own);
            set = setrlimit(l.resource.raw(), soft, hard);
        }
        if let Err(e) = set {
            let own = getrlimit(l.resource.raw())
                .map(|(_, h)| show(h))
                .unwrap_or_else(|e| e.to_string());
            let fix = match l.resource.key() {
                Some(key) => format!("raise the daemon's limit or lower sandbox.{key}"),
                None => "raise the daemon's limit (see nativelink-lre(8), The sandbox)".into(),
            };
            return Err(format!(
                "setrlimit({}, {}, {}): {e}; this daemon's hard limit is {own}: {fix}",
                l.resource.name(),
                show(soft),
                show(hard),
            ));
        }
    }
    Ok(())
}

fn show(v: u64) -> String {
    if v == nix::sys::resource::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_fixes_soft_and_hard_limits() {
        let t = table(&Settings {
            open_files: 1234,
            stack_size: 1 << 20,
            file_size: 1 << 30,
            own_uids: false,
        });
        let get = |r| t.iter().find(|l| l.resource == r).copied().unwrap();
        assert_eq!(
            get(Resource::OpenFiles),
            Rlimit {
                resource: Resource::OpenFiles,
                soft: Some(1234),
                hard: Some(1234)
            }
        );
        assert_eq!(get(Resource::Stack).soft, Some(1 << 20));
        assert_eq!(get(Resource::Core).hard, Some(0));
        assert_eq!(get(Resource::FileSize).hard, Some(1 << 30));
        let nproc = get(Resource::Nproc);
        assert!(nproc.hard <= Some(DEFAULT_PROCESSES) && nproc.soft == nproc.hard);
        let root = table(&Settings {
            open_files: 1,
            stack_size: 1,
            file_size: 1,
            own_uids: true,
        });
        assert!(root.iter().any(|l| l.resource == Resource::Nproc));
    }

    #[test]
    fn a_limit_without_a_key_is_lowered_to_the_daemons_own_hard_limit() {
        // In a child process, which may lower its own limits for good.
        use nix::sys::resource::{Resource as R, getrlimit, setrlimit};
        use nix::sys::wait::{WaitStatus, waitpid};
        use nix::unistd::{ForkResult, fork};
        // SAFETY: the child only makes system calls and exits; the test
        // harness' other threads are not touched by it.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let (_, hard) = getrlimit(R::RLIMIT_SIGPENDING).unwrap();
                let low = hard.min(4096) / 2;
                let ok = setrlimit(R::RLIMIT_SIGPENDING, low, low).is_ok()
                    // Without CAP_SYS_RESOURCE (dropped for the test) a
                    // higher hard limit cannot be set again.
                    && caps::clear(None, caps::CapSet::Effective).is_ok()
                    && apply(&[Rlimit {
                        resource: Resource::PendingSignals,
                        soft: Some(low * 2),
                        hard: Some(low * 2),
                    }])
                    .is_ok()
                    && getrlimit(R::RLIMIT_SIGPENDING).unwrap() == (low, low);
                std::process::exit(if ok { 0 } else { 1 });
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }
}
