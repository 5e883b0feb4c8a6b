//! Session keyrings. A child inherits its parent's session keyring across
//! fork and exec, and a user namespace does not hide it: without this, an
//! action reads the keys of the daemon's session (whoever started it) and
//! can leave a key there for the next action of another user. Each
//! sandbox joins a new anonymous session keyring, as nix-daemon does for
//! builds; the seccomp filter then refuses every keyring call anyway.

// From <linux/keyctl.h>; the libc crate does not have them.
const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
const KEYCTL_READ: libc::c_long = 11;
const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;

/// The serial of the current session keyring, without creating one.
pub fn session_serial() -> Option<i32> {
    // SAFETY: KEYCTL_GET_KEYRING_ID takes two integers and no pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_GET_KEYRING_ID,
            KEY_SPEC_SESSION_KEYRING,
            0 as libc::c_long,
        )
    };
    (r >= 0).then_some(r as i32)
}

/// The session keyring a sandbox ends up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    /// A new, anonymous one, with this serial.
    Fresh(i32),
    /// This host refuses every keyring call (a kernel without keys, or a
    /// container's seccomp filter, as systemd-nspawn's): then no process
    /// here, the action included, can reach any keyring.
    Unavailable(String),
}

/// Joins a new, empty, anonymous session keyring owned by the current
/// uid.
pub fn join_fresh_session() -> Result<Session, String> {
    // SAFETY: a null name asks for an anonymous keyring; the kernel reads
    // no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r >= 0 {
        return Ok(Session::Fresh(r as i32));
    }
    let err = std::io::Error::last_os_error();
    let refused = |e: &std::io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::EPERM | libc::EACCES)
        )
    };
    // Refused, not failed: the plainest keyring call is refused too. A
    // seccomp filter (or the lack of CONFIG_KEYS) binds every descendant,
    // so the action cannot reach the inherited keyring either.
    if refused(&err) && session_serial().is_none() && refused(&std::io::Error::last_os_error()) {
        return Ok(Session::Unavailable(format!(
            "this host refuses keyring calls (keyctl: {err})"
        )));
    }
    Err(format!("keyctl(KEYCTL_JOIN_SESSION_KEYRING): {err}"))
}

/// How many keys the session keyring holds (`None` if it cannot be read).
pub fn session_key_count() -> Option<usize> {
    let mut buf = [0u8; 256];
    // SAFETY: KEYCTL_READ writes at most buf.len() bytes into buf, which
    // lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_READ,
            KEY_SPEC_SESSION_KEYRING,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    // A keyring reads as an array of 4-byte key serials.
    (r >= 0).then_some(r as usize / 4)
}
