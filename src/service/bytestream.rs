//! ByteStream: streaming reads and resumable writes of single blobs.
//!
//! A write streams into a `BlobWriter` (a temporary file hashed as it
//! grows). If the client goes away before `finish_write`, the writer is kept
//! for a while under its resource name so that the client can ask
//! QueryWriteStatus and resume at the committed offset; nothing becomes
//! visible in the store until the whole blob has arrived and matches its
//! digest.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Context, RequestError, blocking, caller};
use crate::cas::BlobWriter;
use crate::execution::executor::Executor;
use crate::execution::logs;
use crate::proto::bytestream::{self, byte_stream_server::ByteStream};
use crate::resource::{ReadResource, WriteResource};

/// Bytes per ReadResponse.
const READ_CHUNK: usize = 256 << 10;
/// How long an interrupted upload may wait to be resumed.
const PARTIAL_UPLOAD_TTL: Duration = Duration::from_secs(15 * 60);

pub struct ByteStreamService {
    ctx: Arc<Context>,
    partial: Arc<PartialUploads>,
    /// For the output of running actions (`execution::logs`).
    executor: Option<Arc<Executor>>,
}

/// Interrupted uploads, by resource name.
#[derive(Default)]
struct PartialUploads {
    map: Mutex<HashMap<String, (BlobWriter, Instant)>>,
}

impl PartialUploads {
    fn take(&self, key: &str) -> Option<BlobWriter> {
        self.lock().remove(key).map(|(w, _)| w)
    }

    fn keep(&self, key: String, writer: BlobWriter) {
        self.lock().insert(key, (writer, Instant::now()));
    }

    fn committed(&self, key: &str) -> Option<u64> {
        self.lock().get(key).map(|(w, _)| w.written())
    }

