//! Logs go to stderr. Under systemd (when `JOURNAL_STREAM` is set) each line
//! starts with a `<N>` syslog priority, which the journal turns into the
//! entry's level, and carries no timestamp of its own.
//!
//! No line is longer than [`MAX_LINE`] bytes: messages quote client input
//! cut already (`quote`), and this catches whatever else might quote a
//! huge value whole (a 256 MiB Directory once made a 268 MB line).

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global logger. `RUST_LOG` overrides `default_level`.
///
/// Under systemd (`JOURNAL_STREAM` set) events go to the journal natively,
/// their fields (`user`, `action`, `exit_code`, ...) as journal fields
/// (`USER=`, `ACTION=`, ...); where the journal socket cannot be used, to
/// stderr with a syslog priority prefix.
pub fn init(default_level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(filter_for(default_level)))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journal) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter())
                .with(journal.with_syslog_identifier("nativelink-lre".into()))
                .try_init();
            return;
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(|| CutLines(std::io::stderr()))
            .with_ansi(false)
            .event_format(JournalFormat)
            .try_init();
        return;
    }
    // A second init (tests) keeps the first logger.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(|| CutLines(std::io::stderr()))
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// The filter for a configured `log-level`. A bare `debug` or `trace` is
/// the daemon's own debug output, not the HTTP/2 frames of every library
/// (those stay at info); a filter with targets (`,` or `=`) is used as
/// written.
pub fn filter_for(level: &str) -> String {
    let level = level.trim();
    if level.contains([',', '=']) {
        return level.to_owned();
    }
    match level {
        "debug" | "trace" => format!("info,nativelink_lre={level}"),
        _ => level.to_owned(),
    }
}

/// syslog priority for a tracing level, as sd-daemon(3) defines the prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The longest log line written, in bytes.
pub const MAX_LINE: usize = 8192;

/// stderr, with each event (tracing writes an event in one call) cut to
/// [`MAX_LINE`] bytes.
struct CutLines(std::io::Stderr);

impl std::io::Write for CutLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() <= MAX_LINE {
            self.0.write_all(buf)?;
        } else {
            let mut line = buf[..MAX_LINE].to_vec();
            line.extend_from_slice(
                format!("… (log line cut from {} bytes)\n", buf.len()).as_bytes(),
            );
            self.0.write_all(&line)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

struct JournalFormat;

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
