//! The memory controller: `memory.max`, `memory.swap.max`, `memory.peak`
//! and `memory.events`.
//!
//! All of these files exist only in cgroups whose parent enabled `+memory`
//! in its `cgroup.subtree_control`. `memory.swap.max` additionally needs
//! swap accounting (`CONFIG_MEMCG_SWAP`, not disabled by `swapaccount=0`),
//! and `memory.peak` appeared in Linux 5.19.

use std::path::Path;

use tracing::warn;

use super::{Error, flat_keyed, limit_value, read_optional, write_file, write_optional};

/// Writes `memory.max` and `memory.swap.max` for the limits that are set.
/// A missing `memory.swap.max` (no swap accounting) only logs a warning,
/// the first time.
pub(super) fn apply(
    dir: &Path,
    memory_max: Option<u64>,
    swap_max: Option<u64>,
) -> Result<(), Error> {
    if let Some(bytes) = memory_max {
        write_file(&dir.join("memory.max"), &limit_value(bytes))?;
    }
    if let Some(bytes) = swap_max {
        let path = dir.join("memory.swap.max");
        // Without swap accounting the file is missing for every action:
        // say so once, not once per action.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !write_optional(&path, &limit_value(bytes))?
            && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            warn!(
                "{} does not exist (no swap accounting); swap is not limited",
                path.display()
            );
        }
    }
    Ok(())
}

/// `memory.peak`: the highest memory usage seen, in bytes; `None` if the
/// file does not exist.
pub(super) fn peak(dir: &Path) -> Result<Option<u64>, Error> {
    let path = dir.join("memory.peak");
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    parse_peak(&text).map(Some).ok_or_else(|| Error::Parse {
        path,
        detail: format!("not a byte count: {text:?}"),
    })
}

/// Parses `memory.peak`: a single number.
fn parse_peak(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `memory.events` `oom_kill`: processes killed by the OOM killer because of
/// this cgroup's (or an ancestor's) limit; `None` if the file does not exist.
pub(super) fn oom_kills(dir: &Path) -> Result<Option<u64>, Error> {
    let path = dir.join("memory.events");
    Ok(read_optional(&path)?.and_then(|text| parse_oom_kills(&text)))
}

/// Parses the `oom_kill` line of `memory.events` (absent before Linux 4.13).
fn parse_oom_kills(text: &str) -> Option<u64> {
    flat_keyed(text, "oom_kill")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_limits() {
        assert_eq!(limit_value(64 << 20), "67108864");
        assert_eq!(limit_value(0), "0");
        assert_eq!(limit_value(u64::MAX), "max");
    }

    #[test]
    fn parses_peak() {
        assert_eq!(parse_peak("123456\n"), Some(123456));
        assert_eq!(parse_peak("max\n"), None);
        assert_eq!(parse_peak(""), None);
    }

    #[test]
    fn parses_oom_kills() {
        let events = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(events), Some(1));
        // Before Linux 4.13 there is no oom_kill line.
        assert_eq!(parse_oom_kills("low 0\nhigh 0\nmax 0\noom 0\n"), None);
    }

    #[test]
    fn absent_files_are_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(peak(dir.path()).unwrap(), None);
        assert_eq!(oom_kills(dir.path()).unwrap(), None);
    }

    #[test]
    fn present_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.peak"), "4096\n").unwrap();
        std::fs::write(dir.path().join("memory.events"), "oom 1\noom_kill 3\n").unwrap();
        assert_eq!(peak(dir.path()).unwrap(), Some(4096));
        assert_eq!(oom_kills(dir.path()).unwrap(), Some(3));
        std::fs::write(dir.path().join("memory.peak"), "lots\n").unwrap();
        let err = peak(dir.path()).unwrap_err();
        assert!(err.to_string().contains("memory.peak"), "{err}");
    }

    #[test]
    fn apply_writes_only_the_set_limits() {
        // A plain directory stands in for the cgroup: the files must exist,
        // as cgroupfs provides them, and are never created. They start empty
        // because writes do not truncate (cgroupfs needs no truncation).
        let dir = tempfile::tempdir().unwrap();
        let max = dir.path().join("memory.max");
        std::fs::write(&max, "").unwrap();
        apply(dir.path(), Some(1 << 30), None).unwrap();
        assert_eq!(std::fs::read_to_string(&max).unwrap(), "1073741824");
        // No memory.swap.max: the swap limit is skipped, not an error.
        apply(dir.path(), None, Some(0)).unwrap();
        assert!(!dir.path().join("memory.swap.max").exists());
        // A missing memory.max is an error naming the file.
        std::fs::remove_file(&max).unwrap();
        let err = apply(dir.path(), Some(1), None).unwrap_err();
        assert!(err.to_string().contains("memory.max"), "{err}");
    }
}
