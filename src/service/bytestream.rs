//! ByteStream: streaming reads and resumable writes of single blobs.
//!
//! A write streams into an [`Upload`] (a temporary file hashed as it
//! grows, held to the caller's share of unfinished uploads; see
//! `uploads`). If the client goes away before `finish_write`, the upload is
//! kept for a while under its resource name, its descriptor closed, so that
//! the client can ask QueryWriteStatus and resume at the committed offset;
//! nothing becomes visible in the store until the whole blob has arrived
//! and matches its digest.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{Context, RequestError, blocking, caller};
use crate::cas::Blob;
use crate::digest::Digest;
use crate::execution::executor::Executor;
use crate::execution::logs;
use crate::proto::bytestream::{self, byte_stream_server::ByteStream};
use crate::quote::quote;
use crate::resource::{ReadResource, WriteResource};
use crate::uploads::{Upload, Uploads};

/// Bytes per ReadResponse.
const READ_CHUNK: usize = 256 << 10;

pub struct ByteStreamService {
    ctx: Arc<Context>,
    uploads: Arc<Uploads>,
    /// For the output of running actions (`execution::logs`).
    executor: Option<Arc<Executor>>,
}

impl ByteStreamService {
    pub fn new(ctx: Arc<Context>) -> Self {
        let uploads = Arc::clone(&ctx.uploads);
        let weak = Arc::downgrade(&uploads);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(u) => u.expire(),
                    None => return,
                }
            }
        });
        ByteStreamService {
            ctx,
            uploads,
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

    /// Feeds the write stream into `upload`. Returns whether the client
    /// finished it; false if the stream broke off (the upload can be
    /// resumed).
    async fn receive(
        &self,
        name: &str,
        first: bytestream::WriteRequest,
        stream: &mut Streaming<bytestream::WriteRequest>,
        upload: &mut Upload,
    ) -> Result<bool, Status> {
        let mut msg = first;
        loop {
            if !msg.resource_name.is_empty() && msg.resource_name != name {
                return Err(RequestError::Invalid(format!(
                    "resource_name changed during the write from {} to {}",
                    quote(name),
                    quote(&msg.resource_name)
                ))
                .into());
            }
            let written = upload.written() as i64;
            if msg.write_offset != written {
                if msg.write_offset == 0 {
                    tokio::task::block_in_place(|| upload.restart())?;
                } else {
                    return Err(RequestError::Invalid(format!(
                        "write_offset {} does not match the {written} bytes committed for {}",
                        msg.write_offset,
                        quote(name)
                    ))
                    .into());
                }
            }
            if !msg.data.is_empty() {
                tokio::task::block_in_place(|| upload.write(&msg.data))?;
            }
            if msg.finish_write {
                return Ok(true);
            }
            match stream.message().await {
                Ok(Some(next)) => msg = next,
                // The client closed its side without finish_write, went
                // away, or sent nothing for stream-idle-timeout: keep what
                // we have for QueryWriteStatus.
                Ok(None) | Err(_) => return Ok(false),
            }
        }
    }
}

/// Streams `blob[pos..end]`. A chunk is read (on the blocking pool) only
/// when hyper asks for the next one, which it does only while the client's
/// flow-control window has room: a client that takes nothing costs no
/// thread and no buffer, only the open blob.
struct BlobStream {
    blob: Arc<Blob>,
    digest: Digest,
    pos: u64,
    end: u64,
    reading: Option<tokio::task::JoinHandle<std::io::Result<Vec<u8>>>>,
    failed: bool,
}

impl BlobStream {
    fn new(blob: Blob, digest: Digest, pos: u64, end: u64) -> Self {
        BlobStream {
            blob: Arc::new(blob),
            digest,
            pos,
            end,
            reading: None,
            failed: false,
        }
    }
}

impl Stream for BlobStream {
    type Item = Result<bytestream::ReadResponse, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.failed || (this.reading.is_none() && this.pos >= this.end) {
            return Poll::Ready(None);
        }
        let reading = this.reading.get_or_insert_with(|| {
            let (b, pos) = (Arc::clone(&this.blob), this.pos);
            let len = READ_CHUNK.min((this.end - pos) as usize);
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                b.read_at(&mut buf, pos).map(|n| {
                    buf.truncate(n);
                    buf
                })
            })
        });
        let read = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        this.reading = None;
        let digest = this.digest;
        let item = match read {
            Ok(Ok(buf)) if buf.is_empty() => Err(Status::data_loss(format!(
                "blob {digest} ended early at {}",
                this.pos
            ))),
            Ok(Ok(buf)) => {
                this.pos += buf.len() as u64;
                Ok(bytestream::ReadResponse { data: buf.into() })
            }
            Ok(Err(e)) => Err(crate::status::io_status(
                &format!("reading blob {digest}"),
                &e,
            )),
            Err(e) => Err(Status::internal(format!("reading blob {digest}: {e}"))),
        };
        this.failed = item.is_err();
        Poll::Ready(Some(item))
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
        let digest = res.digest;
        // A blob the local store lacks is fetched whole (and verified)
        // from the upstream before any of it is served.
        let blob = self.ctx.blobs.open_blob(digest).await?;
        let blob =
            blob.ok_or_else(|| Status::not_found(format!("blob {digest} is not in the store")))?;
        Ok(Response::new(Box::pin(BlobStream::new(
            blob, digest, offset, end,
        ))))
    }

    async fn write(
        &self,
        req: Request<Streaming<bytestream::WriteRequest>>,
    ) -> Result<Response<bytestream::WriteResponse>, Status> {
        let owner = caller(&req)?.uid;
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
            move || Ok(store.contains_as(&digest, owner)?)
        })
        .await?
        {
            return Ok(Response::new(bytestream::WriteResponse {
                committed_size: size,
            }));
        }
        let name = first.resource_name.clone();
        let mut upload = blocking({
            let (uploads, name) = (Arc::clone(&self.uploads), name.clone());
            move || Ok(uploads.begin(&name, owner, || store.writer_as(owner, digest))?)
        })
        .await?;
        match self.receive(&name, first, &mut stream, &mut upload).await {
            Ok(true) => {
                blocking(move || Ok(upload.finish()?)).await?;
                Ok(Response::new(bytestream::WriteResponse {
                    committed_size: size,
                }))
            }
            Ok(false) => {
                let written = upload.written();
                upload.interrupt();
                Err(RequestError::Invalid(format!(
                    "the write stream for {} ended after {written} bytes without finish_write; \
                     resume at that offset",
                    quote(&name)
                ))
                .into())
            }
            // Bad data or no room: the upload is dropped and its temporary
            // file removed.
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
        // google.bytestream: NOT_FOUND for a name that is not being
        // written (never started, finished with an error, or expired).
        let received = self.uploads.received(&name).ok_or_else(|| {
            Status::not_found(format!("no upload of {} is in progress", quote(&name)))
        })?;
        Ok(Response::new(bytestream::QueryWriteStatusResponse {
            committed_size: received as i64,
            complete: false,
        }))
    }
}
