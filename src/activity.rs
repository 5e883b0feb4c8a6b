//! Idle and busy tracking: open connections, running actions and pending
//! upstream pushes, each counted by a guard while it lives, and how long
//! all three have been zero (for the socket-activated daemon's idle exit
//! and for `status`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Open connections and running work, for the idle exit and `status`.
#[derive(Debug)]
pub struct Activity {
    connections: AtomicUsize,
    /// Running actions.
    busy: AtomicUsize,
    /// Results waiting to be pushed to the upstream.
    pushes: AtomicUsize,
    last_change: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            connections: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            pushes: AtomicUsize::new(0),
            last_change: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Running actions.
    pub fn busy_count(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Results waiting to be pushed (or being pushed) to the upstream.
    pub fn pending_pushes(&self) -> usize {
        self.pushes.load(Ordering::SeqCst)
    }

    /// A running action: it must finish before an idle exit, and a stop
    /// waits for it.
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        self.guard(false)
    }

    /// A result waiting to be pushed: it holds off an idle exit, and a stop
    /// gives it a bounded time (`Upstream::drain`).
    pub fn push_pending(self: &Arc<Self>) -> BusyGuard {
        self.guard(true)
    }

    fn guard(self: &Arc<Self>, push: bool) -> BusyGuard {
        self.counter(push).fetch_add(1, Ordering::SeqCst);
        self.touch();
        BusyGuard {
            activity: Arc::clone(self),
            push,
        }
    }

    fn counter(&self, push: bool) -> &AtomicUsize {
        if push { &self.pushes } else { &self.busy }
    }

    /// How long nothing has been connected, running or waiting to be
    /// pushed, if that is so now.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.connections() > 0 || self.busy_count() > 0 || self.pending_pushes() > 0 {
            return None;
        }
        Some(
            self.last_change
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed(),
        )
    }

    fn touch(&self) {
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// One open connection, counted while the guard lives.
    pub(crate) fn open(self: &Arc<Self>) -> ConnGuard {
        self.connections.fetch_add(1, Ordering::SeqCst);
        self.touch();
        ConnGuard(Arc::clone(self))
    }
}

/// Counts one open connection while it lives.
#[derive(Debug)]
pub struct ConnGuard(Arc<Activity>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// Counts one running action, or one pending push, while it lives.
#[derive(Debug)]
pub struct BusyGuard {
    activity: Arc<Activity>,
    push: bool,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.activity
            .counter(self.push)
            .fetch_sub(1, Ordering::SeqCst);
        self.activity.touch();
    }
}
