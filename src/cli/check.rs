//! `nativelink-lre check-config [--no-files] [FILE]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::EXIT_CONFIG;
use super::words::count;
use crate::config::{Config, SYSTEM_CONFIG};
use crate::upstream;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Do not read the files the configuration names (the upstream's CA,
    /// certificate, key and header files), for checking where they are not
    /// visible, such as a Nix build.
    #[arg(long)]
    no_files: bool,
    /// The file to check. Default: the file of --config, else
    /// /etc/nativelink-lre/config.toml.
    file: Option<PathBuf>,
}

/// The file to check: FILE, else `--config`, else the system's file.
fn which(config: Option<&Path>, args: &CheckArgs) -> Result<PathBuf, String> {
    if let Some(f) = args
        .file
        .as_ref()
        .or(config.map(Path::to_path_buf).as_ref())
    {
        return Ok(f.clone());
    }
    if Path::new(SYSTEM_CONFIG).exists() {
        return Ok(PathBuf::from(SYSTEM_CONFIG));
    }
    Err(format!(
        "nativelink-lre check-config: which file? Give it as `check-config FILE` or \
         `--config FILE`; {SYSTEM_CONFIG} does not exist"
    ))
}

pub fn check_config(config: Option<&Path>, args: &CheckArgs) -> ExitCode {
    let file = match which(config, args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let checked = Config::load_with_warnings(&file)
        .map_err(|e| e.to_string())
        .and_then(|(c, warnings)| {
            if !args.no_files {
                upstream::Settings::load(&c.upstream)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
            }
            Ok(warnings)
        });
    match checked {
        Ok(warnings) => {
            for w in &warnings {
                eprintln!("{w}");
            }
            if warnings.is_empty() {
                println!("{}: OK", file.display());
            } else {
                println!(
                    "{}: OK, with {}",
                    file.display(),
                    count(warnings.len() as u64, "warning", "warnings")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
