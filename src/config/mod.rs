//! The daemon's configuration: a TOML file read with serde.
//!
//! Every key is optional; the built-in defaults work for whoever runs the
//! daemon (root gets system paths, anyone else per-user paths). Unknown keys
//! are errors that name the key, the line and the column. Every key here is
//! documented in `man/nativelink-lre.toml.5`; keep the two in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod cgroup;
mod checks;
mod errors;
mod execution;
mod limits;
mod listen;
#[cfg(test)]
mod man_page;
mod messages;
mod metrics;
mod sandbox;
mod store;
#[cfg(test)]
mod tests;
mod upstream;
mod values;

pub use cgroup::{Cgroup, UnenforceableLimits};
pub use checks::ConfigWarning;
pub use errors::ConfigError;
use errors::{find_key, invalid_at, line_and_column, line_offset};
pub use execution::{Execution, OneOrMany};
pub use limits::Limits;
pub use listen::{Listen, unix_address};
pub use metrics::Metrics;
pub use sandbox::{PrivateInputs, Sandbox};
pub use store::{ActionCache, Store};
pub use upstream::{Endpoint, Upstream};
pub use values::{ByteSize, DurationValue, FileMode};

/// The whole configuration, after defaults have been resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Where the store lives. Resolved by [`Config::resolve_defaults`].
    pub state_dir: Option<PathBuf>,
    /// Instance names served with the default settings. Any name neither
    /// here nor in `[instances]` is refused.
    pub instance_names: Vec<String>,
    /// `[instances.NAME]`: instance names served with their own settings.
    pub instances: BTreeMap<String, Instance>,
    /// Who may use the service at all (`*`, user names, uids, `@group`).
    pub allowed_users: Vec<String>,
    /// Whose action-cache writes go to the shared cache.
    pub trusted_users: Vec<String>,
    /// What happens to an untrusted caller's UpdateActionResult.
    pub untrusted_action_cache_writes: UntrustedWrites,
    /// Exit after this long with no connections, when socket-activated.
    pub idle_timeout: DurationValue,
    /// Default log filter; `RUST_LOG` overrides it.
    pub log_level: String,
    pub listen: Listen,
    pub store: Store,
    pub action_cache: ActionCache,
    pub execution: Execution,
    pub sandbox: Sandbox,
    pub cgroup: Cgroup,
    pub upstream: Upstream,
    pub limits: Limits,
    pub metrics: Metrics,
}

/// `[instances.NAME]`: what an instance name selects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Instance {
    /// Which tree becomes the sandbox's `/` for the instance's actions
    /// (those that do not choose with `lre-root`): `"host"` or `"input"`.
    pub root: crate::sandbox::RootMode,
}

/// The policy for action-cache writes by callers who are not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UntrustedWrites {
    /// The write goes to the caller's private view of the cache.
    Private,
    /// The write is refused with PERMISSION_DENIED.
    Deny,
}

/// Who may use a daemon, and whose cache writes are shared, when the file
/// does not say: a system (root) daemon serves every local user and trusts
/// root; a per-user daemon serves and trusts its owner alone, since every
/// action it runs runs as that owner.
fn default_users() -> (Vec<String>, Vec<String>) {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        (vec!["*".into()], vec!["root".into()])
    } else {
        (vec![uid.to_string()], vec![uid.to_string()])
    }
}

