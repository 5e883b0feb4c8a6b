//! Accepting connections: identifying the caller, setting TCP_NODELAY,
//! holding each uid to its share of connections, counting open
//! connections for the idle exit, and handing each connection to tonic.
//!
//! The accept loop itself only accepts: finding out who a caller is
//! (`/proc/net/tcp`, the passwd and group databases) runs on the blocking
//! pool, one task per connection. Done inline, it capped the accept rate,
//! the kernel's accept queue overflowed under a burst of connections, and
//! every client whose handshake fell into the overflow waited for TCP's
//! retransmission timer (1 s, 3 s, 7 s, ...) before its first call.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};

use crate::activation::Listener;
pub use crate::activity::{Activity, BusyGuard, ConnGuard};
use crate::authority::RewriteAuthority;
use crate::connection::{Conn, ConnState, Deadlines, Stream};
use crate::peer::Peer;
use crate::per_user::PerUser;
use crate::trust::{Caller, Denied, Policy};

/// What the services learn about a connection: who the caller is and
/// whether they were admitted.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Peer,
    pub caller: Result<Caller, Denied>,
    /// What the serving layer shares with the connection's socket.
    pub conn: Arc<ConnState>,
}

enum AsyncListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// What every accepted connection is held to.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Open connections by uid, and in total.
    pub counts: Arc<PerUser>,
    pub deadlines: Deadlines,
}

/// Everything an accept task needs, shared by all of them.
struct Shared {
    policy: Arc<Policy>,
    activity: Arc<Activity>,
    limits: ConnLimits,
    tx: mpsc::Sender<io::Result<Conn>>,
    /// When a refusal or an accept error was last logged, so that a flood
    /// does not flood the log too.
    last_warning: Mutex<Option<Instant>>,
}

impl Shared {
    fn warn_now(&self) -> bool {
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// The accept loops. They can be paused and resumed, which the idle exit
/// uses to stop taking connections before it makes its final check.
pub struct Acceptor {
    listeners: Vec<Arc<AsyncListener>>,
    shared: Arc<Shared>,
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
        limits: ConnLimits,
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
        let shared = Arc::new(Shared {
            policy,
            activity,
            limits,
            tx,
            last_warning: Mutex::new(None),
        });
        Ok((
            Acceptor {
                listeners: async_listeners,
                shared,
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
            let shared = Arc::clone(&self.shared);
            let mut running = self.running.subscribe();
            self.tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = stopped(&mut running) => return,
                        accepted = accept(&l) => match accepted {
                            Ok(stream) => {
                                // Counted at once, so that the idle exit
                                // sees it while it is being identified.
                                let guard = shared.activity.open();
                                tokio::spawn(admit(stream, guard, Arc::clone(&shared)));
                            }
                            Err(e) => {
                                // EMFILE or ENFILE above all: the
                                // connection waits in the backlog.
                                if shared.warn_now() {
                                    tracing::warn!("accept failed: {e}");
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
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

async fn accept(l: &AsyncListener) -> io::Result<Stream> {
    match l {
        AsyncListener::Unix(l) => {
            let (stream, _) = l.accept().await?;
            Ok(Stream::Unix(RewriteAuthority::new(stream)))
        }
        AsyncListener::Tcp(l) => {
            let (stream, _) = l.accept().await?;
            // Without this, small responses wait ~40 ms for a delayed ACK.
            // A socket that cannot take the option is already dead.
            let _ = stream.set_nodelay(true);
            Ok(Stream::Tcp(stream))
        }
    }
}

/// Identifies the caller of a fresh connection, holds it to its uid's
/// share of connections and hands it to tonic. A connection over its
/// share is closed at once: holding it to send a status would keep the
/// very descriptor the cap is there to save.
async fn admit(stream: Stream, guard: ConnGuard, shared: Arc<Shared>) {
    let peer = match &stream {
        Stream::Unix(s) => Peer::of_unix(s.get_ref()),
        Stream::Tcp(s) => match (s.local_addr(), s.peer_addr()) {
            (Ok(local), Ok(remote)) => {
                match tokio::task::spawn_blocking(move || Peer::of_tcp(local, remote)).await {
                    Ok(peer) => peer,
                    Err(_) => return,
                }
            }
            _ => return,
        },
    };
    let permit = match shared.limits.counts.acquire(peer.uid) {
        Ok(permit) => permit,
        Err(why) => {
            if shared.warn_now() {
                tracing::warn!("closing a new connection of {peer}: {why}");
            }
            return;
        }
    };
    let caller = {
        let (policy, peer) = (Arc::clone(&shared.policy), peer.clone());
        match tokio::task::spawn_blocking(move || policy.admit(&peer)).await {
            Ok(caller) => caller,
            Err(_) => return,
        }
    };
    let info = ConnInfo {
        peer,
        caller,
        conn: Arc::new(ConnState::default()),
    };
    let conn = Conn::new(stream, info, shared.limits.deadlines, guard, permit);
    let _ = shared.tx.send(Ok(conn)).await;
}
