//! Admission of actions: at most `max` run at once, and the ones that wait
//! are served round-robin between users, so that one user's 5,000 queued
//! actions do not starve another user's ten. Optional per-user caps bound
//! how many slots one user holds at once and how many of their actions may
//! wait.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Whose queue an action waits in: a uid, or `None` for anonymous callers.
pub type UserKey = Option<u32>;

/// Per-user caps; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// The most slots one user holds at once.
    pub running_per_user: usize,
    /// The most actions of one user waiting at once.
    pub queued_per_user: usize,
}

/// A user already has as many actions waiting as [`Caps`] allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{queued} actions of this user are already waiting, the most execution.max-queued-per-user allows"
)]
pub struct QueueFull {
    pub queued: usize,
}

pub struct Scheduler {
    state: Mutex<State>,
}

struct State {
    max: usize,
    caps: Caps,
    running: usize,
    /// Running actions, per user (only users with some).
    running_by: HashMap<UserKey, usize>,
    /// Waiting actions, per user.
    queues: HashMap<UserKey, VecDeque<oneshot::Sender<Permit>>>,
    /// Users with waiting actions, in the order they get their next turn.
    turns: VecDeque<UserKey>,
}

/// The right to run one action. Dropping it lets the next one in.
pub struct Permit {
    scheduler: Option<Arc<Scheduler>>,
    user: UserKey,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(s) = self.scheduler.take() {
            let mut state = s.lock();
            state.release(self.user);
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

impl State {
    fn at_cap(&self, user: UserKey) -> bool {
        self.caps.running_per_user > 0
            && self.running_by.get(&user).copied().unwrap_or(0) >= self.caps.running_per_user
    }

    fn take(&mut self, user: UserKey) {
        self.running += 1;
        *self.running_by.entry(user).or_default() += 1;
    }

    fn release(&mut self, user: UserKey) {
        self.running -= 1;
        if let Some(n) = self.running_by.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                self.running_by.remove(&user);
            }
        }
    }
}

impl Scheduler {
    pub fn new(max: usize, caps: Caps) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            state: Mutex::new(State {
                max: max.max(1),
                caps,
                running: 0,
                running_by: HashMap::new(),
                queues: HashMap::new(),
                turns: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn permit(self: &Arc<Self>, user: UserKey) -> Permit {
        Permit {
            scheduler: Some(Arc::clone(self)),
            user,
        }
    }

    /// Waits for a turn, or refuses at once when the user already has as
    /// many actions waiting as the caps allow. Cancel-safe: dropping the
    /// future gives up the place in the queue (and a permit handed over
    /// meanwhile is released).
    pub async fn acquire(self: &Arc<Self>, user: UserKey) -> Result<Permit, QueueFull> {
        let rx = {
            let mut state = self.lock();
            if state.running < state.max && state.turns.is_empty() && !state.at_cap(user) {
                state.take(user);
                return Ok(self.permit(user));
            }
            let cap = state.caps.queued_per_user;
            let queue = state.queues.entry(user).or_default();
            if cap > 0 && queue.len() >= cap {
                return Err(QueueFull {
                    queued: queue.len(),
                });
            }
            let (tx, rx) = oneshot::channel();
            let first = queue.is_empty();
            queue.push_back(tx);
            if first {
                state.turns.push_back(user);
            }
            // A slot may be free while every user ahead is at their cap.
            Scheduler::dispatch(self, &mut state);
            rx
        };
        match rx.await {
            Ok(permit) => Ok(permit),
            // The scheduler never drops a waiter's sender without sending.
            Err(_) => unreachable!("scheduler dropped a waiting action"),
        }
    }

    /// Hands out permits while there is room, one user at a time, skipping
    /// users who hold as many slots as their cap.
    fn dispatch(this: &Arc<Self>, state: &mut State) {
        let mut skipped = 0;
        while state.running < state.max && skipped < state.turns.len() {
            let Some(user) = state.turns.pop_front() else {
                return;
            };
            if state.at_cap(user) {
                state.turns.push_back(user);
                skipped += 1;
                continue;
            }
            skipped = 0;
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
            state.take(user);
            if let Err(mut unwanted) = waiter.send(this.permit(user)) {
                // The waiter gave up. Release its permit here, without
                // re-entering dispatch through Drop while we hold the lock.
                unwanted.scheduler = None;
                state.release(user);
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
        let s = Scheduler::new(2, Caps::default());
        let a = s.acquire(Some(1)).await.unwrap();
        let _b = s.acquire(Some(1)).await.unwrap();
        let waiting = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.acquire(Some(1)).await.unwrap() }
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
        let s = Scheduler::new(1, Caps::default());
        let first = s.acquire(Some(1)).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // User 1 queues 50 actions, then user 2 queues 3.
        for (user, n) in [(1u32, 50), (2u32, 3)] {
            for i in 0..n {
                let s = Arc::clone(&s);
                let order = Arc::clone(&order);
                tasks.push(tokio::spawn(async move {
                    let _p = s.acquire(Some(user)).await.unwrap();
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
        let s = Scheduler::new(1, Caps::default());
        let p = s.acquire(None).await.unwrap();
        let waiter = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.acquire(None).await.unwrap() }
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

    #[tokio::test]
    async fn a_user_at_the_running_cap_lets_others_pass() {
        let caps = Caps {
            running_per_user: 1,
            queued_per_user: 0,
        };
        let s = Scheduler::new(2, caps);
        let _a1 = s.acquire(Some(1)).await.unwrap();
        // User 1's second action waits although a slot is free...
        let a2 = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.acquire(Some(1)).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.snapshot().running, 1);
        assert!(!a2.is_finished());
        // ...and user 2 takes it at once.
        let _b = tokio::time::timeout(Duration::from_secs(1), s.acquire(Some(2)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.snapshot().running, 2);
        drop(_a1);
        let _a2 = tokio::time::timeout(Duration::from_secs(1), a2)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_is_refused() {
        let caps = Caps {
            running_per_user: 0,
            queued_per_user: 2,
        };
        let s = Scheduler::new(1, caps);
        let _p = s.acquire(Some(1)).await.unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let s = Arc::clone(&s);
                tokio::spawn(async move { s.acquire(Some(1)).await.map(drop) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            s.acquire(Some(1)).await.err(),
            Some(QueueFull { queued: 2 })
        );
        // Another user still gets in line.
        let other = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.acquire(Some(2)).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!other.is_finished());
        for w in waiters {
            w.abort();
        }
        other.abort();
    }
}
