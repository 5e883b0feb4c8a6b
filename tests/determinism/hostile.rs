//! A root daemon started in an unusual environment: umask 077, other
//! rlimits, nice 10, and its own UTS namespace with another host and
//! domain name (plus TZ and LANG, given as environment). The probe must
//! not see any of it.

use crate::daemon::{Lre, Start};

pub const HOSTNAME: &str = "elsewhere-host";
pub const DOMAINNAME: &str = "elsewhere.example";

/// setrlimit(resource, soft = value, hard unchanged), async-signal-safe.
/// Soft limits only: root on these machines lacks CAP_SYS_RESOURCE, so a
/// lowered hard limit could not be raised again for actions (which then
/// fail, naming the limit; tests/sandbox covers that).
fn set(resource: libc::__rlimit_resource_t, value: libc::rlim_t) -> std::io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct on our
    // stack; no allocation.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    lim.rlim_cur = value.min(lim.rlim_max);
    // SAFETY: as above.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Done in the daemon's process just before exec (raw system calls only).
fn unusual() -> std::io::Result<()> {
    // SAFETY: umask, setpriority, unshare, sethostname and setdomainname
    // are plain system calls on this process, with pointers to static
    // strings.
    unsafe {
        libc::umask(0o077);
        if libc::setpriority(libc::PRIO_PROCESS, 0, 10) != 0
            || libc::unshare(libc::CLONE_NEWUTS) != 0
            || libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len()) != 0
            || libc::setdomainname(DOMAINNAME.as_ptr().cast(), DOMAINNAME.len()) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    set(libc::RLIMIT_NOFILE, 512)?;
    set(libc::RLIMIT_STACK, 16384 * 1024)?;
    set(libc::RLIMIT_CORE, libc::RLIM_INFINITY)
}

/// Starts the daemon, and checks that it really runs that way.
pub fn start() -> Lre {
    let d = Lre::start(Start {
        env: vec![
            ("TZ".into(), "Asia/Tokyo".into()),
            ("LANG".into(), "de_DE.UTF-8".into()),
        ],
        pre_exec: Some(Box::new(unusual)),
        ..Default::default()
    });
    let proc = |f: &str| std::fs::read_to_string(format!("/proc/{}/{f}", d.pid())).unwrap();
    assert!(
        proc("status").contains("Umask:\t0077"),
        "{}",
        proc("status")
    );
    // Field 19 of stat (after the command in parentheses) is the nice value.
    let stat = proc("stat");
    let after = stat.rsplit_once(") ").unwrap().1;
    assert_eq!(after.split(' ').nth(16), Some("10"), "{stat}");
    let limits = proc("limits");
    assert!(
        limits.lines().any(|l| l.starts_with("Max core file size")
            && l.split_whitespace().nth(4) == Some("unlimited")),
        "{limits}"
    );
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max stack size")
                && l.split_whitespace().nth(3) == Some("16777216")),
        "{limits}"
    );
    // (The daemon raises its own soft descriptor limit at start.)
    let uts = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/uts")).unwrap();
    assert_ne!(
        uts(&d.pid().to_string()),
        uts("self"),
        "no UTS namespace of its own"
    );
    d
}
