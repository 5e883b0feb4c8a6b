//! The `nativelink-lre` command line: the arguments (clap), and one
//! function per command. `src/main.rs` only keeps the sandbox helper's
//! dispatch, which must run before any of this.

pub(crate) mod address;
mod check;
mod determinism;
mod serve;
mod store;
pub(crate) mod words;

pub mod progress;
pub mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

pub use address::Target;

/// Exit status for configuration and usage errors (clap uses 2 as well).
pub const EXIT_CONFIG: u8 = 2;

/// A local Bazel Remote Execution API v2 service: a shared CAS and action
/// cache for every user of this machine.
#[derive(Parser)]
#[command(
    name = "nativelink-lre",
    version,
    about,
    long_about = None
)]
pub struct Cli {
    /// Configuration file (TOML; see nativelink-lre.toml(5)). Without it the
    /// daemon uses the built-in defaults.
    #[arg(short, long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Options of `serve`, which is what runs when no command is given.
    #[command(flatten)]
    serve: serve::ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve(serve::ServeArgs),
    /// Check a configuration file: report the first error with its line and
    /// key, and warn about values that are probably not meant.
    CheckConfig(check::CheckArgs),
    /// Check what this host lets the daemon enforce, and why not: user
    /// namespaces, cgroups, seccomp, the store's file system, descriptors,
    /// sockets, toolchain paths, the upstream. PASS, WARN or FAIL, each with
    /// the fix.
    Doctor {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in the daemon's sandbox (no cache). Exits with the
    /// command's exit status, 124 on timeout, 125 if it could not be run.
    Run(run::RunArgs),
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
        /// The size to shrink to, such as 5GiB or 1500MiB (whole numbers
        /// only).
        #[arg(long = "target", value_name = "SIZE", value_parser = store::parse_size)]
        size: Option<u64>,
    },
    /// Re-hash the store and remove every blob that does not match its name.
    Verify {
        #[command(flatten)]
        target: Target,
    },
    /// Run cached actions again in the sandbox, without storing the result,
    /// and compare exit code, stdout and every output with the cached
    /// entry. Exits 0 if every action gave the same result, 3 if one
    /// differed, 4 if one could not be checked.
    Check(determinism::CheckArgs),
    /// Print a completion script for a shell, for example
    /// `nativelink-lre completions bash > /usr/share/bash-completion/completions/nativelink-lre`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// The clap description of the command line (for completions and tests).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
    if cli.command.is_some() && !cli.serve.is_empty() {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--listen is an option of serve: give it with no command or after `serve`",
            )
            .exit();
    }
    match cli.command {
        None => serve::serve(config, cli.serve),
        Some(Command::Serve(args)) => serve::serve(config, args),
        Some(Command::CheckConfig(args)) => check::check_config(config.as_deref(), &args),
        Some(Command::Doctor { target, json }) => {
            crate::doctor::run(config.as_deref(), &target, json)
        }
        Some(Command::Run(args)) => run::run(config.as_deref(), args),
        Some(Command::Status { target, json }) => store::status(config.as_deref(), &target, json),
        Some(Command::Gc { target, size }) => store::gc(config.as_deref(), &target, size),
        Some(Command::Verify { target }) => store::verify(config.as_deref(), &target),
        Some(Command::Check(args)) => determinism::check(config.as_deref(), args),
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "nativelink-lre", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nativelink-lre completions: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn run_takes_a_command_without_double_dash() {
        let cli = Cli::try_parse_from(["nativelink-lre", "run", "--json", "sh", "-c", "echo hi"])
            .unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.command, ["sh", "-c", "echo hi"]);
        assert!(args.json);
        let cli = Cli::try_parse_from(["nativelink-lre", "run", "--", "ls", "--json"]).unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.command, ["ls", "--json"]);
        assert!(!args.json);
    }

    #[test]
    fn listen_works_with_and_without_serve() {
        for argv in [
            &["nativelink-lre", "--listen", "unix"][..],
            &["nativelink-lre", "serve", "--listen", "unix"][..],
        ] {
            Cli::try_parse_from(argv).unwrap();
        }
        assert!(Cli::try_parse_from(["nativelink-lre", "status", "--listen", "unix"]).is_err());
        let cli = Cli::try_parse_from(["nativelink-lre", "--config", "f", "check-config"]).unwrap();
        assert!(cli.config.is_some() && cli.serve.is_empty());
    }
}
