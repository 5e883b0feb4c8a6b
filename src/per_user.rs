//! Counting what each uid holds of a shared resource (connections, calls in
//! progress) against a per-uid cap and a cap for everyone together. A
//! permit is one unit; dropping it gives the unit back.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A caller's key: its uid, or `None` for callers we could not identify
/// (they share one allowance).
pub type Uid = Option<u32>;

/// Names a uid key in messages.
pub fn who(uid: Uid) -> String {
    uid.map_or_else(|| "anonymous callers".to_owned(), |u| format!("uid {u}"))
}

#[derive(Debug)]
pub struct PerUser {
    /// What is counted, for messages ("connections", "calls").
    what: &'static str,
    /// The configuration key of the per-uid cap, for messages.
    key: &'static str,
    per_user: usize,
    total: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    by_uid: HashMap<Uid, usize>,
    total: usize,
}

/// Why a unit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit(String);

impl fmt::Display for OverLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One unit held; given back on drop.
#[derive(Debug)]
pub struct Permit {
    owner: Arc<PerUser>,
    uid: Uid,
}

impl PerUser {
    pub fn new(what: &'static str, key: &'static str, per_user: usize, total: usize) -> Arc<Self> {
        Arc::new(PerUser {
            what,
            key,
            per_user,
            total,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one unit for `uid`, unless that would pass a cap.
    pub fn acquire(self: &Arc<Self>, uid: Uid) -> Result<Permit, OverLimit> {
        let mut c = self.lock();
        let mine = c.by_uid.get(&uid).copied().unwrap_or(0);
        if mine >= self.per_user {
            return Err(OverLimit(format!(
                "{} already has {mine} {} open, the most {} allows",
                who(uid),
                self.what,
                self.key
            )));
        }
        if c.total >= self.total {
            return Err(OverLimit(format!(
                "the daemon already has {} {} open, the most it serves at once",
                c.total, self.what
            )));
        }
        *c.by_uid.entry(uid).or_default() += 1;
        c.total += 1;
        Ok(Permit {
            owner: Arc::clone(self),
            uid,
        })
    }

    /// Units held by `uid`.
    pub fn held_by(&self, uid: Uid) -> usize {
        self.lock().by_uid.get(&uid).copied().unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.owner.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.by_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_uid_and_in_total() {
        let p = PerUser::new("connections", "max-connections-per-user", 2, 3);
        let a1 = p.acquire(Some(1)).unwrap();
        let _a2 = p.acquire(Some(1)).unwrap();
        let err = p.acquire(Some(1)).unwrap_err().to_string();
        assert!(
            err.contains("uid 1") && err.contains("max-connections-per-user"),
            "{err}"
        );
        let _b = p.acquire(None).unwrap();
        assert!(
            p.acquire(Some(2))
                .unwrap_err()
                .to_string()
                .contains("daemon")
        );
        drop(a1);
        assert_eq!(p.held_by(Some(1)), 1);
        let _c = p.acquire(Some(2)).unwrap();
    }
}
