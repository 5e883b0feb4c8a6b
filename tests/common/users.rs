//! Throwaway local accounts for the attack tests: a real passwd entry (so
//! the daemon's NSS lookups and `allowed-users` names work), removed when
//! dropped.

#![allow(dead_code)]

use std::process::Command;

/// A local user created for one test, with a group of the same name.
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    /// Creates `lre-t<random>` with no home directory and no login shell.
    pub fn create() -> User {
        assert!(
            nix::unistd::geteuid().is_root(),
            "throwaway users need root: run the tests as root"
        );
        let name = format!("lre-t{:08x}", rand_u32());
        let out = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin", &name])
            .output()
            .expect("useradd");
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("the new user exists");
        User {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u32::from_ne_bytes(b)
}

/// A daemon run by an ordinary (throwaway) user with a home and a runtime
/// directory of its own, as a developer would start a per-user daemon.
pub struct UserDaemon {
    pub child: std::process::Child,
    pub dir: tempfile::TempDir,
    pub home: std::path::PathBuf,
    pub runtime: std::path::PathBuf,
    pub socket: std::path::PathBuf,
}

impl UserDaemon {
    /// Starts `nativelink-lre` as `user` with `config` (a TOML text, or
    /// none), `HOME` and `XDG_RUNTIME_DIR` set (unless `runtime_dir` is
    /// false), and waits for READY=1.
    pub fn start(user: &User, config: Option<&str>, runtime_dir: bool) -> UserDaemon {
        Self::spawn(user, config, runtime_dir).expect_ready()
    }

    /// As [`UserDaemon::start`], with extra arguments.
    pub fn start_with_args(
        user: &User,
        config: Option<&str>,
        runtime_dir: bool,
        args: &[&str],
    ) -> UserDaemon {
        Self::spawn_with_args(user, config, runtime_dir, args).expect_ready()
    }

    /// Starts it without waiting.
    pub fn spawn(user: &User, config: Option<&str>, runtime_dir: bool) -> Starting {
        Self::spawn_with_args(user, config, runtime_dir, &[])
    }

    /// As [`UserDaemon::spawn`], with extra arguments (such as `--listen`).
    pub fn spawn_with_args(
        user: &User,
        config: Option<&str>,
        runtime_dir: bool,
        args: &[&str],
    ) -> Starting {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::Builder::new()
            .prefix("lre-user")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = dir.path().join("home");
        let runtime = dir.path().join("run");
        for d in [&home, &runtime] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(d, Some(user.uid), Some(user.gid)).unwrap();
        }
        let notify_path = dir.path().join("notify");
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
        std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut cmd = std::process::Command::new(super::BIN);
        if let Some(text) = config {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.args(args)
            .uid(user.uid)
            .gid(user.gid)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &home)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if runtime_dir {
            cmd.env("XDG_RUNTIME_DIR", &runtime);
        }
        let child = cmd.spawn().unwrap();
        let socket = runtime.join("nativelink-lre/socket");
        Starting {
            daemon: UserDaemon {
                child,
                dir,
                home,
                runtime,
                socket,
            },
            notify,
        }
    }
}

impl Drop for UserDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon started by [`UserDaemon::spawn`], not yet ready.
pub struct Starting {
    pub daemon: UserDaemon,
    notify: std::os::unix::net::UnixDatagram,
}

impl Starting {
    pub fn expect_ready(mut self) -> UserDaemon {
        self.notify
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n)
                    if String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "READY=1") =>
                {
                    return self.daemon;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = self.daemon.child.kill();
                    let mut err = String::new();
                    if let Some(mut s) = self.daemon.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut s, &mut err);
                    }
                    panic!("no READY=1 from the per-user daemon ({e}); stderr:\n{err}");
                }
            }
        }
    }

    /// Waits for the process to exit; its status and stderr.
    pub fn expect_exit(mut self) -> (std::process::ExitStatus, String) {
        let status =
            super::wait_timeout(&mut self.daemon.child, std::time::Duration::from_secs(20))
                .expect("the daemon did not exit");
        let mut err = String::new();
        if let Some(mut s) = self.daemon.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut s, &mut err);
        }
        (status, err)
    }
}
