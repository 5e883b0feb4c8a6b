//! Every key the configuration accepts is documented in
//! `man/nativelink-lre.toml.5`, in the section of its table. The keys are
//! read from the serde structs themselves (what serde lists for an unknown
//! key), so a key added to a struct and not to the page fails here.

use super::messages::keys_of;

const PAGE: &str = include_str!("../../man/nativelink-lre.toml.5");

/// The page's text with roff's escapes for '-' and hyphenation removed.
fn plain(text: &str) -> String {
    text.replace("\\-", "-").replace("\\%", "")
}

/// The text of the section whose heading is `heading` (`.SH HEADING` up to
/// the next `.SH`).
fn section(heading: &str) -> Option<String> {
    let page = plain(PAGE);
    let start = page.find(&format!("\n.SH {heading}\n"))?;
    let body = &page[start + 1..];
    let end = body[4..].find("\n.SH ").map_or(body.len(), |i| i + 4);
    Some(body[..end].to_owned())
}

/// Whether `section` documents `key` as a `.TP` entry (`.BI "key = " ...`
/// or `.B key`).
fn documents(section: &str, key: &str) -> bool {
    section.lines().any(|line| {
        let line = [".BI ", ".BR ", ".B "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
            .unwrap_or(line);
        let line = line.trim_start_matches('"');
        line.strip_prefix(key)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '"', '.', '=']))
    })
}

#[test]
fn every_key_is_in_the_man_page() {
    let top = keys_of(None);
    assert!(top.len() > 10, "serde listed too few keys: {top:?}");
    let top_section = section("TOP-LEVEL KEYS").expect("a TOP-LEVEL KEYS section");
    let mut missing = Vec::new();
    for key in &top {
        // A table has a section of its own; `[instances.NAME]` is a table
        // of tables.
        let (heading, probe) = match key.as_str() {
            "instances" => (
                r"[instances.\fIname\fP]".to_owned(),
                "instances.x".to_owned(),
            ),
            _ => (format!("[{key}]"), key.clone()),
        };
        let Some(s) = section(&heading) else {
            if !documents(&top_section, key) {
                missing.push(key.clone());
            }
            continue;
        };
        let keys = keys_of(Some(&probe));
        assert!(!keys.is_empty(), "serde listed no keys for [{probe}]");
        missing.extend(
            keys.into_iter()
                .filter(|k| !documents(&s, k))
                .map(|k| format!("{probe}.{k}")),
        );
    }
    assert!(
        missing.is_empty(),
        "not in man/nativelink-lre.toml.5: {missing:?}"
    );
}

#[test]
fn the_check_sees_an_undocumented_key() {
    let s = section("[store]").unwrap();
    assert!(documents(&s, "max-batch-size"));
    assert!(!documents(&s, "max-batch"));
    assert!(!documents(&s, "no-such-key"));
}
