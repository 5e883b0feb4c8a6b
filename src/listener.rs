//! Accepting connections: identifying the caller, setting TCP_NODELAY,
//! counting open connections for the idle exit, and handing each
//! connection to tonic.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tonic::transport::server::Connected;

use crate::activation::Listener;
use crate::authority::RewriteAuthority;
use crate::peer::Peer;
use crate::trust::{Caller, Denied, Policy};

/// What the services learn about a connection: who the caller is and
/// whether they were admitted.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Peer,
    pub caller: Result<Caller, Denied>,
}

/// Open connections and running work, for the idle exit and `status`.
#[derive(Debug)]
pub struct Activity {
    connections: AtomicUsize,
    /// Running actions.
    busy: AtomicUsize,
    /// Results waiting to be pushed to the upstream.
    pushes: AtomicUsize,
    last_change: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            connections: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            pushes: AtomicUsize::new(0),
            last_change: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Running actions.
    pub fn busy_count(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Results waiting to be pushed (or being pushed) to the upstream.
    pub fn pending_pushes(&self) -> usize {
        self.pushes.load(Ordering::SeqCst)
    }

    /// A running action: it must finish before an idle exit, and a stop
    /// waits for it.
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        self.guard(false)
    }

    /// A result waiting to be pushed: it holds off an idle exit, and a stop
    /// gives it a bounded time (`Upstream::drain`).
    pub fn push_pending(self: &Arc<Self>) -> BusyGuard {
        self.guard(true)
    }

    fn guard(self: &Arc<Self>, push: bool) -> BusyGuard {
        self.counter(push).fetch_add(1, Ordering::SeqCst);
        self.touch();
        BusyGuard {
            activity: Arc::clone(self),
            push,
        }
    }

    fn counter(&self, push: bool) -> &AtomicUsize {
        if push { &self.pushes } else { &self.busy }
    }

    /// How long nothing has been connected, running or waiting to be
    /// pushed, if that is so now.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.connections() > 0 || self.busy_count() > 0 || self.pending_pushes() > 0 {
            return None;
        }
        Some(
            self.last_change
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed(),
        )
    }

    fn touch(&self) {
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn open(self: &Arc<Self>) -> ConnGuard {
        self.connections.fetch_add(1, Ordering::SeqCst);
        self.touch();
        ConnGuard(Arc::clone(self))
    }
}

/// Counts one open connection while it lives.
#[derive(Debug)]
pub struct ConnGuard(Arc<Activity>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// Counts one running action, or one pending push, while it lives.
#[derive(Debug)]
pub struct BusyGuard {
    activity: Arc<Activity>,
    push: bool,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.activity
            .counter(self.push)
            .fetch_sub(1, Ordering::SeqCst);
        self.activity.touch();
    }
}

enum Stream {
    /// Unix-socket clients get a usable `:authority` (see `authority`).
    Unix(RewriteAuthority<UnixStream>),
    Tcp(TcpStream),
}

/// An accepted connection.
pub struct Conn {
    stream: Stream,
    info: ConnInfo,
    _guard: ConnGuard,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
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
        match &mut self.get_mut().stream {
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
}

enum AsyncListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// The accept loops. They can be paused and resumed, which the idle exit
/// uses to stop taking connections before it makes its final check.
pub struct Acceptor {
    listeners: Vec<Arc<AsyncListener>>,
    policy: Arc<Policy>,
    activity: Arc<Activity>,
    tx: mpsc::Sender<io::Result<Conn>>,
    running: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Acceptor {
    /// Registers the listeners with the runtime. Returns the acceptor and
    /// the stream of connections for tonic.
    pub fn new(
        listeners: Vec<Listener>,
        policy: Arc<Policy>,
        activity: Arc<Activity>,
    ) -> io::Result<(Acceptor, mpsc::Receiver<io::Result<Conn>>)> {
        let mut async_listeners = Vec::new();
        for l in listeners {
            async_listeners.push(Arc::new(match l {
                Listener::Unix { listener, .. } => {
                    AsyncListener::Unix(UnixListener::from_std(listener)?)
                }
                Listener::Tcp { listener, .. } => {
                    AsyncListener::Tcp(TcpListener::from_std(listener)?)
                }
            }));
        }
        let (tx, rx) = mpsc::channel(64);
        let (running, _) = watch::channel(false);
        Ok((
            Acceptor {
                listeners: async_listeners,
                policy,
                activity,
                tx,
                running,
                tasks: Vec::new(),
            },
            rx,
        ))
    }

    /// Starts (or resumes) accepting.
    pub fn start(&mut self) {
        self.running.send_replace(true);
        for l in &self.listeners {
            let l = Arc::clone(l);
            let policy = Arc::clone(&self.policy);
            let activity = Arc::clone(&self.activity);
            let tx = self.tx.clone();
            let mut running = self.running.subscribe();
            self.tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = stopped(&mut running) => return,
                        conn = accept(&l, &policy, &activity) => {
                            match conn {
                                Ok(Some(conn)) => {
                                    if tx.send(Ok(conn)).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    tracing::warn!("accept failed: {e}");
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                        }
                    }
                }
            }));
        }
    }

    /// Stops accepting and waits until no accept is in progress. Afterwards
    /// new connections wait in the kernel's (or systemd's) backlog.
    pub async fn pause(&mut self) {
        self.running.send_replace(false);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

/// Resolves when the acceptor is paused (or dropped).
async fn stopped(running: &mut watch::Receiver<bool>) {
    loop {
        if !*running.borrow_and_update() {
            return;
        }
        if running.changed().await.is_err() {
            return;
        }
    }
}

async fn accept(
    l: &AsyncListener,
    policy: &Arc<Policy>,
    activity: &Arc<Activity>,
) -> io::Result<Option<Conn>> {
    match l {
        AsyncListener::Unix(l) => {
            let (stream, _) = l.accept().await?;
            let guard = activity.open();
            let peer = Peer::of_unix(&stream);
            let caller = admit(policy, peer.clone()).await;
            Ok(Some(Conn {
                stream: Stream::Unix(RewriteAuthority::new(stream)),
                info: ConnInfo { peer, caller },
                _guard: guard,
            }))
        }
        AsyncListener::Tcp(l) => {
            let (stream, remote) = l.accept().await?;
            let guard = activity.open();
            // Without this, small responses wait ~40 ms for a delayed ACK.
            stream.set_nodelay(true)?;
            let local = stream.local_addr()?;
            let (peer, caller) = identify(policy, move || Peer::of_tcp(local, remote)).await;
            Ok(Some(Conn {
                stream: Stream::Tcp(stream),
                info: ConnInfo { peer, caller },
                _guard: guard,
            }))
        }
    }
}

/// Who the caller is and whether they are admitted. Reading
/// `/proc/net/tcp` and the passwd and group databases (NSS, possibly over
/// the network) blocks, so it runs on the blocking pool.
async fn identify(
    policy: &Arc<Policy>,
    peer: impl FnOnce() -> Peer + Send + 'static,
) -> (Peer, Result<Caller, Denied>) {
    let policy = Arc::clone(policy);
    tokio::task::spawn_blocking(move || {
        let peer = peer();
        let caller = policy.admit(&peer);
        (peer, caller)
    })
    .await
    .unwrap_or_else(|e| {
        let peer = Peer::unknown();
        let denied = Err(Denied(format!("cannot identify the caller: {e}")));
        (peer, denied)
    })
}

async fn admit(policy: &Arc<Policy>, peer: Peer) -> Result<Caller, Denied> {
    identify(policy, move || peer).await.1
}
