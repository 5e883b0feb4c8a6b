//! `nativelink-lre run [OPTIONS] [--] COMMAND [ARGUMENT...]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::address::{Target, with_daemon};
use crate::client::{self, RunRequest, code_name};
use crate::config::DurationValue;

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// Timeout, such as 30, 90s or 10m (a bare number is seconds). Default:
    /// the daemon's default-timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// A platform property, such as lre-memory-max=64MiB.
    #[arg(long = "property", value_name = "NAME=VALUE", value_parser = parse_pair)]
    properties: Vec<(String, String)>,
    /// An environment variable of the command (besides PATH=/usr/bin:/bin,
    /// which --env PATH=... replaces).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Upload this directory as the input root: the command runs in a copy
    /// of it. Default: an empty input root.
    #[arg(long, value_name = "DIR")]
    input: Option<PathBuf>,
    /// Print a JSON report instead of the command's output.
    #[arg(long, conflicts_with = "stream")]
    pub json: bool,
    /// Print the command's output while it runs, not only when it ends.
    #[arg(long)]
    stream: bool,
    /// The program and its arguments. `--` is needed only when the program
    /// name starts with `-`.
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    DurationValue::parse(s).map(|d| d.0)
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (name, value) = parse_pair(s)?;
    if name.contains('\0') || value.contains('\0') {
        return Err(format!("{s:?} contains a NUL character"));
    }
    Ok((name, value))
}

pub fn run(config: Option<&Path>, args: RunArgs) -> ExitCode {
    if let Some(dir) = &args.input
        && !dir.is_dir()
    {
        eprintln!(
            "nativelink-lre run: --input {}: not a directory",
            dir.display()
        );
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let request = RunRequest {
        args: args.command,
        env: args.env,
        timeout: args.timeout,
        properties: args.properties,
        input: args.input,
        stream: args.stream,
    };
    let json = args.json;
    with_daemon(config, &args.target, |ch| async move {
        let report = client::run(&ch, &request).await?;
        if json {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            return Ok(ExitCode::SUCCESS);
        }
        // What was not copied while the command ran (all of it, without
        // --stream).
        let rest =
            |bytes: &[u8], done: u64| bytes.get(done as usize..).unwrap_or_default().to_vec();
        use std::io::Write;
        let _ = std::io::stdout().write_all(&rest(&report.stdout_bytes, report.streamed.0));
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(&rest(&report.stderr_bytes, report.streamed.1));
        for w in &report.warnings {
            eprintln!("nativelink-lre run: warning: {w}");
        }
        let code = tonic::Code::from(report.status_code);
        Ok(match code {
            tonic::Code::Ok => ExitCode::from(report.exit_code.clamp(0, 255) as u8),
            tonic::Code::DeadlineExceeded => {
                eprintln!("nativelink-lre run: {}", report.status_message);
                ExitCode::from(124)
            }
            _ => {
                eprintln!(
                    "nativelink-lre run: the command could not be run: {} ({})",
                    report.status_message,
                    code_name(code)
                );
                ExitCode::from(125)
            }
        })
    })
}
