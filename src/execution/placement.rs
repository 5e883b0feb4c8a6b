//! Where and how an action runs here: its platform properties read
//! against what this worker offers. `lre-memory-max`, `lre-pids-max` and
//! `lre-cpu-max` tighten the default limits, `lre-network` asks for the
//! host network, `lre-toolchain` names the toolchain identity; every other
//! property must be in `[execution] platform` (`super::platform`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::Error;
use crate::cgroup;
use crate::config::OneOrMany;
use crate::proto::reapi;
use crate::sandbox::RootMode;
use crate::upstream;

/// Platform properties the worker interprets itself rather than matching
/// against `[execution] platform`.
pub const PROP_MEMORY_MAX: &str = "lre-memory-max";
pub const PROP_PIDS_MAX: &str = "lre-pids-max";
pub const PROP_CPU_MAX: &str = "lre-cpu-max";
pub const PROP_NETWORK: &str = "lre-network";
pub use super::platform::PROP_ROOT;
pub use super::toolchain::PROPERTY as PROP_TOOLCHAIN;

/// What this worker offers and requires.
pub struct Offer<'a> {
    /// The default limits (`[cgroup]`), which properties may only lower.
    pub limits: &'a cgroup::Limits,
    pub allow_host_network: bool,
    /// `[execution] platform`.
    pub platform: &'a BTreeMap<String, OneOrMany>,
    /// This worker's toolchain identity.
    pub toolchain: &'a str,
    pub require_toolchain: bool,
}

/// How an action runs here.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub limits: cgroup::Limits,
    pub host_network: bool,
    pub root: RootMode,
}

impl Placement {
    /// Checks the action's platform against what this worker satisfies and
    /// reads the properties that set limits or the network.
    pub fn from_platform(
        offer: &Offer<'_>,
        platform: Option<&reapi::Platform>,
        root: RootMode,
    ) -> Result<Placement, Error> {
        let mut placement = Placement {
            limits: offer.limits.clone(),
            host_network: false,
            root,
        };
        let mut toolchain_named = false;
        for p in platform
            .map(|p| p.properties.as_slice())
            .unwrap_or_default()
        {
            let bad = |why: &str| {
                Error::Platform(format!(
                    "platform property {}={}: {why}",
                    p.name,
                    super::platform::shown(&p.value)
                ))
            };
            match p.name.as_str() {
                PROP_MEMORY_MAX => {
                    let v = crate::config::ByteSize::parse(&p.value)
                        .map_err(|e| bad(&e))?
                        .0;
                    placement.limits.memory_max =
                        Some(placement.limits.memory_max.map_or(v, |m| m.min(v)));
                }
                PROP_PIDS_MAX => {
                    let v: u64 = p.value.parse().map_err(|_| bad("not a number"))?;
                    placement.limits.pids_max =
                        Some(placement.limits.pids_max.map_or(v, |m| m.min(v)));
                }
                PROP_CPU_MAX => {
                    let v: f64 = p.value.parse().map_err(|_| bad("not a number of cores"))?;
                    if !(v > 0.0 && v.is_finite()) {
                        return Err(bad("not a positive number of cores"));
                    }
                    placement.limits.cpu_max =
                        Some(placement.limits.cpu_max.map_or(v, |m| m.min(v)));
                }
                // Checked, and acted on, by `route` and `platform::root_mode`.
                upstream::execute::PROP_REMOTE | PROP_ROOT => {}
                PROP_TOOLCHAIN if p.value == offer.toolchain => toolchain_named = true,
                PROP_TOOLCHAIN => {
                    return Err(Error::Unsatisfiable(format!(
                        "platform property {PROP_TOOLCHAIN}={}: this worker's toolchain is {PROP_TOOLCHAIN}={} \
                         (nativelink-lre status lists what it is made of)",
                        super::platform::shown(&p.value),
                        offer.toolchain
                    )));
                }
                PROP_NETWORK => match p.value.as_str() {
                    "none" => {}
                    "host" if offer.allow_host_network => placement.host_network = true,
                    "host" => {
                        return Err(bad(
                            "this worker does not allow the host network (sandbox.allow-host-network)",
                        ));
                    }
                    _ => return Err(bad("the value must be \"none\" or \"host\"")),
                },
                name => {
                    if let Some(why) = super::platform::unsatisfied(offer.platform, name, &p.value)
                    {
                        return Err(Error::Unsatisfiable(why));
                    }
                }
            }
        }
        // With the input root as /, no host toolchain is visible: the
        // action's inputs are its toolchain, and already in its key.
        if offer.require_toolchain && !toolchain_named && root == RootMode::Host {
            return Err(Error::Unsatisfiable(format!(
                "this worker requires the platform property {PROP_TOOLCHAIN}={} \
                 (execution.require-toolchain); with Bazel: \
                 --remote_default_exec_properties={PROP_TOOLCHAIN}={}",
                offer.toolchain, offer.toolchain
            )));
        }
        Ok(placement)
    }
}

