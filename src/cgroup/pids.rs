//! The pids controller: `pids.max` and `pids.events`.
//!
//! Both files exist only in cgroups whose parent enabled `+pids` in its
//! `cgroup.subtree_control`. `pids.max` counts tasks, i.e. threads as well as
//! processes.

use std::path::Path;

use super::{Error, flat_keyed, limit_value, read_optional, write_file};

/// Writes `pids.max` if a limit is set.
pub(super) fn apply(dir: &Path, pids_max: Option<u64>) -> Result<(), Error> {
    if let Some(max) = pids_max {
        write_file(&dir.join("pids.max"), &limit_value(max))?;
    }
    Ok(())
}

/// `pids.events` `max`: how many forks or clones failed because of
/// `pids.max`; `None` if the file does not exist.
pub(super) fn max_events(dir: &Path) -> Result<Option<u64>, Error> {
    let path = dir.join("pids.events");
    Ok(read_optional(&path)?.and_then(|text| parse_max_events(&text)))
}

/// Parses the `max` line of `pids.events` (newer kernels add `max.imposed`,
/// which is a different key).
fn parse_max_events(text: &str) -> Option<u64> {
    flat_keyed(text, "max")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_limits() {
        assert_eq!(limit_value(128), "128");
        assert_eq!(limit_value(0), "0");
        assert_eq!(limit_value(u64::MAX), "max");
    }

    #[test]
    fn parses_max_events() {
        assert_eq!(parse_max_events("max 5\n"), Some(5));
        assert_eq!(parse_max_events("max.imposed 3\nmax 7\n"), Some(7));
        assert_eq!(parse_max_events(""), None);
    }

    #[test]
    fn reads_and_writes_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(max_events(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join("pids.events"), "max 2\n").unwrap();
        assert_eq!(max_events(dir.path()).unwrap(), Some(2));

        let max = dir.path().join("pids.max");
        // Empty stand-in: writes do not truncate, and cgroupfs needs no truncation.
        std::fs::write(&max, "").unwrap();
        apply(dir.path(), None).unwrap();
        assert_eq!(std::fs::read_to_string(&max).unwrap(), "");
        apply(dir.path(), Some(64)).unwrap();
        assert_eq!(std::fs::read_to_string(&max).unwrap(), "64");
    }
}
