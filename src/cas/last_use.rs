//! When a store file was last used, without making that an input of the
//! actions that link it.
//!
//! Inputs are hard links to store files, so whatever a store file's inode
//! records, every action that links it sees. Its modification time is
//! therefore fixed ([`FIXED_MTIME_SECS`], one second after the epoch, as nix
//! uses), and the last use is the inode's *change* time, which no one can
//! set to a chosen value: setting the fixed mtime again (a "touch") stamps
//! the ctime with now, and so do the hard links a sandbox makes and a
//! change of the file's group (`shares`). Eviction reads the ctime.
//!
//! A use refreshes the ctime only when it is older than [`TOUCH_AFTER`],
//! so that reads do not all become metadata writes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A blob whose last use is older than this is touched when used again.
pub const TOUCH_AFTER: Duration = Duration::from_secs(600);

/// The modification time of every store file, and of every input file an
/// action sees, in seconds since the epoch.
pub const FIXED_MTIME_SECS: u64 = 1;

/// [`FIXED_MTIME_SECS`] as a time.
pub fn fixed_mtime() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(FIXED_MTIME_SECS)
}

/// The last use recorded in `meta`, in milliseconds since the epoch.
pub fn millis(meta: &fs::Metadata) -> u64 {
    let secs = u64::try_from(meta.ctime()).unwrap_or(0);
    let nanos = u64::try_from(meta.ctime_nsec()).unwrap_or(0);
    secs * 1000 + nanos / 1_000_000
}

/// Whether the last use recorded in `meta` is older than [`TOUCH_AFTER`].
pub fn is_stale(meta: &fs::Metadata) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_sub(millis(meta)) > TOUCH_AFTER.as_millis() as u64
}

/// Whether a last use of `secs` (seconds since the epoch) is older than
/// [`TOUCH_AFTER`].
pub fn is_stale_secs(secs: u64) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.saturating_sub(secs) > TOUCH_AFTER.as_secs()
}

/// Records a use of the file at `path` now (best effort): sets its mtime to
/// the fixed value, which stamps its ctime.
pub fn touch(path: &Path) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let fixed = TimeSpec::new(FIXED_MTIME_SECS as i64, 0);
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &fixed,
        UtimensatFlags::NoFollowSymlink,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touch_moves_the_last_use_and_keeps_the_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"x").unwrap();
        fs::File::open(&f)
            .unwrap()
            .set_modified(fixed_mtime())
            .unwrap();
        let before = millis(&fs::metadata(&f).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        touch(&f);
        let meta = fs::metadata(&f).unwrap();
        assert!(millis(&meta) > before);
        assert_eq!(meta.modified().unwrap(), fixed_mtime());
        assert!(!is_stale(&meta));
    }
}
