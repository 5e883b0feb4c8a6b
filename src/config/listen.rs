//! `[listen]`: the unix socket and loopback TCP addresses the daemon binds
//! when systemd does not hand it sockets.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::FileMode;

/// `[listen]`: addresses to bind when not socket-activated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Listen {
    /// Path of the unix socket; an empty path disables it.
    pub unix: Option<PathBuf>,
    /// Permission bits of the unix socket, in octal.
    pub unix_mode: FileMode,
    /// Loopback TCP addresses.
    pub tcp: Vec<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            unix: None,
            // A per-user daemon's socket is its owner's alone.
            unix_mode: FileMode(if nix::unistd::geteuid().is_root() {
                0o666
            } else {
                0o600
            }),
            tcp: vec![SocketAddr::from(([127, 0, 0, 1], 50051))],
        }
    }
}

/// The socket path of a `unix:/PATH` or `unix:///PATH` address; `None`
/// when `address` is not a unix address at all, `Err` when its path is
/// relative.
pub fn unix_address(address: &str) -> Option<Result<PathBuf, String>> {
    let path = address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))?;
    let path = PathBuf::from(path);
    Some(if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!(
            "{address:?}: the socket path must be absolute (unix:/PATH)"
        ))
    })
}

impl Listen {
    /// Refuses addresses that would not identify callers and modes that
    /// are no permission bits. Returns the offending key and why.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        for addr in &self.tcp {
            if !addr.ip().is_loopback() {
                return Err((
                    "tcp",
                    format!(
                        "{addr} is not a loopback address; callers are identified only on loopback"
                    ),
                ));
            }
        }
        if self.unix_mode.0 & !0o777 != 0 {
            return Err((
                "unix-mode",
                format!("{:o} has bits outside 0777", self.unix_mode.0),
            ));
        }
        Ok(())
    }
}
