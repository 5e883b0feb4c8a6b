//! A daemon for the sandbox tests, started the ways an attacker finds it:
//! as root (the packaged default) or as an ordinary user (a per-user
//! daemon under a throwaway uid, with a HOME and runtime directory it
//! owns), optionally with something done to the process just before exec
//! (an inherited descriptor, a session keyring holding a key, a seccomp
//! filter that refuses seccomp). common::Daemon cannot take the last two,
//! so this is its own small harness.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use crate::common::{BIN, free_port, tcp_channel, unix_channel, wait_timeout};

type PreExec = Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>;

pub struct Lre {
    child: Option<Child>,
    /// Holds the config, sockets and state; removed when dropped.
    _dir: tempfile::TempDir,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub tcp: SocketAddr,
    /// The daemon's uid when it is a per-user daemon.
    pub uid: Option<u32>,
    log: PathBuf,
}

#[derive(Default)]
pub struct Start {
    /// Config lines (sections allowed) appended after the listeners.
    pub extra: String,
    /// Run as this uid (and gid): a per-user daemon.
    pub uid: Option<u32>,
    /// Run in the child just before exec; async-signal-safe calls only.
    pub pre_exec: Option<PreExec>,
    /// Top-level config lines (before the sections).
    pub top: String,
    /// Environment variables besides the fixed few.
    pub env: Vec<(String, String)>,
    /// Supplementary groups of a per-user daemon (with `uid`).
    pub groups: Vec<u32>,
}

impl Lre {
    pub fn start(opts: Start) -> Lre {
        let dir = tempfile::Builder::new()
            .prefix("lre-sandbox")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (home, run) = (dir.path().join("home"), dir.path().join("run"));
        for d in [&home, &run] {
            std::fs::create_dir(d).unwrap();
            if let Some(uid) = opts.uid {
                nix::unistd::chown(d.as_path(), Some(uid.into()), Some(uid.into())).unwrap();
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
            }
        }
        // The state directory as packaged (StateDirectory= gives 0755).
        let state = home.join("state");
        let socket = run.join("lre.sock");
        let tcp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "state-dir = {state:?}\n{}\n[listen]\nunix = {socket:?}\ntcp = [\"{tcp}\"]\n{}\n",
                opts.top, opts.extra
            ),
        )
        .unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let log = dir.path().join("daemon.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&config)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &run)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        match opts.uid {
            Some(uid) if !opts.groups.is_empty() => {
                // std's uid() would drop every supplementary group, so the
                // switch is done here, before the test's own closure.
                let groups: Vec<libc::gid_t> = opts.groups.clone();
                // SAFETY: setgroups, setgid and setuid are async-signal-safe;
                // `groups` is allocated before the fork.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                            || libc::setgid(uid) != 0
                            || libc::setuid(uid) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            Some(uid) => {
                cmd.uid(uid).gid(uid);
            }
            None => {}
        }
        if let Some(f) = opts.pre_exec {
            // SAFETY: the closures the tests pass make raw system calls
            // only (dup2, keyctl, add_key, seccomp), which are
            // async-signal-safe.
            unsafe {
                cmd.pre_exec(f);
            }
        }
        let child = cmd.spawn().unwrap();
        let mut d = Lre {
            child: Some(child),
            _dir: dir,
            state,
            socket,
            tcp,
            uid: opts.uid,
            log,
        };
        d.wait_ready(&notify);
        d
    }

    fn wait_ready(&mut self, notify: &UnixDatagram) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        loop {
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no READY=1 within 20 s:\n{}",
                self.log()
            );
        }
    }

    /// The daemon's process id.
    #[allow(dead_code)] // not every test file that includes this uses it
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A unix-socket channel as `uid`.
    pub async fn unix_as(&self, uid: u32) -> Channel {
        unix_channel(&self.socket, Some(uid)).await
    }

    /// A TCP channel as `uid`.
    pub async fn tcp_as(&self, uid: u32) -> Channel {
        tcp_channel(self.tcp, Some(uid)).await
    }

    /// `nativelink-lre status` against this daemon, as its owner.
    pub fn status_text(&self) -> String {
        let mut cmd = Command::new(BIN);
        cmd.args(["status", "--address"])
            .arg(format!("unix://{}", self.socket.display()))
            .env_clear();
        if let Some(uid) = self.uid {
            cmd.uid(uid).gid(uid);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lre {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if wait_timeout(&mut c, Duration::from_secs(5)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
