//! Where this process sits in the cgroup v2 hierarchy: the cgroup2 mounts
//! in `/proc/self/mountinfo`, the `0::` line of `/proc/self/cgroup`, and the
//! directory they lead to; and [`survey`], which reads all of it for the
//! doctor without changing anything.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};

use super::Controllers;
use super::cgroupfs::{read_file, read_optional};

/// Where this process sits in the v2 hierarchy, read without changing
/// anything: what [`Manager::setup`] would start from. For
/// `nativelink-lre doctor` when no daemon runs.
#[derive(Debug, Clone)]
pub struct Survey {
    /// This process's cgroup directory.
    pub dir: PathBuf,
    /// Its `cgroup.controllers`: what a daemon alone in it (systemd
    /// `Delegate=yes`) could enable for its actions.
    pub offered: Controllers,
    /// Its `cgroup.subtree_control`: what a child cgroup gets, which is
    /// where a daemon that shares its cgroup puts its actions.
    pub passed_down: Controllers,
}

/// [`Survey`] of this process; `Err` says why there is no v2 cgroup.
pub fn survey() -> Result<Survey, String> {
    let mounts = parse_cgroup2_mounts(
        &read_file(Path::new("/proc/self/mountinfo")).map_err(|e| e.to_string())?,
    );
    if mounts.is_empty() {
        return Err("no cgroup v2 hierarchy is mounted".into());
    }
    let own =
        parse_own_cgroup(&read_file(Path::new("/proc/self/cgroup")).map_err(|e| e.to_string())?)
            .ok_or("/proc/self/cgroup has no cgroup v2 (0::) entry")?;
    let dir = resolve_cgroup_dir(&mounts, &own)
        .ok_or_else(|| format!("the cgroup {} is not below a cgroup2 mount", own.display()))?;
    let list = |name: &str| {
        read_optional(&dir.join(name))
            .ok()
            .flatten()
            .map(|t| Controllers::from_list(&t))
            .unwrap_or_default()
    };
    Ok(Survey {
        offered: list("cgroup.controllers"),
        passed_down: list("cgroup.subtree_control"),
        dir,
    })
}

/// A cgroup2 mount: `root` is the cgroup that appears at `mount_point`
/// (usually `/`, but a bind mount or a cgroup namespace can show a subtree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cgroup2Mount {
    pub(super) root: PathBuf,
    pub(super) mount_point: PathBuf,
}

/// The cgroup2 mounts in /proc/self/mountinfo, in order.
///
/// A line is `id parent major:minor root mount_point options [optional...] - fstype source super_options`
/// and spaces, tabs, newlines and backslashes in paths are escaped as `\ooo`.
pub(super) fn parse_cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, after_separator) = line.split_once(" - ")?;
            if after_separator.split(' ').next()? != "cgroup2" {
                return None;
            }
            let mut fields = fields.split(' ');
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            Some(Cgroup2Mount {
                root: unescape_octal(root),
                mount_point: unescape_octal(mount_point),
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escaping of mountinfo paths.
pub(super) fn unescape_octal(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Our cgroup v2 path from /proc/self/cgroup: the `0::/path` line (hybrid
/// systems list their v1 hierarchies on other lines).
pub(super) fn parse_own_cgroup(proc_cgroup: &str) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|line| {
        let path = line.strip_prefix("0::")?;
        path.starts_with('/').then(|| PathBuf::from(path))
    })
}

/// The directory of cgroup `own` under the first cgroup2 mount that shows it.
pub(super) fn resolve_cgroup_dir(mounts: &[Cgroup2Mount], own: &Path) -> Option<PathBuf> {
    mounts.iter().find_map(|mount| {
        let relative = own.strip_prefix(&mount.root).ok()?;
        Some(if relative.as_os_str().is_empty() {
            mount.mount_point.clone()
        } else {
            mount.mount_point.join(relative)
        })
    })
}
