//! The descriptor-based mount calls (Linux 5.2; `mount_setattr` 5.12),
//! which neither nix nor libc wrap: a detached copy of a directory
//! (`open_tree`), a new filesystem not yet attached anywhere (`fsopen`,
//! `fsconfig`, `fsmount`), attaching either (`move_mount`), and changing
//! the flags of a whole mount tree (`mount_setattr`).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// From <linux/mount.h>.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// struct mount_attr (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(path: &Path) -> Result<CString, std::io::Error> {
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// Wraps a descriptor the kernel just returned, or the errno.
fn owned(r: libc::c_long) -> std::io::Result<OwnedFd> {
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: r is a descriptor the kernel just returned to us and that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn check(r: libc::c_long) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A detached bind mount of `path` (relative to the working directory),
/// not recursive: `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE)`.
pub fn clone_tree(path: &Path) -> std::io::Result<OwnedFd> {
    let p = c_path(path)?;
    // SAFETY: p is a NUL-terminated string that outlives the call.
    owned(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    })
}

/// A new tmpfs, not attached anywhere, with these options and mount
/// attributes.
pub fn new_tmpfs(options: &[(&str, &str)], attrs: u64) -> std::io::Result<OwnedFd> {
    let options: Vec<(&str, Option<&str>)> = options.iter().map(|(k, v)| (*k, Some(*v))).collect();
    new_fs("tmpfs", &options, attrs)
}

/// A new file system of type `fstype`, not attached anywhere, with these
/// options (`None`: a flag such as overlayfs' `userxattr`) and mount
/// attributes. Paths in options are resolved from the working directory
/// and shown in mountinfo as given.
pub fn new_fs(
    fstype: &str,
    options: &[(&str, Option<&str>)],
    attrs: u64,
) -> std::io::Result<OwnedFd> {
    let fstype = CString::new(fstype).map_err(std::io::Error::other)?;
    // SAFETY: fstype is NUL-terminated and outlives the call.
    let fs = owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    use std::os::fd::AsRawFd;
    for (key, value) in options {
        let k = CString::new(*key).map_err(std::io::Error::other)?;
        let v = value
            .map(CString::new)
            .transpose()
            .map_err(std::io::Error::other)?;
        let (cmd, v) = match &v {
            Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
            None => (FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: k (and v, when not null) are NUL-terminated and outlive
        // the call.
        check(unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, k.as_ptr(), v, 0) })?;
    }
    // SAFETY: no pointers.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    })?;
    // SAFETY: no pointers.
    owned(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })
}

/// A detached bind mount of `path` below the mount `dir` (`""` for the
/// mount itself), not recursive, without following a final symbolic link.
/// A mount with no submounts is the cheap source for many binds: the
/// kernel walks the source mount's submounts on each clone.
pub fn clone_beneath(dir: &OwnedFd, path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let p = c_path(path)?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    if path.as_os_str().is_empty() {
        flags |= libc::AT_EMPTY_PATH as libc::c_uint;
    }
    // SAFETY: p is a NUL-terminated string that outlives the call.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), p.as_ptr(), flags) })
}

/// Sets `attrs` on the detached mount `mnt` (not on mounts below it).
pub fn set_attrs(mnt: &OwnedFd, attrs: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = CString::default();
    // SAFETY: empty is NUL-terminated, attr is a struct mount_attr of the
    // size passed; both outlive the call, which only reads them.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
}

/// Attaches the detached mount `mnt` on `target` (relative to the working
/// directory).
pub fn attach(mnt: &OwnedFd, target: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (empty, t) = (CString::default(), c_path(target)?);
    // SAFETY: both strings are NUL-terminated and outlive the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
}

/// Sets `attrs` on the mount at `path` and on every mount below it.
/// ENOSYS before Linux 5.12.
pub fn set_recursive(path: &Path, attrs: u64) -> std::io::Result<()> {
    let p = c_path(path)?;
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: p is NUL-terminated, attr is a struct mount_attr of the size
    // passed; both outlive the call, which only reads them.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            p.as_ptr(),
            (libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
}
