//! Long-running operations: what each Execute call gets. An operation has
//! its own name and owner and follows a [`Run`] (see `run`), which it may
//! share with identical requests. It is kept for a while after it completes
//! so that WaitExecution and GetOperation can find it.
//!
//! An operation counts the streams that watch it (Execute, WaitExecution);
//! a run that none of its followers has watched for a grace period is
//! cancelled (see `Executor::reap_unwatched`), so actions of a client that
//! went away do not keep the worker busy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::run::Run;
use crate::digest::Digest;
use crate::proto::google::longrunning;
use crate::proto::reapi::{self, execution_stage};
use crate::trust::Caller;

/// How long a completed operation stays visible.
const RETENTION: Duration = Duration::from_secs(600);

const OPERATION_PREFIX: &str = "operations/";

/// The state every subscriber sees.
#[derive(Debug, Clone)]
pub struct State {
    pub stage: execution_stage::Value,
    /// Set once, when the operation is done.
    pub response: Option<reapi::ExecuteResponse>,
}

pub struct Operation {
    pub name: String,
    pub action: Digest,
    /// The caller whose request this is; only they (and trusted callers)
    /// see it.
    pub caller: Caller,
    /// The request, kept so that the operation can be run again for its
    /// owner (see `Executor::finish`).
    pub request: reapi::ExecuteRequest,
    pub created: Instant,
    state: watch::Sender<State>,
    run: Mutex<Arc<Run>>,
    /// Open streams watching it.
    streams: AtomicUsize,
    /// Since when nothing has watched it; `None` while watched.
    unwatched_since: Mutex<Option<Instant>>,
}

/// Keeps an operation counted as watched while it lives.
pub struct Watching(Arc<Operation>);

impl Drop for Watching {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.touch();
        }
    }
}

impl Operation {
    fn new(caller: Caller, action: Digest, request: reapi::ExecuteRequest) -> Operation {
        let (state, _) = watch::channel(State {
            stage: execution_stage::Value::CacheCheck,
            response: None,
        });
        Operation {
            name: format!("{OPERATION_PREFIX}{}", uuid::Uuid::new_v4()),
            action,
            caller,
            request,
            created: Instant::now(),
            state,
            run: Mutex::new(Run::new(action, None, false)),
            streams: AtomicUsize::new(0),
            unwatched_since: Mutex::new(Some(Instant::now())),
        }
    }

    pub fn owner(&self) -> Option<u32> {
        self.caller.uid
    }

