//! The one launcher of the real daemon binary, for the tests and the
//! benchmarks: a private directory with its config, unix socket and
//! `NOTIFY_SOCKET`, the notify messages and stderr lines recorded as they
//! come (with when), and a stop by pid when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use super::{tcp_channel, unix_channel};

pub const BIN: &str = env!("CARGO_BIN_EXE_nativelink-lre");

/// Lines in the order they came, each with when it came.
type Timed = Arc<Mutex<Vec<(Instant, String)>>>;

/// What a daemon listens on besides its unix socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Its unix socket only (`tcp = []`; [`Daemon::tcp`] is then unused).
    Unix,
    /// Its unix socket and a free loopback TCP port.
    UnixAndTcp,
}

/// A running daemon. Dropping it stops the process (by its pid).
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// The binary [`Daemon::spawn`] runs ([`BIN`] unless a bench says).
    pub bin: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub tcp: SocketAddr,
    pub config: PathBuf,
    pub notify_path: PathBuf,
    pub env: Vec<(String, String)>,
    /// The notify messages up to READY=1 of the last start.
    pub ready: Vec<String>,
    /// RLIMIT_NOFILE (soft, hard) to start the process with.
    pub nofile: Option<(u64, u64)>,
    /// File systems mounted for this daemon (a small tmpfs as its state
    /// directory), unmounted when it is dropped.
    pub mounts: Vec<PathBuf>,
    /// Just before the process was last spawned.
    pub spawned: Instant,
    /// Every notify message since [`Daemon::prepare`]; `notes_seen` of them
    /// were returned by [`Daemon::wait_for_notify`] already.
    notes: Timed,
    notes_seen: usize,
    stop_notes: Arc<AtomicBool>,
    /// The stderr lines of the last start, and the thread reading them.
    log: Timed,
    log_reader: Option<JoinHandle<()>>,
}

