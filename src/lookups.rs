//! Counting action-cache lookups: once per action, by user.
//!
//! A client that executes remotely first asks GetActionResult and, on a
//! miss, sends Execute, whose own lookup would miss again: counting both
//! made the hit rate look worse than it was. So a miss of Execute's lookup
//! is not counted when the same caller's GetActionResult of the same
//! action just missed; everything else counts once. Counted per uid for
//! `status` and the metrics.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::digest::Digest;

/// A miss this recent stands for the Execute that follows it.
const FOLLOWS: Duration = Duration::from_secs(300);

/// Recent misses kept at most; past this the oldest are forgotten.
const MAX_RECENT: usize = 100_000;

/// Who looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GetActionResult.
    Client,
    /// Execute's own lookup.
    Execute,
}

#[derive(Default)]
pub struct Lookups {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    by_user: Mutex<HashMap<Option<u32>, (u64, u64)>>,
    recent_misses: Mutex<HashMap<(Digest, Option<u32>), Instant>>,
}

impl Lookups {
    /// Counts one lookup of `action` by `user`, unless it is the Execute
    /// after a GetActionResult miss.
    pub fn record(&self, action: &Digest, user: Option<u32>, hit: bool, kind: Kind) {
        let key = (*action, user);
        {
            let mut recent = self.recent_misses.lock().unwrap_or_else(|e| e.into_inner());
            let followed = recent.remove(&key).is_some_and(|at| at.elapsed() < FOLLOWS);
            if kind == Kind::Execute && !hit && followed {
                return;
            }
            if kind == Kind::Client && !hit {
                if recent.len() >= MAX_RECENT {
                    recent.retain(|_, at| at.elapsed() < FOLLOWS);
                    if recent.len() >= MAX_RECENT {
                        recent.clear();
                    }
                }
                recent.insert(key, Instant::now());
            }
        }
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut by_user = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let entry = by_user.entry(user).or_default();
        if hit {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        drop(by_user);
        crate::metrics::get().lookup(user, hit);
    }

    /// (user, hits, misses), by uid (anonymous last).
    pub fn by_user(&self) -> Vec<(Option<u32>, u64, u64)> {
        let by_user = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = by_user.iter().map(|(u, (h, m))| (*u, *h, *m)).collect();
        v.sort_by_key(|(u, _, _)| u.map_or(u64::MAX, u64::from));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execute_after_a_miss_is_one_lookup() {
        let l = Lookups::default();
        let a = Digest::of_bytes(b"action");
        l.record(&a, Some(1), false, Kind::Client);
        l.record(&a, Some(1), false, Kind::Execute);
        assert_eq!(l.misses.load(Ordering::Relaxed), 1);
        // Execute alone counts; so does another user's.
        l.record(&a, Some(1), false, Kind::Execute);
        l.record(&a, Some(2), true, Kind::Execute);
        assert_eq!(l.misses.load(Ordering::Relaxed), 2);
        assert_eq!(l.hits.load(Ordering::Relaxed), 1);
        assert_eq!(l.by_user(), vec![(Some(1), 0, 2), (Some(2), 1, 0)]);
    }
}
