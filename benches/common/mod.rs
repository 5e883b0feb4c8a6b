//! Shared harness of the benchmarks (`benches/storage.rs` and
//! `benches/execution.rs`, each of which includes it with `mod common;`).
//!
//! It finds the daemon binary, runs it on a private state directory (writes
//! its config, waits for READY=1 on `NOTIFY_SOCKET`, keeps its log, stops it
//! by pid when dropped), opens tonic channels over one unix or TCP stream,
//! and computes, formats and prints the figures. The measurements themselves
//! stay in the bench files. Not every bench uses every item here.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

pub use nativelink_lre::client::wire;
use nativelink_lre::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient as CasClient;

// ---------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------

/// Whether the bench was only asked to list its benchmarks (`--list`): it
/// then does nothing. `cargo bench` passes `--bench`; a filter gets nothing
/// special.
pub fn list_only() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// A new temporary directory under `base` (named `prefix…`), mode 0755 so
/// that the daemon's other uids can reach what is inside; removed on drop.
pub fn run_dir(prefix: &str, base: &Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The single-threaded runtime the clients run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// The daemon binary: `$LRE_BENCH_DAEMON`, else the one cargo built for
/// this bench, else a fresh `cargo build --release` (when run outside cargo).
pub fn daemon_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LRE_BENCH_DAEMON") {
        return p.into();
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_nativelink-lre")
        && Path::new(p).exists()
    {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "nativelink-lre"])
        .current_dir(root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build --release failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("release/nativelink-lre")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a spawned daemon listens on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Its unix socket only (`tcp = []`).
    Unix,
    /// Its unix socket and a free loopback TCP port.
    UnixAndTcp,
}

/// A running daemon; dropping it SIGKILLs it by pid and reaps it.
pub struct Daemon {
    child: Child,
    /// Just before the process was spawned.
    pub spawned: Instant,
    pub socket: PathBuf,
    /// The TCP address, with [`Listen::UnixAndTcp`].
    pub tcp: Option<SocketAddr>,
    pub state: PathBuf,
    ready_at: Arc<Mutex<Option<Instant>>>,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    stop_notify: Arc<AtomicBool>,
}

impl Daemon {
    /// Writes a config for `state` into `run_dir` (files named after `tag`)
    /// and spawns the daemon. Does not wait for anything.
    pub fn spawn(bin: &Path, run_dir: &Path, state: &Path, tag: &str, listen: Listen) -> Daemon {
        Self::spawn_with(bin, run_dir, state, tag, listen, "")
    }

