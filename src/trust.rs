//! The multi-user trust model: who may use the service (`allowed-users`)
//! and whose action-cache writes everyone sees (`trusted-users`).
//!
//! Entries are `*` (everyone, including anonymous callers), a user name, a
//! numeric uid, or `@group`. A caller matches `@group` if the group is their
//! primary group (from the passwd database or, on the unix socket, the
//! peer's gid) or lists them as a member.

use std::fmt;

use crate::action_cache::Scope;
use crate::config::{Config, UntrustedWrites};
use crate::peer::Peer;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Everyone,
    Uid(u32),
    User(String),
    Group(String),
}

impl Rule {
    fn parse(s: &str) -> Rule {
        if s == "*" {
            Rule::Everyone
        } else if let Some(group) = s.strip_prefix('@') {
            Rule::Group(group.to_owned())
        } else if let Ok(uid) = s.parse() {
            Rule::Uid(uid)
        } else {
            Rule::User(s.to_owned())
        }
    }
}

/// One configured list (`allowed-users` or `trusted-users`).
#[derive(Debug, Clone)]
struct RuleList {
    key: &'static str,
    rules: Vec<Rule>,
    text: Vec<String>,
}

impl RuleList {
    fn new(key: &'static str, entries: &[String]) -> Self {
        RuleList {
            key,
            rules: entries.iter().map(|e| Rule::parse(e)).collect(),
            text: entries.to_vec(),
        }
    }

    fn matches(&self, who: &Identity) -> bool {
        self.rules.iter().any(|rule| match rule {
            Rule::Everyone => true,
            Rule::Uid(uid) => who.uid == Some(*uid),
            Rule::User(name) => who.name.as_deref() == Some(name.as_str()),
            Rule::Group(group) => who.in_group(group),
        })
    }
}

impl fmt::Display for RuleList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {:?}", self.key, self.text)
    }
}

/// What we know of a caller's account.
#[derive(Debug, Clone)]
struct Identity {
    uid: Option<u32>,
    name: Option<String>,
    gids: Vec<u32>,
}

impl Identity {
    fn lookup(peer: &Peer) -> Identity {
        let Some(uid) = peer.uid else {
            return Identity {
                uid: None,
                name: None,
                gids: vec![],
            };
        };
        let user = nix::unistd::User::from_uid(uid.into()).ok().flatten();
        let mut gids: Vec<u32> = peer.gid.into_iter().collect();
        if let Some(u) = &user {
            gids.push(u.gid.as_raw());
        }
        Identity {
            uid: Some(uid),
            name: user.map(|u| u.name),
            gids,
        }
    }

    fn in_group(&self, group: &str) -> bool {
        let Ok(Some(g)) = nix::unistd::Group::from_name(group) else {
            return false;
        };
        self.gids.contains(&g.gid.as_raw())
            || self
                .name
                .as_ref()
                .is_some_and(|n| g.mem.iter().any(|m| m == n))
    }
}

/// An admitted caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: Option<u32>,
    pub name: Option<String>,
    pub trusted: bool,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.uid, &self.name) {
            (Some(uid), Some(name)) => write!(f, "uid {uid} ({name})"),
            (Some(uid), None) => write!(f, "uid {uid}"),
            _ => write!(f, "an anonymous caller"),
        }
    }
}

/// A refusal, with the rule that caused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// The configured trust policy.
#[derive(Debug, Clone)]
pub struct Policy {
    allowed: RuleList,
    trusted: RuleList,
    untrusted_writes: UntrustedWrites,
}

impl Policy {
    pub fn from_config(config: &Config) -> Policy {
        Policy {
            allowed: RuleList::new("allowed-users", &config.allowed_users),
            trusted: RuleList::new("trusted-users", &config.trusted_users),
            untrusted_writes: config.untrusted_action_cache_writes,
        }
    }

