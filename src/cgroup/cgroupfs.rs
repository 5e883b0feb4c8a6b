//! cgroupfs I/O: reading and writing interface files, listing, creating
//! and removing cgroup directories, and the flat formats the kernel uses.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{Error, MAX_POLL_DELAY};
use crate::io_error::IoError;

/// How long `rmdir` is retried while the kernel still reports `EBUSY`.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(2);

/// Appends the pids of `dir` and its descendant cgroups to `pids`.
pub(super) fn collect_pids(dir: &Path, pids: &mut Vec<i32>) -> Result<(), Error> {
    pids.extend(read_procs(dir)?);
    for child in child_cgroups(dir)? {
        collect_pids(&child, pids)?;
    }
    Ok(())
}

/// The pids listed in dir/cgroup.procs.
pub(super) fn read_procs(dir: &Path) -> Result<Vec<i32>, Error> {
    let path = dir.join("cgroup.procs");
    parse_procs(&read_file(&path)?).map_err(|detail| Error::Parse { path, detail })
}

/// The child cgroups of `dir` (its subdirectories: cgroupfs holds nothing
/// else but interface files). A missing `dir` has none.
pub(super) fn child_cgroups(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let list_error = |source| Error::from(IoError::new("cannot list", dir, source));
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(list_error(e)),
    };
    let mut children = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_error)?;
        if entry.file_type().map_err(list_error)?.is_dir() {
            children.push(entry.path());
        }
    }
    Ok(children)
}

/// Removes `dir` and its descendant cgroups, deepest first. They must be
/// empty of processes already.
pub(super) fn remove_tree(dir: &Path) -> Result<(), Error> {
    for child in child_cgroups(dir)? {
        remove_tree(&child)?;
    }
    rmdir_retry(dir)
}

/// `rmdir`, retrying `EBUSY` for up to [`RMDIR_TIMEOUT`]; a missing
/// directory counts as removed.
pub(super) fn rmdir_retry(dir: &Path) -> Result<(), Error> {
    let deadline = Instant::now() + RMDIR_TIMEOUT;
    let mut delay = Duration::from_millis(1);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(delay);
                delay = (delay * 2).min(MAX_POLL_DELAY);
            }
            Err(source) => {
                return Err(IoError::new("cannot remove cgroup", dir, source).into());
            }
        }
    }
}

/// `mkdir`, returning whether we created it (false: it already existed).
pub(super) fn make_dir(path: &Path) -> io::Result<bool> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Errors meaning "this cgroupfs is not ours to write".
pub(super) fn is_denied(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    )
}

/// The `Unavailable` message for a denied write under `dir`.
pub(super) fn why_denied(dir: &Path, e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::EROFS) {
        format!(
            "{} is read-only (ProtectControlGroups= in the unit?)",
            dir.display()
        )
    } else {
        format!(
            "{} is not writable by uid {}",
            dir.display(),
            nix::unistd::geteuid()
        )
    }
}

/// Checks that `name` can be used as one cgroup directory name (after a
/// prefix of `prefix_len` bytes).
pub(super) fn validate_name(parent: &Path, name: &str, prefix_len: usize) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("not a directory name")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else if prefix_len + name.len() > 255 {
        Some("longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            parent: parent.to_owned(),
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

pub(super) fn read_file(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| IoError::new("cannot read", path, source).into())
}

/// Reads a file that only some kernels or controllers provide: `None` if absent.
pub(super) fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IoError::new("cannot read", path, source).into()),
    }
}

/// A limit as memory.max, memory.swap.max and pids.max take it: the number,
/// or `max` for `u64::MAX` (unlimited). The kernel rounds memory limits
/// down to whole pages.
pub(crate) fn limit_value(n: u64) -> String {
    if n == u64::MAX {
        "max".to_owned()
    } else {
        n.to_string()
    }
}

/// Writes `value` to an existing cgroupfs file in one `write(2)` (the kernel
/// parses each write on its own). Never creates the file.
pub(super) fn write_file(path: &Path, value: &str) -> Result<(), Error> {
    let error = |source| Error::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    };
    let mut file = OpenOptions::new().write(true).open(path).map_err(error)?;
    file.write_all(value.as_bytes()).map_err(error)
}

/// [`write_file`] for files that only some kernels or controllers provide:
/// `Ok(false)` if the file does not exist.
pub(super) fn write_optional(path: &Path, value: &str) -> Result<bool, Error> {
    match write_file(path, value) {
        Ok(()) => Ok(true),
        Err(Error::Write { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Value of `key` in a flat keyed file (`cgroup.events`, `memory.events`,
/// `cpu.stat`, ...: one `key value` pair per line).
pub(super) fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Parses cgroup.procs: one pid per line.
pub(super) fn parse_procs(text: &str) -> Result<Vec<i32>, String> {
    text.split_whitespace()
        .map(|pid| pid.parse().map_err(|_| format!("bad pid {pid:?}")))
        .collect()
}
