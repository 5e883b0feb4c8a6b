//! Getting the listening sockets: from systemd socket activation, from
//! launchd on macOS, or by binding the configured addresses ourselves.

use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::config::Listen;

/// A listening socket, with a name for messages.
#[derive(Debug)]
pub enum Listener {
    Unix {
        listener: UnixListener,
        name: String,
    },
    Tcp {
        listener: TcpListener,
        name: String,
    },
}

impl Listener {
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix { listener, name } => {
                let path = listener
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                    .unwrap_or_else(|| "(unnamed)".into());
                format!("unix:{path} ({name})")
            }
            Listener::Tcp { listener, name } => {
                let addr = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "?".into());
                format!("tcp:{addr} ({name})")
            }
        }
    }
}

/// Where the sockets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// systemd (or `systemd-socket-activate`) passed them in.
    Systemd,
    /// launchd passed them in.
    Launchd,
    /// We bound them from the configuration.
    Bound,
}

impl Source {
    pub fn is_activated(self) -> bool {
        self != Source::Bound
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "socket activation: fd {fd} ({name:?}) is neither a TCP nor a unix stream listening socket"
    )]
    NotAListener { fd: usize, name: String },
    #[error("socket activation: fd {fd} ({name:?}): {source}")]
    Activated {
        fd: usize,
        name: String,
        source: io::Error,
    },
    #[error("socket activation passed no sockets")]
    NoSockets,
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("cannot listen on {path}: another process is already serving it")]
    InUse { path: PathBuf },
    #[error(
        "cannot listen on {addr}: another program already listens there (the system's \
         nativelink-lre, another user's daemon, or something else). Listen on another port \
         with --listen 127.0.0.1:PORT (clients then use --address grpc://127.0.0.1:PORT), or \
         on the unix socket alone with --listen unix; in a configuration file, set \
         listen.tcp to another port or to []"
    )]
    TcpInUse { addr: std::net::SocketAddr },
    #[error("the configuration enables no listener (listen.unix is empty and listen.tcp is [])")]
    NothingToListenOn,
    #[cfg(target_os = "macos")]
    #[error("launchd socket {name:?}: {source}")]
    Launchd { name: String, source: io::Error },
}

/// Takes the activated sockets if there are any, else binds the configured
/// addresses.
pub fn acquire(config: &Listen) -> Result<(Vec<Listener>, Source), Error> {
    if let Some(listeners) = from_systemd()? {
        return Ok((listeners, Source::Systemd));
    }
    #[cfg(target_os = "macos")]
    if let Some(listeners) = launchd::take()? {
        return Ok((listeners, Source::Launchd));
    }
    Ok((bind(config)?, Source::Bound))
}

/// The sockets systemd passed, named from `LISTEN_FDNAMES`. listenfd checks
/// `LISTEN_PID` and hands out fds by index only, so we read the names
/// ourselves.
fn from_systemd() -> Result<Option<Vec<Listener>>, Error> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let names = parse_fdnames(std::env::var("LISTEN_FDNAMES").ok().as_deref(), fds.len());
    // Our children (actions) must not think sockets were passed to them.
    // SAFETY: called during start-up before any other thread reads the
    // environment (the tokio runtime is not yet running when main calls us;
    // see main.rs).
    unsafe {
        for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
            std::env::remove_var(var);
        }
    }
    let mut out = Vec::new();
    for (idx, name) in names.into_iter().enumerate() {
        let fd = idx + 3;
        let err = |source| Error::Activated {
            fd,
            name: name.clone(),
            source,
        };
        if let Ok(Some(listener)) = fds.take_tcp_listener(idx) {
            listener.set_nonblocking(true).map_err(err)?;
            out.push(Listener::Tcp { listener, name });
        } else if let Ok(Some(listener)) = fds.take_unix_listener(idx) {
            listener.set_nonblocking(true).map_err(err)?;
            out.push(Listener::Unix { listener, name });
        } else {
            return Err(Error::NotAListener { fd, name });
        }
    }
    if out.is_empty() {
        return Err(Error::NoSockets);
    }
    Ok(Some(out))
}

/// Splits `LISTEN_FDNAMES` into one name per fd; missing names are
/// "unknown", as systemd documents.
pub fn parse_fdnames(var: Option<&str>, count: usize) -> Vec<String> {
    let mut names: Vec<String> = var
        .filter(|v| !v.is_empty())
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    names.resize(count, "unknown".to_owned());
    names
}

