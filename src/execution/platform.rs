//! Matching an action's platform against what this worker offers
//! (`[execution] platform`), and the property that picks the sandbox's
//! root mode. The properties that set limits or the network are read in
//! `executor::placement`.
//!
//! Values match exactly, as the REAPI platform lexicon says. The default
//! offer has the lexicon's `OSFamily=linux` and `ISA=x86-64` (on x86-64),
//! which clients built on the lexicon send (BuildStream, recc), and the
//! capitalised `OSFamily=Linux` that Bazel users have long written.
//! Messages print names and values as a user would write them in a
//! platform or a configuration, never in Rust's syntax.

use std::collections::BTreeMap;

use crate::config::OneOrMany;
use crate::proto::reapi;
use crate::sandbox::RootMode;

/// `lre-root = "host" | "input"`: which tree becomes the sandbox's `/`
/// (see `crate::sandbox::RootMode`). Without it, the instance decides.
pub const PROP_ROOT: &str = "lre-root";

/// The root mode the action asks for with [`PROP_ROOT`], or `default`
/// (its instance's). A bad value, or two different ones, is an error.
pub fn root_mode(
    platform: Option<&reapi::Platform>,
    default: RootMode,
) -> Result<RootMode, String> {
    let mut asked: Option<RootMode> = None;
    for p in platform
        .map(|p| p.properties.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|p| p.name == PROP_ROOT)
    {
        let mode = RootMode::parse(&p.value).ok_or_else(|| {
            format!(
                "platform property {PROP_ROOT}={}: the value must be \"host\" or \"input\"",
                shown(&p.value)
            )
        })?;
        if asked.is_some_and(|a| a != mode) {
            return Err(format!(
                "platform property {PROP_ROOT} is given twice, as host and as input"
            ));
        }
        asked = Some(mode);
    }
    Ok(asked.unwrap_or(default))
}

/// Why `name=value` is not satisfiable by `offered`, or `None` if it is.
pub fn unsatisfied(
    offered: &BTreeMap<String, OneOrMany>,
    name: &str,
    value: &str,
) -> Option<String> {
    let asked = format!("platform property {}={}", shown(name), shown(value));
    match offered.get(name) {
        Some(values) if values.contains(value) => None,
        Some(values) => {
            let offers: Vec<String> = values
                .values()
                .map(|v| format!("{}={}", shown(name), shown(v)))
                .collect();
            Some(format!(
                "{asked} is not satisfiable here: this worker offers {}",
                or_list(&offers)
            ))
        }
        None => {
            let names: Vec<String> = offered.keys().map(|n| shown(n)).collect();
            Some(format!(
                "{asked} is not satisfiable here: this worker offers no {}; it offers {}",
                shown(name),
                if names.is_empty() {
                    "no platform properties (besides the lre- ones it interprets)".to_owned()
                } else {
                    format!(
                        "{} (and the lre- properties it interprets)",
                        names.join(", ")
                    )
                }
            ))
        }
    }
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// A name or value from a client, as written: plain when it is printable
/// and has no spaces, quoted (with escapes) otherwise; cut to a few hundred
/// characters.
pub fn shown(s: &str) -> String {
    const MAX: usize = 200;
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() || c.is_alphanumeric());
    let text = if plain {
        s.to_owned()
    } else {
        format!("{s:?}")
    };
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], s.len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A platform of `(name, value)` properties (for the tests here and in
    /// `placement` and `limits`).
    pub(crate) fn platform(props: &[(&str, &str)]) -> reapi::Platform {
        reapi::Platform {
            properties: props
                .iter()
                .map(|(n, v)| reapi::platform::Property {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }
    }

    fn default_offer() -> BTreeMap<String, OneOrMany> {
        crate::config::Execution::default().platform
    }

    #[test]
    fn the_default_offer_has_the_lexicons_values_and_the_capitalised_one() {
        let offer = default_offer();
        assert_eq!(unsatisfied(&offer, "OSFamily", "linux"), None);
        assert_eq!(unsatisfied(&offer, "OSFamily", "Linux"), None);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(unsatisfied(&offer, "ISA", "x86-64"), None);
        assert!(unsatisfied(&offer, "OSFamily", "LINUX").is_some());
    }

    #[test]
    fn messages_show_plain_values() {
        let offer = default_offer();
        let msg = unsatisfied(&offer, "OSFamily", "macos").unwrap();
        assert_eq!(
            msg,
            "platform property OSFamily=macos is not satisfiable here: \
             this worker offers OSFamily=linux or OSFamily=Linux"
        );
        let msg = unsatisfied(&offer, "gpu", "a b").unwrap();
        assert!(
            msg.starts_with("platform property gpu=\"a b\" is not satisfiable here: this worker offers no gpu; it offers ISA, OSFamily"),
            "{msg}"
        );
        for msg in [msg, unsatisfied(&offer, "ISA", "arm64").unwrap()] {
            assert!(
                !msg.contains("One(") && !msg.contains("Many(") && !msg.contains('['),
                "{msg}"
            );
        }
        let long = "x".repeat(1000);
        assert!(shown(&long).ends_with("... (1000 bytes)"));
        assert_eq!(shown(""), "\"\"");
    }

    #[test]
    fn lre_root_picks_the_mode_or_leaves_it_to_the_instance() {
        let host = RootMode::Host;
        assert_eq!(root_mode(None, host), Ok(host));
        assert_eq!(
            root_mode(Some(&platform(&[("OSFamily", "linux")])), RootMode::Input),
            Ok(RootMode::Input)
        );
        assert_eq!(
            root_mode(Some(&platform(&[(PROP_ROOT, "input")])), host),
            Ok(RootMode::Input)
        );
        assert_eq!(
            root_mode(Some(&platform(&[(PROP_ROOT, "host")])), RootMode::Input),
            Ok(host)
        );
        let err = root_mode(Some(&platform(&[(PROP_ROOT, "chroot")])), host).unwrap_err();
        assert!(
            err.contains("lre-root=chroot") && err.contains("\"input\""),
            "{err}"
        );
        let err = root_mode(
            Some(&platform(&[(PROP_ROOT, "host"), (PROP_ROOT, "input")])),
            host,
        )
        .unwrap_err();
        assert!(err.contains("twice"), "{err}");
        assert_eq!(
            root_mode(
                Some(&platform(&[(PROP_ROOT, "input"), (PROP_ROOT, "input")])),
                host
            ),
            Ok(RootMode::Input)
        );
    }
}
