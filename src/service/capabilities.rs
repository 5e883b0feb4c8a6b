//! Capabilities: what this server supports, as seen by this caller.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Context, caller};
use crate::proto::build::bazel::semver::SemVer;
use crate::proto::reapi::{
    self, capabilities_server::Capabilities, digest_function, symlink_absolute_path_strategy,
};

/// The newest REAPI version whose every feature this server implements.
pub const HIGH_API_VERSION: (i32, i32) = (2, 1);

pub struct CapabilitiesService {
    ctx: Arc<Context>,
}

impl CapabilitiesService {
    pub fn new(ctx: Arc<Context>) -> Self {
        CapabilitiesService { ctx }
    }
}

fn semver(major: i32, minor: i32) -> SemVer {
    SemVer {
        major,
        minor,
        patch: 0,
        prerelease: String::new(),
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        req: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        let caller = caller(&req)?;
        self.ctx.check_instance(&req.get_ref().instance_name)?;
        let update_enabled = self.ctx.policy.action_cache_scope(&caller).is_ok();
        Ok(Response::new(reapi::ServerCapabilities {
            cache_capabilities: Some(reapi::CacheCapabilities {
                digest_functions: vec![digest_function::Value::Sha256 as i32],
                action_cache_update_capabilities: Some(reapi::ActionCacheUpdateCapabilities {
                    update_enabled,
                }),
                max_batch_total_size_bytes: self.ctx.max_batch as i64,
                symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Disallowed
                    as i32,
                ..Default::default()
            }),
            execution_capabilities: Some(reapi::ExecutionCapabilities {
                digest_function: digest_function::Value::Sha256 as i32,
                exec_enabled: self.ctx.exec_enabled,
                digest_functions: vec![digest_function::Value::Sha256 as i32],
                ..Default::default()
            }),
            deprecated_api_version: None,
            low_api_version: Some(semver(2, 0)),
            high_api_version: Some(semver(HIGH_API_VERSION.0, HIGH_API_VERSION.1)),
        }))
    }
}
