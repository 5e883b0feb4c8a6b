//! The cpu controller: `cpu.max`, and `cpu.stat` (which every v2 cgroup
//! has, with or without the controller: the core accounting lives in the
//! cgroup core).
//!
//! `cpu.max` is `"$QUOTA $PERIOD"` in microseconds: the cgroup may run for
//! QUOTA in every PERIOD, summed over all CPUs, so QUOTA/PERIOD is a number
//! of cores.

use std::path::Path;

use super::{Error, flat_keyed, read_file, write_file};

/// The `cpu.max` period we always use (the kernel's default).
pub(super) const PERIOD_USEC: u64 = 100_000;
/// The kernel refuses quotas below 1 ms.
const MIN_QUOTA_USEC: u64 = 1_000;

/// Writes `cpu.max` if a limit is set.
pub(super) fn apply(dir: &Path, cores: Option<f64>) -> Result<(), Error> {
    if let Some(cores) = cores {
        let path = dir.join("cpu.max");
        let value = format_max(cores).map_err(|detail| Error::InvalidLimit {
            path: path.clone(),
            detail,
        })?;
        write_file(&path, &value)?;
    }
    Ok(())
}

/// The `cpu.max` text for a number of cores: 1.5 gives `"150000 100000"`.
/// Tiny limits are raised to the kernel's 1 ms minimum; zero, negative and
/// non-finite values are refused.
pub(super) fn format_max(cores: f64) -> Result<String, String> {
    if !cores.is_finite() || cores <= 0.0 {
        return Err(format!(
            "cpu_max must be a positive number of cores, not {cores}"
        ));
    }
    // `as` saturates: absurdly large values become u64::MAX and the kernel
    // rejects them with EINVAL, which names the file.
    let quota = ((cores * PERIOD_USEC as f64).round() as u64).max(MIN_QUOTA_USEC);
    Ok(format!("{quota} {PERIOD_USEC}"))
}

/// The CPU time fields of `cpu.stat`, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct CpuStat {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
}

/// Reads dir/cpu.stat.
pub(super) fn read_stat(dir: &Path) -> Result<CpuStat, Error> {
    let path = dir.join("cpu.stat");
    let text = read_file(&path)?;
    parse_stat(&text).ok_or_else(|| Error::Parse {
        path,
        detail: format!("no usage_usec, user_usec and system_usec in {text:?}"),
    })
}

/// Parses `cpu.stat`; the throttling lines that the cpu controller adds
/// (`nr_periods`, `nr_throttled`, `throttled_usec`, ...) are ignored.
fn parse_stat(text: &str) -> Option<CpuStat> {
    Some(CpuStat {
        usage_usec: flat_keyed(text, "usage_usec")?,
        user_usec: flat_keyed(text, "user_usec")?,
        system_usec: flat_keyed(text, "system_usec")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_cores_as_quota_and_period() {
        assert_eq!(format_max(1.5).unwrap(), "150000 100000");
        assert_eq!(format_max(1.0).unwrap(), "100000 100000");
        assert_eq!(format_max(0.25).unwrap(), "25000 100000");
        assert_eq!(format_max(16.0).unwrap(), "1600000 100000");
        // Rounded to whole microseconds.
        assert_eq!(format_max(0.333_333_3).unwrap(), "33333 100000");
        // Below the kernel's 1 ms minimum.
        assert_eq!(format_max(0.001).unwrap(), "1000 100000");
        assert_eq!(format_max(1e-9).unwrap(), "1000 100000");
    }

    #[test]
    fn refuses_nonsense_cores() {
        for cores in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(format_max(cores).is_err(), "{cores}");
        }
    }

    #[test]
    fn parses_stat_without_the_controller() {
        // A cgroup without the cpu controller (as on the hybrid machines).
        let text = "usage_usec 5321\nuser_usec 4000\nsystem_usec 1321\n\
                    core_sched.force_idle_usec 0\n";
        assert_eq!(
            parse_stat(text),
            Some(CpuStat {
                usage_usec: 5321,
                user_usec: 4000,
                system_usec: 1321
            })
        );
    }

    #[test]
    fn parses_stat_with_the_controller() {
        let text = "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 10\n\
                    nr_throttled 3\nthrottled_usec 999\nnr_bursts 0\nburst_usec 0\n";
        assert_eq!(
            parse_stat(text),
            Some(CpuStat {
                usage_usec: 100,
                user_usec: 60,
                system_usec: 40
            })
        );
        assert_eq!(parse_stat("nr_periods 10\n"), None);
    }

    #[test]
    fn apply_refuses_invalid_limits_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let max = dir.path().join("cpu.max");
        // Empty stand-in: writes do not truncate (cgroupfs needs no truncation).
        std::fs::write(&max, "").unwrap();
        let err = apply(dir.path(), Some(f64::NAN)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidLimit { ref path, .. } if *path == max),
            "{err}"
        );
        apply(dir.path(), Some(2.0)).unwrap();
        assert_eq!(std::fs::read_to_string(&max).unwrap(), "200000 100000");
    }
}
