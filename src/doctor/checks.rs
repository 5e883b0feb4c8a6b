//! The findings about what the daemon enforces: its sandbox protections,
//! per-action cgroup limits, identity, descriptor limit, sockets, the
//! toolchain paths actions see, and the upstream.

use std::path::Path;
use std::time::Duration;

use super::Finding;
use super::facts::{Cgroups, Facts};
use crate::cgroup::Controllers;
use crate::config::Config;

pub fn all(facts: &Facts, config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    if !facts.execution {
        out.push(Finding::pass(
            "execution",
            "disabled ([execution] enabled = false): no sandbox, no limits",
        ));
    } else {
        out.extend(sandbox(facts));
        out.push(controllers(facts, config));
        out.push(identity(facts, config));
    }
    out.push(descriptors(facts));
    out.extend(sockets(facts, config));
    out.extend(read_only_paths(facts));
    out.push(upstream(facts));
    out
}

/// One finding per protection of the sandbox probe.
fn sandbox(facts: &Facts) -> Vec<Finding> {
    if let Some(e) = &facts.sandbox.error {
        return vec![Finding::fail(
            "sandbox",
            format!("cannot be set up, so every action fails: {e}"),
            "see `user namespaces` above and the sandbox steps in nativelink-lre(8)",
        )];
    }
    facts
        .sandbox
        .items
        .iter()
        .map(|p| {
            let check = format!("sandbox {}", p.name);
            if p.in_force {
                Finding::pass(&check, p.detail.clone())
            } else {
                Finding::fail(
                    &check,
                    format!("NOT in force: {}", p.detail),
                    "see SECURITY in nativelink-lre(8) for what this protection needs from \
                     the kernel and the service manager",
                )
            }
        })
        .collect()
}

/// The limits the configuration sets whose controller is missing.
fn configured_without(config: &Config, have: &Controllers) -> Vec<String> {
    let c = &config.cgroup;
    let mut out = Vec::new();
    if c.memory_max.0 > 0 && !have.memory {
        out.push(format!("cgroup.memory-max = {}", c.memory_max.0));
    }
    if c.pids_max > 0 && !have.pids {
        out.push(format!("cgroup.pids-max = {}", c.pids_max));
    }
    if c.cpu_max > 0.0 && !have.cpu {
        out.push(format!("cgroup.cpu-max = {}", c.cpu_max));
    }
    out
}

fn controllers(facts: &Facts, config: &Config) -> Finding {
    const CHECK: &str = "cgroup controllers";
    let fix = "run the daemon from the packaged unit (Delegate=yes) on a host whose cgroup v2 \
               root offers memory, pids and cpu, or enable them in the parent cgroup's \
               cgroup.subtree_control";
    let (have, place) = match &facts.cgroups {
        Cgroups::Daemon { base, enabled, .. } => {
            let list = enabled.join(" ");
            (Controllers::from_list(&list), format!("under {base}"))
        }
        Cgroups::Local(s) => (
            s.passed_down,
            format!(
                "for a daemon started here (child cgroups of {} get them)",
                s.dir.display()
            ),
        ),
        Cgroups::None(why) => {
            return Finding::warn(
                CHECK,
                format!(
                    "actions get no cgroup ({why}): no memory, process or CPU limits, and a \
                     stopped action is killed through its pid namespace only"
                ),
                fix,
            );
        }
    };
    let missing = have.missing();
    if missing.is_empty() {
        return Finding::pass(CHECK, format!("memory, pids and cpu limits {place}"));
    }
    let unenforced = configured_without(config, &have);
    let detail = format!(
        "{} not available {place}: those per-action limits are not enforced (an action that \
         asks for one gets a warning, or is refused with cgroup.unenforceable-limits = \
         \"refuse\")",
        missing.join(", ")
    );
    if unenforced.is_empty() {
        Finding::warn(CHECK, detail, fix)
    } else {
        Finding::fail(
            CHECK,
            format!(
                "{detail}; the configuration's {} is not enforced",
                unenforced.join(", ")
            ),
            format!("{fix}; or set cgroup.require-controllers = true to refuse to start"),
        )
    }
}

fn identity(facts: &Facts, config: &Config) -> Finding {
    const CHECK: &str = "action identity";
    if facts.per_action_uids {
        let s = &config.sandbox;
        Finding::pass(
            CHECK,
            format!(
                "each action runs as a host uid of its own ({} and up)",
                s.uid_range_start
            ),
        )
    } else {
        Finding::warn(
            CHECK,
            "a per-user daemon: every action runs as its owner's uid, so actions can reach \
             each other's files while they run, and inputs are copied instead of linked",
            "for isolation between actions, use the system daemon (run as root by systemd)",
        )
    }
}

fn descriptors(facts: &Facts) -> Finding {
    const CHECK: &str = "descriptor limit";
    let whose = if facts.from_daemon {
        "the daemon's"
    } else {
        "this shell's (no daemon answered)"
    };
    match facts.fd_limit {
        None => Finding::warn(CHECK, "unknown", "check `ulimit -n`"),
        Some((soft, hard)) if soft < 4096 => Finding::warn(
            CHECK,
            format!(
                "{whose} soft RLIMIT_NOFILE is {soft} (hard {hard}): about that many open \
                 connections and files make every further client fail"
            ),
            "set LimitNOFILE= in the service unit (the NixOS module sets it), or start the \
             daemon after `ulimit -n` raised the soft limit",
        ),
        Some((soft, hard)) => {
            Finding::pass(CHECK, format!("{whose} soft limit is {soft}, hard {hard}"))
        }
    }
}

