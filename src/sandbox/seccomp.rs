//! The seccomp filter every process of a sandbox runs under, in the spirit
//! of nix-daemon's, bubblewrap's (flatpak's) and docker's default profile:
//! a deny list, so that ordinary programs run unchanged, of the system
//! calls that reach kernel attack surface or other users' data and that a
//! namespace does not cover. man/nativelink-lre.8 (SECURITY) lists them.
//!
//! The BPF programs come from `seccompiler`. It can say "this call (with
//! these arguments) gets this action", one action per program, so the deny
//! list is three programs, one per errno:
//!
//! - `EPERM`: what an unprivileged process gets for privileged calls
//!   (mount family, ptrace, bpf, modules, kexec, nested user namespaces,
//!   `TIOCSTI`/`TIOCLINUX`);
//! - `ENOSYS`: what a kernel built without the feature says, which every
//!   program that uses it already handles (keyrings, io_uring, inotify and
//!   fanotify, `clone3`, which makes glibc fall back to `clone`, whose flags
//!   a filter can see);
//! - `EAFNOSUPPORT`: socket families other than unix, inet, inet6 and
//!   netlink.
//!
//! **Non-native system call ABIs.** On x86_64 a process can also enter the
//! kernel through the i386 ABI (`int 0x80`, audit arch `I386`, other call
//! numbers and `socketcall`, whose arguments a filter cannot see) and the
//! x32 ABI (native arch, call numbers with bit 30 set). A filter written
//! for native numbers alone is bypassed through either. seccompiler's
//! programs start with an arch check that kills the process on any arch
//! but the native one, which covers i386, but it knows nothing of x32. So
//! a fourth, four-instruction program (written out below, as seccompiler
//! cannot compare the call number with a range) kills the process on any
//! x32 call. Like systemd's `SystemCallArchitectures=native`: 32-bit
//! programs cannot run in actions.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// The compiled programs, ready to install in the order given.
pub struct Filters {
    programs: Vec<BpfProgram>,
}

/// The x32 ABI marks its call numbers with this bit (`__X32_SYSCALL_BIT`).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Socket families an action may use.
const ALLOWED_FAMILIES: [libc::c_int; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// Calls refused with EPERM whatever their arguments.
const EPERM_CALLS: &[(&str, libc::c_long)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
];

/// Calls refused with ENOSYS whatever their arguments.
const ENOSYS_CALLS: &[(&str, libc::c_long)] = &[
    ("clone3", libc::SYS_clone3),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("inotify_init", libc::SYS_inotify_init),
    ("inotify_init1", libc::SYS_inotify_init1),
    ("inotify_add_watch", libc::SYS_inotify_add_watch),
    ("fanotify_init", libc::SYS_fanotify_init),
];

/// The deny list as the man page shows it, one line per action.
pub fn describe() -> Vec<String> {
    let names = |calls: &[(&str, libc::c_long)]| {
        calls.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    };
    vec![
        format!(
            "EPERM: {}, clone and unshare with CLONE_NEWUSER, ioctl TIOCSTI and TIOCLINUX",
            names(EPERM_CALLS)
        ),
        format!("ENOSYS: {}", names(ENOSYS_CALLS)),
        "EAFNOSUPPORT: socket and socketpair of any family but AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK".into(),
        "SIGSYS (process killed): every call through the i386 (int 0x80) or x32 ABI".into(),
    ]
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: libc::c_int,
) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

fn unconditional(calls: &[(&str, libc::c_long)]) -> BTreeMap<i64, Vec<SeccompRule>> {
    calls.iter().map(|(_, nr)| (*nr, Vec::new())).collect()
}

fn eperm_program() -> Result<BpfProgram, String> {
    let mut rules = unconditional(EPERM_CALLS);
    // A new user namespace would give the action every capability again
    // inside it. clone's flags are its first argument on x86_64.
    let newuser = u64::from(libc::CLONE_NEWUSER as u32);
    for nr in [libc::SYS_clone, libc::SYS_unshare] {
        rules.insert(
            nr,
            vec![rule(vec![cond(
                0,
                SeccompCmpOp::MaskedEq(newuser),
                newuser,
            )?])?],
        );
    }
    // Faking terminal input for another process sharing the terminal. The
    // kernel uses the low 32 bits of the request: so does the comparison.
    rules.insert(
        libc::SYS_ioctl,
        [libc::TIOCSTI, libc::TIOCLINUX]
            .into_iter()
            .map(|req| rule(vec![cond(1, SeccompCmpOp::Eq, req)?]))
            .collect::<Result<_, _>>()?,
    );
    program(rules, libc::EPERM)
}

fn enosys_program() -> Result<BpfProgram, String> {
    program(unconditional(ENOSYS_CALLS), libc::ENOSYS)
}

fn socket_family_program() -> Result<BpfProgram, String> {
    // One rule whose conditions must all hold: the family is none of the
    // allowed ones.
    let not_allowed = || -> Result<Vec<SeccompRule>, String> {
        let conds = ALLOWED_FAMILIES
            .iter()
            .map(|f| cond(0, SeccompCmpOp::Ne, *f as u64))
            .collect::<Result<_, _>>()?;
        Ok(vec![rule(conds)?])
    };
    let mut rules = BTreeMap::new();
    rules.insert(libc::SYS_socket, not_allowed()?);
    rules.insert(libc::SYS_socketpair, not_allowed()?);
    program(rules, libc::EAFNOSUPPORT)
}

/// Kills the process on any x32 call: `nr >= X32_SYSCALL_BIT`. The arch
/// of an x32 call is the native one, so this needs no arch check of its
/// own (the other programs kill every other arch).
fn x32_program() -> BpfProgram {
    // <linux/bpf_common.h>: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JGE|BPF_K,
    // BPF_RET|BPF_K (BPF_LD, BPF_W and BPF_K are 0).
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
    const BPF_RET_K: u16 = 0x06;
    // offsetof(struct seccomp_data, nr)
    const NR_OFFSET: u32 = 0;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        ins(BPF_LD_W_ABS, 0, 0, NR_OFFSET),
        ins(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        ins(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

impl Filters {
    /// Builds every program. Done in the helper before it clones, so that
    /// a failure stops the action before anything runs.
    pub fn compile() -> Result<Filters, String> {
        if !cfg!(target_arch = "x86_64") {
            return Err("the seccomp filter is written for x86_64 only".into());
        }
        Ok(Filters {
            programs: vec![
                x32_program(),
                eperm_program()?,
                enosys_program()?,
                socket_family_program()?,
            ],
        })
    }

    /// How many programs [`Filters::install`] stacks.
    pub fn len(&self) -> usize {
        self.programs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }

    /// Installs every program on the calling thread. Needs no_new_privs
    /// (set just before) since the caller has no capabilities left.
    pub fn install(&self) -> Result<(), String> {
        for p in &self.programs {
            seccompiler::apply_filter(p)
                .map_err(|e| format!("installing the seccomp filter: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_compiles_and_fits() {
        let f = Filters::compile().unwrap();
        assert_eq!(f.len(), 4);
        for p in &f.programs {
            assert!(p.len() < 4096 && p.len() > 3);
        }
    }

    #[test]
    fn description_names_every_denied_call() {
        let text = describe().join("\n");
        for (name, _) in EPERM_CALLS.iter().chain(ENOSYS_CALLS) {
            assert!(text.contains(name), "{name} missing from {text}");
        }
    }
}
