//! Closing inherited descriptors. Anything not `O_CLOEXEC` survives
//! `execve`: a daemon started from a shell with a descriptor open on a
//! root-only file would hand it to every action. The sandbox closes every
//! descriptor from `first` up right before exec.

use std::os::fd::RawFd;

/// How the descriptors were closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// close_range(2), Linux 5.9.
    CloseRange,
    /// Each descriptor listed in /proc/self/fd, on older kernels.
    ProcList,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::CloseRange => "close_range(2)",
            Method::ProcList => "close(2) of each descriptor in /proc/self/fd",
        }
    }
}

/// Closes every descriptor numbered `first` or higher.
pub fn close_from(first: RawFd) -> Result<Method, String> {
    // SAFETY: close_range takes integers only; closing descriptors that
    // this process no longer uses (the caller's invariant: nothing at or
    // above `first` is still needed) cannot make memory unsafe.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        return Ok(Method::CloseRange);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(format!("close_range({first}, ~0U, 0): {err}"));
    }
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("listing /proc/self/fd: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: as above; the directory handle of the listing is among
        // them but was closed when read_dir's iterator was dropped, so
        // this at worst returns EBADF.
        unsafe {
            libc::close(fd);
        }
    }
    Ok(Method::ProcList)
}

/// The descriptors numbered `first` or higher that are open now.
pub fn open_from(first: RawFd) -> Vec<RawFd> {
    (first..1024)
        // SAFETY: F_GETFD only reads the descriptor's flags.
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0)
        .collect()
}
