//! The exec root as an action sees it: `/exec`, where its input files are
//! read-only, in a way that shows nothing of the host.
//!
//! **Paths.** A bind mount shows its source in mountinfo: the path of the
//! directory within its file system, which for an exec root is the state
//! directory's path and the daemon's action counter. So `/exec` is an
//! overlayfs instead, whose only layer that matters is the exec root as
//! its upper directory (the lower one is an empty directory; with nothing
//! below, every entry is the upper's own, and an overlayfs then passes
//! reads, writes, links, renames and deletions straight to it, with no
//! copy-up and no whiteouts). Its root is `/`, and the layers are named in
//! its options as given: relative to the directory the helper entered,
//! the exec root's parent, laid out by the daemon as `exec/` (the exec
//! root), `work/` (overlayfs' own) and `lower/` (empty). Where overlayfs
//! cannot be mounted (a kernel before 5.11, a file system without user
//! extended attributes), `/exec` is a bind mount as before and the probe
//! reports the host path as visible.
//!
//! **Read-only inputs.** As root, an action runs as a uid of its own and
//! its input files are the daemon's, which it cannot change (EACCES,
//! EPERM). A per-user daemon's actions run as the daemon's uid and own
//! their inputs' copies, so they could chmod and write them; no
//! unprivileged process can give a file another owner. So for a per-user
//! daemon each input file (except those at or under a declared output,
//! which the action may replace) is bound read-only onto itself, from a
//! second mount of `/exec` that has no submounts (the kernel walks a
//! source mount's submounts on every bind, which made thousands of binds
//! quadratic). Writing, chmod, touch or setting an ACL on an input then
//! fails with EROFS, removing or renaming one with EBUSY; directories stay
//! writable. The binds' sources are paths within the overlayfs, so
//! mountinfo shows `/path` for each. A bind costs about 40 µs per file,
//! which is why a root daemon, whose inputs are protected by ownership,
//! makes none. Above `sandbox.max-read-only-inputs` files an action gets
//! no binds (the same for every run of it) and a per-user daemon's inputs
//! become writable.

use std::os::fd::OwnedFd;
use std::path::Path;

use super::Spec;
use super::mount_api::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};

/// How `/exec` was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// An overlayfs over the exec root: no host path shows.
    Overlay,
    /// A bind mount of the exec root, and why not an overlayfs.
    Bind(String),
}

/// The names of the layers in the directory the helper entered.
pub(super) const UPPER: &str = "exec";
const WORK: &str = "work";
const LOWER: &str = "lower";

/// The detached mount that becomes `/exec`, from the working directory:
/// the exec root's parent when `spec.exec_overlay`, the exec root itself
/// otherwise.
pub fn open(spec: &Spec) -> Result<(OwnedFd, Method), String> {
    let attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    let bind = |path: &str, why: String| -> Result<(OwnedFd, Method), String> {
        let fd = mount_api::clone_tree(Path::new(path))
            .map_err(|e| format!("open_tree of the exec root: {e}"))?;
        mount_api::set_attrs(&fd, attrs)
            .map_err(|e| format!("making the exec root nosuid,nodev: {e}"))?;
        Ok((fd, Method::Bind(why)))
    };
    if !spec.exec_overlay {
        return bind(".", "the spec names no overlay layers".into());
    }
    let options = [
        ("source", Some("exec")),
        ("lowerdir", Some(LOWER)),
        ("upperdir", Some(UPPER)),
        ("workdir", Some(WORK)),
        // Unprivileged overlayfs keeps its own attributes in user.*.
        ("userxattr", None),
        // No sync of the upper file system (the store's, whole) when the
        // overlay goes away with the sandbox: that sync cost 70 ms of
        // every action on ext4. A volatile overlay cannot be mounted again
        // after a crash, and never is: its layers are made for one action
        // and removed after it (and at start-up). Kernels before 5.10 lack
        // the option and get the overlay without it.
        ("volatile", None),
    ];
    let mount = |options: &[(&str, Option<&str>)]| mount_api::new_fs("overlay", options, attrs);
    match mount(&options).or_else(|_| mount(&options[..options.len() - 1])) {
        Ok(fd) => Ok((fd, Method::Overlay)),
        Err(e) => bind(UPPER, format!("overlayfs: {e}")),
    }
}

/// Binds each of `inputs` (paths relative to the exec root) read-only onto
/// itself under `target` (where `exec_root` is attached, relative to the
/// working directory). `exec_root` is the detached mount [`open`] gave,
/// before it was attached.
pub fn bind_inputs_read_only(
    exec_root: &OwnedFd,
    target: &Path,
    inputs: &[String],
) -> Result<(), String> {
    if inputs.is_empty() {
        return Ok(());
    }
    // A second mount of the same tree, which never gets submounts.
    let source = mount_api::clone_beneath(exec_root, Path::new(""))
        .map_err(|e| format!("a second mount of the exec root: {e}"))?;
    let attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    for rel in inputs {
        let bind = mount_api::clone_beneath(&source, Path::new(rel))
            .and_then(|fd| mount_api::set_attrs(&fd, attrs).map(|()| fd))
            .and_then(|fd| mount_api::attach(&fd, &target.join(rel)))
            .map_err(|e| format!("binding the input {rel:?} read-only: {e}"));
        bind?;
    }
    Ok(())
}

/// The layers' directories under `parent` (the exec root's parent), for
/// the daemon to create: the exec root, overlayfs' work directory and the
/// empty lower directory.
pub fn layer_dirs(parent: &Path) -> [std::path::PathBuf; 3] {
    [parent.join(UPPER), parent.join(WORK), parent.join(LOWER)]
}
