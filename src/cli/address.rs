//! Which daemon a client command talks to, and running the command on a
//! small runtime once connected.
//!
//! Without `--address`: the socket of `--config`; with neither, the
//! caller's own per-user daemon (not for root), then the system daemon,
//! whose socket is read from `/etc/nativelink-lre/config.toml` (which the
//! NixOS module writes) or is `/run/nativelink-lre/socket`. Only unix
//! sockets are tried on the caller's behalf: a TCP port on loopback can be
//! taken by any local user, who would then see the caller's commands.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tonic::transport::Channel;

use super::EXIT_CONFIG;
use crate::client::{self, ClientError};
use crate::config::{Config, SYSTEM_CONFIG, SYSTEM_SOCKET};
use crate::private_dir;

/// Where the daemon is.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Target {
    /// unix:///PATH or grpc://HOST:PORT. Default: the unix socket of
    /// --config, else your own daemon's socket, else the system daemon's.
    #[arg(long, value_name = "ADDRESS")]
    pub address: Option<String>,
}

/// The address a configuration listens on: its unix socket, or its first
/// TCP address.
fn address_of(c: &Config) -> String {
    match &c.listen.unix {
        Some(p) => format!("unix://{}", p.display()),
        None => format!(
            "grpc://{}",
            c.listen
                .tcp
                .first()
                .map_or("127.0.0.1:50051".into(), |a| a.to_string())
        ),
    }
}

/// The system daemon's address: from the system configuration file when
/// there is one, else the packaged socket.
pub fn system_address() -> Result<String, String> {
    let path = Path::new(SYSTEM_CONFIG);
    if !path.exists() {
        return Ok(format!("unix://{SYSTEM_SOCKET}"));
    }
    match Config::load(path) {
        Ok(c) => Ok(address_of(&c)),
        Err(e) => Err(format!("{e}")),
    }
}

/// The addresses to try, in order.
pub fn candidates(config: Option<&Path>, target: &Target) -> Result<Vec<String>, String> {
    if let Some(a) = &target.address {
        return Ok(vec![a.clone()]);
    }
    if let Some(path) = config {
        return Config::load(path)
            .map(|c| vec![address_of(&c)])
            .map_err(|e| e.to_string());
    }
    let mut out = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        out.push(address_of(&Config::builtin()));
    }
    let system = system_address()?;
    if !out.contains(&system) {
        out.push(system);
    }
    Ok(out)
}

/// The configuration a client command describes the daemon with: the file
/// of `--config`, else the system's file for root, else the built-in one.
pub fn client_config(config: Option<&Path>) -> Result<(Config, Option<PathBuf>), String> {
    let path = match config {
        Some(p) => Some(p.to_owned()),
        None if nix::unistd::geteuid().is_root() && Path::new(SYSTEM_CONFIG).exists() => {
            Some(PathBuf::from(SYSTEM_CONFIG))
        }
        None => None,
    };
    Config::load_or_builtin(path.as_deref())
        .map(|c| (c, path))
        .map_err(|e| e.to_string())
}

/// Connects to the daemon and runs one client command on a small runtime.
/// Exit status 1 when the daemon cannot be reached or refuses the call, 2
/// for a bad configuration file.
pub fn with_daemon<F, Fut>(config: Option<&Path>, target: &Target, f: F) -> ExitCode
where
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = Result<ExitCode, ClientError>>,
{
    let addresses = match candidates(config, target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nativelink-lre: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for address in &addresses {
        if let Some(path) = client::unix_path(address)
            && let Err(e) = private_dir::guard(path, false)
        {
            eprintln!("nativelink-lre: {e}");
            return ExitCode::FAILURE;
        }
    }
    let ran = block_on(async {
        let result = match client::connect_any(&addresses).await {
            Ok(ch) => f(ch).await,
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| {
            eprintln!("nativelink-lre: {e}");
            ExitCode::FAILURE
        })
    });
    ran.unwrap_or_else(|e| {
        eprintln!("nativelink-lre: {e}");
        ExitCode::FAILURE
    })
}

/// Runs `fut` on a current-thread runtime; `Err` if there is none.
pub fn block_on<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(fut))
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}
