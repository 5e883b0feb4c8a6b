//! What every call passes through before it reaches a service: the cap on
//! calls in progress per uid, the watch on both directions of its stream,
//! and the cut of over-long status messages.
//!
//! - A uid over `max-streams-per-user` gets RESOURCE_EXHAUSTED at once.
//!   The permit lives as long as the call's response body, so a stream
//!   counts until its last byte has been taken.
//! - A request body the client stops feeding for `stream-idle-timeout`
//!   fails with DEADLINE_EXCEEDED: the handler sees a broken stream (an
//!   upload is kept for QueryWriteStatus) and the call ends.
//! - A response body marks itself as waiting whenever it has handed hyper
//!   data (see `connection`): a client that stops taking data loses its
//!   connection after `stream-idle-timeout`.
//! - A `grpc-message` longer than [`MAX_MESSAGE`] bytes is cut, whatever
//!   produced it, so that no client input quoted in a status can make the
//!   trailers larger than a client accepts ("Stream removed" instead of
//!   the status).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;

use crate::connection::StreamProgress;
use crate::listener::ConnInfo;
use crate::per_user::{PerUser, Permit};
use crate::service::ServiceError;

/// The longest `grpc-message` sent, in bytes of its percent-encoded form.
pub const MAX_MESSAGE: usize = 1024;

/// The layer, for `Server::layer`.
#[derive(Clone)]
pub struct CallsLayer {
    calls: Arc<PerUser>,
    idle: Duration,
}

impl CallsLayer {
    pub fn new(calls: Arc<PerUser>, idle: Duration) -> Self {
        CallsLayer { calls, idle }
    }
}

impl<S> tower::Layer<S> for CallsLayer {
    type Service = Calls<S>;
    fn layer(&self, inner: S) -> Calls<S> {
        Calls {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Calls<S> {
    inner: S,
    layer: CallsLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<Body>> for Calls<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(info) = req.extensions().get::<ConnInfo>().cloned() else {
            let status = Status::from(ServiceError::NoPeerInfo);
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let permit = match self.layer.calls.acquire(info.peer.uid) {
            Ok(p) => p,
            Err(why) => {
                let status = Status::from(why);
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        let record = Record {
            method: req.uri().path().to_owned(),
            caller: match &info.caller {
                Ok(c) => c.to_string(),
                Err(_) => info.peer.to_string(),
            },
            started: Instant::now(),
        };
        let idle = self.layer.idle;
        let req = req.map(|body| {
            Body::new(RequestBody {
                inner: body,
                idle,
                timer: None,
            })
        });
        let call = self.inner.call(req);
        Box::pin(async move {
            let Ok(mut resp) = call.await;
            cut_message(resp.headers_mut());
            // A trailers-only response carries its status in the headers.
            let record = match grpc_status(resp.headers()) {
                Some(code) => {
                    record.finish(code, resp.headers());
                    None
                }
                None => Some(record),
            };
            Ok(resp.map(|body| {
                Body::new(ResponseBody {
                    progress: (!body.is_end_stream()).then(|| info.conn.register()),
                    inner: body,
                    record,
                    _permit: permit,
                })
            }))
        })
    }
}

/// A request body that fails once the client has sent nothing for `idle`
/// while the handler waits for it.
struct RequestBody {
    inner: Body,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(ServiceError::StreamIdle(idle).into())))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its call's permit and reports to its
/// connection whether it waits for the client.
struct ResponseBody<B> {
    inner: B,
    progress: Option<StreamProgress>,
    /// Taken when the status goes out.
    record: Option<Record>,
    _permit: Permit,
}

impl<B> Drop for ResponseBody<B> {
    /// A response dropped before its status (the client went away) is a
    /// cancelled call.
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.finish(tonic::Code::Cancelled, &HeaderMap::new());
        }
    }
}

/// What is known of a call for its metric and, when refused, its log line.
struct Record {
    method: String,
    caller: String,
    started: Instant,
}

impl Record {
    fn finish(self, code: tonic::Code, trailers: &HeaderMap) {
        crate::metrics::get().rpc(&self.method, code, self.started.elapsed());
        if matches!(
            code,
            tonic::Code::PermissionDenied
                | tonic::Code::ResourceExhausted
                | tonic::Code::Unauthenticated
        ) && refusals_may_log()
        {
            let reason = trailers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .map(percent_decode)
                .unwrap_or_default();
            tracing::info!(
                caller = %self.caller,
                call = %self.method,
                code = crate::metrics::code_name(code),
                "refused: {reason}"
            );
        }
    }
}

/// The `grpc-status` in `headers`, if any.
fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(v))
}

/// `grpc-message` is percent-encoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// At most 20 refusal lines in any ten seconds: a client that is refused
/// in a loop does not flood the log.
fn refusals_may_log() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 10);
    if WINDOW.swap(now, Ordering::Relaxed) != now {
        COUNT.store(0, Ordering::Relaxed);
    }
    COUNT.fetch_add(1, Ordering::Relaxed) < 20
}

impl<B> HttpBody for ResponseBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(p) = &this.progress {
            p.polled();
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        match frame {
            Some(Ok(mut frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    cut_message(trailers);
                    this.progress = None;
                    if let Some(record) = this.record.take() {
                        let code = grpc_status(trailers).unwrap_or(tonic::Code::Unknown);
                        record.finish(code, trailers);
                    }
                } else if let Some(p) = &this.progress {
                    p.handed_over();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => {
                this.progress = None;
                Poll::Ready(other)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Cuts a `grpc-message` over [`MAX_MESSAGE`] bytes. The value is
/// percent-encoded ASCII, so cutting before a `%` escape keeps it valid.
fn cut_message(headers: &mut HeaderMap) {
    let Some(value) = headers.get("grpc-message") else {
        return;
    };
    let bytes = value.as_bytes();
    if bytes.len() <= MAX_MESSAGE {
        return;
    }
    let mut end = MAX_MESSAGE;
    // Never split a %XX escape.
    for back in 1..=2 {
        if bytes[end - back] == b'%' {
            end -= back;
            break;
        }
    }
    let mut cut = bytes[..end].to_vec();
    cut.extend_from_slice(
        format!("%E2%80%A6 (message cut from {} bytes)", bytes.len())
            .replace(' ', "%20")
            .as_bytes(),
    );
    if let Ok(v) = http::HeaderValue::from_bytes(&cut) {
        headers.insert("grpc-message", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_without_splitting_escapes() {
        let mut h = HeaderMap::new();
        let long = "ab%2F".repeat(1000);
        h.insert("grpc-message", long.parse().unwrap());
        cut_message(&mut h);
        let v = h.get("grpc-message").unwrap().to_str().unwrap().to_owned();
        assert!(v.len() < MAX_MESSAGE + 64, "{}", v.len());
        assert!(v.ends_with("(message%20cut%20from%205000%20bytes)"), "{v}");
        let head = &v[..v.find("%E2%80%A6").unwrap()];
        assert!(head.ends_with("ab%2F") || head.ends_with("ab"), "{head}");
        let mut short = HeaderMap::new();
        short.insert("grpc-message", "fine".parse().unwrap());
        cut_message(&mut short);
        assert_eq!(short.get("grpc-message").unwrap(), "fine");
    }
}
