//! Execution: Execute and WaitExecution, streaming the operation's stages
//! until it completes. The work is done by `execution::executor`.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Context, RequestError, ServiceError, caller, check_digest_function};
use crate::digest::Digest;
use crate::execution::executor::Executor;
use crate::execution::operation::{Operation, Registry};
use crate::proto::google::longrunning;
use crate::proto::reapi::{self, execution_server::Execution};
use crate::trust::Caller;

pub struct ExecutionService {
    ctx: Arc<Context>,
    executor: Arc<Executor>,
}

impl ExecutionService {
    pub fn new(ctx: Arc<Context>, executor: Arc<Executor>) -> Self {
        ExecutionService { ctx, executor }
    }
}

type OperationStream = Pin<Box<dyn Stream<Item = Result<longrunning::Operation, Status>> + Send>>;

/// Streams the operation's state each time it changes, ending with the
/// completed operation. The operation counts as watched while the stream
/// is open.
pub fn operation_stream(op: Arc<Operation>) -> OperationStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let (mut state, _watching) = op.watch();
        loop {
            let now = state.borrow_and_update().clone();
            let done = now.response.is_some();
            if tx.send(Ok(op.to_proto(&now))).await.is_err() || done {
                return;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                // The client went away: stop counting it as a watcher.
                _ = tx.closed() => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Whether a caller may see an operation: trusted callers see all, others
/// only their own. An anonymous caller's operations are nobody's own: every
/// anonymous caller would otherwise see every other's.
pub fn visible(op: &Operation, caller: &Caller) -> bool {
    caller.trusted || (caller.uid.is_some() && op.owner() == caller.uid)
}

/// The operation named `name`, if it exists and the caller may see it;
/// NOT_FOUND otherwise (an operation of another user is not revealed).
#[allow(clippy::result_large_err)]
pub fn find_visible(
    registry: &Registry,
    name: &str,
    caller: &Caller,
) -> Result<Arc<Operation>, Status> {
    match registry.get(name) {
        Some(op) if visible(&op, caller) => Ok(op),
        _ => Err(ServiceError::NoOperation(name.to_owned()).into()),
    }
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    async fn execute(
        &self,
        req: Request<reapi::ExecuteRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        self.ctx.check_instance(&req.instance_name)?;
        check_digest_function(req.digest_function)?;
        let action = Digest::from_required(req.action_digest.as_ref())
            .map_err(|e| RequestError::Invalid(format!("action_digest: {e}")))?;
        let op = self.executor.execute(caller, action, req).await;
        Ok(Response::new(operation_stream(op)))
    }

    async fn wait_execution(
        &self,
        req: Request<reapi::WaitExecutionRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let caller = caller(&req)?;
        let name = req.into_inner().name;
        let op = find_visible(&self.executor.registry, &name, &caller)?;
        Ok(Response::new(operation_stream(op)))
    }
}