    /// As [`Daemon::spawn`], with `sections` (TOML tables, such as
    /// `[upstream]`) appended to the config.
    pub fn spawn_with(
        bin: &Path,
        run_dir: &Path,
        state: &Path,
        tag: &str,
        listen: Listen,
        sections: &str,
    ) -> Daemon {
        let socket = run_dir.join(format!("{tag}.sock"));
        let tcp: Option<SocketAddr> = (listen == Listen::UnixAndTcp)
            .then(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
        let tcp_list = tcp.map_or(String::new(), |a| format!("\"{a}\""));
        let config = run_dir.join(format!("{tag}.toml"));
        std::fs::write(
            &config,
            format!(
                "state-dir = {state:?}\n[listen]\nunix = {socket:?}\ntcp = [{tcp_list}]\n{sections}\n"
            ),
        )
        .unwrap();
        let notify_path = run_dir.join(format!("{tag}.notify"));
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();

        let ready_at = Arc::new(Mutex::new(None));
        let stop_notify = Arc::new(AtomicBool::new(false));
        {
            let ready_at = Arc::clone(&ready_at);
            let stop = Arc::clone(&stop_notify);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = notify.recv(&mut buf) {
                        let now = Instant::now();
                        if String::from_utf8_lossy(&buf[..n])
                            .lines()
                            .any(|l| l == "READY=1")
                        {
                            *ready_at.lock().unwrap() = Some(now);
                            return;
                        }
                    }
                }
            });
        }

        let spawned = Instant::now();
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the daemon");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = Arc::clone(&log);
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    log.lock().unwrap().push((Instant::now(), line));
                }
            });
        }
        Daemon {
            child,
            spawned,
            socket,
            tcp,
            state: state.to_owned(),
            ready_at,
            log,
            stop_notify,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time from spawn to READY=1, waiting for it up to `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = *self.ready_at.lock().unwrap() {
                return t - self.spawned;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daemon exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "no READY=1 within {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for a log line containing `what`; returns it and when it came
    /// (after spawn).
    pub fn wait_log(&self, what: &str, timeout: Duration) -> Option<(Duration, String)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((t, l)) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(what))
            {
                return Some((*t - self.spawned, l.clone()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The log so far, each line with when it came (after spawn).
    pub fn log_lines(&self) -> Vec<(Duration, String)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(t, l)| (*t - self.spawned, l.clone()))
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_notify.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// A channel over one already-connected stream (no reconnection).
pub async fn channel_over<S>(stream: S) -> Channel
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    wire::channel_over(stream).await.unwrap()
}

pub async fn unix_channel(path: &Path) -> Channel {
    let s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_nonblocking(true).unwrap();
    channel_over(tokio::net::UnixStream::from_std(s).unwrap()).await
}

pub async fn tcp_channel(addr: SocketAddr) -> Channel {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_nonblocking(true).unwrap();
    channel_over(tokio::net::TcpStream::from_std(s).unwrap()).await
}

/// Uploads blobs with BatchUpdateBlobs, 1,000 (and, for small blobs, well
/// under the 4 MiB batch limit) at a time.
pub async fn upload(ch: &Channel, blobs: &[Vec<u8>]) {
    let mut client = CasClient::new(ch.clone());
    for chunk in blobs.chunks(1000) {
        let resp = client
            .batch_update_blobs(wire::batch_update_of(chunk.iter().map(Vec::as_slice)))
            .await
            .expect("BatchUpdateBlobs")
            .into_inner();
        for r in resp.responses {
            assert_eq!(r.status.unwrap().code, 0, "batch upload refused a blob");
        }
    }
}

// ---------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------

/// Nearest-rank percentile of sorted values.
pub fn pct<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn sorted<T: Ord + Copy>(v: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut s: Vec<T> = v.into_iter().collect();
    s.sort();
    s
}

/// The median (nearest rank).
pub fn p50<T: Ord + Copy>(v: impl IntoIterator<Item = T>) -> T {
    pct(&sorted(v), 50.0)
}

pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Milliseconds with `places` decimals.
pub fn millis(d: Duration, places: usize) -> String {
    format!("{:.*} ms", places, d.as_secs_f64() * 1e3)
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// How [`Table`] aligns the figure column.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Rows of the final table: (measurement, figure, target/verdict). Each row
/// is also echoed to stderr as it is added.
pub struct Table {
    rows: Vec<(String, String, String)>,
    figures: Align,
    /// How far the horizontal rules reach past the figure column.
    rule_extra: usize,
}

impl Table {
    pub fn new(figures: Align, rule_extra: usize) -> Table {
        Table {
            rows: Vec::new(),
            figures,
            rule_extra,
        }
    }

    pub fn row(
        &mut self,
        what: impl Into<String>,
        figure: impl Into<String>,
        note: impl Into<String>,
    ) {
        let (what, figure, note) = (what.into(), figure.into(), note.into());
        eprintln!("  {what}: {figure} {note}");
        self.rows.push((what, figure, note));
    }

    /// Prints the table to stdout; lines carry no trailing blanks.
    pub fn print(&self) {
        let width = |f: fn(&(String, String, String)) -> &String| {
            self.rows
                .iter()
                .map(|r| f(r).chars().count())
                .max()
                .unwrap_or(0)
        };
        let (w0, w1) = (width(|r| &r.0), width(|r| &r.1));
        let rule = format!("{:-<1$}", "", w0 + w1 + self.rule_extra);
        println!();
        println!("{rule}");
        for (a, b, c) in &self.rows {
            let pa = w0 - a.chars().count();
            let pb = w1 - b.chars().count();
            let figure = match self.figures {
                Align::Left => format!("{b}{:pb$}", ""),
                Align::Right => format!("{:pb$}{b}", ""),
            };
            println!("{}", format!("{a}{:pa$}  {figure}  {c}", "").trim_end());
        }
        println!("{rule}");
    }
}
