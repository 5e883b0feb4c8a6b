//! Configuration errors and how they find their place in the file
//! (`FILE:LINE:COLUMN` for parse errors, `FILE:LINE: KEY` for values).

use std::path::{Path, PathBuf};

use super::messages;

/// A configuration error, with the place it was found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}{place}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        /// `:LINE` when the key appears in the file, empty otherwise.
        place: String,
        /// The dotted key (`store.low-watermark`) when it appears in the
        /// file, the bare key otherwise.
        key: String,
        message: String,
    },
}

pub(super) fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// An [`ConfigError::Invalid`] for `key` (a bare key such as
/// `low-watermark`), placed at the line where the file sets it.
pub(super) fn invalid_at(text: &str, path: &Path, key: &str, message: String) -> ConfigError {
    let line = find_key(text, key);
    ConfigError::Invalid {
        path: path.to_owned(),
        place: line.map(|line| format!(":{line}")).unwrap_or_default(),
        key: line
            .and_then(|line| messages::key_path_at(text, line_offset(text, line)))
            .unwrap_or_else(|| key.to_owned()),
        message,
    }
}

/// The byte offset where line `line` (1-based) starts.
pub(super) fn line_offset(text: &str, line: usize) -> usize {
    text.split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum()
}

/// The line on which `key = …` is written, if it is.
pub(super) fn find_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}
