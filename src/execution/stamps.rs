//! Fixed timestamps on a laid-out exec root.
//!
//! Input files get the store's fixed mtime (see `cas::last_use`) however
//! they were laid out. Directories and symbolic links are created for each
//! action, so their times would be the moment of materialization; and a
//! directory's mtime moves again whenever an entry is created in it (the
//! files, then the parents of the outputs). Once everything is in place,
//! [`settle`] gives every directory and symbolic link of the exec root the
//! same fixed access and modification time, so that `stat` of every input
//! is the same every time. Change times cannot be set by anyone: they stay
//! the moment of materialization (and, for a linked file, of the store's
//! last use), and are listed among the things that vary in
//! nativelink-lre(8).

use std::collections::BTreeSet;
use std::path::Path;

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use super::inputs::{InputError, InputTree, output_paths};
use crate::cas::last_use::FIXED_MTIME_SECS;
use crate::proto::reapi;

/// Sets the fixed time on the exec root, every directory and symbolic link
/// of `tree`, and the parents of `command`'s outputs (all created by now).
/// A path that cannot be stamped is an error: the action would see a time
/// that depends on when it ran.
pub fn settle(
    exec_root: &Path,
    tree: &InputTree,
    command: &reapi::Command,
) -> Result<(), InputError> {
    let mut output_parents = BTreeSet::new();
    if let Ok(outputs) = output_paths(&command.working_directory, command) {
        for out in outputs {
            let Some((_, parents)) = out.components.split_last() else {
                continue;
            };
            for n in 1..=parents.len() {
                output_parents.insert(parents[..n].join("/"));
            }
        }
    }
    let relative = std::iter::once("")
        .chain(tree.directories().iter().map(String::as_str))
        .chain(tree.symlinks().iter().map(|s| s.path.as_str()))
        .chain(output_parents.iter().map(String::as_str));
    let fixed = TimeSpec::new(FIXED_MTIME_SECS as i64, 0);
    for rel in relative {
        let path = exec_root.join(rel);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &fixed,
            &fixed,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| InputError::Io {
            op: "set the fixed time of",
            path,
            source: e.into(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::tests::test_store;
    use crate::execution::inputs::tests::{command, dir, file, link, put_blob, put_dir};
    use crate::execution::inputs::{self, Materialize};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn every_directory_and_symlink_gets_the_fixed_time() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(&tmp.path().join("store"), 1 << 30);
        let data = put_blob(&store, b"data");
        let sub = put_dir(
            &store,
            &reapi::Directory {
                files: vec![file("x", &data, false)],
                symlinks: vec![link("up", "../x")],
                ..Default::default()
            },
        );
        let root = put_dir(
            &store,
            &reapi::Directory {
                files: vec![file("x", &data, false)],
                directories: vec![dir("sub", &sub)],
                ..Default::default()
            },
        );
        let tree = inputs::resolve(&store, &root).unwrap();
        let dest = tmp.path().join("exec");
        inputs::materialize(&store, &tree, &dest, Materialize::Copy { dir_owner: None }).unwrap();
        let cmd = command("", &["sub/out/deep/file"], &[], &[]);
        inputs::create_output_parents(&dest, "", &cmd, None).unwrap();
        settle(&dest, &tree, &cmd).unwrap();
        for rel in ["", "sub", "sub/up", "sub/out", "sub/out/deep", "x", "sub/x"] {
            let meta = std::fs::symlink_metadata(dest.join(rel)).unwrap();
            assert_eq!(
                (meta.mtime(), meta.mtime_nsec()),
                (FIXED_MTIME_SECS as i64, 0),
                "mtime of {rel:?}"
            );
            if !meta.is_file() {
                assert_eq!(meta.atime(), FIXED_MTIME_SECS as i64, "atime of {rel:?}");
            }
        }
    }
}