    fn expire(&self) {
        self.lock()
            .retain(|_, (_, at)| at.elapsed() < PARTIAL_UPLOAD_TTL);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (BlobWriter, Instant)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ByteStreamService {
    pub fn new(ctx: Arc<Context>) -> Self {
        let partial = Arc::new(PartialUploads::default());
        let weak = Arc::downgrade(&partial);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(p) => p.expire(),
                    None => return,
                }
            }
        });
        ByteStreamService {
            ctx,
            partial,
            executor: None,
        }
    }

    /// Serves the output streams of the executor's running actions too.
    pub fn with_executor(mut self, executor: Option<Arc<Executor>>) -> Self {
        self.executor = executor;
        self
    }

    /// A Read of `OPERATION/stdout` or `/stderr`: only the operation's
    /// owner (or a trusted caller), only while its command runs. Anything
    /// else is NOT_FOUND, saying nothing of other users' operations.
    fn read_log(
        &self,
        req: &Request<bytestream::ReadRequest>,
        operation: &str,
        which: logs::Which,
    ) -> Result<ReadStream, Status> {
        let caller = caller(req)?;
        let r = req.get_ref();
        if r.read_offset < 0 || r.read_limit < 0 {
            return Err(RequestError::OutOfRange(
                "read_offset and read_limit must not be negative".into(),
            )
            .into());
        }
        let not_running = || {
            Status::not_found(format!(
                "{operation} is not running: its output is in its ActionResult"
            ))
        };
        let op = self
            .executor
            .as_ref()
            .and_then(|ex| ex.registry.get(operation))
            .ok_or_else(not_running)?;
        let own = caller.uid.is_some() && caller.uid == op.owner();
        let run = op.run();
        if !(own || caller.trusted) || run.submitter != op.owner() {
            return Err(not_running());
        }
        let log = run.live_log().ok_or_else(not_running)?;
        Ok(Box::pin(logs::follow(
            log,
            which,
            r.read_offset as u64,
            r.read_limit as u64,
        )))
    }

    /// Feeds the write stream into `writer`. Returns the writer back if the
    /// stream broke off, so the upload can be resumed.
    async fn receive(
        &self,
        first: bytestream::WriteRequest,
        stream: &mut Streaming<bytestream::WriteRequest>,
        writer: &mut BlobWriter,
    ) -> Result<bool, Status> {
        let name = first.resource_name.clone();
        let mut msg = first;
        loop {
            if !msg.resource_name.is_empty() && msg.resource_name != name {
                return Err(RequestError::Invalid(format!(
                    "resource_name changed during the write from {name:?} to {:?}",
                    msg.resource_name
                ))
                .into());
            }
            let written = writer.written() as i64;
            if msg.write_offset != written {
                if msg.write_offset == 0 {
                    tokio::task::block_in_place(|| writer.restart())?;
                } else {
                    return Err(RequestError::Invalid(format!(
                        "write_offset {} does not match the {written} bytes committed for {name:?}",
                        msg.write_offset
                    ))
                    .into());
                }
            }
            if !msg.data.is_empty() {
                tokio::task::block_in_place(|| writer.write(&msg.data))?;
            }
            if msg.finish_write {
                return Ok(true);
            }
            match stream.message().await {
                Ok(Some(next)) => msg = next,
                // The client closed its side without finish_write, or went
                // away: keep what we have for QueryWriteStatus.
                Ok(None) | Err(_) => return Ok(false),
            }
        }
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<bytestream::ReadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(
        &self,
        req: Request<bytestream::ReadRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        if let Some((operation, which)) = logs::parse_name(&req.get_ref().resource_name) {
            let operation = operation.to_owned();
            return self.read_log(&req, &operation, which).map(Response::new);
        }
        let req = req.into_inner();
        let res = ReadResource::parse(&req.resource_name)?;
        self.ctx.check_instance(&res.instance)?;
        if req.read_offset < 0 {
            return Err(RequestError::OutOfRange(format!(
                "read_offset {} is negative",
                req.read_offset
            ))
            .into());
        }
        if req.read_limit < 0 {
            return Err(RequestError::Invalid(format!(
                "read_limit {} is negative",
                req.read_limit
            ))
            .into());
        }
        let offset = req.read_offset as u64;
        let size = res.digest.size();
        if offset > size {
            return Err(RequestError::OutOfRange(format!(
                "read_offset {offset} is past the end of blob {}",
                res.digest
            ))
            .into());
        }
        let end = match req.read_limit {
            0 => size,
            limit => size.min(offset.saturating_add(limit as u64)),
        };
        let store = Arc::clone(&self.ctx.store);
        let digest = res.digest;
        let open = || {
            let store = Arc::clone(&store);
            blocking(move || Ok(store.open_blob(&digest)?))
        };
        let mut blob = open().await?;
        // A blob the local store lacks is fetched whole (and verified)
        // from the upstream before any of it is served.
        if blob.is_none()
            && let Some(up) = self.ctx.read_through()
        {
            match up.fetch(&[digest]).await {
                Ok(absent) if absent.is_empty() => blob = open().await?,
                Ok(_) => {}
                Err(e) => tracing::debug!("upstream fetch of {digest} failed: {e}"),
            }
        }
        let blob =
            blob.ok_or_else(|| Status::not_found(format!("blob {digest} is not in the store")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut pos = offset;
            while pos < end {
                let len = READ_CHUNK.min((end - pos) as usize);
                let mut buf = vec![0u8; len];
                let item = match blob.read_at(&mut buf, pos) {
                    Ok(0) => Err(Status::data_loss(format!(
                        "blob {digest} ended early at {pos}"
                    ))),
                    Ok(n) => {
                        buf.truncate(n);
                        pos += n as u64;
                        Ok(bytestream::ReadResponse { data: buf.into() })
                    }
                    Err(e) => Err(Status::internal(format!("reading blob {digest}: {e}"))),
                };
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn write(
        &self,
        req: Request<Streaming<bytestream::WriteRequest>>,
    ) -> Result<Response<bytestream::WriteResponse>, Status> {
        let user = caller(&req)?.uid;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| RequestError::Invalid("the write stream has no messages".into()))?;
        let res = WriteResource::parse(&first.resource_name)?;
        self.ctx.check_instance(&res.instance)?;
        let digest = res.digest;
        let size = digest.size() as i64;
        let store = Arc::clone(&self.ctx.store);
        // A blob we already have needs no upload: answer at once with its
        // full size, which tells the client to stop sending.
        if blocking({
            let store = Arc::clone(&store);
            move || Ok(store.contains_as(&digest, user)?)
        })
        .await?
        {
            return Ok(Response::new(bytestream::WriteResponse {
                committed_size: size,
            }));
        }
        let key = first.resource_name.clone();
        let mut writer = match self.partial.take(&key) {
            Some(w) => w,
            None => blocking(move || Ok(store.writer_as(user, digest)?)).await?,
        };
        match self.receive(first, &mut stream, &mut writer).await {
            Ok(true) => {
                blocking(move || Ok(writer.commit()?)).await?;
                Ok(Response::new(bytestream::WriteResponse {
                    committed_size: size,
                }))
            }
            Ok(false) => {
                let written = writer.written();
                self.partial.keep(key.clone(), writer);
                Err(RequestError::Invalid(format!(
                    "the write stream for {key:?} ended after {written} bytes without finish_write; \
                     resume at that offset"
                ))
                .into())
            }
            // Bad data: the writer is dropped and its temporary file removed.
            Err(status) => Err(status),
        }
    }

    async fn query_write_status(
        &self,
        req: Request<bytestream::QueryWriteStatusRequest>,
    ) -> Result<Response<bytestream::QueryWriteStatusResponse>, Status> {
        let name = req.into_inner().resource_name;
        let res = WriteResource::parse(&name)?;
        self.ctx.check_instance(&res.instance)?;
        let store = Arc::clone(&self.ctx.store);
        let digest = res.digest;
        if blocking(move || Ok(store.contains(&digest)?)).await? {
            return Ok(Response::new(bytestream::QueryWriteStatusResponse {
                committed_size: digest.size() as i64,
                complete: true,
            }));
        }
        Ok(Response::new(bytestream::QueryWriteStatusResponse {
            committed_size: self.partial.committed(&name).unwrap_or(0) as i64,
            complete: false,
        }))
    }
}
