//! Turning what serde and the TOML parser say about a configuration file
//! into messages in the file's own terms: the dotted key (`store.max-size`),
//! what the key takes in words, and what was written instead. No Rust type
//! names (`u8`, `f64`, `OneOrMany`) reach the user.
//!
//! The lists of keys each table accepts are not written down a second time
//! here: they are read from serde's own "unknown field" message for a probe
//! key (see [`keys_of`]), so they follow the structs in `config.rs`.

use super::Config;

/// The message for a parse error at byte `offset` of `text`.
pub(super) fn describe(text: &str, offset: Option<usize>, message: &str) -> String {
    let message = message.trim_end();
    let key = offset.and_then(|o| key_path_at(text, o));
    if let Some(field) = backticked(message, "unknown field `") {
        return unknown_key(key.as_deref(), &field);
    }
    let got_text = offset.and_then(|o| value_text_at(text, o));
    let plain = if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        match rest.split_once(", expected ") {
            Some((got, want)) => format!("expected {}, got {}", expected(want), got_value(got)),
            None => rest.to_owned(),
        }
    } else if message.starts_with("data did not match any variant of untagged enum") {
        format!(
            "expected a string or a list of strings{}",
            got_text.map(|t| format!(", got {t}")).unwrap_or_default()
        )
    } else if message == "invalid socket address syntax" {
        format!(
            "expected an address with a port such as \"127.0.0.1:50051\" or \"[::1]:50051\"{}",
            got_text.map(|t| format!(", got {t}")).unwrap_or_default()
        )
    } else {
        message.to_owned()
    };
    match key {
        Some(key) => format!("{key}: {plain}"),
        None => plain,
    }
}

/// The text between `prefix` and the next backtick.
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.split_once(prefix)?.1;
    Some(rest.split('`').next()?.to_owned())
}

/// serde's name for an expected type, in words.
fn expected(want: &str) -> String {
    let want = want.trim();
    match want {
        "u8" => "an integer from 0 to 255".into(),
        "u16" => "an integer from 0 to 65535".into(),
        "u32" => "an integer from 0 to 4294967295".into(),
        "u64" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list such as [\"a\", \"b\"]".into(),
        "a string" | "a borrowed string" => "a string".into(),
        "path string" => "a path (a string)".into(),
        "socket address" => "an address with a port such as \"127.0.0.1:50051\"".into(),
        "a map" => "a table".into(),
        w if w.starts_with("struct ") || w.starts_with("a map") => "a table".into(),
        w if w.starts_with("enum ") => "one of the values listed in nativelink-lre.toml(5)".into(),
        w => w.to_owned(),
    }
}

/// serde's description of the value it got, in words.
fn got_value(got: &str) -> String {
    let got = got.trim();
    let inner = |prefix: &str| {
        got.strip_prefix(prefix)
            .map(|v| v.trim_matches('`').to_owned())
    };
    if let Some(s) = got.strip_prefix("string ") {
        return format!("the string {s}");
    }
    if let Some(n) = inner("integer ") {
        return n;
    }
    if let Some(n) = inner("floating point ") {
        return format!("the number {n}");
    }
    if let Some(b) = inner("boolean ") {
        return b;
    }
    match got {
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        other => other.to_owned(),
    }
}

/// The message for a key that its table does not have, with a hint when
/// the key belongs elsewhere: a top-level key written after a table header
/// (TOML puts it in that table), or a key of another table.
fn unknown_key(path: Option<&str>, field: &str) -> String {
    let table = path
        .and_then(|p| p.rsplit_once('.'))
        .map(|(t, _)| t.to_owned());
    let accepted = keys_of(table.as_deref());
    let here = match &table {
        Some(t) => format!("[{t}]"),
        None => "the top level".to_owned(),
    };
    let mut out = format!(
        "{}: unknown key; {here} accepts {}",
        path.unwrap_or(field),
        accepted.join(", ")
    );
    if let Some(close) = accepted.iter().find(|k| edit_distance(k, field) <= 2) {
        out += &format!(". Did you mean {close}?");
    } else if table.is_some() && keys_of(None).iter().any(|k| k == field) {
        out += &format!(
            ". {field} is a top-level key: in TOML every key after a [table] header belongs to \
             that table, so move {field} above the first table"
        );
    } else if let Some(home) = TABLES
        .iter()
        .filter(|t| Some(**t) != table.as_deref())
        .find(|t| keys_of(Some(t)).iter().any(|k| k == field))
    {
        out += &format!(". {field} belongs in [{home}]");
    }
    out
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The tables of the configuration file.
const TABLES: [&str; 7] = [
    "listen",
    "store",
    "action-cache",
    "execution",
    "sandbox",
    "cgroup",
    "upstream",
];

/// The keys a table (or the top level, for `None`) accepts, as serde lists
/// them for an unknown key.
pub(super) fn keys_of(table: Option<&str>) -> Vec<String> {
    const PROBE: &str = "__no_such_key__";
    let text = match table {
        Some(t) => format!("[{t}]\n{PROBE} = 0\n"),
        None => format!("{PROBE} = 0\n"),
    };
    let Err(e) = toml::from_str::<Config>(&text) else {
        return Vec::new();
    };
    let message = e.message().to_owned();
    let Some((_, list)) = message.split_once("expected one of ") else {
        return backticked(&message, "expected `").into_iter().collect();
    };
    list.split(", ")
        .map(|k| k.trim().trim_matches('`').to_owned())
        .filter(|k| !k.is_empty())
        .collect()
}

/// The dotted key (`store.max-size`, `execution.platform.OSFamily`) whose
/// key or value starts at `offset`.
pub(super) fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let table = table_before(&text[..line_start]);
    // The key is written on this line or, for a value that spans lines
    // (an array), on the nearest line above with `key =`.
    let mut start = line_start;
    let mut end = offset;
    let key = loop {
        let line = &text[start..text[start..].find('\n').map_or(text.len(), |i| start + i)];
        let upto = &text[start..end.max(start)];
        if let Some(k) = keys_on_line(line, upto) {
            break k;
        }
        if start == 0 {
            return None;
        }
        let prev = text[..start - 1].rfind('\n').map_or(0, |i| i + 1);
        if text[prev..start].trim_start().starts_with('[') {
            return None;
        }
        end = start - 1;
        start = prev;
    };
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    })
}

