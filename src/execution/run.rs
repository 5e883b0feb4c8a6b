//! One execution of an action by the worker, and who follows it.
//!
//! Identical requests share a [`Run`] while it is in progress, so an action
//! runs once however many clients ask for it at the same time. Each client
//! still gets an [`Operation`] of its own (its own name, owner and stream):
//! a run is never handed from one client to another, only followed. What a
//! follower that is not the submitter may receive is decided when the run
//! ends (see `Executor::finish`): only what it could have had from the
//! shared cache.
//!
//! A `do_not_cache` action is never joined (REAPI: such an action must not
//! be merged with other in-flight executions).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::logs::LiveLog;
use super::operation::Operation;
use crate::digest::Digest;
use crate::proto::reapi::execution_stage::Value as Stage;

/// Why a run was asked to stop. Decides what its followers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CancelReason {
    /// The client that submitted it cancelled it.
    Submitter = 1,
    /// A trusted user (an administrator) cancelled it.
    Trusted = 2,
    /// Nobody watched it for the grace period.
    Unwatched = 3,
    /// The daemon is stopping.
    Shutdown = 4,
}

impl CancelReason {
    fn from_u8(v: u8) -> Option<CancelReason> {
        Some(match v {
            1 => CancelReason::Submitter,
            2 => CancelReason::Trusted,
            3 => CancelReason::Unwatched,
            4 => CancelReason::Shutdown,
            _ => return None,
        })
    }
}

pub struct Run {
    pub action: Digest,
    /// The uid whose request started it.
    pub submitter: Option<u32>,
    /// Whether identical requests may follow it.
    pub joinable: bool,
    /// Set once the run's result is in the shared action cache: then
    /// every follower may have it.
    shared: AtomicBool,
    cancel_reason: AtomicU8,
    cancel: Notify,
    /// The stage it is in, shown to followers that join later.
    stage: Mutex<Stage>,
    /// The command's first argument, once the Command is read (for the
    /// log and `status`).
    argv0: Mutex<Option<String>>,
    followers: Mutex<Vec<Weak<Operation>>>,
    /// The output of its command while it runs (see `logs`).
    live_log: Mutex<Option<Arc<LiveLog>>>,
}

impl Run {
    pub fn new(action: Digest, submitter: Option<u32>, joinable: bool) -> Arc<Run> {
        Arc::new(Run {
            action,
            submitter,
            joinable,
            shared: AtomicBool::new(false),
            cancel_reason: AtomicU8::new(0),
            cancel: Notify::new(),
            stage: Mutex::new(Stage::CacheCheck),
            argv0: Mutex::new(None),
            followers: Mutex::new(Vec::new()),
            live_log: Mutex::new(None),
        })
    }

    /// The output of its command, while the command runs.
    pub fn live_log(&self) -> Option<Arc<LiveLog>> {
        self.live_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets (or, with `None`, ends) the live log, and shows the change to
    /// the followers (their metadata names the streams).
    pub fn set_live_log(&self, log: Option<Arc<LiveLog>>) {
        let old = std::mem::replace(
            &mut *self.live_log.lock().unwrap_or_else(|e| e.into_inner()),
            log,
        );
        if let Some(old) = old {
            old.finish();
        }
        let stage = *self.stage.lock().unwrap_or_else(|e| e.into_inner());
        self.set_stage(stage);
    }

    /// Shows `stage` to every follower.
    pub fn set_stage(&self, stage: Stage) {
        *self.stage.lock().unwrap_or_else(|e| e.into_inner()) = stage;
        for op in self.followers() {
            op.set_stage(stage);
        }
    }

    /// Asks the run to stop. The first reason given is kept.
    pub fn cancel(&self, why: CancelReason) {
        let _ =
            self.cancel_reason
                .compare_exchange(0, why as u8, Ordering::SeqCst, Ordering::SeqCst);
        self.cancel.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel_reason().is_some()
    }

    pub fn cancel_reason(&self) -> Option<CancelReason> {
        CancelReason::from_u8(self.cancel_reason.load(Ordering::SeqCst))
    }

    /// Resolves when [`cancel`](Self::cancel) is called.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.cancel.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// Records the command's first argument (cut to 200 bytes).
    pub fn set_argv0(&self, argv0: &str) {
        let mut end = argv0.len().min(200);
        while !argv0.is_char_boundary(end) {
            end -= 1;
        }
        *self.argv0.lock().unwrap_or_else(|e| e.into_inner()) = Some(argv0[..end].to_owned());
    }

    pub fn argv0(&self) -> Option<String> {
        self.argv0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records that the result is in the shared action cache.
    pub fn mark_shared(&self) {
        self.shared.store(true, Ordering::SeqCst);
    }

    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::SeqCst)
    }

    pub(super) fn follow(&self, op: &Arc<Operation>) {
        self.lock().push(Arc::downgrade(op));
        op.set_stage(*self.stage.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Stops `op` from following; returns how many followers are left that
    /// have not completed.
    pub(super) fn unfollow(&self, op: &Operation) -> usize {
        let mut followers = self.lock();
        followers.retain(|w| w.upgrade().is_some_and(|f| !std::ptr::eq(&*f, op)));
        followers
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|f| !f.is_done())
            .count()
    }

    /// The operations following this run, oldest first.
    pub fn followers(&self) -> Vec<Arc<Operation>> {
        self.lock().iter().filter_map(Weak::upgrade).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Operation>>> {
        self.followers.lock().unwrap_or_else(|e| e.into_inner())
    }
}
