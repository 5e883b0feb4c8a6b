//! The one I/O error of every layer: what was being done, to which path,
//! and what the kernel answered. A bare `io::Error` ("No such file or
//! directory") tells the reader nothing; this one reads
//! `cannot read /sys/fs/cgroup/x/cgroup.procs: No such file or directory`.

use std::io;
use std::path::{Path, PathBuf};

/// A failed file-system operation on `path`.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct IoError {
    /// What was being done, as the start of a sentence: `cannot read`,
    /// `create`, `lock`.
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> IoError {
        IoError {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// An [`IoError`] maker for `map_err`: `.map_err(IoError::at("open", &path))`.
    pub fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IoError + 'a {
        move |source| IoError::new(op, path, source)
    }

    /// The kind of the kernel's answer (`NotFound`, `PermissionDenied`, ...).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_operation_and_the_path() {
        let err = std::fs::read("/nonexistent/file")
            .map_err(IoError::at("cannot read", Path::new("/nonexistent/file")))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let text = err.to_string();
        assert!(
            text.starts_with("cannot read /nonexistent/file: "),
            "{text}"
        );
    }
}