    /// The run this operation follows now.
    pub fn run(&self) -> Arc<Run> {
        Arc::clone(&self.run.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether this operation's owner started the run it follows.
    pub fn is_submitter(&self) -> bool {
        self.run().submitter == self.owner()
    }

    fn follow(self: &Arc<Self>, run: Arc<Run>) {
        run.follow(self);
        *self.run.lock().unwrap_or_else(|e| e.into_inner()) = run;
    }

    /// Subscribes to its state, counting the subscriber as watching until
    /// the returned guard is dropped.
    pub fn watch(self: &Arc<Self>) -> (watch::Receiver<State>, Watching) {
        self.streams.fetch_add(1, Ordering::SeqCst);
        *self
            .unwatched_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        (self.state.subscribe(), Watching(Arc::clone(self)))
    }

    /// Subscribes without counting as watching (WaitOperation, tests).
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// Marks it as looked at now (GetOperation, WaitOperation): the grace
    /// period before an unwatched run is cancelled starts again.
    pub fn touch(&self) {
        let mut since = self
            .unwatched_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.streams.load(Ordering::SeqCst) == 0 {
            *since = Some(Instant::now());
        }
    }

    /// How long nothing has watched it, or `None` if something does.
    pub fn unwatched_for(&self) -> Option<Duration> {
        if self.streams.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.unwatched_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    pub(super) fn set_stage(&self, stage: execution_stage::Value) {
        self.state.send_modify(|s| {
            if s.response.is_none() {
                s.stage = stage;
            }
        });
    }

    /// Completes the operation; later calls are ignored.
    pub fn complete(&self, response: reapi::ExecuteResponse) {
        self.state.send_modify(|s| {
            if s.response.is_none() {
                s.stage = execution_stage::Value::Completed;
                s.response = Some(response);
            }
        });
    }

    pub fn is_done(&self) -> bool {
        self.state.borrow().response.is_some()
    }

    /// The operation as the longrunning API shows it.
    pub fn to_proto(&self, state: &State) -> longrunning::Operation {
        let mut metadata = reapi::ExecuteOperationMetadata {
            stage: state.stage as i32,
            action_digest: Some(self.action.to_proto()),
            digest_function: reapi::digest_function::Value::Sha256 as i32,
            ..Default::default()
        };
        // Only the run's submitter may follow its output (see `logs`).
        let run = self.run();
        if state.response.is_none()
            && self.owner().is_some()
            && run.submitter == self.owner()
            && run.live_log().is_some()
        {
            metadata.stdout_stream_name =
                super::logs::stream_name(&self.name, super::logs::Which::Stdout);
            metadata.stderr_stream_name =
                super::logs::stream_name(&self.name, super::logs::Which::Stderr);
        }
        longrunning::Operation {
            name: self.name.clone(),
            metadata: Some(crate::proto::any(
                "build.bazel.remote.execution.v2.ExecuteOperationMetadata",
                &metadata,
            )),
            done: state.response.is_some(),
            result: state.response.as_ref().map(|r| {
                longrunning::operation::Result::Response(crate::proto::any(
                    "build.bazel.remote.execution.v2.ExecuteResponse",
                    r,
                ))
            }),
        }
    }
}

/// All operations, by name, and the runs that identical requests may join.
#[derive(Default)]
pub struct Registry {
    by_name: Mutex<HashMap<String, Arc<Operation>>>,
    joinable: Mutex<HashMap<Digest, Weak<Run>>>,
}

impl Registry {
    /// A new operation for `caller`'s request. It follows the joinable run
    /// of the same action if there is one and `joinable` allows it;
    /// otherwise a new run, returned so that the caller starts it.
    pub fn submit(
        &self,
        caller: Caller,
        action: Digest,
        request: reapi::ExecuteRequest,
        joinable: bool,
    ) -> (Arc<Operation>, Option<Arc<Run>>) {
        let op = Arc::new(Operation::new(caller, action, request));
        let mut runs = self.joinable.lock().unwrap_or_else(|e| e.into_inner());
        let existing = joinable
            .then(|| runs.get(&action).and_then(Weak::upgrade))
            .flatten()
            .filter(|run| !run.is_cancelled());
        let new_run = match existing {
            Some(run) => {
                op.follow(run);
                None
            }
            None => {
                let run = Run::new(action, op.owner(), joinable);
                if joinable {
                    runs.insert(action, Arc::downgrade(&run));
                }
                op.follow(Arc::clone(&run));
                Some(run)
            }
        };
        drop(runs);
        self.by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(op.name.clone(), Arc::clone(&op));
        (op, new_run)
    }

    /// A new run of `op`'s action for `op`'s owner alone, which `op` now
    /// follows: for a follower that may not have another user's result.
    pub fn rerun(&self, op: &Arc<Operation>) -> Arc<Run> {
        let run = Run::new(op.action, op.owner(), false);
        op.follow(Arc::clone(&run));
        run
    }

    /// Called when a run ends: identical requests start a new one.
    pub fn run_finished(&self, run: &Arc<Run>) {
        let mut runs = self.joinable.lock().unwrap_or_else(|e| e.into_inner());
        if runs
            .get(&run.action)
            .and_then(Weak::upgrade)
            .is_some_and(|r| Arc::ptr_eq(&r, run))
        {
            runs.remove(&run.action);
        }
    }

    /// Completes `op` and removes it after the retention time.
    pub fn complete(self: &Arc<Self>, op: &Arc<Operation>, response: reapi::ExecuteResponse) {
        op.complete(response);
        let registry = Arc::downgrade(self);
        let name = op.name.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETENTION).await;
            if let Some(r) = registry.upgrade() {
                r.remove(&name);
            }
        });
    }

