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

/// Joins a new, empty, anonymous session keyring owned by the current
/// uid. Returns its serial.
pub fn join_fresh_session() -> Result<i32, String> {
    // SAFETY: a null name asks for an anonymous keyring; the kernel reads
    // no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r < 0 {
        return Err(format!(
            "keyctl(KEYCTL_JOIN_SESSION_KEYRING): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(r as i32)
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
