//! Instance names: which names the daemon serves, and what each selects.
//!
//! A client names an instance in every request (Bazel's
//! `--remote_instance_name`, BuildStream's `instance-name`). The served
//! names are `instance-names` (with the default settings) and the tables
//! of `[instances]`. Each selects:
//!
//! - the sandbox's root mode for the actions executed through it that do
//!   not choose one with the platform property `lre-root`
//!   ([`RootMode`]);
//! - with it, the partition of the action cache that its GetActionResult,
//!   UpdateActionResult and Execute see ([`Partition`]), so that a result
//!   produced under one root never answers a lookup made under the other.
//!
//! The CAS is the same for every instance: a blob is its bytes.

use std::collections::BTreeMap;

use crate::action_cache::Partition;
use crate::config::{self, Config};
use crate::sandbox::RootMode;

/// What a served instance name selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Instance {
    /// The root mode of actions that do not set `lre-root`.
    pub root: RootMode,
}

impl Instance {
    /// The action-cache partition its requests see: the one of its root
    /// mode. An action that picks the other mode with `lre-root` still
    /// uses this partition; that is sound because the property is part of
    /// the action's digest, so its result is the same whichever instance
    /// runs it.
    pub fn partition(&self) -> Partition {
        Partition::of(self.root)
    }
}

impl From<&config::Instance> for Instance {
    fn from(c: &config::Instance) -> Instance {
        Instance { root: c.root }
    }
}

/// The served instance names.
#[derive(Debug, Clone)]
pub struct Instances {
    served: BTreeMap<String, Instance>,
}

impl Instances {
    pub fn from_config(config: &Config) -> Instances {
        Instances {
            served: config
                .served_instances()
                .iter()
                .map(|(name, c)| (name.clone(), Instance::from(c)))
                .collect(),
        }
    }

    /// What `name` selects; `None` if it is not served.
    pub fn get(&self, name: &str) -> Option<Instance> {
        self.served.get(name).copied()
    }

    /// The served names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.served.keys().cloned().collect()
    }

    /// Whether some instance runs its actions in `root` mode by default.
    pub fn uses(&self, root: RootMode) -> bool {
        self.served.values().any(|i| i.root == root)
    }

    /// One line per instance that is not the default, for the log.
    pub fn describe(&self) -> Vec<String> {
        self.served
            .iter()
            .filter(|(_, i)| **i != Instance::default())
            .map(|(name, i)| format!("instance {name:?}: root = {:?}", i.root.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("test.toml")).unwrap()
    }

    #[test]
    fn tables_add_served_names_with_their_settings() {
        let i = Instances::from_config(&config(
            "instance-names = [\"\", \"main\"]\n[instances.buildstream]\nroot = \"input\"\n",
        ));
        assert_eq!(i.names(), ["", "buildstream", "main"]);
        assert_eq!(i.get("").unwrap().root, RootMode::Host);
        assert_eq!(i.get("main").unwrap().root, RootMode::Host);
        assert_eq!(i.get("buildstream").unwrap().root, RootMode::Input);
        assert_eq!(i.get("other"), None);
        assert!(i.uses(RootMode::Input));
        assert_eq!(i.describe(), ["instance \"buildstream\": root = \"input\""]);
    }

    #[test]
    fn a_table_overrides_the_defaults_of_a_listed_name() {
        let i = Instances::from_config(&config("[instances.\"\"]\nroot = \"input\"\n"));
        assert_eq!(i.names(), [""]);
        assert_eq!(i.get("").unwrap().root, RootMode::Input);
        assert_ne!(i.get("").unwrap().partition(), Partition::default());
    }

    #[test]
    fn the_default_is_the_empty_name_in_host_mode() {
        let i = Instances::from_config(&config(""));
        assert_eq!(i.names(), [""]);
        assert_eq!(i.get(""), Some(Instance::default()));
        assert!(!i.uses(RootMode::Input));
        assert_eq!(i.get("").unwrap().partition(), Partition::default());
    }

    #[test]
    fn bad_tables_are_refused_with_the_key() {
        let err = |text: &str| {
            Config::parse(text, std::path::Path::new("test.toml"))
                .unwrap_err()
                .to_string()
        };
        let msg = err("[instances.x]\nroot = \"chroot\"\n");
        assert!(
            msg.contains("test.toml:2:") && msg.contains("chroot"),
            "{msg}"
        );
        assert!(msg.contains("host") && msg.contains("input"), "{msg}");
        let msg = err("[instances.x]\nrot = \"input\"\n");
        assert!(msg.contains("test.toml:2:") && msg.contains("rot"), "{msg}");
        let msg = err("[instances.\"a/blobs\"]\n");
        assert!(
            msg.contains("instances") && msg.contains("a/blobs"),
            "{msg}"
        );
        let msg = err("instance-names = []\n");
        assert!(msg.contains("instance-names"), "{msg}");
        // An [instances] table alone is enough.
        assert!(
            Config::parse(
                "instance-names = []\n[instances.bst]\n",
                std::path::Path::new("t")
            )
            .is_ok()
        );
    }
}