    /// Detaches `op` from its run (its owner cancelled it but others still
    /// follow the run). Returns how many unfinished followers the run has
    /// left.
    pub fn detach(
        self: &Arc<Self>,
        op: &Arc<Operation>,
        response: reapi::ExecuteResponse,
    ) -> usize {
        let left = op.run().unfollow(op);
        self.complete(op, response);
        left
    }

    pub fn get(&self, name: &str) -> Option<Arc<Operation>> {
        self.by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Operation>> {
        self.by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    /// Every operation, by name.
    pub fn list(&self) -> Vec<Arc<Operation>> {
        let mut ops: Vec<Arc<Operation>> = self
            .by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        ops.sort_by(|a, b| a.name.cmp(&b.name));
        ops
    }

    /// The runs that operations still follow and that have not been
    /// cancelled, each once.
    pub fn active_runs(&self) -> Vec<Arc<Run>> {
        let mut runs: Vec<Arc<Run>> = Vec::new();
        for op in self.list().into_iter().filter(|op| !op.is_done()) {
            let run = op.run();
            if !run.is_cancelled() && !runs.iter().any(|r| Arc::ptr_eq(r, &run)) {
                runs.push(run);
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn caller(uid: u32) -> Caller {
        Caller {
            uid: Some(uid),
            name: None,
            trusted: false,
        }
    }

    #[tokio::test]
    async fn identical_requests_follow_one_run_with_their_own_names() {
        let r = Arc::new(Registry::default());
        let d = Digest::of_bytes(b"action");
        let (a, run_a) = r.submit(caller(1), d, Default::default(), true);
        let (b, run_b) = r.submit(caller(2), d, Default::default(), true);
        let run = run_a.expect("the first request starts a run");
        assert!(run_b.is_none(), "the second follows it");
        assert_ne!(a.name, b.name);
        assert!(Arc::ptr_eq(&a.run(), &b.run()));
        assert!(a.is_submitter() && !b.is_submitter());
        assert_eq!(run.followers().len(), 2);
        r.run_finished(&run);
        let (_, run_c) = r.submit(caller(1), d, Default::default(), true);
        assert!(run_c.is_some(), "a finished run is not joined");
    }

    #[tokio::test]
    async fn do_not_cache_requests_are_never_joined() {
        let r = Arc::new(Registry::default());
        let d = Digest::of_bytes(b"action");
        let (_, first) = r.submit(caller(1), d, Default::default(), false);
        let (_, second) = r.submit(caller(1), d, Default::default(), false);
        let (_, third) = r.submit(caller(1), d, Default::default(), true);
        assert!(first.is_some() && second.is_some() && third.is_some());
        assert!(!Arc::ptr_eq(&first.unwrap(), &second.unwrap()));
    }

    #[tokio::test]
    async fn a_detached_follower_leaves_the_run_to_the_others() {
        let r = Arc::new(Registry::default());
        let d = Digest::of_bytes(b"action");
        let (a, run) = r.submit(caller(1), d, Default::default(), true);
        let (b, _) = r.submit(caller(2), d, Default::default(), true);
        assert_eq!(r.detach(&b, Default::default()), 1);
        assert!(b.is_done() && !a.is_done());
        assert_eq!(run.unwrap().followers().len(), 1);
        assert_eq!(r.detach(&a, Default::default()), 0);
    }

    #[tokio::test]
    async fn watching_is_counted_until_the_guard_drops() {
        let r = Arc::new(Registry::default());
        let (op, _) = r.submit(caller(1), Digest::of_bytes(b"x"), Default::default(), true);
        assert!(op.unwatched_for().is_some());
        let (mut rx, guard) = op.watch();
        assert!(op.unwatched_for().is_none());
        op.set_stage(execution_stage::Value::Queued);
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().stage, execution_stage::Value::Queued);
        drop(guard);
        assert!(op.unwatched_for().is_some());
        op.complete(reapi::ExecuteResponse {
            message: "first".into(),
            ..Default::default()
        });
        op.complete(reapi::ExecuteResponse::default());
        let proto = op.to_proto(&op.state());
        assert!(proto.done);
        let Some(longrunning::operation::Result::Response(any)) = proto.result else {
            panic!("no response")
        };
        let resp = reapi::ExecuteResponse::decode(any.value.as_slice()).unwrap();
        assert_eq!(resp.message, "first");
    }
}
