//! The upstream's health: up, or down since a failure with a backoff and a
//! time for the next attempt. A pure state machine (time is passed in), so
//! that its rules are tested without a server:
//!
//! - a failure that means "unreachable" marks it down for `retry-min`;
//! - while down and before the retry time, calls are refused at once;
//! - a failure of the attempt at the retry time doubles the backoff, up to
//!   `retry-max`; failures of calls already under way keep it;
//! - any answer brings it back up.
//!
//! [`Upstream`](super::Upstream) holds one behind a mutex, logs the
//! transitions and runs the probe that makes the attempts.

use std::time::{Duration, Instant};

/// Up (`down` is `None`), or down.
#[derive(Debug)]
pub(super) struct Health {
    down: Option<Down>,
    retry_min: Duration,
    retry_max: Duration,
}

/// Since when the upstream is down, why, and when it is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Down {
    pub(super) since: Instant,
    pub(super) error: String,
    pub(super) backoff: Duration,
    pub(super) retry_at: Instant,
}

/// What a failure did to the state, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// It was up and is now down for `backoff`.
    Marked { backoff: Duration },
    /// The retry was due and failed again: down for the longer `backoff`.
    Lengthened { backoff: Duration },
    /// A call that started before it went down failed too: only the error
    /// is updated.
    Unchanged,
}

impl Health {
    pub(super) fn new(retry_min: Duration, retry_max: Duration) -> Health {
        Health {
            down: None,
            retry_min,
            retry_max,
        }
    }

    /// `Some` while down (whether or not the retry is due).
    pub(super) fn down(&self) -> Option<&Down> {
        self.down.as_ref()
    }

    /// Down, and no attempt due at `now`: calls are refused.
    pub(super) fn refuses(&self, now: Instant) -> Option<&Down> {
        self.down.as_ref().filter(|d| now < d.retry_at)
    }

    /// An answer came: up again. Returns the state it was in, if down.
    pub(super) fn succeeded(&mut self) -> Option<Down> {
        self.down.take()
    }

    /// A call failed the way an unreachable server fails. `jitter`, from
    /// zero to one, stretches the wait by up to a quarter, so that many
    /// daemons do not retry in step.
    pub(super) fn failed(&mut self, now: Instant, error: String, jitter: f64) -> Failure {
        let backoff = match &self.down {
            Some(d) if now >= d.retry_at => (d.backoff * 2).min(self.retry_max),
            Some(d) => d.backoff,
            None => self.retry_min,
        };
        let retry_at = now + backoff + backoff.mul_f64(jitter.clamp(0.0, 1.0) * 0.25);
        match &mut self.down {
            Some(d) => {
                let due = now >= d.retry_at;
                if due {
                    d.backoff = backoff;
                    d.retry_at = retry_at;
                }
                d.error = error;
                if due {
                    Failure::Lengthened { backoff }
                } else {
                    Failure::Unchanged
                }
            }
            None => {
                self.down = Some(Down {
                    since: now,
                    error,
                    backoff,
                    retry_at,
                });
                Failure::Marked { backoff }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn a_failure_refuses_calls_until_the_retry() {
        let t0 = Instant::now();
        let mut h = Health::new(MIN, MAX);
        assert!(h.refuses(t0).is_none());
        assert_eq!(
            h.failed(t0, "Unavailable".into(), 0.0),
            Failure::Marked { backoff: MIN }
        );
        let down = h.refuses(t0 + MIN / 2).expect("refused before the retry");
        assert_eq!(down.error, "Unavailable");
        assert_eq!(down.since, t0);
        assert!(h.refuses(t0 + MIN).is_none(), "the retry is let through");
        assert!(h.down().is_some(), "still down until an answer");
    }

    #[test]
    fn failed_retries_double_the_backoff_up_to_the_maximum() {
        let mut now = Instant::now();
        let mut h = Health::new(MIN, MAX);
        h.failed(now, "x".into(), 0.0);
        let mut seen = Vec::new();
        for _ in 0..5 {
            now = h.down().unwrap().retry_at;
            match h.failed(now, "x".into(), 0.0) {
                Failure::Lengthened { backoff } => seen.push(backoff.as_secs()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, [2, 4, 5, 5, 5]);
    }

    #[test]
    fn failures_of_calls_under_way_keep_the_backoff_and_take_the_error() {
        let t0 = Instant::now();
        let mut h = Health::new(MIN, MAX);
        h.failed(t0, "first".into(), 0.0);
        let retry_at = h.down().unwrap().retry_at;
        assert_eq!(
            h.failed(t0 + MIN / 4, "second".into(), 0.0),
            Failure::Unchanged
        );
        let d = h.down().unwrap();
        assert_eq!(
            (d.retry_at, d.backoff, d.error.as_str()),
            (retry_at, MIN, "second")
        );
    }

    #[test]
    fn jitter_stretches_by_at_most_a_quarter() {
        let t0 = Instant::now();
        let mut h = Health::new(Duration::from_secs(4), MAX);
        h.failed(t0, "x".into(), 7.0);
        assert_eq!(h.down().unwrap().retry_at, t0 + Duration::from_secs(5));
    }

    #[test]
    fn an_answer_brings_it_back() {
        let t0 = Instant::now();
        let mut h = Health::new(MIN, MAX);
        assert!(h.succeeded().is_none());
        h.failed(t0, "x".into(), 0.0);
        assert_eq!(h.succeeded().map(|d| d.since), Some(t0));
        assert!(h.down().is_none());
        assert_eq!(
            h.failed(t0 + MAX, "x".into(), 0.0),
            Failure::Marked { backoff: MIN },
            "the backoff starts over"
        );
    }
}
