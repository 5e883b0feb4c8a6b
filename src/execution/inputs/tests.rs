//! Tests of the input tree, its layout and the output paths.
use std::fs::{self};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;

use super::*;
use crate::cas::Store;
use crate::cas::tests::test_store;
use crate::digest::Digest;
use crate::proto::reapi;
use std::os::unix::fs::MetadataExt;

/// Stores a Directory message and returns its digest.
pub(crate) fn put_dir(store: &Arc<Store>, dir: &reapi::Directory) -> Digest {
    let bytes = dir.encode_to_vec();
    let d = Digest::of_bytes(&bytes);
    store.put(&d, &bytes).unwrap();
    d
}

/// Stores a blob and returns its digest.
pub(crate) fn put_blob(store: &Arc<Store>, data: &[u8]) -> Digest {
    let d = Digest::of_bytes(data);
    store.put(&d, data).unwrap();
    d
}

pub(crate) fn file(name: &str, d: &Digest, exec: bool) -> reapi::FileNode {
    reapi::FileNode {
        name: name.into(),
        digest: Some(d.to_proto()),
        is_executable: exec,
        ..Default::default()
    }
}

pub(crate) fn dir(name: &str, d: &Digest) -> reapi::DirectoryNode {
    reapi::DirectoryNode {
        name: name.into(),
        digest: Some(d.to_proto()),
    }
}

pub(crate) fn link(name: &str, target: &str) -> reapi::SymlinkNode {
    reapi::SymlinkNode {
        name: name.into(),
        target: target.into(),
        ..Default::default()
    }
}

fn invalid_at(result: Result<InputTree, InputError>) -> (String, String) {
    match result {
        Err(InputError::Invalid { path, reason }) => (path, reason),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// A root holding `sub/` (which holds `contents`) and a file `a`.
fn tree_with_sub(store: &Arc<Store>, contents: reapi::Directory) -> Digest {
    let sub = put_dir(store, &contents);
    let a = put_blob(store, b"a");
    put_dir(
        store,
        &reapi::Directory {
            files: vec![file("a", &a, false)],
            directories: vec![dir("sub", &sub)],
            ..Default::default()
        },
    )
}

#[test]
fn resolves_a_dag_once_per_path() {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(tmp.path(), 1 << 30);
    let x = put_blob(&store, b"x contents");
    let tool = put_blob(&store, b"#!/bin/sh\n");
    let leaf = put_dir(
        &store,
        &reapi::Directory {
            files: vec![file("x", &x, false)],
            symlinks: vec![link("up", "../x"), link("y", "x")],
            ..Default::default()
        },
    );
    let root = put_dir(
        &store,
        &reapi::Directory {
            files: vec![file("tool", &tool, true)],
            directories: vec![dir("a", &leaf), dir("b", &leaf)],
            symlinks: vec![link("c", "a")],
            ..Default::default()
        },
    );
    let tree = resolve(&store, &root).unwrap();
    assert_eq!(tree.directories(), ["a", "b"]);
    let files: Vec<(&str, bool)> = tree
        .files()
        .iter()
        .map(|f| (f.path.as_str(), f.is_executable))
        .collect();
    assert_eq!(files, [("tool", true), ("a/x", false), ("b/x", false)]);
    let links: Vec<&str> = tree.symlinks().iter().map(|s| s.path.as_str()).collect();
    assert_eq!(links, ["c", "a/up", "a/y", "b/up", "b/y"]);
    let mut digests = tree.digests();
    digests.sort();
    let mut expected = vec![x, tool, leaf, root];
    expected.sort();
    assert_eq!(digests, expected);
    assert_eq!(tree.file_bytes(), 10 + 10 + 10);
}

#[test]
fn missing_lists_every_absent_blob_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(tmp.path(), 1 << 30);
    let present = put_blob(&store, b"here");
    let gone1 = Digest::of_bytes(b"gone 1");
    let gone2 = Digest::of_bytes(b"gone 2");
    let absent_dir = Digest::of_message(&reapi::Directory {
        files: vec![file("never-seen", &Digest::of_bytes(b"never"), false)],
        ..Default::default()
    });
    let sub = put_dir(
        &store,
        &reapi::Directory {
            files: vec![file("g1", &gone1, false), file("p", &present, false)],
            ..Default::default()
        },
    );
    let root = put_dir(
        &store,
        &reapi::Directory {
            files: vec![
                file("e", &Digest::EMPTY, false),
                file("g1", &gone1, false),
                file("g2", &gone2, true),
            ],
            directories: vec![dir("absent", &absent_dir), dir("s1", &sub), dir("s2", &sub)],
            ..Default::default()
        },
    );
    let Err(InputError::Missing(missing)) = resolve(&store, &root) else {
        panic!("expected Missing");
    };
    let mut expected = vec![gone1, gone2, absent_dir];
    expected.sort();
    assert_eq!(missing, expected);

    // A missing root is reported as missing too.
    let nothing = Digest::of_bytes(b"no such directory");
    assert!(matches!(
        resolve(&store, &nothing),
        Err(InputError::Missing(m)) if m == vec![nothing]
    ));
}

#[test]
fn refuses_unsorted_and_duplicate_names() {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(tmp.path(), 1 << 30);
    let d = put_blob(&store, b"d");
    let unsorted = tree_with_sub(
        &store,
        reapi::Directory {
            files: vec![file("b", &d, false), file("a", &d, false)],
            ..Default::default()
        },
    );
    let (path, reason) = invalid_at(resolve(&store, &unsorted));
    assert_eq!(path, "sub/a");
    assert!(reason.contains("not sorted"), "{reason}");

    let dup = tree_with_sub(
        &store,
        reapi::Directory {
            symlinks: vec![link("l", "x"), link("l", "y")],
            ..Default::default()
        },
    );
    let (path, reason) = invalid_at(resolve(&store, &dup));
    assert_eq!(path, "sub/l");
    assert!(reason.contains("duplicate"), "{reason}");

    let empty = put_dir(&store, &reapi::Directory::default());
    let across = tree_with_sub(
        &store,
        reapi::Directory {
            files: vec![file("n", &d, false)],
            directories: vec![dir("n", &empty)],
            ..Default::default()
        },
    );
    let (path, reason) = invalid_at(resolve(&store, &across));
    assert_eq!(path, "sub/n");
    assert!(reason.contains("more than one"), "{reason}");
}

#[test]
fn refuses_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(tmp.path(), 1 << 30);
    let d = put_blob(&store, b"d");
    let empty = put_dir(&store, &reapi::Directory::default());
    for (name, expect) in [
        ("..", "not a valid name"),
        (".", "not a valid name"),
        ("", "empty name"),
        ("a/b", "'/'"),
        ("nul\0", "NUL"),
    ] {
        for as_dir in [false, true] {
            let contents = if as_dir {
                reapi::Directory {
                    directories: vec![dir(name, &empty)],
                    ..Default::default()
                }
            } else {
                reapi::Directory {
                    files: vec![file(name, &d, false)],
                    ..Default::default()
                }
            };
            let root = tree_with_sub(&store, contents);
            let (path, reason) = invalid_at(resolve(&store, &root));
            assert_eq!(path, format!("sub/{name}"));
            assert!(reason.contains(expect), "{name:?}: {reason}");
        }
    }
}

