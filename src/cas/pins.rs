//! Blobs kept from eviction: pinned by a running action for as long as it
//! runs ([`PinGuard`]), or leased for a short while after an action-cache
//! hit was served ([`Store::lease`]), so that the client can still fetch
//! what the hit names when the store is evicting hard.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Store;
use crate::digest::Digest;

/// How long the outputs of a served action-cache hit are kept.
pub const LEASE: Duration = Duration::from_secs(60);

/// Counts of pins per blob hash, and the leases that hold some of them.
#[derive(Default)]
pub(super) struct Pins {
    counts: HashMap<[u8; 32], u32>,
    /// Oldest first; every lease lasts [`LEASE`], so expiry order is
    /// insertion order.
    leases: VecDeque<(Instant, Vec<[u8; 32]>)>,
}

impl Pins {
    fn add(&mut self, hashes: &[[u8; 32]]) {
        for h in hashes {
            *self.counts.entry(*h).or_default() += 1;
        }
    }

    fn remove(&mut self, hashes: &[[u8; 32]]) {
        for h in hashes {
            if let Some(n) = self.counts.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(h);
                }
            }
        }
    }

    /// Ends the leases that have run out.
    fn expire(&mut self, now: Instant) {
        while self.leases.front().is_some_and(|(until, _)| *until <= now) {
            let (_, hashes) = self.leases.pop_front().expect("just looked");
            self.remove(&hashes);
        }
    }

    pub(super) fn contains(&mut self, hash: &[u8; 32]) -> bool {
        self.expire(Instant::now());
        self.counts.contains_key(hash)
    }
}

/// Keeps blobs from eviction while it lives.
pub struct PinGuard {
    store: Arc<Store>,
    hashes: Vec<[u8; 32]>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.store.lock_pins().remove(&self.hashes);
    }
}

fn hashes(digests: impl IntoIterator<Item = Digest>) -> Vec<[u8; 32]> {
    digests.into_iter().map(|d| *d.hash()).collect()
}

impl Store {
    fn lock_pins(&self) -> std::sync::MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks blobs as in use by a running action: eviction skips them until
    /// the guard is dropped.
    pub fn pin(self: &Arc<Self>, digests: impl IntoIterator<Item = Digest>) -> PinGuard {
        let hashes = hashes(digests);
        self.lock_pins().add(&hashes);
        PinGuard {
            store: Arc::clone(self),
            hashes,
        }
    }

    /// Keeps blobs from eviction for [`LEASE`]: the blobs an action-cache
    /// hit names, when it is served.
    pub fn lease(&self, digests: impl IntoIterator<Item = Digest>) {
        let hashes = hashes(digests);
        let now = Instant::now();
        let mut pins = self.lock_pins();
        pins.expire(now);
        pins.add(&hashes);
        pins.leases.push_back((now + LEASE, hashes));
    }

    pub(super) fn is_pinned(&self, hash: &[u8; 32]) -> bool {
        self.lock_pins().contains(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::test_store;
    use super::*;

    #[test]
    fn leases_end_by_themselves_and_pins_with_their_guard() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let (a, b) = (Digest::of_bytes(b"a"), Digest::of_bytes(b"b"));
        let guard = store.pin([a]);
        store.lease([a, b]);
        assert!(store.is_pinned(a.hash()) && store.is_pinned(b.hash()));
        drop(guard);
        assert!(store.is_pinned(a.hash()), "the lease still holds it");
        store.lock_pins().expire(Instant::now() + LEASE);
        assert!(!store.is_pinned(a.hash()) && !store.is_pinned(b.hash()));
    }
}
