//! Long-running operations: one per executing action, shared by every
//! client that asked for the same action while it ran, and kept for a while
//! after it completes so that WaitExecution and GetOperation can find it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prost::Message;
use tokio::sync::{Notify, watch};

use crate::digest::Digest;
use crate::proto::google::longrunning;
use crate::proto::reapi::{self, execution_stage};

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
    state: watch::Sender<State>,
    cancelled: AtomicBool,
    cancel: Notify,
    /// Every uid that submitted or joined it; they (and trusted callers)
    /// may see and cancel it.
    watchers: Mutex<Vec<Option<u32>>>,
}

impl Operation {
    fn new(action: Digest, owner: Option<u32>) -> Arc<Operation> {
        let (state, _) = watch::channel(State {
            stage: execution_stage::Value::CacheCheck,
            response: None,
        });
        Arc::new(Operation {
            name: format!("{OPERATION_PREFIX}{}", uuid::Uuid::new_v4()),
            action,
            state,
            cancelled: AtomicBool::new(false),
            cancel: Notify::new(),
            watchers: Mutex::new(vec![owner]),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    pub fn set_stage(&self, stage: execution_stage::Value) {
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

    /// Asks the running action to stop.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
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

    pub fn add_watcher(&self, uid: Option<u32>) {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if !w.contains(&uid) {
            w.push(uid);
        }
    }

    /// Every uid that submitted or joined it.
    pub fn watchers(&self) -> Vec<Option<u32>> {
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `uid` submitted or joined this operation.
    pub fn is_watcher(&self, uid: Option<u32>) -> bool {
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&uid)
    }

    /// The operation as the longrunning API shows it.
    pub fn to_proto(&self, state: &State) -> longrunning::Operation {
        let metadata = reapi::ExecuteOperationMetadata {
            stage: state.stage as i32,
            action_digest: Some(self.action.to_proto()),
            digest_function: reapi::digest_function::Value::Sha256 as i32,
            ..Default::default()
        };
        longrunning::Operation {
            name: self.name.clone(),
            metadata: Some(any(
                "build.bazel.remote.execution.v2.ExecuteOperationMetadata",
                &metadata,
            )),
            done: state.response.is_some(),
            result: state.response.as_ref().map(|r| {
                longrunning::operation::Result::Response(any(
                    "build.bazel.remote.execution.v2.ExecuteResponse",
                    r,
                ))
            }),
        }
    }
}

/// Packs a message into `google.protobuf.Any`.
pub fn any(type_name: &str, msg: &impl Message) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: msg.encode_to_vec(),
    }
}

/// All operations, by name, and the running ones by action digest.
#[derive(Default)]
pub struct Registry {
    by_name: Mutex<HashMap<String, Arc<Operation>>>,
    running: Mutex<HashMap<Digest, Weak<Operation>>>,
}

impl Registry {
    /// The running operation for `action`, joined by `uid`, or a new one.
    /// Returns the operation and whether it is new (the caller must run it).
    pub fn join_or_create(&self, action: Digest, uid: Option<u32>) -> (Arc<Operation>, bool) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(op) = running.get(&action).and_then(Weak::upgrade)
            && !op.is_done()
            && !op.is_cancelled()
        {
            op.add_watcher(uid);
            return (op, false);
        }
        let op = Operation::new(action, uid);
        running.insert(action, Arc::downgrade(&op));
        self.by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(op.name.clone(), Arc::clone(&op));
        (op, true)
    }

    /// Called when an operation completes: it stops being joinable at
    /// once and disappears after the retention time.
    pub fn finished(self: &Arc<Self>, op: &Arc<Operation>) {
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if running
                .get(&op.action)
                .and_then(Weak::upgrade)
                .is_some_and(|r| Arc::ptr_eq(&r, op))
            {
                running.remove(&op.action);
            }
        }
        let registry = Arc::downgrade(self);
        let name = op.name.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETENTION).await;
            if let Some(r) = registry.upgrade() {
                r.remove(&name);
            }
        });
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identical_running_actions_are_joined() {
        let r = Arc::new(Registry::default());
        let d = Digest::of_bytes(b"action");
        let (a, new_a) = r.join_or_create(d, Some(1));
        let (b, new_b) = r.join_or_create(d, Some(2));
        assert!(new_a && !new_b);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.is_watcher(Some(2)) && !a.is_watcher(Some(3)));
        a.complete(reapi::ExecuteResponse::default());
        r.finished(&a);
        let (c, new_c) = r.join_or_create(d, Some(1));
        assert!(new_c && !Arc::ptr_eq(&a, &c));
        assert!(
            r.get(&a.name).is_some(),
            "completed operations stay visible for a while"
        );
    }

    #[tokio::test]
    async fn subscribers_see_stages_and_completion() {
        let r = Arc::new(Registry::default());
        let (op, _) = r.join_or_create(Digest::of_bytes(b"x"), None);
        let mut rx = op.subscribe();
        op.set_stage(execution_stage::Value::Queued);
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().stage, execution_stage::Value::Queued);
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