#[test]
fn refuses_bad_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(tmp.path(), 1 << 30);
    let root = tree_with_sub(
        &store,
        reapi::Directory {
            files: vec![reapi::FileNode {
                name: "f".into(),
                digest: Some(reapi::Digest {
                    hash: "../../etc/passwd".into(),
                    size_bytes: 1,
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let (path, reason) = invalid_at(resolve(&store, &root));
    assert_eq!(path, "sub/f");
    assert!(reason.contains("digest"), "{reason}");
    let root = tree_with_sub(
        &store,
        reapi::Directory {
            directories: vec![reapi::DirectoryNode {
                name: "d".into(),
                digest: None,
            }],
            ..Default::default()
        },
    );
    assert_eq!(invalid_at(resolve(&store, &root)).0, "sub/d");
}

#[test]
fn refuses_symlinks_leaving_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(tmp.path(), 1 << 30);
    for (target, ok) in [
        ("../a", true),
        ("..", true),
        ("./../sub/../a", true),
        ("x/../../a", true),
        ("../../x", false),
        ("../x/../../y", false),
        ("/etc/passwd", false),
        ("", false),
    ] {
        let root = tree_with_sub(
            &store,
            reapi::Directory {
                symlinks: vec![link("l", target)],
                ..Default::default()
            },
        );
        let result = resolve(&store, &root);
        if ok {
            assert!(result.is_ok(), "{target:?}: {result:?}");
        } else {
            let (path, reason) = invalid_at(result);
            assert_eq!(path, "sub/l", "{target:?}");
            assert!(
                reason.contains("outside")
                    || reason.contains("absolute")
                    || reason.contains("empty"),
                "{target:?}: {reason}"
            );
        }
    }
    // The same directory is fine one level down and escapes at the top.
    let leaf = put_dir(
        &store,
        &reapi::Directory {
            symlinks: vec![link("l", "../../x")],
            ..Default::default()
        },
    );
    let mid = put_dir(
        &store,
        &reapi::Directory {
            directories: vec![dir("leaf", &leaf)],
            ..Default::default()
        },
    );
    let root = put_dir(
        &store,
        &reapi::Directory {
            directories: vec![dir("deep", &mid), dir("top", &leaf)],
            ..Default::default()
        },
    );
    let (path, _) = invalid_at(resolve(&store, &root));
    assert_eq!(path, "top/l");
}

#[test]
fn refuses_a_directory_that_does_not_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(tmp.path(), 1 << 30);
    let junk = put_blob(&store, b"\xff\xff\xff not a proto");
    let root = put_dir(
        &store,
        &reapi::Directory {
            directories: vec![dir("j", &junk)],
            ..Default::default()
        },
    );
    let (path, reason) = invalid_at(resolve(&store, &root));
    assert_eq!(path, "j");
    assert!(reason.contains("decode"), "{reason}");
}

#[test]
fn refuses_a_tree_that_expands_too_far() {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(tmp.path(), 1 << 30);
    // 2^30 paths from 30 small Directory messages.
    let mut d = put_dir(&store, &reapi::Directory::default());
    for _ in 0..30 {
        d = put_dir(
            &store,
            &reapi::Directory {
                directories: vec![dir("a", &d), dir("b", &d)],
                ..Default::default()
            },
        );
    }
    let (_, reason) = invalid_at(resolve_limited(&store, &d, 10_000));
    assert!(reason.contains("more than 10000"), "{reason}");
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn materializes_links_copies_and_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(&tmp.path().join("store"), 1 << 30);
    let data = put_blob(&store, b"data");
    let tool = put_blob(&store, b"#!/bin/sh\n");
    let sub = put_dir(
        &store,
        &reapi::Directory {
            files: vec![
                file("empty", &Digest::EMPTY, false),
                file("x", &data, false),
            ],
            symlinks: vec![link("up", "../tool")],
            ..Default::default()
        },
    );
    let root = put_dir(
        &store,
        &reapi::Directory {
            files: vec![file("tool", &tool, true)],
            directories: vec![dir("sub", &sub)],
            ..Default::default()
        },
    );
    let tree = resolve(&store, &root).unwrap();

    let dest = tmp.path().join("exec");
    let stats = materialize(
        &store,
        &tree,
        &dest,
        Materialize::HardLink { dir_owner: None },
    )
    .unwrap();
    assert_eq!(
        (
            stats.files_linked,
            stats.files_copied,
            stats.directories,
            stats.symlinks
        ),
        (3, 0, 2, 1)
    );
    assert_eq!(stats.bytes, 14);
    assert_eq!(fs::read(dest.join("sub/x")).unwrap(), b"data");
    assert_eq!(fs::read(dest.join("sub/up")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        fs::read_link(dest.join("sub/up")).unwrap(),
        Path::new("../tool")
    );
    assert_eq!(mode_of(&dest.join("tool")), 0o555);
    assert_eq!(mode_of(&dest.join("sub/x")), 0o444);
    assert_eq!(mode_of(&dest.join("sub/empty")), 0o444);
    assert_eq!(mode_of(&dest.join("sub")), 0o755);
    assert_eq!(mode_of(&dest), 0o755);
    assert_eq!(
        fs::metadata(dest.join("sub/x")).unwrap().ino(),
        fs::metadata(store.blob_path(&data)).unwrap().ino()
    );

    let copy = tmp.path().join("copy");
    fs::create_dir(&copy).unwrap();
    let stats = materialize(&store, &tree, &copy, Materialize::Copy { dir_owner: None }).unwrap();
    assert_eq!((stats.files_linked, stats.files_copied), (0, 3));
    assert_eq!(fs::read(copy.join("tool")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(mode_of(&copy.join("tool")), 0o555);
    assert_eq!(mode_of(&copy.join("sub/x")), 0o444);
    assert_eq!(fs::metadata(copy.join("sub/x")).unwrap().nlink(), 1);

    // Into a directory that is not empty: refused.
    assert!(matches!(
        materialize(&store, &tree, &copy, Materialize::Copy { dir_owner: None }),
        Err(InputError::Destination { .. })
    ));
}

#[test]
fn copies_share_an_inode_where_links_would() {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(&tmp.path().join("store"), 1 << 30);
    let a = put_blob(&store, b"same");
    let b = put_blob(&store, b"other");
    let sub = put_dir(
        &store,
        &reapi::Directory {
            files: vec![file("a2", &a, false), file("a3", &a, true)],
            ..Default::default()
        },
    );
    let root = put_dir(
        &store,
        &reapi::Directory {
            files: vec![
                file("a1", &a, false),
                file("b", &b, false),
                file("x1", &a, true),
            ],
            directories: vec![dir("sub", &sub)],
            ..Default::default()
        },
    );
    let tree = resolve(&store, &root).unwrap();
    let inode = |dest: &Path, p: &str| fs::metadata(dest.join(p)).unwrap().ino();
    let mut patterns = Vec::new();
    for (name, mode) in [
        ("linked", Materialize::HardLink { dir_owner: None }),
        ("copied", Materialize::Copy { dir_owner: None }),
    ] {
        let dest = tmp.path().join(name);
        materialize(&store, &tree, &dest, mode).unwrap();
        let paths = ["a1", "b", "x1", "sub/a2", "sub/a3"];
        // For each path, the first path with the same inode.
        let pattern: Vec<&str> = paths
            .iter()
            .map(|p| {
                *paths
                    .iter()
                    .find(|q| inode(&dest, q) == inode(&dest, p))
                    .unwrap()
            })
            .collect();
        assert_eq!(mode_of(&dest.join("sub/a3")), 0o555);
        assert_eq!(mode_of(&dest.join("sub/a2")), 0o444);
        patterns.push(pattern);
    }
    assert_eq!(patterns[0], ["a1", "b", "x1", "a1", "x1"]);
    assert_eq!(patterns[0], patterns[1]);
}

#[test]
fn materialize_gives_directories_to_the_action_uid() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(&tmp.path().join("store"), 1 << 30);
    let data = put_blob(&store, b"data");
    let root = tree_with_sub(
        &store,
        reapi::Directory {
            files: vec![file("x", &data, false)],
            ..Default::default()
        },
    );
    let tree = resolve(&store, &root).unwrap();
    let dest = tmp.path().join("exec");
    let owner = Some((54321, 54322));
    materialize(
        &store,
        &tree,
        &dest,
        Materialize::HardLink { dir_owner: owner },
    )
    .unwrap();
    for d in [&dest, &dest.join("sub")] {
        let m = fs::metadata(d).unwrap();
        assert_eq!((m.uid(), m.gid()), (54321, 54322));
    }
    // Files stay the store's.
    let m = fs::metadata(dest.join("sub/x")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o444));
}

#[test]
fn materializes_ten_thousand_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(&tmp.path().join("store"), 1 << 34);
    // 10 top directories of 100 subdirectories of 10 files each:
    // 10,000 distinct files in 1,010 directories.
    let mut top = Vec::new();
    let mut n = 0u32;
    for t in 0..10 {
        let mut subs = Vec::new();
        for s in 0..100 {
            let files = (0..10)
                .map(|f| {
                    n += 1;
                    let d = put_blob(&store, format!("file number {n}\n").as_bytes());
                    file(&format!("f{f:02}.txt"), &d, n % 7 == 0)
                })
                .collect();
            let d = put_dir(
                &store,
                &reapi::Directory {
                    files,
                    ..Default::default()
                },
            );
            subs.push(dir(&format!("s{s:03}"), &d));
        }
        let d = put_dir(
            &store,
            &reapi::Directory {
                directories: subs,
                ..Default::default()
            },
        );
        top.push(dir(&format!("t{t}"), &d));
    }
    let root = put_dir(
        &store,
        &reapi::Directory {
            directories: top,
            ..Default::default()
        },
    );
    let started = Instant::now();
    let tree = resolve(&store, &root).unwrap();
    let resolved = started.elapsed();
    assert_eq!((tree.file_count(), tree.directory_count()), (10_000, 1_010));
    // Make the executable twins first, as earlier actions would have.
    for f in tree.files() {
        store.link_source(&f.digest, f.is_executable).unwrap();
    }
    let dest = tmp.path().join("exec");
    let stats = materialize(
        &store,
        &tree,
        &dest,
        Materialize::HardLink { dir_owner: None },
    )
    .unwrap();
    // For comparison: the bare system calls, one thread, same layout,
    // same file system, right after. On this VM's disk the first tree
    // made pays for cold allocation metadata, so the comparison favours
    // the bare loop.
    let bare = tmp.path().join("bare");
    let started = Instant::now();
    fs::create_dir(&bare).unwrap();
    for d in tree.directories() {
        fs::create_dir(bare.join(d)).unwrap();
    }
    let bare_dirs = started.elapsed();
    for f in tree.files() {
        let src = store.blob_path(&f.digest);
        fs::hard_link(src, bare.join(&f.path)).unwrap();
    }
    let bare_total = started.elapsed();
    println!(
        "resolve: {resolved:?}; materialize {} files in {} directories: {:?} \
         (bare loop after it: mkdir {bare_dirs:?}, with links {bare_total:?})",
        stats.files_linked, stats.directories, stats.elapsed
    );
    assert_eq!(stats.files_linked, 10_000);
    assert_eq!(stats.directories, 1_011);
    for f in tree.files() {
        let path = dest.join(&f.path);
        let meta = fs::metadata(&path).unwrap();
        let src = store
            .link_source(&f.digest, f.is_executable)
            .unwrap()
            .unwrap();
        assert_eq!(meta.ino(), fs::metadata(&src).unwrap().ino(), "{}", f.path);
        assert_eq!(meta.mode() & 0o111 != 0, f.is_executable, "{}", f.path);
        assert_eq!(Digest::of_bytes(&fs::read(&path).unwrap()), f.digest);
    }
}

#[allow(deprecated)]
pub(crate) fn command(wd: &str, files: &[&str], dirs: &[&str], paths: &[&str]) -> reapi::Command {
    let v = |s: &[&str]| s.iter().map(|p| p.to_string()).collect();
    reapi::Command {
        working_directory: wd.into(),
        output_files: v(files),
        output_directories: v(dirs),
        output_paths: v(paths),
        ..Default::default()
    }
}

#[test]
fn creates_output_parents_under_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir(root.join("wd")).unwrap();
    let cmd = command("wd", &["out/a/file"], &["gen/dir"], &[]);
    create_output_parents(root, "wd", &cmd, None).unwrap();
    assert!(root.join("wd/out/a").is_dir());
    assert!(root.join("wd/gen").is_dir());
    assert!(!root.join("wd/gen/dir").exists());
    assert!(!root.join("wd/out/a/file").exists());
    assert_eq!(mode_of(&root.join("wd/out/a")), 0o755);

    // output_paths wins over the older fields.
    let cmd = command("", &["ignored/x"], &[], &["p/q/r", "top"]);
    create_output_parents(root, "", &cmd, None).unwrap();
    assert!(root.join("p/q").is_dir());
    assert!(!root.join("ignored").exists());
}

#[test]
fn refuses_bad_output_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (wd, path, field) in [
        ("", "../x", 0),
        ("wd", "a/../../../x", 0),
        ("", "/abs", 0),
        ("", "a//b", 0),
        ("", "a/", 2),
        ("", "", 0),
        ("../up", "x", 1),
        ("/abs", "x", 1),
    ] {
        let cmd = match field {
            0 => command(wd, &[path], &[], &[]),
            1 => command(wd, &[], &[path], &[]),
            _ => command(wd, &[], &[], &[path]),
        };
        match create_output_parents(root, wd, &cmd, None) {
            Err(InputError::Invalid { path: p, .. }) => {
                assert!(p == path || p == wd, "{wd:?} {path:?}: named {p:?}")
            }
            other => panic!("{wd:?} {path:?}: {other:?}"),
        }
    }
    // Climbing back in is fine; the whole working directory is a valid
    // output directory.
    let cmd = command("wd", &["a/../b"], &[""], &[]);
    create_output_parents(root, "wd", &cmd, None).unwrap();
    // So is climbing out of the working directory while staying inside
    // the input root (BuildStream's `../../install`).
    let cmd = command("a/b/c", &["../../../install/x"], &[], &[]);
    create_output_parents(root, "a/b/c", &cmd, None).unwrap();
    assert!(root.join("install").is_dir());
    assert!(root.join("wd").is_dir());
    assert_eq!(fs::read_dir(root.join("wd")).unwrap().count(), 0);
}

#[test]
fn never_creates_parents_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink(tmp.path(), root.join("link")).unwrap();
    let cmd = command("", &["link/escaped/x"], &[], &[]);
    let err = create_output_parents(&root, "", &cmd, None).unwrap_err();
    assert!(matches!(&err, InputError::Invalid { path, .. } if path == "link/escaped/x"));
    assert!(!tmp.path().join("escaped").exists());
}
