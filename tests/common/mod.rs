//! Shared test harness: runs the real daemon binary on a private state
//! directory, unix socket and loopback TCP port, and connects tonic clients
//! to it, optionally as another uid.

#![allow(dead_code, unused_imports)]

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod exec;
pub mod upstream;
pub mod users;

pub use nativelink_lre::client::wire;
pub use nativelink_lre::digest::Digest;
pub use nativelink_lre::proto::bytestream;
pub use nativelink_lre::proto::google::longrunning::Operation;
pub use nativelink_lre::proto::reapi;

pub const BIN: &str = env!("CARGO_BIN_EXE_nativelink-lre");

/// A running daemon. Dropping it stops the process (by its pid).
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub tcp: SocketAddr,
    pub config: PathBuf,
    notify: UnixDatagram,
    pub notify_path: PathBuf,
    pub env: Vec<(String, String)>,
    /// The notify messages up to READY=1 of the last start.
    pub ready: Vec<String>,
    /// RLIMIT_NOFILE (soft, hard) to start the process with.
    pub nofile: Option<(u64, u64)>,
    /// File systems mounted for this daemon (a small tmpfs as its state
    /// directory), unmounted when it is dropped.
    pub mounts: Vec<PathBuf>,
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
        let mut d = Self::prepare_full(extra, &[], Some(state));
        d.spawn();
        d
    }

    /// As [`Daemon::start_with_env`], without starting the process: set
    /// `nofile` or mount something first, then call [`Daemon::spawn`].
    pub fn prepare(extra: &str, env: &[(&str, &str)]) -> Daemon {
        Self::prepare_full(extra, env, None)
    }

    fn prepare_full(extra: &str, env: &[(&str, &str)], state: Option<&Path>) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("lre-test")
            .tempdir()
            .unwrap();
        // Other uids must reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = state.map_or_else(|| dir.path().join("state"), Path::to_owned);
        let socket = dir.path().join("lre.sock");
        let tcp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "state-dir = {state:?}\n{top}\n[listen]\nunix = {socket:?}\ntcp = [\"{tcp}\"]\n{sections}",
                top = top_level(extra),
                sections = sections(extra),
            ),
        )
        .unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        Daemon {
            child: None,
            dir,
            state,
            socket,
            tcp,
            config,
            notify,
            notify_path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ready: Vec::new(),
            nofile: None,
            mounts: Vec::new(),
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

    /// Starts (or restarts) the process on the same state and config.
    pub fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(BIN);
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
        let child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.ready = self.wait_for_notify("READY=1", Duration::from_secs(20));
    }

    /// Waits for a datagram on NOTIFY_SOCKET that contains `what`; returns
    /// all messages seen up to it.
    pub fn wait_for_notify(&mut self, what: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what:?} from the daemon within {timeout:?}; saw {seen:?}; stderr:\n{}",
                self.stderr_now()
            );
            self.notify
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .unwrap();
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let hit = msg.lines().any(|l| l == what);
                    seen.push(msg);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => {
                    if let Some(child) = self.child.as_mut()
                        && let Ok(Some(status)) = child.try_wait()
                    {
                        panic!(
                            "daemon exited with {status} before {what:?}; stderr:\n{}",
                            self.stderr_now()
                        );
                    }
                }
            }
        }
    }

    fn stderr_now(&mut self) -> String {
        let Some(child) = self.child.as_mut() else {
            return String::new();
        };
        if child.try_wait().ok().flatten().is_none() {
            return "(still running)".into();
        }
        let mut s = String::new();
        if let Some(e) = child.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
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
        let mut err = String::new();
        c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status, err)
    }

    /// Peak resident memory of the daemon so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
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

/// Runs `connect` on a fresh thread whose effective uid and gid are `uid`.
/// Linux credentials are per thread; glibc's setresuid would change every
/// thread of the test process, so this uses the raw system calls, and the
/// thread switches back to root before it ends. The kernel records the
/// credentials at socket creation (TCP owner) and connect (SO_PEERCRED).
pub fn as_uid<T: Send + 'static>(uid: u32, connect: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: raw setresgid/setresuid affect only this thread's
        // credentials; -1 leaves the real and saved ids (root) in place so
        // the thread can switch back, which it does before returning.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, -1i64, uid as i64, -1i64),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, -1i64, uid as i64, -1i64),
                0
            );
        }
        let out = connect();
        // SAFETY: as above; back to root for this thread only.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresuid, -1i64, 0i64, -1i64), 0);
            assert_eq!(libc::syscall(libc::SYS_setresgid, -1i64, 0i64, -1i64), 0);
        }
        out
    })
    .join()
    .unwrap()
}

/// A channel over one connected stream (see [`wire::channel_over`]).
pub async fn channel_over<S>(stream: S) -> Channel
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    wire::channel_over(stream).await.unwrap()
}

pub async fn unix_channel(path: &Path, uid: Option<u32>) -> Channel {
    let path = path.to_owned();
    let std_stream = match uid {
        Some(uid) => as_uid(uid, move || {
            std::os::unix::net::UnixStream::connect(path).unwrap()
        }),
        None => std::os::unix::net::UnixStream::connect(path).unwrap(),
    };
    std_stream.set_nonblocking(true).unwrap();
    channel_over(tokio::net::UnixStream::from_std(std_stream).unwrap()).await
}

pub async fn tcp_channel(addr: SocketAddr, uid: Option<u32>) -> Channel {
    let std_stream = match uid {
        Some(uid) => as_uid(uid, move || std::net::TcpStream::connect(addr).unwrap()),
        None => std::net::TcpStream::connect(addr).unwrap(),
    };
    std_stream.set_nodelay(true).unwrap();
    std_stream.set_nonblocking(true).unwrap();
    channel_over(tokio::net::TcpStream::from_std(std_stream).unwrap()).await
}

/// Content of a given size that differs per seed.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FindMissingBlobs: which of `digests` the daemon lacks.
pub async fn find_missing(ch: &Channel, digests: &[Digest]) -> Vec<Digest> {
    reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(ch.clone())
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            blob_digests: digests.iter().map(Digest::to_proto).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
        .iter()
        .map(|d| Digest::from_proto(d).unwrap())
        .collect()
}

pub fn upload_name(d: &Digest) -> String {
    format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        d.hex(),
        d.size()
    )
}

pub fn read_name(d: &Digest) -> String {
    format!("blobs/{}/{}", d.hex(), d.size())
}

/// Verifies that every blob file under `state/cas` hashes to its name.
/// Returns how many were checked.
pub fn verify_store(state: &Path) -> usize {
    let mut n = 0;
    for shard in std::fs::read_dir(state.join("cas")).unwrap() {
        let shard = shard.unwrap();
        if !shard.file_type().unwrap().is_dir() {
            continue;
        }
        for blob in std::fs::read_dir(shard.path()).unwrap() {
            let blob = blob.unwrap();
            let bytes = std::fs::read(blob.path()).unwrap();
            let d = Digest::of_bytes(&bytes);
            assert_eq!(
                d.hex(),
                blob.file_name().to_string_lossy(),
                "blob {} does not hash to its name",
                blob.path().display()
            );
            n += 1;
        }
    }
    n
}
