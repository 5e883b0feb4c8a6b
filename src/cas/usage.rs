//! How many bytes the store keeps, the watermarks that wake eviction, and
//! the last-use stamps (see `last_use`) of the files a request used.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{Store, last_use};

/// Bytes the store keeps. Exact after the first background scan; before that
/// it counts only what this process added.
pub(super) struct Usage {
    pub(super) bytes: AtomicU64,
    pub(super) scanned: AtomicBool,
    /// Temporary files being written (uploads in progress or waiting to
    /// be resumed): counted in the size, never evicted (see `writer`).
    pub(super) temp: AtomicU64,
}

/// The bytes a file of `len` costs on disk: whole 4 KiB blocks.
pub fn disk_cost(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

impl Store {
    /// Bytes the store keeps, and whether that figure is complete yet.
    pub fn usage(&self) -> (u64, bool) {
        (
            self.usage.bytes.load(Ordering::Relaxed) + self.temp_bytes(),
            self.usage.scanned.load(Ordering::Relaxed),
        )
    }

    /// Counts bytes added outside the blob path (action-cache entries).
    pub(crate) fn account_added(&self, bytes: u64) {
        self.usage.add(bytes);
        self.maybe_wake_gc();
    }

    pub(crate) fn account_removed(&self, bytes: u64) {
        self.usage.sub(bytes);
    }

    pub(super) fn high_bytes(&self) -> u64 {
        self.config.max_size / 100 * u64::from(self.config.high_watermark)
    }

    /// The size eviction shrinks the store to (the low watermark).
    pub fn low_bytes(&self) -> u64 {
        self.config.max_size / 100 * u64::from(self.config.low_watermark)
    }

    pub(super) fn maybe_wake_gc(&self) {
        if self.usage().0 > self.high_bytes() {
            let _ = self.gc_wake.try_send(());
        }
    }

    /// Records a use of a store file if its recorded last use is older
    /// than [`last_use::TOUCH_AFTER`].
    pub(super) fn touch_if_stale(&self, path: &Path, meta: &fs::Metadata) {
        if last_use::is_stale(meta) {
            last_use::touch(path);
        }
    }

    /// Marks a file of the store as used now.
    pub(crate) fn touch_path(&self, path: &Path) {
        if let Ok(meta) = fs::metadata(path) {
            self.touch_if_stale(path, &meta);
        }
    }
}

impl Usage {
    pub(super) fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    pub(super) fn sub(&self, n: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}
