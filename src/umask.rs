//! The daemon's own umask, which every file it creates is subject to: the
//! store's blobs and the exec roots it lays out fix their modes where it
//! would take away bits they need.

/// The process's umask, from `/proc/self/status` (reading it with umask(2)
/// would change it for every thread meanwhile). If it cannot be read, the
/// most restrictive mask is assumed, which only costs a chmod per directory.
/// Read once: nothing in the daemon changes its umask.
pub fn process_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o777)
    })
}
