//! What only the benchmarks need besides the shared test-support module
//! (`tests/common`, which each bench includes as `common`): when to do
//! nothing, the client runtime, and computing, formatting and printing the
//! figures. Each bench includes it with
//! `#[path = "common/report.rs"] mod report;`. Not every bench uses every
//! item here.

#![allow(dead_code)]

use std::time::Duration;

/// Whether the bench was only asked to list its benchmarks (`--list`): it
/// then does nothing. `cargo bench` passes `--bench`; a filter gets nothing
/// special.
pub fn list_only() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// The single-threaded runtime the clients run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Nearest-rank percentile of sorted values.
pub fn pct<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn sorted<T: Ord + Copy>(v: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut s: Vec<T> = v.into_iter().collect();
    s.sort();
    s
}

/// The median (nearest rank).
pub fn p50<T: Ord + Copy>(v: impl IntoIterator<Item = T>) -> T {
    pct(&sorted(v), 50.0)
}

pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Milliseconds with `places` decimals.
pub fn millis(d: Duration, places: usize) -> String {
    format!("{:.*} ms", places, d.as_secs_f64() * 1e3)
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// How [`Table`] aligns the figure column.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Rows of the final table: (measurement, figure, target/verdict). Each row
/// is also echoed to stderr as it is added.
pub struct Table {
    rows: Vec<(String, String, String)>,
    figures: Align,
    /// How far the horizontal rules reach past the figure column.
    rule_extra: usize,
}

impl Table {
    pub fn new(figures: Align, rule_extra: usize) -> Table {
        Table {
            rows: Vec::new(),
            figures,
            rule_extra,
        }
    }

    pub fn row(
        &mut self,
        what: impl Into<String>,
        figure: impl Into<String>,
        note: impl Into<String>,
    ) {
        let (what, figure, note) = (what.into(), figure.into(), note.into());
        eprintln!("  {what}: {figure} {note}");
        self.rows.push((what, figure, note));
    }

    /// Prints the table to stdout; lines carry no trailing blanks.
    pub fn print(&self) {
        let width = |f: fn(&(String, String, String)) -> &String| {
            self.rows
                .iter()
                .map(|r| f(r).chars().count())
                .max()
                .unwrap_or(0)
        };
        let (w0, w1) = (width(|r| &r.0), width(|r| &r.1));
        let rule = format!("{:-<1$}", "", w0 + w1 + self.rule_extra);
        println!();
        println!("{rule}");
        for (a, b, c) in &self.rows {
            let pa = w0 - a.chars().count();
            let pb = w1 - b.chars().count();
            let figure = match self.figures {
                Align::Left => format!("{b}{:pb$}", ""),
                Align::Right => format!("{:pb$}{b}", ""),
            };
            println!("{}", format!("{a}{:pa$}  {figure}  {c}", "").trim_end());
        }
        println!("{rule}");
    }
}
