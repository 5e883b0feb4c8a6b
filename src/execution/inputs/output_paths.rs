//! Output paths: parsed relative to the working directory, never out of
//! the input root; their parents created before the action runs.

use std::collections::HashSet;
use std::fs::{self};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::*;
use crate::cas::{self};
use crate::proto::reapi;

/// Splits a relative path the client sent (an output path or the working
/// directory) into components, resolving `.` and `..` lexically. It must
/// not be absolute, have empty segments (`a//b`, a leading or trailing
/// `/`), contain NUL, or climb above where it starts. The empty string is
/// the starting directory itself, allowed only where `allow_empty` says.
pub(crate) fn split_relative(path: &str, allow_empty: bool) -> Result<Vec<&str>, String> {
    resolve_beneath(Vec::new(), path, allow_empty)
}

/// [`split_relative`] for a path relative to the directory `base` (given
/// as components): `..` may climb out of `base` but not out of the root
/// `base` is relative to. Returns the components relative to that root.
/// REAPI makes output paths relative to the working directory, and clients
/// such as BuildStream declare `../../../install` from a working directory
/// three levels down; buildbox and Buildbarn accept that as long as the
/// result stays inside the input root, and so does this.
pub(crate) fn resolve_beneath<'a>(
    base: Vec<&'a str>,
    path: &'a str,
    allow_empty: bool,
) -> Result<Vec<&'a str>, String> {
    if path.is_empty() {
        return if allow_empty {
            Ok(base)
        } else {
            Err("empty path".into())
        };
    }
    if path.starts_with('/') {
        return Err("path is absolute".into());
    }
    if path.contains('\0') {
        return Err("path contains a NUL character".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("path is longer than {MAX_PATH_LEN} bytes"));
    }
    let mut parts = base;
    for part in path.split('/') {
        match part {
            "" => return Err("path has an empty segment".into()),
            "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("'..' climbs out of the input root".into());
                }
            }
            _ if part.len() > NAME_MAX => {
                return Err(format!("a path segment is longer than {NAME_MAX} bytes"));
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// One declared output, checked: what the client called it and its
/// components relative to the exec root.
pub(crate) struct OutputPath<'a> {
    pub declared: &'a str,
    pub components: Vec<&'a str>,
    pub kind: OutputKind,
}

/// Which list an output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputKind {
    /// `output_paths` (REAPI 2.1): a file, directory or symlink.
    Any,
    /// `output_files`.
    File,
    /// `output_directories`.
    Directory,
}

/// The command's outputs, relative to `working_dir` (normally the
/// command's own), checked, in the order declared: `output_paths`
/// if it is not empty, else `output_files` then `output_directories`. The
/// empty path (the whole working directory) is allowed for directories and
/// `output_paths`, as REAPI allows it. Errors name the offending path.
pub(crate) fn output_paths<'a>(
    working_dir: &'a str,
    command: &'a reapi::Command,
) -> Result<Vec<OutputPath<'a>>, (String, String)> {
    let wd = split_relative(working_dir, true).map_err(|reason| {
        (
            working_dir.to_owned(),
            format!("working directory: {reason}"),
        )
    })?;
    let declared: Vec<(&str, OutputKind)> = if !command.output_paths.is_empty() {
        command
            .output_paths
            .iter()
            .map(|p| (p.as_str(), OutputKind::Any))
            .collect()
    } else {
        #[allow(deprecated)]
        let (files, dirs) = (&command.output_files, &command.output_directories);
        files
            .iter()
            .map(|p| (p.as_str(), OutputKind::File))
            .chain(dirs.iter().map(|p| (p.as_str(), OutputKind::Directory)))
            .collect()
    };
    declared
        .into_iter()
        .map(|(declared, kind)| {
            let components = resolve_beneath(wd.clone(), declared, kind != OutputKind::File)
                .map_err(|reason| (declared.to_owned(), format!("output path: {reason}")))?;
            Ok(OutputPath {
                declared,
                components,
                kind,
            })
        })
        .collect()
}

/// The input files an action may not change: every file of `tree` except
/// those at or below a declared output of `command`, which it may replace.
/// Paths relative to the input root, in tree order.
pub fn read_only_candidates(tree: &InputTree, command: &reapi::Command) -> Vec<String> {
    let outputs: Vec<String> = output_paths(&command.working_directory, command)
        .map(|outs| outs.iter().map(|o| o.components.join("/")).collect())
        .unwrap_or_default();
    let under = |path: &str, out: &str| {
        out.is_empty()
            || path == out
            || (path.starts_with(out) && path.as_bytes().get(out.len()) == Some(&b'/'))
    };
    tree.files
        .iter()
        .filter(|f| !outputs.iter().any(|o| under(&f.path, o)))
        .map(|f| f.path.clone())
        .collect()
}

/// Creates the parent directories of every output (relative to the working
/// directory, which is relative to `exec_root`), as REAPI requires before
/// the command runs: for `output_paths` if it is not empty, else for
/// `output_files` and `output_directories` (not the output directories
/// themselves). New directories are 0755 and owned by `dir_owner` if given.
///
/// Output paths and the working directory must be relative, without empty
/// segments and without `..` climbing out of where they start; otherwise
/// [`InputError::Invalid`] names the path. A parent that exists in the
/// input tree as a file or symlink is an error too: the output could not be
/// created, and we never create directories through a symlink.
pub fn create_output_parents(
    exec_root: &Path,
    working_dir: &str,
    command: &reapi::Command,
    dir_owner: Option<(u32, u32)>,
) -> Result<(), InputError> {
    let outputs =
        output_paths(working_dir, command).map_err(|(path, reason)| invalid(path, reason))?;
    let mut ready: HashSet<String> = HashSet::new();
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o755);
    for out in &outputs {
        let Some((_, parents)) = out.components.split_last() else {
            continue;
        };
        let mut rel = String::new();
        for part in parents {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(part);
            if ready.contains(&rel) {
                continue;
            }
            let path = exec_root.join(&rel);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) => {
                    return Err(invalid(
                        out.declared,
                        format!(
                            "its parent {rel:?} is {} in the input tree",
                            cas::file_kind(&meta.file_type())
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    builder
                        .create(&path)
                        .map_err(io_err("create directory", &path))?;
                    finish_dir(&path, dir_owner, true)?;
                }
                Err(e) => return Err(io_err("stat", &path)(e)),
            }
            ready.insert(rel.clone());
        }
    }
    Ok(())
}
