//! The `nativelink-lre` command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use nativelink_lre::config::{Config, SYSTEM_SOCKET};
use std::time::Duration;

use nativelink_lre::{activation, client, sandbox};
use nativelink_lre::{logging, private_dir, server, state_dir, upstream};

/// A local Bazel Remote Execution API v2 service: a shared CAS and action
/// cache for every user of this machine.
#[derive(Parser)]
#[command(name = "nativelink-lre", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML; see nativelink-lre.toml(5)). Without it the
    /// built-in defaults are used.
    #[arg(short, long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Check a configuration file and report the first error with its line
    /// and column.
    CheckConfig {
        /// Do not read the files the configuration names (the upstream's
        /// CA, certificate, key and header files), for checking where they
        /// are not visible, such as a Nix build.
        #[arg(long)]
        no_files: bool,
        /// The file to check.
        file: PathBuf,
    },
    /// Run a command in the daemon's sandbox (an empty input root; no cache).
    /// Exits with the command's exit status, 124 on timeout, 125 if it could
    /// not be run.
    Run {
        #[command(flatten)]
        target: Target,
        /// Timeout in seconds (the daemon's default otherwise).
        #[arg(long)]
        timeout: Option<u64>,
        /// A platform property, such as lre-memory-max=64MiB.
        #[arg(long = "property", value_name = "NAME=VALUE", value_parser = parse_property)]
        properties: Vec<(String, String)>,
        /// Print a JSON report instead of the command's output.
        #[arg(long)]
        json: bool,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show what the daemon is doing: store size, hit rate, running and
    /// queued actions, and which limits and namespaces are active.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shrink the store now, to the low watermark or to --target.
    Gc {
        #[command(flatten)]
        target: Target,
        /// The size to shrink to, such as 5GiB.
        #[arg(long = "target", value_name = "SIZE")]
        size: Option<String>,
    },
    /// Re-hash the store and remove every blob that does not match its name.
    Verify {
        #[command(flatten)]
        target: Target,
    },
}