/// The key of `line` at the end of `upto` (a prefix of it): the line's own
/// key, joined with the key inside an inline table when the position is
/// inside one.
fn keys_on_line(line: &str, upto: &str) -> Option<String> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || trimmed.starts_with('[') {
        return None;
    }
    let first = bare_key(line.split_once('=')?.0)?;
    let Some(brace) = upto.find('{') else {
        // A key that is itself the problem starts at `upto`'s end.
        return Some(first);
    };
    let inner = &upto[brace + 1..];
    let inner_key = inner
        .rsplit_once('=')
        .and_then(|(before, _)| bare_key(before.rsplit([',', '{']).next().unwrap_or(before)))
        .or_else(|| {
            // The key under the cursor (an unknown key inside the table).
            let rest = &line[upto.len()..];
            bare_key(rest.split('=').next().unwrap_or(""))
        });
    Some(match inner_key {
        Some(k) => format!("{first}.{k}"),
        None => first,
    })
}

/// A bare or quoted TOML key, without quotes and spaces.
fn bare_key(s: &str) -> Option<String> {
    let k = s.trim().trim_matches(|c| c == '"' || c == '\'');
    (!k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    .then(|| k.to_owned())
}

/// The table whose header is the last one in `before`.
fn table_before(before: &str) -> Option<String> {
    before.lines().rev().find_map(|l| {
        let l = l.trim();
        let name = l
            .strip_prefix("[[")
            .and_then(|r| r.split("]]").next())
            .or_else(|| l.strip_prefix('[').and_then(|r| r.split(']').next()))?;
        // `[` also starts the later lines of a multi-line array.
        bare_key(name)
    })
}

/// The value written at `offset`, as it appears in the file (quotes kept).
fn value_text_at(text: &str, offset: usize) -> Option<String> {
    let rest = text.get(offset..)?;
    let end = rest.find(['\n', ',', ']', '}']).unwrap_or(rest.len());
    let v = rest[..end].trim();
    (!v.is_empty()).then(|| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_follow_tables_and_inline_tables() {
        let text = "log-level = \"info\"\n[store]\nmax-size = true\n[execution]\nplatform = { OSFamily = 5 }\n[listen]\ntcp = [\n  \"x\",\n]\n";
        let at = |needle: &str| text.find(needle).unwrap();
        assert_eq!(key_path_at(text, at("\"info\"")).unwrap(), "log-level");
        assert_eq!(key_path_at(text, at("true")).unwrap(), "store.max-size");
        assert_eq!(
            key_path_at(text, at("5 }")).unwrap(),
            "execution.platform.OSFamily"
        );
        assert_eq!(key_path_at(text, at("\"x\"")).unwrap(), "listen.tcp");
    }

    #[test]
    fn type_names_become_words() {
        let m = describe(
            "[store]\nhigh-watermark = \"90\"\n",
            Some(25),
            "invalid type: string \"90\", expected u8",
        );
        assert_eq!(
            m,
            "store.high-watermark: expected an integer from 0 to 255, got the string \"90\""
        );
        let m = describe("", None, "invalid type: floating point `1.5`, expected u64");
        assert_eq!(m, "expected a whole number (0 or more), got the number 1.5");
    }

    #[test]
    fn misspelt_keys_get_a_suggestion() {
        assert_eq!(edit_distance("max-sise", "max-size"), 1);
        let m = unknown_key(Some("store.max-sise"), "max-sise");
        assert!(m.ends_with("Did you mean max-size?"), "{m}");
    }

    #[test]
    fn keys_are_read_from_the_structs() {
        let top = keys_of(None);
        assert!(top.iter().any(|k| k == "state-dir"), "{top:?}");
        assert!(top.iter().any(|k| k == "store"), "{top:?}");
        let store = keys_of(Some("store"));
        assert!(store.iter().any(|k| k == "max-size"), "{store:?}");
        assert!(!store.iter().any(|k| k == "state-dir"), "{store:?}");
    }
}
