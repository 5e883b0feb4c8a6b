//! google.longrunning.Operations over the execution operations.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::execution::{find_visible, visible};
use super::{RequestError, ServiceError, caller};
use crate::execution::executor::Executor;
use crate::execution::operation::Operation;
use crate::proto::google::longrunning::{self, operations_server::Operations};

/// How long WaitOperation waits when the client sets no timeout.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

pub struct OperationsService {
    executor: Arc<Executor>,
}

impl OperationsService {
    pub fn new(executor: Arc<Executor>) -> Self {
        OperationsService { executor }
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        req: Request<longrunning::ListOperationsRequest>,
    ) -> Result<Response<longrunning::ListOperationsResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let skip: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse().map_err(|_| {
                RequestError::Invalid(format!(
                    "page_token {:?} was not issued here",
                    req.page_token
                ))
            })?
        };
        let page = match req.page_size {
            n if n > 0 => n as usize,
            _ => 100,
        };
        let ops: Vec<Arc<Operation>> = self
            .executor
            .registry
            .list()
            .into_iter()
            .filter(|op| visible(op, &caller))
            .collect();
        let next = skip + page;
        Ok(Response::new(longrunning::ListOperationsResponse {
            operations: ops
                .iter()
                .skip(skip)
                .take(page)
                .map(|op| op.to_proto(&op.state()))
                .collect(),
            next_page_token: if next < ops.len() {
                next.to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn get_operation(
        &self,
        req: Request<longrunning::GetOperationRequest>,
    ) -> Result<Response<longrunning::Operation>, Status> {
        let caller = caller(&req)?;
        let op = find_visible(&self.executor.registry, &req.get_ref().name, &caller)?;
        op.touch();
        Ok(Response::new(op.to_proto(&op.state())))
    }

    async fn delete_operation(
        &self,
        req: Request<longrunning::DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&req)?;
        let op = find_visible(&self.executor.registry, &req.get_ref().name, &caller)?;
        if !op.is_done() {
            return Err(ServiceError::StillRunning(op.name.clone()).into());
        }
        self.executor.registry.remove(&op.name);
        Ok(Response::new(()))
    }

    /// A cancel by the client that submitted the run, or by a trusted
    /// user, stops the run. A cancel by a client that only followed an
    /// identical request ends that client's operation; the run goes on
    /// for the others, unless nobody is left.
    async fn cancel_operation(
        &self,
        req: Request<longrunning::CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&req)?;
        let op = find_visible(&self.executor.registry, &req.get_ref().name, &caller)?;
        self.executor.cancel(&op, &caller);
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        req: Request<longrunning::WaitOperationRequest>,
    ) -> Result<Response<longrunning::Operation>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let op = find_visible(&self.executor.registry, &req.name, &caller)?;
        let wait = req
            .timeout
            .map(|t| Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32))
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_WAIT);
        let (mut state, watching) = op.watch();
        let _ = tokio::time::timeout(wait, state.wait_for(|s| s.response.is_some())).await;
        drop(watching);
        Ok(Response::new(op.to_proto(&op.state())))
    }
}
