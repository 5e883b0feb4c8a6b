//! Which tree becomes the sandbox's `/`.
//!
//! - [`RootMode::Host`], the default: a fresh tmpfs holds the read-only
//!   host toolchain paths, a few fixed `/etc` files, and the input root
//!   read-write at [`EXEC_ROOT`](super::EXEC_ROOT) (see [`super::mounts`]).
//! - [`RootMode::Input`]: the input root itself is `/`, read-write, as
//!   buildbox-run and Buildbarn's chroot runner give it. Only a minimal
//!   `/dev`, a fresh `/proc` and a private `/tmp` are added; no host path
//!   is visible, so the whole toolchain comes from the action's inputs and
//!   is part of its key. Clients such as BuildStream, whose commands use
//!   absolute paths into their staged sysroot, need it.
//!
//! The mode changes only which tree becomes the root. Every other step of
//! the helper (namespaces, cgroup, identity, keyring, capabilities,
//! seccomp, descriptors, limits) is the same in both.
//!
//! In input mode the mount points `dev`, `proc` and `tmp` must be
//! directories of the input root or absent: a symlink there (say
//! `proc -> /`) would redirect a mount made before the pivot, so it is
//! refused. Absent ones are created for the run and removed afterwards
//! ([`created_mount_points`], [`remove_mount_points`]), so that they never
//! appear in the action's outputs.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde::{Deserialize, Serialize};

use super::mount_api;
use super::mounts::{Built, Early, ReadOnlyMethod, ctx, dev, mkdir_p, proc};
use super::{EXEC_ROOT, Spec, exec_root};

/// Which tree becomes the sandbox's `/`. Chosen per instance name
/// (`[instances.NAME] root`) and per action (platform property
/// `lre-root`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootMode {
    /// A tmpfs with the read-only host paths; the input root at `/exec`.
    #[default]
    Host,
    /// The input root is `/`.
    Input,
}

impl RootMode {
    /// The name used in the configuration and in `lre-root`.
    pub fn as_str(self) -> &'static str {
        match self {
            RootMode::Host => "host",
            RootMode::Input => "input",
        }
    }

    pub fn parse(value: &str) -> Option<RootMode> {
        match value {
            "host" => Some(RootMode::Host),
            "input" => Some(RootMode::Input),
            _ => None,
        }
    }

    /// Where the input root appears inside the sandbox.
    pub fn input_root(self) -> &'static Path {
        match self {
            RootMode::Host => Path::new(EXEC_ROOT),
            RootMode::Input => Path::new("/"),
        }
    }

    /// The inside path of `working_dir` (relative to the input root).
    pub fn working_dir(self, working_dir: &str) -> PathBuf {
        self.input_root().join(working_dir)
    }
}

impl std::fmt::Display for RootMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mount points the input mode adds on top of the input root.
const MOUNT_POINTS: [&str; 3] = ["dev", "proc", "tmp"];

/// Builds the input mode's root in the new mount namespace, from the
/// working directory (the exec root, entered by the helper), and pivots
/// into it:
///
/// - `/` is made private, so nothing propagates to the host;
/// - the exec root's mount ([`exec_root::open`]: an overlayfs that names
///   no host path, or a bind where overlayfs cannot be had) is attached on
///   top of the working directory and entered: this mount becomes `/`,
///   nosuid and nodev, read-write; its input files are bound read-only
///   onto themselves;
/// - `/dev`, `/proc` and `/tmp` are mounted as in the host mode
///   ([`dev`], [`proc`], a size-limited tmpfs);
/// - `pivot_root(".", ".")`, and the old root is detached.
///
/// Nothing of the host is bound: no toolchain path, no `/etc` file.
pub fn build_input_root(spec: &Spec, early: Early) -> Result<Built, String> {
    let cwd = Path::new(".");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ctx(|| "make / private".to_owned()))?;
    let (tmp_fs, shm_fs) = early.or_make(spec)?;
    // An overlayfs of the exec root, as the host mode's /exec, so that
    // mountinfo names no host path; nosuid and nodev.
    let (root, method) = exec_root::open(spec)?;
    mount_api::attach(&root, cwd).map_err(ctx(|| "attach the input root".to_owned()))?;
    nix::unistd::fchdir(&root).map_err(ctx(|| "enter the input root".to_owned()))?;
    check_mount_points(cwd)?;
    exec_root::bind_inputs_read_only(&root, cwd, &spec.read_only_inputs)?;
    drop(root);
    dev(cwd, shm_fs)?;
    proc(cwd)?;
    let tmp = cwd.join("tmp");
    mkdir_p(&tmp)?;
    mount_api::attach(&tmp_fs, &tmp).map_err(ctx(|| "attach /tmp".to_owned()))?;
    nix::unistd::pivot_root(".", ".").map_err(ctx(|| "pivot_root".to_owned()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ctx(|| "detach the old root".to_owned()))?;
    nix::unistd::chdir("/").map_err(ctx(|| "chdir /".to_owned()))?;
    // Nothing was bound from the host, so nothing is left to make
    // read-only.
    Ok(Built {
        read_only: ReadOnlyMethod::Recursive,
        exec_root: method,
    })
}