/// Where the daemon is.
#[derive(clap::Args)]
struct Target {
    /// unix:///PATH or grpc://HOST:PORT. Default: the unix socket of
    /// --config, or the built-in default socket.
    #[arg(long, value_name = "ADDRESS")]
    address: Option<String>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

/// Exit status for configuration and usage errors (clap uses 2 as well).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // The sandbox helper must stay single-threaded: dispatch before clap,
    // logging or anything else runs.
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(sandbox::HELPER_ARG)) {
        let spec = args.next().unwrap_or_default();
        sandbox::helper::main(&spec);
    }
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { file, no_files } => {
            let checked = Config::load(&file)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    if no_files {
                        return Ok(());
                    }
                    upstream::Settings::load(&c.upstream)
                        .map(drop)
                        .map_err(|e| format!("{}: {e}", file.display()))
                });
            match checked {
                Ok(()) => {
                    println!("{}: OK", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Serve => serve(cli.config),
        Command::Run {
            target,
            timeout,
            properties,
            json,
            command,
        } => client_command(&cli.config, &target, |ch| async move {
            let report =
                client::run(&ch, &command, timeout.map(Duration::from_secs), &properties).await?;
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", report.stdout);
            eprint!("{}", report.stderr);
            let code = tonic::Code::from(report.status_code);
            Ok(match code {
                tonic::Code::Ok => ExitCode::from(report.exit_code.clamp(0, 255) as u8),
                tonic::Code::DeadlineExceeded => {
                    eprintln!("nativelink-lre run: {}", report.status_message);
                    ExitCode::from(124)
                }
                _ => {
                    eprintln!("nativelink-lre run: {code:?}: {}", report.status_message);
                    ExitCode::from(125)
                }
            })
        }),
        Command::Status { target, json } => client_command(&cli.config, &target, |ch| async move {
            let s = client::status(&ch).await?;
            if json {
                println!("{}", status_json(&s));
            } else {
                print!("{}", client::format_status(&s));
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Gc { target, size } => {
            let size = match size
                .as_deref()
                .map(nativelink_lre::config::ByteSize::parse)
                .transpose()
            {
                Ok(s) => s.map(|s| s.0),
                Err(e) => {
                    eprintln!("nativelink-lre gc: --target: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            client_command(&cli.config, &target, |ch| async move {
                let r = client::gc(&ch, size).await?;
                println!(
                    "removed {} files ({} bytes) in {} ms; the store holds {} bytes (was {})",
                    r.removed_files, r.removed_bytes, r.duration_ms, r.bytes_after, r.bytes_before
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Verify { target } => client_command(&cli.config, &target, |ch| async move {
            let r = client::verify(&ch).await?;
            for p in &r.removed_paths {
                println!("removed {p}: its contents do not match its name");
            }
            println!(
                "checked {} blobs and {} action cache entries in {} ms; removed {}",
                r.checked, r.action_cache_checked, r.duration_ms, r.removed
            );
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn status_json(s: &nativelink_lre::proto::nativelink_lre::v1::StatusResponse) -> String {
    serde_json::json!({
        "version": s.version,
        "uptime_seconds": s.uptime_seconds,
        "state_dir": s.state_dir,
        "store_bytes": s.store_bytes,
        "store_bytes_exact": s.store_bytes_exact,
        "store_limit_bytes": s.store_limit_bytes,
        "action_cache_hits": s.action_cache_hits,
        "action_cache_misses": s.action_cache_misses,
        "actions_executed": s.actions_executed,
        "execute_cache_hits": s.execute_cache_hits,
        "execution_enabled": s.execution_enabled,
        "max_concurrent_actions": s.max_concurrent_actions,
        "running_count": s.running_count,
        "running": s.running.iter().map(|r| serde_json::json!({
            "operation": r.operation, "action_digest": r.action_digest, "uids": r.uids, "stage": r.stage,
            "user": r.user, "argv0": r.argv0, "elapsed_seconds": r.elapsed_seconds,
        })).collect::<Vec<_>>(),
        "queued": s.queued.iter().map(|q| serde_json::json!({"uid": q.uid, "count": q.count})).collect::<Vec<_>>(),
        "queued_count": s.queued_count,
        "only_own": s.only_own,
        "lookups_by_user": s.lookups_by_user.iter().map(|u| serde_json::json!({"uid": u.uid, "hits": u.hits, "misses": u.misses})).collect::<Vec<_>>(),
        "store_per_user_max": s.store_per_user_max,
        "store_by_user": s.store_by_user.iter().map(|u| serde_json::json!({"uid": u.uid, "bytes": u.bytes})).collect::<Vec<_>>(),
        "cgroup_controllers": s.cgroup_controllers,
        "cgroup_missing": s.cgroup_missing,
        "cgroup_base": s.cgroup_base,
        "namespaces": s.namespaces,
        "per_action_uids": s.per_action_uids,
        "connections": s.connections,
        "uploads_in_progress": s.uploads_in_progress,
        "uploads_waiting": s.uploads_waiting,
        "upload_bytes": s.upload_bytes,
        "upstream": s.upstream.as_ref().map(upstream_json),
    })
    .to_string()
}

fn upstream_json(
    u: &nativelink_lre::proto::nativelink_lre::v1::UpstreamStatus,
) -> serde_json::Value {
    serde_json::json!({
        "endpoint": u.endpoint, "instance_name": u.instance_name, "state": u.state,
        "down_seconds": u.down_seconds, "next_retry_seconds": u.next_retry_seconds,
        "error": u.error, "last_error": u.last_error,
        "read_through": u.read_through, "write_back": u.write_back,
        "remote_execution": u.remote_execution,
        "action_cache_hits": u.action_cache_hits, "action_cache_misses": u.action_cache_misses,
        "blobs_fetched": u.blobs_fetched, "bytes_fetched": u.bytes_fetched,
        "blobs_rejected": u.blobs_rejected, "pushes_queued": u.pushes_queued,
        "pushes_done": u.pushes_done, "pushes_dropped": u.pushes_dropped,
        "pushes_failed": u.pushes_failed, "blobs_pushed": u.blobs_pushed,
        "remote_executions": u.remote_executions, "remote_fallbacks": u.remote_fallbacks,
        "calls_failed": u.calls_failed,
    })
}

/// Connects to the daemon and runs one client command on a small runtime.
/// Exit status 1 when the daemon cannot be reached or refuses the call.
fn client_command<F, Fut>(config: &Option<PathBuf>, target: &Target, f: F) -> ExitCode
where
    F: FnOnce(tonic::transport::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, client::ClientError>>,
{
    let config_path_given = config.as_ref();
    let address = match &target.address {
        Some(a) => a.clone(),
        None => {
            let config = Config::load_or_builtin(config.as_deref());
            match config {
                Ok(c) => match &c.listen.unix {
                    // An ordinary user without a daemon of their own talks
                    // to the system's.
                    Some(p)
                        if config_path_given.is_none()
                            && !p.exists()
                            && Path::new(SYSTEM_SOCKET).exists() =>
                    {
                        format!("unix://{SYSTEM_SOCKET}")
                    }
                    Some(p) => format!("unix://{}", p.display()),
                    None => format!(
                        "grpc://{}",
                        c.listen
                            .tcp
                            .first()
                            .map_or("127.0.0.1:50051".into(), |a| a.to_string())
                    ),
                },
                Err(e) => {
                    eprintln!("nativelink-lre: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
    };
    if let Some(path) = address.strip_prefix("unix://")
        && let Err(e) = private_dir::guard(Path::new(path), false)
    {
        eprintln!("nativelink-lre: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nativelink-lre: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let result = match client::connect(&address).await {
            Ok(ch) => f(ch).await,
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| {
            eprintln!("nativelink-lre: {address}: {e}");
            ExitCode::FAILURE
        })
    })
}

fn config_name(path: Option<&Path>) -> String {
    path.map_or_else(
        || "built-in configuration".into(),
        |p| p.display().to_string(),
    )
}

fn serve(config_path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load_or_builtin(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nativelink-lre: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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