fn sockets(facts: &Facts, config: &Config) -> Vec<Finding> {
    if !facts.from_daemon {
        return planned_sockets(config);
    }
    let open_to_all = config.allowed_users.iter().any(|u| u == "*");
    facts
        .listeners
        .iter()
        .map(|l| {
            let how = if l.activated {
                "from systemd"
            } else {
                "bound by the daemon"
            };
            let check = format!("socket {}", l.name);
            if l.address.starts_with("tcp:") {
                return Finding::pass(
                    &check,
                    format!(
                        "{} ({how}); callers are identified on loopback by /proc/net/tcp",
                        l.address
                    ),
                );
            }
            let mode = l.unix_mode & 0o777;
            if open_to_all && mode & 0o006 != 0o006 {
                Finding::warn(
                    &check,
                    format!(
                        "{} is mode {mode:04o} ({how}): allowed-users admits everyone, but only \
                         its owner and group can connect",
                        l.address
                    ),
                    "SocketMode=0666 in the socket unit (listen.unix-mode when the daemon \
                     binds it); allowed-users decides who may use it",
                )
            } else {
                Finding::pass(
                    &check,
                    format!(
                        "{} is mode {mode:04o} ({how}); allowed-users = {:?} decides who may \
                         use it",
                        l.address, config.allowed_users
                    ),
                )
            }
        })
        .collect()
}

/// Without a daemon: whether the configured addresses are free to bind.
fn planned_sockets(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for addr in &config.listen.tcp {
        let check = format!("socket tcp:{addr}");
        match std::net::TcpStream::connect_timeout(addr, Duration::from_secs(2)) {
            Ok(_) => out.push(Finding::warn(
                &check,
                format!(
                    "something already listens on {addr}, and it did not answer as this daemon"
                ),
                "a daemon started now cannot bind it: start it with --listen 127.0.0.1:PORT \
                 or --listen unix (listen.tcp in the configuration)",
            )),
            Err(_) => out.push(Finding::pass(&check, format!("{addr} is free"))),
        }
    }
    if let Some(path) = &config.listen.unix {
        let check = "socket unix";
        if path.exists() {
            out.push(Finding::warn(
                check,
                format!("{} exists but no daemon answered on it", path.display()),
                "a daemon that stopped left it; starting one replaces it",
            ));
        } else {
            out.push(Finding::pass(
                check,
                format!("{} is not bound yet", path.display()),
            ));
        }
    }
    out
}

/// What each read-only path is on this host.
fn read_only_paths(facts: &Facts) -> Vec<Finding> {
    if !facts.execution {
        return Vec::new();
    }
    let mut out: Vec<Finding> = facts
        .read_only_paths
        .iter()
        .map(|p| {
            let check = format!("read-only path {}", p.display());
            match std::fs::canonicalize(p) {
                Err(e) => Finding::warn(
                    &check,
                    format!("does not resolve ({e}): actions see nothing there"),
                    "remove it from sandbox.read-only-paths, or create it",
                ),
                Ok(real) if real != *p => {
                    Finding::pass(&check, format!("resolves to {}", real.display()))
                }
                Ok(_) => Finding::pass(&check, "a directory of its own"),
            }
        })
        .collect();
    let nixos = Path::new("/etc/NIXOS").exists();
    let has_sh = facts
        .read_only_paths
        .iter()
        .any(|p| Path::new("/bin").starts_with(p) || Path::new("/usr/bin").starts_with(p));
    if !nixos && !has_sh {
        out.push(Finding::warn(
            "toolchain",
            "neither /bin nor /usr/bin is visible in the sandbox: actions that run /bin/sh (every \
             Bazel genrule) fail",
            "add /usr, /bin, /lib and /lib64 to sandbox.read-only-paths (the built-in list has \
             them)",
        ));
    }
    out
}

fn upstream(facts: &Facts) -> Finding {
    const CHECK: &str = "upstream";
    let Some(u) = &facts.upstream else {
        return Finding::pass(CHECK, "none configured");
    };
    let fix = "check upstream.endpoint and the network; `nativelink-lre status` shows the \
               last error; local actions still run (local-fallback)";
    match u.state.as_str() {
        "up" => Finding::pass(CHECK, format!("{} answers", u.endpoint)),
        "connecting" => Finding::warn(CHECK, format!("{} has not answered yet", u.endpoint), fix),
        "down" => Finding::fail(CHECK, format!("{} is down: {}", u.endpoint, u.error), fix),
        _ => match reachable(&u.endpoint) {
            Ok(()) => Finding::pass(
                CHECK,
                format!("{} accepts connections (not asked anything)", u.endpoint),
            ),
            Err(e) => Finding::fail(CHECK, format!("{}: {e}", u.endpoint), fix),
        },
    }
}

/// Whether a connection to the endpoint can be opened at all.
fn reachable(endpoint: &str) -> Result<(), String> {
    match crate::config::Endpoint::parse(endpoint)? {
        crate::config::Endpoint::Unix(p) => std::os::unix::net::UnixStream::connect(&p)
            .map(drop)
            .map_err(|e| format!("cannot connect: {e}")),
        crate::config::Endpoint::Grpc(hp) | crate::config::Endpoint::Grpcs(hp) => {
            use std::net::ToSocketAddrs;
            let addrs: Vec<_> = hp
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve: {e}"))?
                .collect();
            let mut last = "no address".to_owned();
            for a in addrs {
                match std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = format!("cannot connect to {a}: {e}"),
                }
            }
            Err(last)
        }
    }
}