/// The timeout an action runs with: its own (`Action.timeout`) if it sets
/// one, at most `max`; otherwise `default`.
pub fn timeout(
    asked: Option<&prost_types::Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration, Error> {
    let Some(t) = asked else {
        return Ok(default);
    };
    let asked = Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    if asked.is_zero() {
        return Ok(default);
    }
    if asked > max {
        return Err(Error::Timeout { asked, max });
    }
    Ok(asked)
}

/// Whether placing the action needs the toolchain identity, which is
/// computed just after start: only an action that names it, or a worker
/// that requires it of host-root actions, waits for it.
pub fn needs_toolchain(platform: Option<&reapi::Platform>, require: bool, root: RootMode) -> bool {
    let names_it = platform.is_some_and(|p| p.properties.iter().any(|p| p.name == PROP_TOOLCHAIN));
    names_it || (require && root == RootMode::Host)
}

#[cfg(test)]
mod tests {
    use super::super::platform::tests::platform;
    use super::*;

    struct World {
        limits: cgroup::Limits,
        platform: BTreeMap<String, OneOrMany>,
    }

    fn world() -> World {
        let mut platform = BTreeMap::new();
        platform.insert("OSFamily".into(), OneOrMany::One("linux".into()));
        World {
            limits: cgroup::Limits {
                memory_max: Some(1 << 30),
                ..Default::default()
            },
            platform,
        }
    }

    fn offer<'a>(w: &'a World, require_toolchain: bool) -> Offer<'a> {
        Offer {
            limits: &w.limits,
            allow_host_network: false,
            platform: &w.platform,
            toolchain: "abc",
            require_toolchain,
        }
    }

    fn place(o: &Offer<'_>, props: &[(&str, &str)]) -> Result<Placement, Error> {
        Placement::from_platform(o, Some(&platform(props)), RootMode::Host)
    }

    #[test]
    fn properties_only_tighten_the_default_limits() {
        let w = world();
        let o = offer(&w, false);
        let p = place(&o, &[(PROP_MEMORY_MAX, "64MiB"), (PROP_PIDS_MAX, "10")]).unwrap();
        assert_eq!(p.limits.memory_max, Some(64 << 20));
        assert_eq!(p.limits.pids_max, Some(10));
        let p = place(&o, &[(PROP_MEMORY_MAX, "4GiB")]).unwrap();
        assert_eq!(p.limits.memory_max, Some(1 << 30));
        assert!(matches!(
            place(&o, &[(PROP_CPU_MAX, "-1")]),
            Err(Error::Platform(_))
        ));
    }

    #[test]
    fn the_host_network_needs_the_workers_consent() {
        let w = world();
        let o = offer(&w, false);
        let e = place(&o, &[(PROP_NETWORK, "host")]).unwrap_err();
        assert!(e.to_string().contains("allow-host-network"), "{e}");
        let o = Offer {
            allow_host_network: true,
            ..offer(&w, false)
        };
        assert!(place(&o, &[(PROP_NETWORK, "host")]).unwrap().host_network);
    }

    #[test]
    fn unknown_properties_are_unsatisfiable_known_ones_match() {
        let w = world();
        let o = offer(&w, false);
        assert!(place(&o, &[("OSFamily", "linux")]).is_ok());
        assert!(matches!(
            place(&o, &[("OSFamily", "windows")]),
            Err(Error::Unsatisfiable(_))
        ));
        assert!(matches!(
            place(&o, &[("gpu", "yes")]),
            Err(Error::Unsatisfiable(_))
        ));
    }

    #[test]
    fn the_toolchain_identity_is_checked_and_may_be_required() {
        let w = world();
        let o = offer(&w, true);
        assert!(place(&o, &[(PROP_TOOLCHAIN, "abc")]).is_ok());
        let e = place(&o, &[(PROP_TOOLCHAIN, "xyz")]).unwrap_err();
        assert!(
            e.to_string().contains("xyz") && e.to_string().contains("abc"),
            "{e}"
        );
        let e = place(&o, &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("--remote_default_exec_properties=lre-toolchain=abc"),
            "{e}"
        );
        // The input root as / brings its own toolchain.
        assert!(Placement::from_platform(&o, None, RootMode::Input).is_ok());
        assert!(place(&offer(&w, false), &[]).is_ok());
    }

    #[test]
    fn the_timeout_is_the_actions_own_at_most_the_max() {
        let (default, max) = (Duration::from_secs(60), Duration::from_secs(600));
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(timeout(None, default, max).unwrap(), default);
        assert_eq!(timeout(Some(&d(0, 0)), default, max).unwrap(), default);
        assert_eq!(timeout(Some(&d(-5, -1)), default, max).unwrap(), default);
        assert_eq!(
            timeout(Some(&d(2, 500)), default, max).unwrap(),
            Duration::new(2, 500)
        );
        assert_eq!(timeout(Some(&d(600, 0)), default, max).unwrap(), max);
        let e = timeout(Some(&d(600, 1)), default, max).unwrap_err();
        assert!(
            matches!(e, Error::Timeout { max: m, .. } if m == max),
            "{e}"
        );
    }

    #[test]
    fn only_actions_that_name_or_must_name_the_toolchain_wait_for_it() {
        let named = platform(&[(PROP_TOOLCHAIN, "abc")]);
        let other = platform(&[("OSFamily", "linux")]);
        assert!(needs_toolchain(Some(&named), false, RootMode::Input));
        assert!(!needs_toolchain(Some(&other), false, RootMode::Host));
        assert!(!needs_toolchain(None, false, RootMode::Host));
        assert!(needs_toolchain(None, true, RootMode::Host));
        assert!(!needs_toolchain(Some(&other), true, RootMode::Input));
    }
}