/// Refuses an input root whose `dev`, `proc` or `tmp` is anything but a
/// directory (a symlink would send the mount elsewhere).
fn check_mount_points(root: &Path) -> Result<(), String> {
    for name in MOUNT_POINTS {
        match fs::symlink_metadata(root.join(name)) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) => {
                let kind = if meta.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "not a directory"
                };
                return Err(format!(
                    "the input root's /{name} is {kind}; with the input root as / \
                     (root mode \"input\"), /dev, /proc and /tmp must be directories or absent"
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("stat /{name} of the input root: {e}")),
        }
    }
    Ok(())
}

/// Why the input root cannot be `/` when its top level has `name` as a
/// file or symlink (`kind`): `None` unless `name` is one of the mount
/// points. The daemon checks this on the input tree before it lays it
/// out, so that the client gets INVALID_ARGUMENT naming the path; the
/// sandbox checks again before it mounts.
pub fn mount_point_conflict(name: &str, kind: &str) -> Option<String> {
    MOUNT_POINTS.contains(&name).then(|| {
        format!(
            "is {kind}, but with the input root as / (root mode \"input\") /{name} is \
             mounted there; /dev, /proc and /tmp must be directories or absent"
        )
    })
}

/// In the helper, before the clone (the working directory is the exec
/// root, or its parent with the overlay layers): the mount points that the
/// input mode will have to create, relative to the working directory.
pub fn created_mount_points(spec: &Spec) -> Vec<PathBuf> {
    if spec.root != RootMode::Input {
        return Vec::new();
    }
    let base = if spec.exec_overlay {
        Path::new(exec_root::UPPER)
    } else {
        Path::new("")
    };
    MOUNT_POINTS
        .into_iter()
        .map(|name| base.join(name))
        .filter(|path| {
            matches!(fs::symlink_metadata(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        })
        .collect()
}

/// In the helper, after the sandbox has ended: removes the mount points it
/// created, which are empty (the mounts that covered them are gone with
/// the namespace, and nothing else could write under them).
pub fn remove_mount_points(created: &[PathBuf]) {
    for path in created {
        let _ = fs::remove_dir(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for mode in [RootMode::Host, RootMode::Input] {
            assert_eq!(RootMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(RootMode::parse("Input"), None);
        assert_eq!(RootMode::parse(""), None);
        assert_eq!(RootMode::default(), RootMode::Host);
    }

    #[test]
    fn the_working_directory_is_under_the_input_root() {
        assert_eq!(
            RootMode::Host.working_dir("a/b"),
            PathBuf::from("/exec/a/b")
        );
        assert_eq!(RootMode::Input.working_dir("a/b"), PathBuf::from("/a/b"));
        assert_eq!(RootMode::Input.working_dir(""), PathBuf::from("/"));
    }

    #[test]
    fn only_the_mount_points_conflict() {
        assert!(mount_point_conflict("tmp", "a symlink").is_some());
        assert!(mount_point_conflict("bin", "a symlink").is_none());
        assert!(mount_point_conflict("tmp/x", "a file").is_none());
    }

    #[test]
    fn mount_points_must_be_directories_or_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_mount_points(dir.path()), Ok(()));
        fs::create_dir(dir.path().join("dev")).unwrap();
        assert_eq!(check_mount_points(dir.path()), Ok(()));
        std::os::unix::fs::symlink("/", dir.path().join("proc")).unwrap();
        let err = check_mount_points(dir.path()).unwrap_err();
        assert!(err.contains("/proc is a symlink"), "{err}");
        fs::remove_file(dir.path().join("proc")).unwrap();
        fs::write(dir.path().join("tmp"), b"").unwrap();
        let err = check_mount_points(dir.path()).unwrap_err();
        assert!(err.contains("/tmp is not a directory"), "{err}");
    }
}
