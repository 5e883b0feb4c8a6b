//! The `nativelink-lre` command. The command line itself is in
//! `src/cli/`; this file only dispatches the sandbox helper first.

use std::process::ExitCode;

use nativelink_lre::{cli, sandbox};

fn main() -> ExitCode {
    // The sandbox helper must stay single-threaded: dispatch before clap,
    // logging or anything else runs.
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(sandbox::HELPER_ARG)) {
        let spec = args.next().unwrap_or_default();
        sandbox::helper::main(&spec);
    }
    cli::main()
}
