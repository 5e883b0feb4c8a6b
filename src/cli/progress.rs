//! One line of progress on standard error, rewritten in place, shown only
//! when standard error is a terminal (a log file or a pipe gets only the
//! summary).

use std::io::{IsTerminal, Write};

pub struct ProgressLine {
    enabled: bool,
    /// Characters of the line on screen now.
    shown: usize,
}

impl ProgressLine {
    /// A line on standard error if it is a terminal; otherwise one that
    /// shows nothing.
    pub fn on_stderr() -> ProgressLine {
        ProgressLine {
            enabled: std::io::stderr().is_terminal(),
            shown: 0,
        }
    }

    pub fn show(&mut self, text: &str) {
        if !self.enabled {
            return;
        }
        let len = text.chars().count();
        let pad = self.shown.saturating_sub(len);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{text}{}", " ".repeat(pad));
        let _ = err.flush();
        self.shown = len;
    }

    /// Removes the line, so that what follows starts on a clean line.
    pub fn clear(&mut self) {
        if self.shown == 0 {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}\r", " ".repeat(self.shown));
        let _ = err.flush();
        self.shown = 0;
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.clear();
    }
}
