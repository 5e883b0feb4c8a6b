//! `nativelink-lre doctor`: what this host lets the daemon enforce, and
//! why not, in the manner of `nix doctor`. Each finding is PASS, WARN or
//! FAIL, with the fix.
//!
//! The doctor only *reports*. What the daemon enforces comes from the
//! daemon itself when one answers (its start-up sandbox probe, its cgroup
//! manager's controllers, its descriptor limit and sockets, its upstream's
//! state, all from `status`); with no daemon, the doctor runs the same
//! probe code the daemon runs at start and reads the same files
//! ([`facts`]). The rest are facts of the host that the daemon does not
//! look at itself: kernel settings, cgroup v1 bindings ([`host`]), and the
//! store's file system ([`store`]).

mod checks;
mod facts;
mod host;
mod store;

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use crate::cli::Target;
use crate::cli::address::{block_on, candidates, client_config};
use crate::client;

/// How a finding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was checked, such as "user namespaces".
    pub check: String,
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty for a PASS).
    pub fix: String,
}

impl Finding {
    pub fn pass(check: &str, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            level: Level::Pass,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    pub fn warn(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            level: Level::Warn,
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    pub fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            level: Level::Fail,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The daemon the findings come from, or null when none answered.
    pub daemon: Option<String>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let tag = match f.level {
                Level::Pass => "[PASS]",
                Level::Warn => "[WARN]",
                Level::Fail => "[FAIL]",
            };
            out += &format!("{tag} {}: {}\n", f.check, f.detail);
            if !f.fix.is_empty() {
                out += &format!("       fix: {}\n", f.fix);
            }
        }
        let count = |l: Level| self.findings.iter().filter(|f| f.level == l).count() as u64;
        out += &format!(
            "{}, {}, {}\n",
            crate::cli::words::count(count(Level::Pass), "pass", "passes"),
            crate::cli::words::count(count(Level::Warn), "warning", "warnings"),
            crate::cli::words::count(count(Level::Fail), "failure", "failures"),
        );
        out
    }
}

/// Runs every check and prints the report. Exit status 1 if any check
/// failed, 0 otherwise (warnings included), 2 for a bad configuration file.
pub fn run(config: Option<&Path>, target: &Target, json: bool) -> ExitCode {
    let (cfg, cfg_path) = match client_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nativelink-lre doctor: {e}");
            return ExitCode::from(crate::cli::EXIT_CONFIG);
        }
    };
    let addresses = candidates(cfg_path.as_deref(), target).unwrap_or_default();
    let mut findings = Vec::new();
    let asked = block_on(async {
        match client::connect_any(&addresses).await {
            Ok(ch) => match client::status(&ch).await {
                Ok(s) => (Some(ch_address(&addresses, &s)), Some(s)),
                Err(e) => {
                    findings.push(unreachable(&e.to_string()));
                    (None, None)
                }
            },
            Err(e) => {
                findings.push(unreachable(&e.to_string()));
                (None, None)
            }
        }
    });
    let (address, status) = asked.unwrap_or_else(|e| {
        findings.push(unreachable(&e));
        (None, None)
    });
    let facts = match &status {
        Some(s) => facts::Facts::from_status(s),
        None => facts::Facts::local(&cfg),
    };
    if let Some(a) = &address {
        findings.push(Finding::pass(
            "daemon",
            format!(
                "{a} answers (nativelink-lre {})",
                status.as_ref().map_or("", |s| &s.version)
            ),
        ));
    }
    findings.extend(host::kernel(&facts));
    findings.extend(checks::all(&facts, &cfg));
    findings.extend(store::all(&facts, &cfg));
    let report = Report {
        daemon: address,
        findings,
    };
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print!("{}", report.text());
    }
    if report.findings.iter().any(|f| f.level == Level::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The address that answered: the only one given, or the one whose socket
/// the daemon reports.
fn ch_address(
    addresses: &[String],
    s: &crate::proto::nativelink_lre::v1::StatusResponse,
) -> String {
    if addresses.len() == 1 {
        return addresses[0].clone();
    }
    addresses
        .iter()
        .find(|a| {
            client::unix_path(a).is_some_and(|p| {
                s.listeners
                    .iter()
                    .any(|l| l.address == format!("unix:{}", p.display()))
            })
        })
        .cloned()
        .unwrap_or_else(|| addresses.join(" or "))
}

fn unreachable(why: &str) -> Finding {
    let (detail, hint) = why.split_once("\nhint: ").unwrap_or((why, ""));
    Finding::warn(
        "daemon",
        format!(
            "{detail}; what follows is what a daemon started now by you would find, not what a \
             running one enforces"
        ),
        if hint.is_empty() {
            "start the daemon, or give its --address".to_owned()
        } else {
            hint.to_owned()
        },
    )
}
