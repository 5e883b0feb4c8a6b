//! One accepted connection as tonic sees it: the socket, who is on the
//! other end, and the watch that closes it when the client sits on it.
//!
//! A connection is closed (its socket reads and writes fail, so hyper drops
//! it and every stream on it) when
//!
//! - it has not sent the 24-byte HTTP/2 preface within `preface-timeout`:
//!   a socket that is only opened costs a descriptor and nothing else
//!   would ever reclaim it;
//! - one of its response streams has been waiting for the client to take
//!   data for `stream-idle-timeout`. hyper polls a response body only while
//!   the client's flow-control window has room, so a client that never
//!   opens its window leaves the body unpolled forever and no timer inside
//!   the stream would ever run; the socket, which hyper keeps polling while
//!   the client answers PINGs, is where it can be noticed. The service
//!   layer (`service::calls`) marks each response stream as waiting from
//!   the moment it has handed hyper data until hyper comes back for more.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use crate::authority::RewriteAuthority;
use crate::listener::{ConnGuard, ConnInfo};
use crate::per_user::Permit;

/// The HTTP/2 client preface (RFC 9113 §3.4) is this long.
const PREFACE_LEN: u64 = 24;

/// The deadlines a connection lives under.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub preface: Duration,
    pub stream_idle: Duration,
}

/// What the serving layer and the connection's socket share: the response
/// streams that wait for the client.
#[derive(Debug, Default)]
pub struct ConnState {
    next: AtomicU64,
    /// Response streams, and since when each has waited for hyper to take
    /// more of it (`None` while it is being polled or has nothing to give).
    waiting: Mutex<HashMap<u64, Option<Instant>>>,
}

impl ConnState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Option<Instant>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a response stream, waiting from now.
    pub fn register(self: &Arc<Self>) -> StreamProgress {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Some(Instant::now()));
        StreamProgress {
            state: Arc::clone(self),
            id,
        }
    }

    /// How long the stream that has waited longest has waited.
    fn longest_wait(&self) -> Option<Duration> {
        self.lock().values().flatten().map(Instant::elapsed).max()
    }
}

/// One response stream's entry in its connection's [`ConnState`].
#[derive(Debug)]
pub struct StreamProgress {
    state: Arc<ConnState>,
    id: u64,
}

impl StreamProgress {
    /// hyper is polling the stream: it is not waiting for the client.
    pub fn polled(&self) {
        if let Some(w) = self.state.lock().get_mut(&self.id) {
            *w = None;
        }
    }

    /// The stream handed hyper data and waits to be asked for more.
    pub fn handed_over(&self) {
        if let Some(w) = self.state.lock().get_mut(&self.id) {
            w.get_or_insert_with(Instant::now);
        }
    }
}

impl Drop for StreamProgress {
    fn drop(&mut self) {
        self.state.lock().remove(&self.id);
    }
}

pub(crate) enum Stream {
    /// Unix-socket clients get a usable `:authority` (see `authority`).
    Unix(RewriteAuthority<UnixStream>),
    Tcp(TcpStream),
}

/// An accepted connection.
pub struct Conn {
    stream: Stream,
    info: ConnInfo,
    watch: Watch,
    _guard: ConnGuard,
    _permit: Permit,
}

/// The deadlines of one connection, checked whenever hyper touches the
/// socket and when the timer fires.
struct Watch {
    deadlines: Deadlines,
    opened: Instant,
    bytes_read: u64,
    timer: Pin<Box<Sleep>>,
    /// Why the connection was closed, once it was.
    closed: Option<String>,
}

impl Conn {
    pub(crate) fn new(
        stream: Stream,
        info: ConnInfo,
        deadlines: Deadlines,
        guard: ConnGuard,
        permit: Permit,
    ) -> Conn {
        let opened = Instant::now();
        Conn {
            stream,
            info,
            watch: Watch {
                deadlines,
                opened,
                bytes_read: 0,
                timer: Box::pin(tokio::time::sleep(deadlines.preface)),
                closed: None,
            },
            _guard: guard,
            _permit: permit,
        }
    }

    /// Fails once a deadline has passed; otherwise arms the timer for the
    /// next check.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let w = &mut self.watch;
        loop {
            if let Some(why) = &w.closed {
                return Err(io::Error::new(io::ErrorKind::TimedOut, why.clone()));
            }
            if w.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let why = if w.bytes_read < PREFACE_LEN && w.opened.elapsed() >= w.deadlines.preface {
                Some(format!(
                    "sent no HTTP/2 preface within {:?} (preface-timeout)",
                    w.deadlines.preface
                ))
            } else {
                self.info
                    .conn
                    .longest_wait()
                    .filter(|d| *d >= w.deadlines.stream_idle)
                    .map(|d| {
                        format!(
                            "took none of a response's data for {}s (stream-idle-timeout)",
                            d.as_secs()
                        )
                    })
            };
            match why {
                Some(why) => {
                    tracing::warn!("closing the connection of {}: it {why}", self.info.peer);
                    w.closed = Some(why);
                }
                None => {
                    let every = (w.deadlines.stream_idle / 4)
                        .clamp(Duration::from_millis(100), Duration::from_secs(5));
                    w.timer.as_mut().reset(tokio::time::Instant::now() + every);
                }
            }
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

fn ready_or_closed<T>(
    check: io::Result<()>,
    poll: impl FnOnce() -> Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    match check {
        Err(e) => Poll::Ready(Err(e)),
        Ok(()) => poll(),
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let check = this.check(cx);
        let before = buf.filled().len();
        let result = ready_or_closed(check, || match &mut this.stream {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        });
        this.watch.bytes_read = this
            .watch
            .bytes_read
            .saturating_add((buf.filled().len() - before) as u64);
        result
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let check = this.check(cx);
        ready_or_closed(check, || match &mut this.stream {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        })
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let check = this.check(cx);
        ready_or_closed(check, || match &mut this.stream {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        })
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let check = this.check(cx);
        ready_or_closed(check, || match &mut this.stream {
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        })
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
}