impl Default for Config {
    fn default() -> Self {
        let (allowed_users, trusted_users) = default_users();
        Config {
            state_dir: None,
            instance_names: vec![String::new()],
            instances: BTreeMap::new(),
            allowed_users,
            trusted_users,
            untrusted_action_cache_writes: UntrustedWrites::Private,
            idle_timeout: DurationValue(Duration::from_secs(600)),
            log_level: "info".into(),
            listen: Listen::default(),
            store: Store::default(),
            action_cache: ActionCache::default(),
            execution: Execution::default(),
            sandbox: Sandbox::default(),
            cgroup: Cgroup::default(),
            upstream: Upstream::default(),
            limits: Limits::default(),
            metrics: Metrics::default(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` is used only in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let start = e.span().map(|span| span.start);
            let (line, column) = start
                .map(|start| line_and_column(text, start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: messages::describe(text, start, e.message()),
            }
        })?;
        config.validate(text, path)?;
        config.resolve_defaults();
        Ok(config)
    }

    /// As [`Config::load`], with the warnings for values that are accepted
    /// but probably not meant (see [`ConfigWarning`]).
    pub fn load_with_warnings(path: &Path) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text, path)?;
        let warnings = checks::warnings(&config, &text, path);
        Ok((config, warnings))
    }

    /// The file at `path`, or the built-in configuration when none is given.
    pub fn load_or_builtin(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Config::load(path),
            None => Ok(Config::builtin()),
        }
    }

    /// The built-in configuration used when no file is given.
    pub fn builtin() -> Config {
        let mut config = Config::default();
        config.resolve_defaults();
        config
    }

    /// Every check, in the order their errors are reported; the first
    /// failing one names its key, placed at its line in the file.
    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        checks::check(self)
            .and_then(|()| self.store.check())
            .and_then(|()| self.check_names_and_users())
            .and_then(|()| self.listen.check())
            .and_then(|()| self.execution.check())
            .and_then(|()| self.sandbox.check())
            .and_then(|()| self.cgroup.check())
            .and_then(|()| self.metrics.endpoint().map(drop).map_err(|m| ("listen", m)))
            .and_then(|()| self.upstream.check())
            .and_then(|()| self.limits.check())
            .map_err(|(key, message)| invalid_at(text, path, key, message))
    }

    /// The instance names must be servable and the user lists name someone.
    fn check_names_and_users(&self) -> Result<(), (&'static str, String)> {
        if self.instance_names.is_empty() && self.instances.is_empty() {
            return Err((
                "instance-names",
                "the list is empty and there is no [instances] table, so no request could be served"
                    .into(),
            ));
        }
        for name in &self.instance_names {
            crate::resource::check_instance_name(name)
                .map_err(|why| ("instance-names", format!("{name:?}: {why}")))?;
        }
        for name in self.instances.keys() {
            crate::resource::check_instance_name(name)
                .map_err(|why| ("instances", format!("[instances.{name:?}]: {why}")))?;
        }
        for (key, list) in [
            ("allowed-users", &self.allowed_users),
            ("trusted-users", &self.trusted_users),
        ] {
            if let Some(entry) = list.iter().find(|e| e.is_empty() || *e == "@") {
                return Err((key, format!("{entry:?} names no user or group")));
            }
        }
        Ok(())
    }

    /// Fills in the defaults that depend on who runs the daemon.
    fn resolve_defaults(&mut self) {
        let root = nix::unistd::geteuid().is_root();
        if self.state_dir.is_none() {
            self.state_dir = Some(default_state_dir(root));
        }
        match &self.listen.unix {
            None => self.listen.unix = Some(default_socket(root)),
            Some(p) if p.as_os_str().is_empty() => self.listen.unix = None,
            Some(_) => {}
        }
    }

    /// Every instance name served and its settings: `instance-names`
    /// with the defaults, then the `[instances]` tables.
    pub fn served_instances(&self) -> BTreeMap<String, Instance> {
        let mut served: BTreeMap<String, Instance> = self
            .instance_names
            .iter()
            .map(|name| (name.clone(), Instance::default()))
            .collect();
        served.extend(self.instances.clone());
        served
    }

    pub fn state_dir(&self) -> &Path {
        self.state_dir
            .as_deref()
            .expect("state_dir is resolved when the config is built")
    }
}

fn default_state_dir(root: bool) -> PathBuf {
    // systemd's StateDirectory= tells us where it made the directory.
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // It may be a colon-separated list; ours is the first.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !first.is_empty() {
            return PathBuf::from(first);
        }
    }
    if root {
        return PathBuf::from("/var/lib/nativelink-lre");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| {
            PathBuf::from(format!("/tmp/nativelink-lre-{}", nix::unistd::geteuid()))
        });
    cache.join("nativelink-lre")
}

/// The system daemon's unix socket (the packaged socket unit's).
pub const SYSTEM_SOCKET: &str = "/run/nativelink-lre/socket";

/// The system daemon's configuration file, where the NixOS module writes
/// it. The daemon reads only the file given with `--config`; the client
/// commands read this one to find a system daemon that listens elsewhere.
pub const SYSTEM_CONFIG: &str = "/etc/nativelink-lre/config.toml";

fn default_socket(root: bool) -> PathBuf {
    if root {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(format!("/tmp/nativelink-lre-{}", nix::unistd::geteuid()))
        });
    runtime.join("nativelink-lre").join("socket")
}
