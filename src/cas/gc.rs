//! Size accounting and least-recently-used eviction.
//!
//! Eviction keeps no index in memory: a file's change time is its last
//! use (see `last_use`), and the presence index (`index`) follows the
//! removals through inotify, like any other removal. Eviction walks the store twice:
//! the first pass builds a histogram of bytes by last-use millisecond and
//! finds the cut-off millisecond that brings the store down to the target;
//! the second pass removes every unpinned file last used before it, and
//! from the cut-off millisecond itself only as many bytes as are still over.
//! Memory stays bounded by the number of distinct milliseconds, not the
//! number of blobs.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Error, Result, Store, disk_cost};
use crate::digest::Digest;

/// How often the background thread looks at the size even without a wake-up.
const GC_INTERVAL: Duration = Duration::from_secs(60);

/// How many passes over the users over their share one collection makes
/// at most before it stops (a flood faster than eviction); each pass
/// removes at least one file.
const MAX_SHARE_ROUNDS: u32 = 64;

/// What one garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub files: u64,
    pub bytes_before: u64,
    pub removed_files: u64,
    pub removed_bytes: u64,
    pub duration: Duration,
}

/// How far `collect_garbage_with` or `verify_with` has got, for the
/// progress the `gc` and `verify` commands show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// "counting", "removing" or "checking".
    pub phase: &'static str,
    pub done: u64,
    /// 0 while unknown.
    pub total: u64,
    /// "files" or "bytes".
    pub unit: &'static str,
}

/// Where progress goes; called often, so it should be cheap.
pub type OnProgress<'a> = &'a (dyn Fn(Progress) + Sync);

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub checked: u64,
    pub removed: Vec<std::path::PathBuf>,
    pub duration: Duration,
}

struct Entry {
    /// Last use, in milliseconds since the epoch (the file's ctime).
    mtime: u64,
    cost: u64,
    /// The file's group: who it is charged to (see `shares`).
    group: u32,
}

/// What one walk of the store found.
struct Survey {
    files: u64,
    total: u64,
    by_ms: BTreeMap<u64, u64>,
    by_user: HashMap<u32, u64>,
}

impl Store {
    /// Bytes of temporary files being written; see `writer`.
    pub(crate) fn temp_bytes(&self) -> u64 {
        self.usage.temp.load(Ordering::Relaxed)
    }

    pub(super) fn temp_added(&self, n: u64) {
        self.usage.temp.fetch_add(n, Ordering::Relaxed);
        self.maybe_wake_gc();
    }

