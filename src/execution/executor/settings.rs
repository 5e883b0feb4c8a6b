//! What the executor takes from the configuration at start-up, and its
//! counters for `status`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::cgroup;
use crate::config::{Config, OneOrMany, PrivateInputs, UnenforceableLimits};
use crate::instance::Instances;
use crate::sandbox;

/// Settings taken from the configuration at start-up.
pub struct Settings {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub kill_grace: Duration,
    pub platform: BTreeMap<String, OneOrMany>,
    pub read_only_paths: Vec<PathBuf>,
    pub tmp_size: u64,
    pub allow_host_network: bool,
    pub max_file_size: u64,
    pub max_exec_root_size: u64,
    pub private_inputs: PrivateInputs,
    pub limits: cgroup::Limits,
    pub worker: String,
    /// The served instance names and the root mode each selects.
    pub instances: Instances,
    pub unenforceable_limits: UnenforceableLimits,
    /// The resource limits and nice value of every command.
    pub rlimits: Vec<sandbox::rlimits::Rlimit>,
    pub nice: i32,
    /// The most input files bound read-only one by one.
    pub max_read_only_inputs: usize,
    /// Whether actions must name the toolchain identity.
    pub require_toolchain: bool,
    /// One in this many stored results is checked again (0: none).
    pub repeat: u64,
}

impl Settings {
    /// The settings of `config`, with what start-up has already worked
    /// out: the instances, the read-only paths in effect and the rlimits.
    pub fn from_config(
        config: &Config,
        instances: Instances,
        read_only_paths: Vec<PathBuf>,
        rlimits: Vec<sandbox::rlimits::Rlimit>,
    ) -> Settings {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Settings {
            default_timeout: config.execution.default_timeout.0,
            max_timeout: config.execution.max_timeout.0,
            kill_grace: config.execution.kill_grace.0,
            platform: config.execution.platform.clone(),
            read_only_paths,
            tmp_size: config.sandbox.tmp_size.0,
            allow_host_network: config.sandbox.allow_host_network,
            max_file_size: config.sandbox.max_file_size.0,
            max_exec_root_size: config.sandbox.max_exec_root_size.0,
            private_inputs: config.sandbox.private_inputs,
            limits: default_limits(&config.cgroup),
            worker: format!("nativelink-lre@{host}"),
            instances,
            unenforceable_limits: config.cgroup.unenforceable_limits,
            rlimits,
            nice: config.sandbox.nice,
            max_read_only_inputs: config.sandbox.max_read_only_inputs,
            require_toolchain: config.execution.require_toolchain,
            repeat: config.execution.repeat,
        }
    }
}

/// The limits every action gets (`[cgroup]`; 0 is none, swap always set).
pub fn default_limits(c: &crate::config::Cgroup) -> cgroup::Limits {
    cgroup::Limits {
        memory_max: (c.memory_max.0 > 0).then_some(c.memory_max.0),
        swap_max: Some(c.swap_max.0),
        pids_max: (c.pids_max > 0).then_some(c.pids_max),
        cpu_max: (c.cpu_max > 0.0).then_some(c.cpu_max),
    }
}

/// How many actions run at once: `execution.max-concurrent-actions`, or
/// one per core when 0; as root, at most one per uid of the sandbox range.
pub fn max_concurrent(config: &Config, root: bool) -> usize {
    let max = match config.execution.max_concurrent_actions {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if root {
        max.min(config.sandbox.uid_range_count as usize)
    } else {
        max
    }
}

/// Counters for `status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub executed: AtomicU64,
    pub cache_hits: AtomicU64,
    pub failed: AtomicU64,
    /// Determinism checks run, and those whose result differed.
    pub checks: AtomicU64,
    pub mismatches: AtomicU64,
    /// Results stored, to pick one in `repeat` for a background check.
    pub stored: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_are_none_and_swap_is_always_set() {
        let mut config = Config::default();
        config.cgroup.memory_max.0 = 0;
        config.cgroup.pids_max = 0;
        config.cgroup.cpu_max = 0.0;
        let l = default_limits(&config.cgroup);
        assert_eq!((l.memory_max, l.pids_max, l.cpu_max), (None, None, None));
        assert_eq!(l.swap_max, Some(config.cgroup.swap_max.0));
        config.cgroup.memory_max.0 = 1 << 30;
        config.cgroup.pids_max = 100;
        config.cgroup.cpu_max = 1.5;
        let l = default_limits(&config.cgroup);
        assert_eq!(
            (l.memory_max, l.pids_max, l.cpu_max),
            (Some(1 << 30), Some(100), Some(1.5))
        );
    }

    #[test]
    fn as_root_no_more_actions_run_than_the_uid_range_holds() {
        let mut config = Config::default();
        config.execution.max_concurrent_actions = 8;
        config.sandbox.uid_range_count = 3;
        assert_eq!(max_concurrent(&config, true), 3);
        assert_eq!(max_concurrent(&config, false), 8);
        config.execution.max_concurrent_actions = 0;
        assert!(max_concurrent(&config, false) >= 1);
    }
}
