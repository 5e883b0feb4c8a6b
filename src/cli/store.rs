//! `status`, `gc` and `verify`: the store and the daemon, as a person
//! reads them (with progress on a terminal for the long ones) or as JSON.

use std::path::Path;
use std::process::ExitCode;

use super::address::{Target, with_daemon};
use super::progress::ProgressLine;
use super::words::{bytes, count, millis, percent};
use crate::client;
use crate::config::ByteSize;
use crate::proto::nativelink_lre::v1 as admin;

/// `gc --target`: a size as the configuration writes it; a bare number is
/// bytes. Fractions are refused with the whole-number spelling to use.
pub fn parse_size(s: &str) -> Result<u64, String> {
    if s.contains('.') {
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let smaller = match unit.trim() {
            "T" | "TiB" => Some("GiB"),
            "G" | "GiB" => Some("MiB"),
            "M" | "MiB" => Some("KiB"),
            _ => None,
        };
        let exact = number
            .parse::<f64>()
            .ok()
            .map(|n| n * 1024.0)
            .filter(|n| n.fract() == 0.0 && *n >= 0.0);
        let hint = match (smaller, exact) {
            (Some(u), Some(n)) => format!("write \"{n}{u}\" instead"),
            _ => "write a whole number, in a smaller unit if need be (\"1536MiB\" for 1.5GiB)"
                .to_owned(),
        };
        return Err(format!("{s:?}: fractions are not accepted; {hint}"));
    }
    ByteSize::parse(s).map(|b| b.0)
}

pub fn status(config: Option<&Path>, target: &Target, json: bool) -> ExitCode {
    with_daemon(config, target, |ch| async move {
        let s = client::status(&ch).await?;
        if json {
            println!("{}", status_json(&s));
        } else {
            print!("{}", client::format_status(&s));
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn show_progress(line: &mut ProgressLine, what: &str, p: &admin::Progress) {
    let amount = |n: u64| {
        if p.unit == "bytes" {
            bytes(n)
        } else {
            n.to_string()
        }
    };
    let text = if p.total > 0 {
        format!(
            "{what}: {} {} of {} {} ({}%)",
            p.phase,
            amount(p.done),
            amount(p.total),
            if p.unit == "bytes" {
                ""
            } else {
                p.unit.as_str()
            },
            percent(p.done, p.total)
        )
    } else {
        format!("{what}: {} {} {}", p.phase, amount(p.done), p.unit)
    };
    line.show(
        text.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .as_str(),
    );
}

pub fn gc(config: Option<&Path>, target: &Target, size: Option<u64>) -> ExitCode {
    with_daemon(config, target, |ch| async move {
        let mut line = ProgressLine::on_stderr();
        let r = client::gc_with_progress(&ch, size, |p| show_progress(&mut line, "gc", p)).await;
        line.clear();
        let r = r?;
        println!("{}", gc_summary(&r));
        Ok(ExitCode::SUCCESS)
    })
}

fn gc_summary(r: &admin::CollectGarbageResponse) -> String {
    let removed = if r.removed_files == 0 {
        "removed nothing".to_owned()
    } else {
        format!(
            "removed {} ({})",
            count(r.removed_files, "file", "files"),
            bytes(r.removed_bytes)
        )
    };
    format!(
        "{removed} in {}; the store holds {} (was {})",
        millis(r.duration_ms),
        bytes(r.bytes_after),
        bytes(r.bytes_before)
    )
}

pub fn verify(config: Option<&Path>, target: &Target) -> ExitCode {
    with_daemon(config, target, |ch| async move {
        let mut line = ProgressLine::on_stderr();
        let r = client::verify_with_progress(&ch, |p| show_progress(&mut line, "verify", p)).await;
        line.clear();
        let r = r?;
        for p in &r.removed_paths {
            println!("removed {p}: its contents do not match its name");
        }
        println!("{}", verify_summary(&r));
        Ok(ExitCode::SUCCESS)
    })
}

fn verify_summary(r: &admin::VerifyResponse) -> String {
    let removed = match r.removed {
        0 => "every one matches its name".to_owned(),
        n => format!(
            "removed {n} that did not match {}",
            if n == 1 { "its name" } else { "their names" }
        ),
    };
    format!(
        "checked {} and {} in {}; {removed}",
        count(r.checked, "file", "files"),
        count(
            r.action_cache_checked,
            "action-cache entry",
            "action-cache entries"
        ),
        millis(r.duration_ms)
    )
}

/// The status as JSON: the message's own fields (see `admin.proto`).
fn status_json(s: &crate::proto::nativelink_lre::v1::StatusResponse) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_count_in_words() {
        let one = admin::VerifyResponse {
            checked: 1,
            removed: 1,
            removed_paths: vec![],
            duration_ms: 3,
            action_cache_checked: 2,
        };
        assert_eq!(
            verify_summary(&one),
            "checked 1 file and 2 action-cache entries in 3 ms; removed 1 that did not match its name"
        );
        let none = admin::CollectGarbageResponse {
            bytes_before: 8192,
            removed_files: 0,
            removed_bytes: 0,
            bytes_after: 8192,
            duration_ms: 1,
        };
        assert_eq!(
            gc_summary(&none),
            "removed nothing in 1 ms; the store holds 8 KiB (was 8 KiB)"
        );
        let two = admin::CollectGarbageResponse {
            removed_files: 2,
            removed_bytes: 1,
            bytes_after: 0,
            ..none
        };
        assert!(gc_summary(&two).starts_with("removed 2 files (1 byte)"));
    }

    #[test]
    fn fractions_get_a_whole_number_to_use() {
        let e = parse_size("1.5G").unwrap_err();
        assert!(
            e.contains("fractions are not accepted") && e.contains("1536MiB"),
            "{e}"
        );
        assert_eq!(parse_size("1536MiB").unwrap(), 1536 << 20);
        assert_eq!(parse_size("0").unwrap(), 0);
    }
}
