//! Admission of actions: at most `max` run at once, and the ones that wait
//! are served round-robin between users, so that one user's 5,000 queued
//! actions do not starve another user's ten.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Whose queue an action waits in: a uid, or `None` for anonymous callers.
pub type UserKey = Option<u32>;

pub struct Scheduler {
    state: Mutex<State>,
}

struct State {
    max: usize,
    running: usize,
    /// Waiting actions, per user.
    queues: HashMap<UserKey, VecDeque<oneshot::Sender<Permit>>>,
    /// Users with waiting actions, in the order they get their next turn.
    turns: VecDeque<UserKey>,
}

/// The right to run one action. Dropping it lets the next one in.
pub struct Permit {
    scheduler: Option<Arc<Scheduler>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(s) = self.scheduler.take() {
            let mut state = s.lock();
            state.running -= 1;
            Scheduler::dispatch(&s, &mut state);
        }
    }
}

/// What `status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub max: usize,
    pub running: usize,
    pub queued: Vec<(UserKey, usize)>,
}

impl Scheduler {
    pub fn new(max: usize) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            state: Mutex::new(State {
                max: max.max(1),
                running: 0,
                queues: HashMap::new(),
                turns: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a turn. Cancel-safe: dropping the future gives up the place
    /// in the queue (and a permit handed over meanwhile is released).
    pub async fn acquire(self: &Arc<Self>, user: UserKey) -> Permit {
        let rx = {
            let mut state = self.lock();
            if state.running < state.max && state.turns.is_empty() {
                state.running += 1;
                return Permit {
                    scheduler: Some(Arc::clone(self)),
                };
            }
            let (tx, rx) = oneshot::channel();
            let queue = state.queues.entry(user).or_default();
            if queue.is_empty() {
                state.turns.push_back(user);
            }
            state
                .queues
                .get_mut(&user)
                .expect("just inserted")
                .push_back(tx);
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The scheduler never drops a waiter's sender without sending.
            Err(_) => unreachable!("scheduler dropped a waiting action"),
        }
    }

    /// Hands out permits while there is room, one user at a time.
    fn dispatch(this: &Arc<Self>, state: &mut State) {
        while state.running < state.max {
            let Some(user) = state.turns.pop_front() else {
                return;
            };
            let queue = state
                .queues
                .get_mut(&user)
                .expect("users in turns have a queue");
            let waiter = queue.pop_front().expect("queues in turns are not empty");
            if queue.is_empty() {
                state.queues.remove(&user);
            } else {
                state.turns.push_back(user);
            }
            state.running += 1;
            let permit = Permit {
                scheduler: Some(Arc::clone(this)),
            };
            if let Err(mut unwanted) = waiter.send(permit) {
                // The waiter gave up. Release its permit here, without
                // re-entering dispatch through Drop while we hold the lock.
                unwanted.scheduler = None;
                state.running -= 1;
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        let mut queued: Vec<(UserKey, usize)> =
            state.queues.iter().map(|(u, q)| (*u, q.len())).collect();
        queued.sort();
        Snapshot {
            max: state.max,
            running: state.running,
            queued,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_at_most_max_at_once() {
        let s = Scheduler::new(2);
        let a = s.acquire(Some(1)).await;
        let _b = s.acquire(Some(1)).await;
        let waiting = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.acquire(Some(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.snapshot().running, 2);
        assert_eq!(s.snapshot().queued, vec![(Some(1), 1)]);
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.snapshot().running, 2);
    }

    #[tokio::test]
    async fn a_small_user_is_not_starved_by_a_big_one() {
        let s = Scheduler::new(1);
        let first = s.acquire(Some(1)).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // User 1 queues 50 actions, then user 2 queues 3.
        for (user, n) in [(1u32, 50), (2u32, 3)] {
            for i in 0..n {
                let s = Arc::clone(&s);
                let order = Arc::clone(&order);
                tasks.push(tokio::spawn(async move {
                    let _p = s.acquire(Some(user)).await;
                    order.lock().unwrap().push((user, i));
                    tokio::task::yield_now().await;
                }));
                tokio::task::yield_now().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let last_of_user2 = order.iter().rposition(|(u, _)| *u == 2).unwrap();
        assert!(last_of_user2 < 8, "user 2 waited behind user 1: {order:?}");
    }

    #[tokio::test]
    async fn abandoned_waiters_do_not_leak_permits() {
        let s = Scheduler::new(1);
        let p = s.acquire(None).await;
        let waiter = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.acquire(None).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiter.abort();
        let _ = waiter.await;
        drop(p);
        assert_eq!(s.snapshot().running, 0);
        let _again = tokio::time::timeout(Duration::from_secs(1), s.acquire(None))
            .await
            .unwrap();
    }
}
