//! `[cgroup]`: per-action resource limits (cgroup v2) and what happens to
//! limits this host cannot enforce.

use serde::Deserialize;

use super::ByteSize;

/// `[cgroup]`: per-action resource limits (cgroup v2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Cgroup {
    /// memory.max of each action; 0 means no limit.
    pub memory_max: ByteSize,
    /// memory.swap.max of each action.
    pub swap_max: ByteSize,
    /// pids.max of each action; 0 means no limit.
    pub pids_max: u64,
    /// CPU limit in cores (cpu.max); 0 means no limit.
    pub cpu_max: f64,
    /// Refuse to start when a controller needed for these limits is
    /// missing, instead of running without the limit.
    pub require_controllers: bool,
    /// What happens to an action that asks for a limit (`lre-memory-max`,
    /// ...) this host cannot enforce.
    pub unenforceable_limits: UnenforceableLimits,
}

/// The policy for limits an action asks for that cannot be enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnenforceableLimits {
    /// Run it, and say so in its result.
    Warn,
    /// Do not run it here (FAILED_PRECONDITION, or the upstream runs it).
    Refuse,
}

impl Default for Cgroup {
    fn default() -> Self {
        Cgroup {
            memory_max: ByteSize(0),
            swap_max: ByteSize(0),
            pids_max: 0,
            cpu_max: 0.0,
            require_controllers: false,
            unenforceable_limits: UnenforceableLimits::Warn,
        }
    }
}

impl Cgroup {
    /// Refuses a CPU limit that is no number of cores. Returns the
    /// offending key and why.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.cpu_max >= 0.0 && self.cpu_max.is_finite()) {
            return Err((
                "cpu-max",
                format!("{} is not a number of cores", self.cpu_max),
            ));
        }
        Ok(())
    }
}
