//! What the checks look at: the running daemon's own findings (from
//! `status`), or, with no daemon, the same findings made here by the same
//! code the daemon runs at start (the sandbox probe, the cgroup files).

use std::path::PathBuf;

use crate::config::Config;
use crate::proto::nativelink_lre::v1 as admin;
use crate::sandbox::probe::{Protection, Protections};

/// Where the per-action cgroups stand.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// The daemon's cgroup manager: its base and the controllers it enabled.
    Daemon { base: String, enabled: Vec<String> },
    /// No daemon: this process's cgroup, as `cgroup::survey` reads it.
    Local(crate::cgroup::Survey),
    /// No cgroups for actions, and why.
    None(String),
}

/// The upstream, as the daemon sees it or as configured.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub endpoint: String,
    /// "up", "down", "connecting"; "unknown" without a daemon.
    pub state: String,
    pub error: String,
}

#[derive(Debug, Clone)]
pub struct Facts {
    /// True when these come from a running daemon.
    pub from_daemon: bool,
    pub state_dir: PathBuf,
    pub store_limit: u64,
    /// The store's size; 0 when unknown (no daemon).
    pub store_bytes: u64,
    pub execution: bool,
    pub sandbox: Protections,
    pub cgroups: Cgroups,
    /// The namespaces each action gets.
    pub namespaces: Vec<String>,
    pub per_action_uids: bool,
    /// (soft, hard) RLIMIT_NOFILE of the daemon; of this process without one.
    pub fd_limit: Option<(u64, u64)>,
    pub listeners: Vec<admin::ListenerInfo>,
    pub read_only_paths: Vec<PathBuf>,
    pub upstream: Option<Upstream>,
}

impl Facts {
    pub fn from_status(s: &admin::StatusResponse) -> Facts {
        let cgroups = if !s.cgroup_base.is_empty() {
            Cgroups::Daemon {
                base: s.cgroup_base.clone(),
                enabled: s.cgroup_controllers.clone(),
            }
        } else {
            Cgroups::None("the daemon has no cgroup for its actions (see its log)".into())
        };
        Facts {
            from_daemon: true,
            state_dir: PathBuf::from(&s.state_dir),
            store_limit: s.store_limit_bytes,
            store_bytes: s.store_bytes,
            execution: s.execution_enabled,
            sandbox: Protections {
                items: s
                    .sandbox_protections
                    .iter()
                    .map(|p| Protection {
                        name: p.name.clone(),
                        in_force: p.in_force,
                        detail: p.detail.clone(),
                    })
                    .collect(),
                error: (!s.sandbox_error.is_empty()).then(|| s.sandbox_error.clone()),
            },
            cgroups,
            namespaces: s.namespaces.clone(),
            per_action_uids: s.per_action_uids,
            fd_limit: (s.fd_limit_soft > 0).then_some((s.fd_limit_soft, s.fd_limit_hard)),
            listeners: s.listeners.clone(),
            read_only_paths: s.read_only_paths.iter().map(PathBuf::from).collect(),
            upstream: s.upstream.as_ref().map(|u| Upstream {
                endpoint: u.endpoint.clone(),
                state: u.state.clone(),
                error: if u.error.is_empty() {
                    u.last_error.clone()
                } else {
                    u.error.clone()
                },
            }),
        }
    }

    /// What a daemon started now, by this user, with `config`, would find.
    pub fn local(config: &Config) -> Facts {
        let root = nix::unistd::geteuid().is_root();
        let cgroups = match crate::cgroup::survey() {
            Ok(s) => Cgroups::Local(s),
            Err(why) => Cgroups::None(why),
        };
        // The helper always enters a new cgroup namespace.
        let namespaces = ["user", "mount", "pid", "network", "ipc", "uts", "cgroup"]
            .into_iter()
            .map(String::from)
            .collect();
        Facts {
            from_daemon: false,
            state_dir: config.state_dir().to_owned(),
            store_limit: config.store.max_size.0,
            store_bytes: 0,
            execution: config.execution.enabled,
            sandbox: if config.execution.enabled {
                probe(config, root)
            } else {
                Protections::default()
            },
            cgroups,
            namespaces,
            per_action_uids: root,
            fd_limit: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .ok(),
            listeners: Vec::new(),
            read_only_paths: config.sandbox.read_only_paths(),
            upstream: config.upstream.endpoint().map(|e| Upstream {
                endpoint: e.to_string(),
                state: "unknown".into(),
                error: String::new(),
            }),
        }
    }
}

/// The daemon's start-up probe, run here: a scratch exec root in a private
/// temporary directory, the uid the daemon's first action would get.
fn probe(config: &Config, root: bool) -> Protections {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "lre-doctor-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    // A fresh name that mkdir makes (it fails on anything already there,
    // links included), closed to everyone else.
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        return Protections {
            items: Vec::new(),
            error: Some(format!("cannot make {} for the probe: {e}", dir.display())),
        };
    }
    let (uid, gid) = if root {
        let start = config.sandbox.uid_range_start;
        (start, start)
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    };
    let found = crate::sandbox::probe::at_start(
        &dir,
        crate::execution::toolchain::read_only_paths(&config.sandbox.read_only_paths()),
        (uid, gid),
        (
            crate::sandbox::rlimits::for_config(&config.sandbox, root),
            config.sandbox.nice,
        ),
        crate::sandbox::RootMode::Host,
    );
    let _ = std::fs::remove_dir_all(&dir);
    found
}