/// A free loopback port. The port could be taken again before the daemon
/// binds it; on these single-user test machines that does not happen.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon binary for a benchmark: `$LRE_BENCH_DAEMON`, else the one cargo
/// built, else a fresh `cargo build --release` (when run outside cargo).
pub fn daemon_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LRE_BENCH_DAEMON") {
        return p.into();
    }
    if Path::new(BIN).exists() {
        return BIN.into();
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

impl Daemon {
    /// Starts the daemon with `extra` appended to a config that sets the
    /// state directory and listeners, and waits for READY=1.
    pub fn start(extra: &str) -> Daemon {
        Self::start_with_env(extra, &[])
    }

    /// As [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let mut d = Self::prepare(extra, env);
        d.spawn();
        d
    }

    /// As [`Daemon::start`], with the state directory at `state` (for
    /// example on a file system the test made).
    pub fn start_on(state: &Path, extra: &str) -> Daemon {
        let mut d = Self::prepare_in(&std::env::temp_dir(), "lre-test", extra, Some(state), true);
        d.spawn();
        d
    }

    /// For a benchmark: `bin` on `state`, its files in a new directory
    /// under `base` named after `tag`, with `sections` (TOML tables such as
    /// `[upstream]`) in its config. Spawned without waiting: see
    /// [`Daemon::wait_ready`].
    pub fn launch(
        bin: &Path,
        base: &Path,
        state: &Path,
        tag: &str,
        listen: Listen,
        sections: &str,
    ) -> Daemon {
        let extra = format!("\n{sections}");
        let tcp = listen == Listen::UnixAndTcp;
        let mut d = Self::prepare_in(base, &format!("{tag}-"), &extra, Some(state), tcp);
        d.bin = bin.to_owned();
        d.spawn_process();
        d
    }

    /// As [`Daemon::start_with_env`], without starting the process: set
    /// `nofile` or mount something first, then call [`Daemon::spawn`].
    pub fn prepare(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let mut d = Self::prepare_in(&std::env::temp_dir(), "lre-test", extra, None, true);
        d.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d
    }

    /// Writes the config into a new directory under `base` and binds the
    /// notify socket, whose messages a thread records from now on.
    fn prepare_in(
        base: &Path,
        prefix: &str,
        extra: &str,
        state: Option<&Path>,
        tcp_listener: bool,
    ) -> Daemon {
        // Other uids must reach the socket inside.
        let dir = run_dir(prefix, base);
        let state = state.map_or_else(|| dir.path().join("state"), Path::to_owned);
        let socket = dir.path().join("lre.sock");
        let tcp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tcp_list = if tcp_listener {
            format!("\"{tcp}\"")
        } else {
            String::new()
        };
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "state-dir = {state:?}\n{top}\n[listen]\nunix = {socket:?}\ntcp = [{tcp_list}]\n{sections}",
                top = top_level(extra),
                sections = sections(extra),
            ),
        )
        .unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let notes = Timed::default();
        let stop_notes = Arc::new(AtomicBool::new(false));
        record_notes(notify, Arc::clone(&notes), Arc::clone(&stop_notes));
        Daemon {
            child: None,
            dir,
            bin: BIN.into(),
            state,
            socket,
            tcp,
            config,
            notify_path,
            env: Vec::new(),
            ready: Vec::new(),
            nofile: None,
            mounts: Vec::new(),
            spawned: Instant::now(),
            notes,
            notes_seen: 0,
            stop_notes,
            log: Timed::default(),
            log_reader: None,
        }
    }

    /// Mounts a tmpfs of `bytes` as the state directory (a disk that
    /// fills up). Before [`Daemon::spawn`].
    pub fn state_on_tmpfs(&mut self, bytes: u64) {
        std::fs::create_dir_all(&self.state).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0755"),
                "tmpfs",
            ])
            .arg(&self.state)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs failed");
        self.mounts.push(self.state.clone());
    }

    /// Starts (or restarts) the process on the same state and config and
    /// waits for READY=1.
    pub fn spawn(&mut self) {
        self.spawn_process();
        self.ready = self.wait_for_notify("READY=1", Duration::from_secs(20));
    }

    /// Starts the process; a thread records its stderr lines.
    fn spawn_process(&mut self) {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(&self.bin);
        if let Some((soft, hard)) = self.nofile {
            // SAFETY: setrlimit is async-signal-safe and touches only the
            // child between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("--config")
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        // An environment value of "-" removes the variable (RUST_LOG, so
        // that the configured log-level applies).
        for (k, _) in self.env.iter().filter(|(_, v)| v == "-") {
            cmd.env_remove(k);
        }
        self.spawned = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the daemon");
        self.log = Timed::default();
        let (log, stderr) = (Arc::clone(&self.log), child.stderr.take().unwrap());
        self.log_reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                log.lock().unwrap().push((Instant::now(), line));
            }
        }));
        self.child = Some(child);
    }

    /// Waits for READY=1 (after [`Daemon::launch`]); returns the time from
    /// spawn to its arrival.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let (seen, at) = self.wait_for_notify_at("READY=1", timeout);
        self.ready = seen;
        at - self.spawned
    }

    /// Waits for a datagram on NOTIFY_SOCKET that contains `what`; returns
    /// all messages seen up to it (since the last call).
    pub fn wait_for_notify(&mut self, what: &str, timeout: Duration) -> Vec<String> {
        self.wait_for_notify_at(what, timeout).0
    }

    /// As [`Daemon::wait_for_notify`], with when the message came.
    fn wait_for_notify_at(&mut self, what: &str, timeout: Duration) -> (Vec<String>, Instant) {
        let deadline = Instant::now() + timeout;
        loop {
            let hit = {
                let notes = self.notes.lock().unwrap();
                let new = &notes[self.notes_seen..];
                new.iter()
                    .position(|(_, m)| m.lines().any(|l| l == what))
                    .map(|i| {
                        let seen = new[..=i].iter().map(|(_, m)| m.clone()).collect();
                        (i, seen, new[i].0)
                    })
            };
            if let Some((i, seen, at)) = hit {
                self.notes_seen += i + 1;
                return (seen, at);
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "daemon exited with {status} before {what:?}; stderr:\n{}",
                    self.stderr_now()
                );
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = self.notes.lock().unwrap()[self.notes_seen..]
                    .iter()
                    .map(|(_, m)| m.clone())
                    .collect();
                panic!(
                    "no {what:?} from the daemon within {timeout:?}; saw {seen:?}; stderr:\n{}",
                    self.stderr_now()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The stderr of the process: all of it once it has exited, the lines
    /// so far while it runs.
    fn stderr_now(&mut self) -> String {
        if let Some(child) = self.child.as_mut()
            && child.try_wait().ok().flatten().is_some()
            && let Some(reader) = self.log_reader.take()
        {
            let _ = reader.join();
        }
        self.log_text()
    }

    /// Waits for a stderr line containing `what`; returns it and when it
    /// came (after spawn).
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

    /// The stderr lines so far, each with when it came (after spawn).
    pub fn log_lines(&self) -> Vec<(Duration, String)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(t, l)| (*t - self.spawned, l.clone()))
            .collect()
    }

    /// The stderr lines so far, one text.
    pub fn log_text(&self) -> String {
        let log = self.log.lock().unwrap();
        let mut text = String::new();
        for (_, l) in log.iter() {
            text.push_str(l);
            text.push('\n');
        }
        text
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the process and returns its exit status and stderr.
    pub fn stop(&mut self) -> (std::process::ExitStatus, String) {
        let mut c = self.child.take().expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status =
            wait_timeout(&mut c, Duration::from_secs(30)).expect("daemon did not stop on SIGTERM");
        if let Some(reader) = self.log_reader.take() {
            reader.join().unwrap();
        }
        (status, self.log_text())
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

    /// Peak resident memory of the daemon so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }

    pub async fn unix(&self) -> Channel {
        unix_channel(&self.socket, None).await
    }

    pub async fn tcp(&self) -> Channel {
        tcp_channel(self.tcp, None).await
    }

    pub async fn unix_as(&self, uid: u32) -> Channel {
        unix_channel(&self.socket, Some(uid)).await
    }

    pub async fn tcp_as(&self, uid: u32) -> Channel {
        tcp_channel(self.tcp, Some(uid)).await
    }
}

impl Drop for Daemon {
    /// SIGTERM first, so that the daemon removes the cgroups it made, then
    /// SIGKILL if it does not stop within a few seconds.
    fn drop(&mut self) {
        self.stop_notes.store(true, Ordering::Relaxed);
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if wait_timeout(&mut c, Duration::from_secs(5)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for m in self.mounts.drain(..) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

/// Records every datagram on `notify`, with when it came, until `stop`.
fn record_notes(notify: UnixDatagram, notes: Timed, stop: Arc<AtomicBool>) {
    notify
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                notes.lock().unwrap().push((Instant::now(), msg));
            }
        }
    });
}

pub fn wait_timeout(c: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Config lines without a section header go to the top level; the rest
/// (from the first `[`) after the listen section.
fn top_level(extra: &str) -> String {
    extra.split("\n[").next().unwrap_or("").to_owned()
}

fn sections(extra: &str) -> String {
    match extra.find("\n[") {
        Some(i) => extra[i..].to_owned(),
        None if extra.trim_start().starts_with('[') => {
            panic!("start `extra` with a newline before sections")
        }
        None => String::new(),
    }
}