    pub(super) fn temp_removed(&self, n: u64) {
        let _ = self
            .usage
            .temp
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Starts the background thread that computes the store's size and
    /// evicts down to the low watermark whenever it passes the high one.
    pub fn start_background(self: &Arc<Self>) -> Result<()> {
        self.index
            .start()
            .map_err(Error::io("spawn index thread for", self.root()))?;
        let Some(wait) = self
            .gc_wait
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Ok(());
        };
        let store = Arc::clone(self);
        std::thread::Builder::new()
            .name("store-gc".into())
            .spawn(move || {
                let started = Instant::now();
                match store.survey() {
                    Ok(survey) => {
                        let (files, bytes) = (survey.files, survey.total);
                        store.shares.set_by_user(survey.by_user);
                        store.usage.add(bytes);
                        store.usage.scanned.store(true, Ordering::Relaxed);
                        tracing::info!(
                            files,
                            bytes,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "store size computed"
                        );
                    }
                    Err(e) => tracing::error!("cannot compute store size: {e}"),
                }
                loop {
                    if store.usage().0 > store.high_bytes() {
                        match store.collect_garbage(store.low_bytes()) {
                            Ok(r) => tracing::info!(
                                removed_files = r.removed_files,
                                removed_bytes = r.removed_bytes,
                                before = r.bytes_before,
                                elapsed_ms = r.duration.as_millis() as u64,
                                "evicted least recently used entries"
                            ),
                            Err(e) => tracing::error!("eviction failed: {e}"),
                        }
                    }
                    match wait.recv_timeout(GC_INTERVAL) {
                        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(Error::io("spawn gc thread for", self.root()))?;
        Ok(())
    }

    /// Removes blobs and action-cache entries until the store holds at most
    /// `target` bytes, temporary files of uploads in progress included
    /// (those cannot be evicted, so the blobs make room): first the oldest
    /// blobs of users over their share of the store (see `shares`), then
    /// the least recently used of all. Pinned blobs are kept.
    pub fn collect_garbage(&self, target: u64) -> Result<GcReport> {
        self.collect_garbage_with(target, &|_| {})
    }

    /// [`Store::collect_garbage`], telling `progress` how far it has got.
    pub fn collect_garbage_with(&self, target: u64, progress: OnProgress) -> Result<GcReport> {
        let target = target.saturating_sub(self.temp_bytes());
        let started = Instant::now();
        let counted_before = self.usage.bytes.load(Ordering::Relaxed);
        let mut survey = self.survey_with(progress)?;
        // Replace the running count with the exact figure, keeping whatever
        // was added while we walked.
        let _ = self
            .usage
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                Some(now.saturating_sub(counted_before) + survey.total)
            });
        self.usage.scanned.store(true, Ordering::Relaxed);
        let mut report = GcReport {
            files: survey.files,
            bytes_before: survey.total,
            ..GcReport::default()
        };
        // Users over their share first, again after each pass: uploads
        // that landed while a pass ran are only in the next survey, and
        // the least-recently-used pass below must never take a blob of a
        // user within their share while another is still over theirs.
        let mut rounds = 0;
        let mut settled = true;
        while survey.total > target && self.evict_over_shares(&survey, target, &mut report)? {
            #[cfg(test)]
            tests::after_share_pass();
            survey = self.survey_with(progress)?;
            rounds += 1;
            if rounds == MAX_SHARE_ROUNDS {
                // Still being flooded: the next wake-up goes on.
                settled = false;
                break;
            }
        }
        self.shares.set_by_user(std::mem::take(&mut survey.by_user));
        if settled && survey.total > target {
            self.evict_oldest(&survey.by_ms, survey.total - target, &mut report, progress)?;
        }
        let m = crate::metrics::get();
        m.evicted_files.inc_by(report.removed_files);
        m.evicted_bytes.inc_by(report.removed_bytes);
        report.duration = started.elapsed();
        Ok(report)
    }

    /// One walk of the store: its size, the bytes that may go by last-use
    /// millisecond (pinned files count towards the total but are never
    /// candidates, so they cannot hold the cut-off back), and the bytes
    /// charged to each user.
    fn survey(&self) -> Result<Survey> {
        self.survey_with(&|_| {})
    }

    fn survey_with(&self, progress: OnProgress) -> Result<Survey> {
        let mut by_ms: BTreeMap<u64, u64> = BTreeMap::new();
        let mut by_user: HashMap<u32, u64> = HashMap::new();
        let mut seen = 0u64;
        let (files, total) = self.walk(|path, e| {
            seen += 1;
            progress(Progress {
                phase: "counting",
                done: seen,
                total: 0,
                unit: "files",
            });
            if let Some(uid) = self.shares.charged_to(e.group) {
                *by_user.entry(uid).or_default() += e.cost;
            }
            if !self.is_pinned_path(path) {
                *by_ms.entry(e.mtime).or_default() += e.cost;
            }
        })?;
        Ok(Survey {
            files,
            total,
            by_ms,
            by_user,
        })
    }

    /// Removes the oldest unpinned blobs of each user over their share
    /// until they are within it or the store is down to `target`. Returns
    /// whether anything was removed.
    fn evict_over_shares(
        &self,
        survey: &Survey,
        target: u64,
        report: &mut GcReport,
    ) -> Result<bool> {
        let share = self.shares.per_user_max;
        let mut charged: HashMap<u32, u64> = survey
            .by_user
            .iter()
            .filter(|(_, bytes)| share > 0 && **bytes > share)
            .map(|(uid, bytes)| (*uid, *bytes))
            .collect();
        if charged.is_empty() {
            return Ok(false);
        }
        let mut candidates = Vec::new();
        self.walk(|path, e| {
            if let Some(uid) = self.shares.charged_to(e.group)
                && charged.contains_key(&uid)
            {
                candidates.push((e.mtime, uid, path.to_owned(), e.cost));
            }
        })?;
        candidates.sort_unstable();
        let mut total = survey.total;
        let before = report.removed_files;
        for (_, uid, path, cost) in candidates {
            if total <= target {
                break;
            }
            let bytes = charged.get_mut(&uid).expect("only over-share users");
            if *bytes <= share || self.is_pinned_path(&path) {
                continue;
            }
            if fs::remove_file(&path).is_ok() {
                self.usage.sub(cost);
                *bytes -= cost;
                total -= cost;
                report.removed_files += 1;
                report.removed_bytes += cost;
            }
        }
        let over: Vec<String> = charged
            .iter()
            .filter(|(_, b)| **b > share)
            .map(|(uid, b)| format!("uid {uid} ({b} bytes)"))
            .collect();
        tracing::info!(
            removed = report.removed_files - before,
            still_over = over.join(", "),
            "evicted blobs of users over their share of the store ({share} bytes)"
        );
        Ok(report.removed_files > before)
    }

    /// Removes the least recently used unpinned files until `excess` bytes
    /// are gone (or nothing is left to remove).
    fn evict_oldest(
        &self,
        by_ms: &BTreeMap<u64, u64>,
        excess: u64,
        report: &mut GcReport,
        progress: OnProgress,
    ) -> Result<()> {
        // Oldest first: the millisecond by which enough would go; if there
        // are not enough unpinned bytes, all of them.
        let mut freed = 0u64;
        let mut cutoff = by_ms.keys().next_back().copied();
        for (&ms, &bytes) in by_ms {
            freed += bytes;
            if freed >= excess {
                cutoff = Some(ms);
                break;
            }
        }
        let Some(cutoff) = cutoff else {
            return Ok(());
        };
        let (mut older, mut at_cutoff) = (Vec::new(), Vec::new());
        self.walk(|path, e| {
            if e.mtime < cutoff {
                older.push((path.to_owned(), e.cost));
            } else if e.mtime == cutoff {
                at_cutoff.push((path.to_owned(), e.cost));
            }
        })?;
        let mut removed = 0u64;
        for (path, cost) in older.into_iter().chain(at_cutoff) {
            if removed >= excess {
                break;
            }
            if self.is_pinned_path(&path) {
                continue;
            }
            if fs::remove_file(&path).is_ok() {
                self.usage.sub(cost);
                removed += cost;
                report.removed_files += 1;
                report.removed_bytes += cost;
                progress(Progress {
                    phase: "removing",
                    done: removed.min(excess),
                    total: excess,
                    unit: "bytes",
                });
            }
        }
        Ok(())
    }

    /// Re-hashes every blob (and executable twin) and removes each one whose
    /// contents do not match its name. For `nativelink-lre verify`.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_with(&|_| {})
    }

    /// [`Store::verify`], telling `progress` how many files it has checked.
    pub fn verify_with(&self, progress: OnProgress) -> Result<VerifyReport> {
        let started = Instant::now();
        let mut report = VerifyReport::default();
        let mut paths = Vec::new();
        for root in [&self.cas_dir, &self.xcas_dir] {
            walk_dir(root, 1, &mut |path, _| paths.push(path.to_owned()))?;
        }
        let total = paths.len() as u64;
        for (done, path) in paths.into_iter().enumerate() {
            progress(Progress {
                phase: "checking",
                done: done as u64,
                total,
                unit: "files",
            });
            let Ok(file) = fs::File::open(&path) else {
                continue; // evicted meanwhile
            };
            let actual = super::hash_file(&file, &path)?;
            let named = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            report.checked += 1;
            if actual.hex() != named {
                tracing::warn!(path = %path.display(), actual = %actual, "removing a blob that does not match its name");
                if fs::remove_file(&path).is_ok() {
                    self.usage.sub(disk_cost(actual.size()));
                    report.removed.push(path);
                }
            }
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    fn is_pinned_path(&self, path: &Path) -> bool {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        let mut hash = [0u8; 32];
        (path.starts_with(&self.cas_dir) || path.starts_with(&self.xcas_dir))
            && hex::decode_to_slice(name, &mut hash).is_ok()
            && self.is_pinned(&hash)
    }

    /// Visits every blob, executable copy of a blob and action-cache entry;
    /// returns (files, bytes). The files standing for the empty blob are
    /// skipped: they cost nothing and must never be evicted (sandboxes link
    /// them).
    fn walk(&self, mut visit: impl FnMut(&Path, &Entry)) -> Result<(u64, u64)> {
        let mut files = 0;
        let mut bytes = 0;
        let empty = Digest::EMPTY.hex();
        for root in [&self.cas_dir, &self.xcas_dir, &self.ac_dir] {
            let blobs = root != &self.ac_dir;
            walk_dir(root, 4, &mut |path, meta| {
                if blobs && path.file_name().is_some_and(|n| n == empty.as_str()) {
                    return;
                }
                let entry = Entry {
                    mtime: super::last_use::millis(meta),
                    group: std::os::unix::fs::MetadataExt::gid(meta),
                    cost: disk_cost(meta.len()),
                };
                files += 1;
                bytes += entry.cost;
                visit(path, &entry);
            })?;
        }
        Ok((files, bytes))
    }
}

/// Calls `f` for each regular file below `dir`, `depth` levels deep at most.
/// Hidden files (the layout marker) are skipped. Entries that vanish while
/// we walk are ignored.
fn walk_dir(dir: &Path, depth: u32, f: &mut dyn FnMut(&Path, &fs::Metadata)) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read directory", dir)(e)),
    };
    for entry in entries {
        let Ok(entry) = entry else { continue };
        if entry.file_name().as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if depth > 0 {
                walk_dir(&path, depth - 1, f)?;
            }
        } else if meta.is_file() {
            f(&path, &meta);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
