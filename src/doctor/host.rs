//! Kernel facts the daemon does not look at itself: the sysctls that allow
//! user namespaces, and which cgroup hierarchies are mounted (a controller
//! bound to cgroup v1 cannot be used in v2).

use std::path::Path;

use super::facts::Facts;
use super::{Finding, Level};

/// An integer sysctl under /proc/sys, if the kernel has it.
fn sysctl(name: &str) -> Option<i64> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn kernel(facts: &Facts) -> Vec<Finding> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    vec![
        user_namespaces(facts),
        hierarchy(&mounts),
        cgroup_namespace(facts),
    ]
}

fn user_namespaces(facts: &Facts) -> Finding {
    const CHECK: &str = "user namespaces";
    let max = sysctl("user/max_user_namespaces");
    if max == Some(0) {
        return Finding::fail(
            CHECK,
            "user.max_user_namespaces is 0: no sandbox can be made, so every action fails",
            "sysctl -w user.max_user_namespaces=15000, and the same in /etc/sysctl.d/ \
             (on NixOS: security.allowUserNamespaces = true)",
        );
    }
    // The helper drops to the action's uid before it makes the namespace,
    // so the unprivileged switches matter even for a daemon run as root.
    if sysctl("kernel/unprivileged_userns_clone") == Some(0) {
        return Finding::fail(
            CHECK,
            "kernel.unprivileged_userns_clone is 0: the sandbox, which creates its user \
             namespace after dropping to the action's uid, cannot be made",
            "sysctl -w kernel.unprivileged_userns_clone=1, and the same in /etc/sysctl.d/",
        );
    }
    if sysctl("kernel/apparmor_restrict_unprivileged_userns") == Some(1)
        && facts.sandbox.error.is_some()
    {
        return Finding::fail(
            CHECK,
            "AppArmor restricts unprivileged user namespaces \
             (kernel.apparmor_restrict_unprivileged_userns = 1)",
            "give nativelink-lre an AppArmor profile that allows `userns,`, or set the sysctl \
             to 0",
        );
    }
    match (&facts.sandbox.error, facts.execution) {
        (Some(e), true) => Finding::fail(
            CHECK,
            format!("the sandbox cannot be set up, so every action fails: {e}"),
            "see the sandbox steps in nativelink-lre(8); user namespaces must be allowed for \
             the action uids",
        ),
        _ => Finding::pass(
            CHECK,
            format!(
                "allowed ({}){}",
                max.map_or("the kernel has no limit setting".into(), |m| format!(
                    "user.max_user_namespaces = {m}"
                )),
                if facts.sandbox.items.is_empty() {
                    ""
                } else {
                    "; the sandbox probe made user, mount, pid, network, ipc and uts namespaces"
                }
            ),
        ),
    }
}

/// The cgroup hierarchies in `mountinfo`: v2 mount points, and for each v1
/// hierarchy the controllers it binds.
pub fn cgroup_mounts(mountinfo: &str) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let mut v2 = Vec::new();
    let mut v1 = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let point = before.split(' ').nth(4).unwrap_or_default().to_owned();
        let mut rest = after.split(' ');
        let fstype = rest.next().unwrap_or_default();
        let options = rest.nth(1).unwrap_or_default();
        match fstype {
            "cgroup2" => v2.push(point),
            "cgroup" => {
                let bound: Vec<String> = options
                    .split(',')
                    .filter(|o| ["memory", "pids", "cpu", "cpuset", "io", "blkio"].contains(o))
                    .map(String::from)
                    .collect();
                v1.push((point, bound));
            }
            _ => {}
        }
    }
    (v2, v1)
}

fn hierarchy(mountinfo: &str) -> Finding {
    const CHECK: &str = "cgroup hierarchy";
    let (v2, v1) = cgroup_mounts(mountinfo);
    let bound: Vec<String> = v1
        .iter()
        .flat_map(|(_, c)| c.iter())
        .filter(|c| ["memory", "pids", "cpu"].contains(&c.as_str()))
        .cloned()
        .collect();
    let boot = "boot with the unified hierarchy alone (systemd.unified_cgroup_hierarchy=1 on \
                the kernel command line; the default since systemd 247)";
    match (v2.first(), bound.is_empty()) {
        (None, _) => Finding::fail(
            CHECK,
            "no cgroup v2 hierarchy is mounted: actions get no cgroup, so no memory, process \
             or CPU limits, no accounting, and no cgroup.kill",
            boot,
        ),
        (Some(at), true) if v1.is_empty() => {
            Finding::pass(CHECK, format!("cgroup v2 alone, at {at}"))
        }
        (Some(at), true) => Finding::pass(
            CHECK,
            format!(
                "cgroup v2 at {at}; cgroup v1 hierarchies ({}) bind none of memory, pids, cpu",
                v1.iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (Some(at), false) => Finding {
            check: CHECK.into(),
            level: Level::Warn,
            detail: format!(
                "hybrid layout: cgroup v2 at {at}, but {} bound to cgroup v1, where the daemon \
                 cannot use them",
                bound.join(", ")
            ),
            fix: boot.into(),
        },
    }
}

fn cgroup_namespace(facts: &Facts) -> Finding {
    const CHECK: &str = "cgroup namespace";
    if !Path::new("/proc/self/ns/cgroup").exists() {
        return Finding::warn(
            CHECK,
            "the kernel has no cgroup namespaces (before Linux 4.6): actions see the host's \
             cgroup paths",
            "use a newer kernel",
        );
    }
    if facts.namespaces.iter().any(|n| n == "cgroup") {
        Finding::pass(
            CHECK,
            "each action gets its own, rooted at its cgroup (or the daemon's, where it gets \
             none): /proc/self/cgroup inside shows no host path",
        )
    } else {
        Finding::warn(
            CHECK,
            "actions get none: /proc/self/cgroup inside shows the host's path",
            "upgrade the daemon: this one predates the cgroup namespace for every action",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_layouts_are_told_apart() {
        let hybrid = "35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      36 24 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      37 24 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        let (v2, v1) = cgroup_mounts(hybrid);
        assert_eq!(v2, ["/sys/fs/cgroup/unified"]);
        assert_eq!(v1.len(), 2);
        let f = hierarchy(hybrid);
        assert_eq!(f.level, Level::Warn);
        assert!(
            f.detail.contains("memory, pids bound to cgroup v1"),
            "{}",
            f.detail
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(hierarchy(unified).level, Level::Pass);
        assert_eq!(hierarchy("").level, Level::Fail);
    }
}