/// Binds the configured unix socket and TCP addresses.
pub fn bind(config: &Listen) -> Result<Vec<Listener>, Error> {
    let mut out = Vec::new();
    if let Some(path) = &config.unix {
        let listener = bind_unix(path, config.unix_mode.0)?;
        out.push(Listener::Unix {
            listener,
            name: "unix".into(),
        });
    }
    for addr in &config.tcp {
        let bind_err = |source| Error::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => Error::TcpInUse { addr: *addr },
            _ => bind_err(e),
        })?;
        // The standard library listens with a backlog of 128; a burst of
        // clients (a build starting 200 connections) overflows it, and
        // each client that falls into the overflow waits a second or more
        // for TCP to retransmit. Listening again only changes the backlog
        // (the kernel caps it at net.core.somaxconn), as systemd's
        // Backlog= does for activated sockets.
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN)
            .map_err(|e| bind_err(e.into()))?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        out.push(Listener::Tcp {
            listener,
            name: "tcp".into(),
        });
    }
    if out.is_empty() {
        return Err(Error::NothingToListenOn);
    }
    Ok(out)
}

fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, Error> {
    let bind_err = |source| Error::Bind {
        addr: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(bind_err)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
                .map_err(bind_err)?;
        }
    }
    // A socket file left by a daemon that died is removed; one that still
    // answers belongs to a live daemon and is left alone.
    if std::fs::symlink_metadata(path).is_ok() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::InUse {
                    path: path.to_owned(),
                });
            }
            Err(_) => std::fs::remove_file(path).map_err(bind_err)?,
        }
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// launchd hands out sockets by the names of the plist's `Sockets`
/// dictionary (`unix` and `tcp` in packaging/launchd). This code cannot be
/// compiled or tested on the Linux machines this project is built on; it
/// follows launch(3)'s `launch_activate_socket` contract.
#[cfg(target_os = "macos")]
mod launchd {
    use super::{Error, Listener};
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    use std::os::raw::{c_char, c_int};

    unsafe extern "C" {
        fn launch_activate_socket(
            name: *const c_char,
            fds: *mut *mut c_int,
            cnt: *mut usize,
        ) -> c_int;
    }

    pub fn take() -> Result<Option<Vec<Listener>>, Error> {
        let mut out = Vec::new();
        for name in ["unix", "tcp"] {
            let cname = CString::new(name).expect("no NUL in a literal");
            let mut fds: *mut c_int = std::ptr::null_mut();
            let mut cnt: usize = 0;
            // SAFETY: launch_activate_socket writes a malloc'd array of `cnt`
            // fds to `fds`, which we free below. ESRCH means we were not
            // started by launchd; ENOENT that the plist has no such socket.
            let rc = unsafe { launch_activate_socket(cname.as_ptr(), &mut fds, &mut cnt) };
            if rc == libc::ESRCH {
                return Ok(None);
            }
            if rc == libc::ENOENT {
                continue;
            }
            if rc != 0 {
                return Err(Error::Launchd {
                    name: name.into(),
                    source: std::io::Error::from_raw_os_error(rc),
                });
            }
            for i in 0..cnt {
                // SAFETY: `i < cnt`, and each fd is a listening socket that
                // launchd gives to us alone.
                let fd = unsafe { *fds.add(i) };
                let listener = if name == "unix" {
                    Listener::Unix {
                        listener: unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) },
                        name: name.into(),
                    }
                } else {
                    Listener::Tcp {
                        listener: unsafe { std::net::TcpListener::from_raw_fd(fd) },
                        name: name.into(),
                    }
                };
                out.push(listener);
            }
            // SAFETY: the array was allocated by launchd with malloc.
            unsafe { libc::free(fds.cast()) };
        }
        for l in &out {
            let r = match l {
                Listener::Unix { listener, .. } => listener.set_nonblocking(true),
                Listener::Tcp { listener, .. } => listener.set_nonblocking(true),
            };
            r.map_err(|source| Error::Launchd {
                name: "nonblocking".into(),
                source,
            })?;
        }
        Ok(if out.is_empty() { None } else { Some(out) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdnames_are_padded_with_unknown() {
        assert_eq!(parse_fdnames(Some("unix:tcp"), 2), vec!["unix", "tcp"]);
        assert_eq!(parse_fdnames(None, 2), vec!["unknown", "unknown"]);
        assert_eq!(parse_fdnames(Some("unix"), 2), vec!["unix", "unknown"]);
    }

    #[test]
    fn stale_socket_is_replaced_but_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/socket");
        let first = bind_unix(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        assert!(matches!(bind_unix(&path, 0o660), Err(Error::InUse { .. })));
        drop(first);
        bind_unix(&path, 0o660).unwrap();
    }
}
