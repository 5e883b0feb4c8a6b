//! Where an action runs, and the upstream's part in it: routing
//! (`lre-remote`, an unsatisfiable platform, a long queue), forwarding a
//! routed action, and fetching the Action, Command and inputs the local
//! store lacks (read-through, through `cas::tiered`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::action::{self, Loaded};
use super::super::inputs::{self, InputError};
use super::super::placement::{PROP_ROOT, Placement};
use super::super::run::Run;
use super::{Error, Executor, blocking};
use crate::action_cache::{Inline, Partition};
use crate::digest::Digest;
use crate::proto::reapi;
use crate::sandbox::RootMode;
use crate::upstream::{self, execute::Forward, execute::Reason};

impl Executor {
    /// Whether the action goes to the upstream, and why.
    pub(super) fn route(
        &self,
        action: &reapi::Action,
        command: &reapi::Command,
        unsatisfiable: bool,
        root: RootMode,
        partition: Partition,
    ) -> Result<Option<Reason>, Error> {
        let requested = upstream::execute::requested(action::platform_of(action, command))
            .map_err(Error::Platform)?;
        // An upstream knows neither the input root mode nor our partitions
        // (its results would land in the default one): such actions run
        // here, or nowhere.
        if root == RootMode::Input || !partition.is_default() {
            if requested == Some(true) {
                return Err(Error::Platform(format!(
                    "platform property {}=true: actions with {PROP_ROOT}=input, or sent \
                     through an instance with root = \"input\", run only here",
                    upstream::execute::PROP_REMOTE
                )));
            }
            return Ok(None);
        }
        let Some(up) = &self.upstream else {
            return Ok(None);
        };
        let queued = self
            .scheduler
            .snapshot()
            .queued
            .iter()
            .map(|(_, n)| n)
            .sum();
        Ok(up.policy.route(requested, unsatisfiable, queued))
    }

    /// Runs a routed action on the upstream. `Ok(None)` when local
    /// execution takes over: the upstream is down or failed, and the
    /// action can run here (`runs_here`) and may (local-fallback, or it
    /// was routed only because the queue was long).
    pub(super) async fn forward(
        &self,
        run: &Run,
        reason: Reason,
        forward: Forward<'_>,
        runs_here: bool,
        inline: &Inline<'_>,
    ) -> Result<Option<reapi::ExecuteResponse>, Error> {
        let Some(up) = &self.upstream else {
            return Ok(None);
        };
        let fallback = runs_here && (up.policy.local_fallback || reason == Reason::QueueLong);
        let action = forward.action;
        let why = if fallback && up.is_down() {
            "is down".to_owned()
        } else {
            tracing::debug!(%action, "to the upstream: {reason}");
            match up.execute(run, forward).await {
                Ok(Some(mut response)) => {
                    if let Some(result) = &mut response.result {
                        self.action_cache.inline(result, inline)?;
                    }
                    return Ok(Some(response));
                }
                Ok(None) => return Err(Error::Cancelled),
                Err(e) if fallback && e.allows_local_fallback() => format!("failed ({e})"),
                Err(e) => return Err(e.into()),
            }
        };
        up.stats.remote_fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%action, "running locally: the upstream {} {why}", up.endpoint());
        Ok(None)
    }

    /// Loads the Action and Command, fetching them from the upstream
    /// (with read-through) when the local store lacks them.
    pub(in crate::execution) async fn load(&self, action: Digest) -> Result<Loaded, Error> {
        let mut rounds = 0;
        loop {
            let store = Arc::clone(&self.store);
            match blocking(move || action::load(&store, &action)).await? {
                Err(Error::Missing(missing)) if rounds < 2 && self.fetched(&missing).await => {
                    rounds += 1;
                }
                r => return r,
            }
        }
    }

    /// Resolves the input tree, fetching what the local store lacks from
    /// the upstream (with read-through): each round reveals the next
    /// level of directories.
    pub(in crate::execution) async fn resolve(
        &self,
        root: Digest,
    ) -> Result<inputs::InputTree, Error> {
        loop {
            let store = Arc::clone(&self.store);
            match blocking(move || inputs::resolve(&store, &root)).await? {
                Err(InputError::Missing(missing)) if self.fetched(&missing).await => {}
                r => return Ok(r?),
            }
        }
    }

    /// Fetches `missing` from the upstream; whether any of it came.
    async fn fetched(&self, missing: &[Digest]) -> bool {
        self.blobs.fetch(missing).await
    }
}

/// The placement an action keeps once its route is known. Bad values fail
/// here, wherever the action would run; so does a platform this worker
/// cannot satisfy, unless the action goes upstream (then the placement's
/// error only says it cannot fall back to running here).
pub(super) fn placement_for(
    route: Option<Reason>,
    placement: Result<Placement, Error>,
) -> Result<Result<Placement, Error>, Error> {
    match (route, placement) {
        (_, Err(e @ Error::Platform(_))) | (None, Err(e)) => Err(e),
        (_, p) => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsatisfiable() -> Result<Placement, Error> {
        Err(Error::Unsatisfiable("gpu=yes".into()))
    }

    #[test]
    fn an_unsatisfiable_platform_fails_unless_the_action_goes_upstream() {
        let e = placement_for(None, unsatisfiable()).unwrap_err();
        assert!(matches!(e, Error::Unsatisfiable(_)), "{e}");
        let kept = placement_for(Some(Reason::Unsatisfiable), unsatisfiable()).unwrap();
        assert!(matches!(kept, Err(Error::Unsatisfiable(_))));
    }

    #[test]
    fn a_bad_platform_value_fails_wherever_the_action_would_run() {
        for route in [None, Some(Reason::Requested), Some(Reason::QueueLong)] {
            let bad = Err(Error::Platform("lre-cpu-max=-1".into()));
            assert!(matches!(placement_for(route, bad), Err(Error::Platform(_))));
        }
    }

    #[test]
    fn a_placement_that_runs_here_is_kept_on_every_route() {
        let p = Placement {
            limits: Default::default(),
            host_network: false,
            root: RootMode::Host,
        };
        for route in [None, Some(Reason::Requested)] {
            assert_eq!(placement_for(route, Ok(p.clone())).unwrap().unwrap(), p);
        }
    }
}
