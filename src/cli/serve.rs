//! `nativelink-lre [serve] [--listen ADDRESS]...`: the daemon itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::EXIT_CONFIG;
use crate::config::{Config, Listen};
use crate::{activation, logging, private_dir, server, state_dir, upstream};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Listen here instead of the configuration's [listen] addresses; may be
    /// given more than once. `unix` is the default unix socket,
    /// `unix:PATH` another one, `HOST:PORT` (or grpc://HOST:PORT) a loopback
    /// TCP address. Ignored when systemd passes the sockets in.
    #[arg(long = "listen", value_name = "ADDRESS", value_parser = parse_listen)]
    listen: Vec<ListenAddr>,
}

impl ServeArgs {
    pub fn is_empty(&self) -> bool {
        self.listen.is_empty()
    }
}

/// One `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// The built-in default unix socket for whoever runs the daemon.
    DefaultUnix,
    Unix(PathBuf),
    Tcp(SocketAddr),
}

fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    if s == "unix" {
        return Ok(ListenAddr::DefaultUnix);
    }
    if let Some(path) = crate::config::unix_address(s) {
        return path.map(ListenAddr::Unix);
    }
    let hostport = s
        .strip_prefix("grpc://")
        .or_else(|| s.strip_prefix("tcp://"))
        .or_else(|| s.strip_prefix("tcp:"))
        .unwrap_or(s);
    let addr: SocketAddr = hostport.parse().map_err(|_| {
        format!("{s:?} is not `unix`, unix:/PATH or a loopback HOST:PORT such as 127.0.0.1:50052")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; callers are identified only on loopback"
        ));
    }
    Ok(ListenAddr::Tcp(addr))
}

/// `listen` with the `--listen` addresses instead of its own, if any were
/// given.
fn apply(listen: &mut Listen, given: &[ListenAddr]) -> Result<(), String> {
    if given.is_empty() {
        return Ok(());
    }
    let unix: Vec<PathBuf> = given
        .iter()
        .filter_map(|a| match a {
            ListenAddr::DefaultUnix => Config::builtin().listen.unix,
            ListenAddr::Unix(p) => Some(p.clone()),
            ListenAddr::Tcp(_) => None,
        })
        .collect();
    if unix.len() > 1 {
        return Err("--listen: one unix socket at most".into());
    }
    listen.unix = unix.into_iter().next();
    listen.tcp = given
        .iter()
        .filter_map(|a| match a {
            ListenAddr::Tcp(t) => Some(*t),
            _ => None,
        })
        .collect();
    Ok(())
}

fn config_name(path: Option<&Path>) -> String {
    path.map_or_else(
        || "built-in configuration".into(),
        |p| p.display().to_string(),
    )
}

pub fn serve(config_path: Option<PathBuf>, args: ServeArgs) -> ExitCode {
    let loaded = match &config_path {
        Some(p) => Config::load_with_warnings(p),
        None => Ok((Config::builtin(), Vec::new())),
    };
    let (mut config, warnings) = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nativelink-lre: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = apply(&mut config.listen, &args.listen) {
        eprintln!("nativelink-lre: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // The upstream's files (certificates, keys, tokens) are read now, so
    // that a bad one is a configuration error like any other.
    let upstream = match upstream::Settings::load(&config.upstream) {
        Ok(u) => u,
        Err(e) => {
            eprintln!(
                "nativelink-lre: {}: {e}",
                config_name(config_path.as_deref())
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&config.log_level);
    match &config_path {
        Some(p) => tracing::info!("configuration from {}", p.display()),
        None => tracing::info!("no configuration file given; using the built-in defaults"),
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // A fallback directory in /tmp that another user made is never used.
    let paths = [Some(config.state_dir()), config.listen.unix.as_deref()];
    for path in paths.into_iter().flatten() {
        if let Err(e) = private_dir::guard(path, true) {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    }
    // One daemon per state directory, before anything in it is touched.
    let _lock = match state_dir::lock(config.state_dir()) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Take the activated sockets before any other thread exists: this also
    // clears LISTEN_* from our environment.
    let (listeners, source) = match activation::acquire(&config.listen) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::serve(config, upstream, listeners, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(parse_listen("unix").unwrap(), ListenAddr::DefaultUnix);
        assert_eq!(
            parse_listen("unix:///run/x/sock").unwrap(),
            ListenAddr::Unix("/run/x/sock".into())
        );
        assert_eq!(
            parse_listen("127.0.0.1:50052").unwrap(),
            ListenAddr::Tcp("127.0.0.1:50052".parse().unwrap())
        );
        assert_eq!(
            parse_listen("grpc://[::1]:1").unwrap(),
            ListenAddr::Tcp("[::1]:1".parse().unwrap())
        );
        assert!(parse_listen("0.0.0.0:1").unwrap_err().contains("loopback"));
        assert!(parse_listen("unix:rel").is_err());
    }

    #[test]
    fn listen_replaces_both_unix_and_tcp() {
        let mut l = Config::builtin().listen;
        apply(&mut l, &[ListenAddr::Unix("/tmp/s".into())]).unwrap();
        assert_eq!(l.unix.as_deref(), Some(Path::new("/tmp/s")));
        assert!(l.tcp.is_empty());
        let mut l = Config::builtin().listen;
        apply(&mut l, &[ListenAddr::Tcp("127.0.0.1:7".parse().unwrap())]).unwrap();
        assert_eq!(l.unix, None);
        assert_eq!(l.tcp.len(), 1);
    }
}
