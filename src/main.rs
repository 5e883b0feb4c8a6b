//! The `nativelink-lre` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use nativelink_lre::config::Config;
use nativelink_lre::{activation, sandbox};
use nativelink_lre::{logging, server};

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
        /// The file to check.
        file: PathBuf,
    },
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
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve => serve(cli.config),
    }
}

fn serve(config_path: Option<PathBuf>) -> ExitCode {
    let config = match &config_path {
        Some(path) => Config::load(path),
        None => Ok(Config::builtin()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nativelink-lre: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&config.log_level);
    match &config_path {
        Some(p) => tracing::info!("configuration from {}", p.display()),
        None => tracing::info!("no configuration file given; using the built-in defaults"),
    }
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
    match runtime.block_on(server::serve(config, listeners, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
