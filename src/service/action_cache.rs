//! ActionCache: GetActionResult and UpdateActionResult, with the caller's
//! trust deciding which view a write goes to.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Context, RequestError, blocking, caller, check_digest_function};
use crate::action_cache::Inline;
use crate::digest::Digest;
use crate::proto::reapi::{self, action_cache_server::ActionCache};

pub struct ActionCacheService {
    ctx: Arc<Context>,
}

impl ActionCacheService {
    pub fn new(ctx: Arc<Context>) -> Self {
        ActionCacheService { ctx }
    }
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        req: Request<reapi::GetActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let instance = self.ctx.check_instance(&req.instance_name)?;
        check_digest_function(req.digest_function)?;
        let action = Digest::from_required(req.action_digest.as_ref())
            .map_err(|e| RequestError::Invalid(format!("action_digest: {e}")))?;
        let inline = Inline {
            stdout: req.inline_stdout,
            stderr: req.inline_stderr,
            files: &req.inline_output_files,
        };
        // A hit that needs no disk I/O is answered on this thread, without
        // a hop through the blocking pool; anything else takes the full
        // lookup (local, then the upstream's).
        let partition = instance.partition();
        if let Some(hit) = self
            .ctx
            .action_cache
            .get_cached(partition, &action, caller.uid, &inline)
        {
            let kind = crate::lookups::Kind::Client;
            self.ctx
                .action_cache
                .lookups()
                .record(&action, caller.uid, true, kind);
            return Ok(Response::new(hit));
        }
        let found = crate::upstream::lookup(
            &self.ctx.action_cache,
            self.ctx.upstream.as_ref(),
            partition,
            action,
            caller.uid,
            inline,
            crate::lookups::Kind::Client,
        )
        .await?;
        found
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no action result for {action}")))
    }

    async fn update_action_result(
        &self,
        req: Request<reapi::UpdateActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let partition = self.ctx.check_instance(&req.instance_name)?.partition();
        check_digest_function(req.digest_function)?;
        let action = Digest::from_required(req.action_digest.as_ref())
            .map_err(|e| RequestError::Invalid(format!("action_digest: {e}")))?;
        let result = req
            .action_result
            .ok_or_else(|| RequestError::Invalid("action_result is missing".into()))?;
        let scope = self.ctx.policy.action_cache_scope(&caller)?;
        let ac = Arc::clone(&self.ctx.action_cache);
        let stored = blocking(move || Ok(ac.put(partition, &action, result, scope)?)).await?;
        tracing::debug!(%action, ?scope, %caller, "action result stored");
        Ok(Response::new(stored))
    }
}
