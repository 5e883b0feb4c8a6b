//! The scheduling attributes every command starts with, whatever the
//! daemon's are: a daemon started under `nice -n 10`, `taskset -c 0`,
//! `chrt --idle`, `ionice -c 3` or `setarch -R` would otherwise pass them
//! on, and a program can read every one of them (a build that runs
//! `make -j$(nproc)` sizes itself to the affinity).
//!
//! [`apply`] runs in the helper while it is still privileged (lowering a
//! nice value needs `CAP_SYS_NICE`); [`all_cpus`] after it has joined the
//! action's cgroup, whose cpuset bounds the CPUs it may have.

/// Normal scheduling at nice value `nice`: the `SCHED_OTHER` policy, the
/// I/O priority that follows from the nice value (class none), the default
/// timer slack, and the plain Linux personality (address space
/// randomization on).
pub fn apply(nice: i32) -> Result<(), String> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: param is a valid sched_param that outlives the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) } != 0 {
        return Err(format!(
            "sched_setscheduler(SCHED_OTHER): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        let err = std::io::Error::last_os_error();
        let now = current_nice();
        return Err(format!(
            "setpriority(nice {nice}): {err}; the daemon runs at nice {now}, which only \
             a privileged daemon may lower: start it at nice {nice} or set sandbox.nice = {now}"
        ));
    }
    // ioprio_set(IOPRIO_WHO_PROCESS, self, IOPRIO_CLASS_NONE): the I/O
    // priority follows the nice value, as for a process that never set one.
    // SAFETY: plain integer arguments.
    if unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, 0) } != 0 {
        return Err(format!("ioprio_set: {}", std::io::Error::last_os_error()));
    }
    // PR_SET_TIMERSLACK 0 restores the default slack.
    nix::sys::prctl::set_timerslack(0).map_err(|e| format!("PR_SET_TIMERSLACK: {e}"))?;
    // SAFETY: personality(PER_LINUX), PER_LINUX being 0, takes an integer;
    // it clears flags such as ADDR_NO_RANDOMIZE that the daemon may have
    // been started with.
    if unsafe { libc::personality(0) } == -1 {
        return Err(format!(
            "personality(PER_LINUX): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn current_nice() -> i32 {
    nix::errno::Errno::clear();
    // SAFETY: plain integer arguments.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// Allows every CPU: the kernel keeps those of the cgroup's cpuset (the
/// action's when it has a cgroup; otherwise the daemon's, which systemd or
/// the host decides), whatever affinity the daemon was started with.
pub fn all_cpus() -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in 0..nix::sched::CpuSet::count() {
        set.set(cpu).map_err(|e| format!("CPU set: {e}"))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("sched_setaffinity(every CPU): {e}"))
}
