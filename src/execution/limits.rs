//! Limits an action asks for (`lre-memory-max`, `lre-pids-max`,
//! `lre-cpu-max`) that this host cannot enforce. They are never silent:
//! with `cgroup.unenforceable-limits = "warn"` (the default) the action
//! runs and its result says so (ExecuteResponse.message and the
//! ResourceUsage metadata); with `"refuse"` this worker does not take the
//! action (an upstream that executes may).

use super::executor::{PROP_CPU_MAX, PROP_MEMORY_MAX, PROP_PIDS_MAX};
use crate::cgroup::Controllers;
use crate::proto::reapi;

/// What enforces per-action limits here.
#[derive(Debug, Clone, Copy)]
pub struct Enforcement {
    /// The controllers of the action cgroups; `None` without cgroups.
    pub controllers: Option<Controllers>,
    /// Without the pids controller, a per-uid RLIMIT_NPROC stands in for
    /// pids.max (as root only, where each action has a uid of its own).
    pub nproc_fallback: bool,
}

/// One sentence per limit property of `platform` that cannot be enforced.
pub fn unenforced(platform: Option<&reapi::Platform>, how: Enforcement) -> Vec<String> {
    let has = |f: fn(&Controllers) -> bool| how.controllers.as_ref().is_some_and(f);
    let why = |controller: &str| match how.controllers {
        Some(_) => format!("the {controller} controller is not available in the daemon's cgroup"),
        None => "the daemon has no cgroup to put actions in".to_owned(),
    };
    let mut out = Vec::new();
    for p in platform
        .map(|p| p.properties.as_slice())
        .unwrap_or_default()
    {
        let missing = match p.name.as_str() {
            PROP_MEMORY_MAX if !has(|c| c.memory) => why("memory"),
            PROP_PIDS_MAX if !has(|c| c.pids) && !how.nproc_fallback => why("pids"),
            PROP_CPU_MAX if !has(|c| c.cpu) => why("cpu"),
            _ => continue,
        };
        out.push(format!(
            "{}={} is not enforced on this host: {missing} (see `nativelink-lre doctor`)",
            p.name, p.value
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::platform::tests::platform;
    use super::*;

    #[test]
    fn only_limits_without_a_controller_are_named() {
        let p = platform(&[
            ("lre-memory-max", "64MiB"),
            ("lre-pids-max", "10"),
            ("OSFamily", "linux"),
        ]);
        let none = Enforcement {
            controllers: Some(Controllers::default()),
            nproc_fallback: true,
        };
        let w = unenforced(Some(&p), none);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("lre-memory-max=64MiB is not enforced"),
            "{w:?}"
        );
        assert!(w[0].contains("memory controller"), "{w:?}");
        let all = Enforcement {
            controllers: Some(Controllers {
                memory: true,
                pids: true,
                cpu: true,
            }),
            nproc_fallback: false,
        };
        assert!(unenforced(Some(&p), all).is_empty());
        let no_cgroup = Enforcement {
            controllers: None,
            nproc_fallback: false,
        };
        let w = unenforced(Some(&p), no_cgroup);
        assert_eq!(w.len(), 2);
        assert!(w[1].contains("no cgroup"), "{w:?}");
    }
}
