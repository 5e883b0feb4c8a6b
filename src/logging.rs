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
pub fn init(default_level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| CutLines(std::io::stderr()));
    let result = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder
            .with_ansi(false)
            .event_format(JournalFormat)
            .try_init()
    } else {
        builder.with_ansi(false).with_target(false).try_init()
    };
    // A second init (tests) keeps the first logger.
    let _ = result;
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
