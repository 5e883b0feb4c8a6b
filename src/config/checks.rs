//! Checks of values that parse but cannot work (a relative `state-dir`, a
//! `log-level` that is no level), and warnings for values that work but
//! probably not as meant (a user or group in `allowed-users` or
//! `trusted-users` that does not exist on this host).

use std::fmt;
use std::path::{Path, PathBuf};

use super::{Config, find_key, line_offset, messages};

/// Refuses what cannot work. Returns the offending key and why.
pub(super) fn check(config: &Config) -> Result<(), (&'static str, String)> {
    if let Some(dir) = &config.state_dir
        && !dir.is_absolute()
    {
        return Err((
            "state-dir",
            format!(
                "{} is a relative path; write the whole path, such as \"/var/lib/nativelink-lre\"",
                dir.display()
            ),
        ));
    }
    if let Some(socket) = &config.listen.unix
        && !socket.as_os_str().is_empty()
        && !socket.is_absolute()
    {
        return Err((
            "unix",
            format!(
                "{} is a relative path; write the whole path, or \"\" for no unix socket",
                socket.display()
            ),
        ));
    }
    check_log_level(&config.log_level).map_err(|why| ("log-level", why))
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A log filter: comma-separated directives, each a level or
/// `TARGET=LEVEL`. A bare word that is not a level would be read as a
/// target name and silence everything else, so it is refused.
fn check_log_level(filter: &str) -> Result<(), String> {
    let hint = "use error, warn, info, debug or trace, optionally followed by TARGET=LEVEL \
                directives such as \"info,nativelink_lre=debug\"";
    if filter.trim().is_empty() {
        return Err(format!("the filter is empty; {hint}"));
    }
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(format!("{directive:?} has no target before '='; {hint}")),
            None => directive,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim())) {
            return Err(format!("{level:?} is not a log level; {hint}"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| format!("{filter:?}: {e}; {hint}"))
}

/// A value that is accepted but probably not what was meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub path: PathBuf,
    /// `:LINE` when the key appears in the file, empty otherwise.
    pub place: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}: warning: {}: {}",
            self.path.display(),
            self.place,
            self.key,
            self.message
        )
    }
}

/// The warnings for a configuration read from `text` (its file `path`).
pub(super) fn warnings(config: &Config, text: &str, path: &Path) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    for (key, list) in [
        ("allowed-users", &config.allowed_users),
        ("trusted-users", &config.trusted_users),
    ] {
        for entry in list {
            if let Some(why) = unknown_entry(entry) {
                let line = find_key(text, key);
                out.push(ConfigWarning {
                    path: path.to_owned(),
                    place: line.map(|l| format!(":{l}")).unwrap_or_default(),
                    key: line
                        .and_then(|l| messages::key_path_at(text, line_offset(text, l)))
                        .unwrap_or_else(|| key.to_owned()),
                    message: why,
                });
            }
        }
    }
    out
}

/// Why a user-list entry matches nobody on this host, if it does.
fn unknown_entry(entry: &str) -> Option<String> {
    if entry == "*" || (!entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    if let Some(group) = entry.strip_prefix('@') {
        return match nix::unistd::Group::from_name(group) {
            Ok(Some(_)) => None,
            Ok(None) => Some(format!(
                "there is no group {group:?} on this host, so {entry:?} matches nobody \
                 (until the group exists)"
            )),
            Err(e) => Some(format!("cannot look up the group {group:?}: {e}")),
        };
    }
    match nix::unistd::User::from_name(entry) {
        Ok(Some(_)) => None,
        Ok(None) => Some(format!(
            "there is no user {entry:?} on this host, so the entry matches nobody \
             (until the user exists; a uid such as \"1000\" needs no account)"
        )),
        Err(e) => Some(format!("cannot look up the user {entry:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_and_directives() {
        for good in ["info", "WARN", "info,nativelink_lre=debug", "h2=off,debug"] {
            check_log_level(good).unwrap();
        }
        for bad in ["verbose", "", "info,=debug", "nativelink_lre=loud"] {
            let err = check_log_level(bad).unwrap_err();
            assert!(err.contains("error, warn, info"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_users_and_groups_are_named() {
        assert_eq!(unknown_entry("root"), None);
        assert_eq!(unknown_entry("@root"), None);
        assert_eq!(unknown_entry("4242"), None);
        assert_eq!(unknown_entry("*"), None);
        let w = unknown_entry("no-such-user-lre").unwrap();
        assert!(w.contains("no user \"no-such-user-lre\""), "{w}");
        let w = unknown_entry("@no-such-group-lre").unwrap();
        assert!(w.contains("no group \"no-such-group-lre\""), "{w}");
    }
}