    /// Decides whether a connection may be served, and whether it is trusted.
    pub fn admit(&self, peer: &Peer) -> Result<Caller, Denied> {
        let who = Identity::lookup(peer);
        let caller = Caller {
            uid: who.uid,
            name: who.name.clone(),
            trusted: who.uid.is_some() && self.trusted.matches(&who),
        };
        if !self.allowed.matches(&who) {
            return Err(Denied(format!(
                "{caller} is not permitted to use this service by {}",
                self.allowed
            )));
        }
        Ok(caller)
    }

    /// Where a caller's UpdateActionResult goes, or why it may not write.
    pub fn action_cache_scope(&self, caller: &Caller) -> Result<Scope, Denied> {
        if caller.trusted {
            return Ok(Scope::Shared);
        }
        match (self.untrusted_writes, caller.uid) {
            (UntrustedWrites::Private, Some(uid)) => Ok(Scope::Private(uid)),
            (UntrustedWrites::Private, None) => Err(Denied(format!(
                "{caller} cannot write the action cache: its uid is unknown, so it has no private view, and it is not in {}",
                self.trusted
            ))),
            (UntrustedWrites::Deny, _) => Err(Denied(format!(
                "{caller} cannot write the action cache: it is not in {} and untrusted-action-cache-writes = \"deny\"",
                self.trusted
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Transport;

    fn policy(allowed: &[&str], trusted: &[&str], writes: UntrustedWrites) -> Policy {
        let config = Config {
            allowed_users: allowed.iter().map(|s| s.to_string()).collect(),
            trusted_users: trusted.iter().map(|s| s.to_string()).collect(),
            untrusted_action_cache_writes: writes,
            ..Config::default()
        };
        Policy::from_config(&config)
    }

    fn peer(uid: Option<u32>, gid: Option<u32>) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
            transport: Transport::Unix,
        }
    }

    #[test]
    fn root_is_trusted_by_default_and_others_write_privately() {
        let p = policy(&["*"], &["root"], UntrustedWrites::Private);
        let root = p.admit(&peer(Some(0), Some(0))).unwrap();
        assert!(root.trusted);
        assert_eq!(p.action_cache_scope(&root), Ok(Scope::Shared));
        let user = p.admit(&peer(Some(4242), Some(4242))).unwrap();
        assert!(!user.trusted);
        assert_eq!(p.action_cache_scope(&user), Ok(Scope::Private(4242)));
        let anon = p.admit(&peer(None, None)).unwrap();
        assert!(p.action_cache_scope(&anon).is_err());
    }

    #[test]
    fn disallowed_caller_is_told_the_rule() {
        let p = policy(
            &["@nosuchgroup-xyz", "1000"],
            &["root"],
            UntrustedWrites::Private,
        );
        assert!(p.admit(&peer(Some(1000), None)).is_ok());
        let err = p.admit(&peer(Some(4242), None)).unwrap_err();
        assert!(err.0.contains("allowed-users"), "{err}");
        assert!(err.0.contains("@nosuchgroup-xyz"), "{err}");
        assert!(p.admit(&peer(None, None)).is_err());
    }

    #[test]
    fn group_rules_match_primary_group() {
        // The root group exists on every Linux system and is root's primary.
        let p = policy(&["@root"], &["@root"], UntrustedWrites::Deny);
        let root = p.admit(&peer(Some(0), None)).unwrap();
        assert!(root.trusted);
        // A peer whose socket gid is 0 matches too.
        assert!(p.admit(&peer(Some(4242), Some(0))).is_ok());
        let err = p.admit(&peer(Some(4242), Some(4242))).unwrap_err();
        assert!(err.0.contains("@root"));
    }

    #[test]
    fn deny_mode_refuses_untrusted_writes() {
        let p = policy(&["*"], &["root"], UntrustedWrites::Deny);
        let user = p.admit(&peer(Some(4242), None)).unwrap();
        let err = p.action_cache_scope(&user).unwrap_err();
        assert!(err.0.contains("deny"), "{err}");
    }
}
