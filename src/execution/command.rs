//! Checking a Command before anything of it runs. What the action runs must
//! be exactly what the Command (and so its digest, the cache key) says;
//! anything that could not be passed on exactly is refused with
//! INVALID_ARGUMENT naming the culprit, never silently changed.
//!
//! - Arguments and environment values must not contain NUL (a C string
//!   would end there).
//! - Environment names must be non-empty and free of `=` and NUL (a name
//!   `LD_PRELOAD=/x` would otherwise set `LD_PRELOAD`, and a name
//!   `PATH=/attacker` would shadow `PATH` for the program while our own
//!   lookup used the real one), and unique (REAPI asks for them sorted and
//!   unique; order does not change what runs, so it is not enforced).
//! - The working directory and output paths must be relative paths that
//!   stay inside the input root (see `inputs::output_paths`).
//! - Platform property names must be non-empty, and names and values free
//!   of NUL.

use std::collections::HashSet;

use super::inputs;
use crate::proto::reapi;

/// Why a Command is refused: a sentence naming the field and the culprit.
pub fn check(command: &reapi::Command) -> Result<(), String> {
    if command.arguments.is_empty() {
        return Err("arguments is empty".into());
    }
    for (i, arg) in command.arguments.iter().enumerate() {
        if arg.contains('\0') {
            return Err(format!("arguments[{i}] contains a NUL character"));
        }
    }
    let mut names = HashSet::new();
    for (i, var) in command.environment_variables.iter().enumerate() {
        let which = || format!("environment_variables[{i}] ({:?})", quote(&var.name));
        if var.name.is_empty() {
            return Err(format!("environment_variables[{i}] has an empty name"));
        }
        if var.name.contains('=') {
            return Err(format!("{}: a name may not contain '='", which()));
        }
        if var.name.contains('\0') || var.value.contains('\0') {
            return Err(format!("{}: contains a NUL character", which()));
        }
        if !names.insert(var.name.as_str()) {
            return Err(format!("{}: the name is given twice", which()));
        }
    }
    inputs::output_paths(&command.working_directory, command)
        .map_err(|(path, reason)| format!("{:?}: {reason}", quote(&path)))?;
    #[allow(deprecated)]
    if let Some(platform) = &command.platform {
        check_platform(platform)?;
    }
    Ok(())
}

/// The same discipline for platform properties (the Action's or the
/// Command's).
pub fn check_platform(platform: &reapi::Platform) -> Result<(), String> {
    for (i, p) in platform.properties.iter().enumerate() {
        if p.name.is_empty() {
            return Err(format!("platform.properties[{i}] has an empty name"));
        }
        if p.name.contains('\0') || p.value.contains('\0') {
            return Err(format!(
                "platform.properties[{i}] ({:?}) contains a NUL character",
                quote(&p.name)
            ));
        }
    }
    Ok(())
}

/// Client text in a message, cut to a few hundred characters.
fn quote(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(env: &[(&str, &str)], args: &[&str]) -> reapi::Command {
        reapi::Command {
            arguments: args.iter().map(|s| s.to_string()).collect(),
            environment_variables: env
                .iter()
                .map(|(n, v)| reapi::command::EnvironmentVariable {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_command_passes() {
        let c = command(
            &[("PATH", "/bin"), ("A", "x=y")],
            &["/bin/sh", "-c", "true"],
        );
        assert_eq!(check(&c), Ok(()));
    }

    #[test]
    fn environment_that_could_not_be_passed_exactly_is_refused() {
        for (env, needle) in [
            (vec![("LD_PRELOAD=/x", "")], "may not contain '='"),
            (vec![("PATH=/attacker", "")], "PATH=/attacker"),
            (vec![("", "v")], "empty name"),
            (vec![("A\0B", "v")], "NUL"),
            (vec![("A", "v\0w")], "NUL"),
            (vec![("A", "1"), ("A", "2")], "given twice"),
        ] {
            let e = check(&command(&env, &["true"])).unwrap_err();
            assert!(e.contains(needle), "{env:?}: {e}");
        }
    }

    #[test]
    fn arguments_and_paths_are_checked() {
        assert!(
            check(&command(&[], &[]))
                .unwrap_err()
                .contains("arguments is empty")
        );
        assert!(
            check(&command(&[], &["a\0b"]))
                .unwrap_err()
                .contains("arguments[0]")
        );
        let mut c = command(&[], &["true"]);
        c.working_directory = "/abs".into();
        assert!(check(&c).unwrap_err().contains("/abs"));
        let mut c = command(&[], &["true"]);
        c.output_paths = vec!["../../out".into()];
        assert!(check(&c).is_err());
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        let long = "X".repeat(100_000) + "=";
        let e = check(&command(&[(&long, "")], &["true"])).unwrap_err();
        assert!(e.len() < 500, "{} bytes", e.len());
    }
}
