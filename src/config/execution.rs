//! `[execution]`: the Execution service, its queue and the platform this
//! worker satisfies.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::DurationValue;

/// `[execution]`: the Execution service and its queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Execution {
    /// Whether the Execution service is offered at all.
    pub enabled: bool,
    /// Actions run at once; 0 means the number of cores.
    pub max_concurrent_actions: usize,
    /// Timeout for actions that do not set one.
    pub default_timeout: DurationValue,
    /// The longest timeout an action may ask for.
    pub max_timeout: DurationValue,
    /// Time between SIGTERM and SIGKILL when an action is stopped.
    pub kill_grace: DurationValue,
    /// Platform properties this worker satisfies: name to value(s).
    pub platform: BTreeMap<String, OneOrMany>,
    /// The most actions one user runs at once; 0 means no cap.
    pub max_running_per_user: usize,
    /// The most actions of one user waiting at once; 0 means no cap.
    pub max_queued_per_user: usize,
    /// An action nobody has watched for this long is cancelled (queued
    /// ones are dropped before they start); 0 means never.
    pub unwatched_timeout: DurationValue,
    /// Refuse actions that do not name this worker's toolchain identity in
    /// the platform property `lre-toolchain`.
    pub require_toolchain: bool,
    /// Run one in this many executed actions again in the background and
    /// compare the results (determinism check); 0 means never.
    pub repeat: u64,
}

/// A string, or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn contains(&self, value: &str) -> bool {
        self.values().any(|v| v == value)
    }

    pub fn values(&self) -> impl Iterator<Item = &str> {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v).iter(),
            OneOrMany::Many(vs) => vs.iter(),
        }
        .map(String::as_str)
    }
}

impl Default for Execution {
    fn default() -> Self {
        let mut platform = BTreeMap::new();
        // The REAPI platform lexicon's spelling, which clients built on it
        // send, and the capitalised one that Bazel users write.
        platform.insert(
            "OSFamily".to_owned(),
            OneOrMany::Many(vec!["linux".to_owned(), "Linux".to_owned()]),
        );
        platform.insert(
            "ISA".to_owned(),
            OneOrMany::One(std::env::consts::ARCH.replace('_', "-")),
        );
        Execution {
            enabled: true,
            max_concurrent_actions: 0,
            default_timeout: DurationValue(Duration::from_secs(15 * 60)),
            max_timeout: DurationValue(Duration::from_secs(3 * 3600)),
            kill_grace: DurationValue(Duration::from_secs(2)),
            platform,
            max_running_per_user: 0,
            max_queued_per_user: 10_000,
            unwatched_timeout: DurationValue(Duration::from_secs(30)),
            require_toolchain: false,
            repeat: 0,
        }
    }
}

impl Execution {
    /// Refuses timeouts that cannot work. Returns the offending key and why.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_timeout.0.is_zero() {
            return Err(("max-timeout", "must be longer than zero".into()));
        }
        if self.default_timeout.0.is_zero() {
            return Err(("default-timeout", "must be longer than zero".into()));
        }
        if self.default_timeout.0 > self.max_timeout.0 {
            return Err((
                "default-timeout",
                format!(
                    "{}s is longer than max-timeout ({}s)",
                    self.default_timeout.0.as_secs(),
                    self.max_timeout.0.as_secs()
                ),
            ));
        }
        Ok(())
    }
}
