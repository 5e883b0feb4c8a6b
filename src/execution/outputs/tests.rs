//! Tests of `outputs`.

use super::*;
use crate::cas::tests::test_store;
use crate::execution::inputs::tests::command;
use std::os::unix::fs::{PermissionsExt, symlink};

const LINK: Ingest = Ingest::Link {
    take_ownership: false,
};

struct Fixture {
    _tmp: tempfile::TempDir,
    store: Arc<Store>,
    root: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(&tmp.path().join("store"), 1 << 30);
    let root = tmp.path().join("exec");
    fs::create_dir(&root).unwrap();
    Fixture {
        _tmp: tmp,
        store,
        root,
    }
}

fn write(path: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn digest_of(d: &Option<reapi::Digest>) -> Digest {
    Digest::from_required(d.as_ref()).unwrap()
}

#[test]
fn collects_files_with_their_executable_bit() {
    let f = fixture();
    write(&f.root.join("out/lib.a"), b"archive", 0o644);
    write(&f.root.join("out/tool"), b"#!/bin/sh\n", 0o755);
    let ino = fs::metadata(f.root.join("out/lib.a")).unwrap().ino();
    let cmd = command("", &["out/lib.a", "out/missing", "out/tool"], &[], &[]);
    let outputs = collect(&f.store, &f.root, &cmd, LINK, None).unwrap();
    let files: Vec<(&str, bool, Digest)> = outputs
        .files
        .iter()
        .map(|o| (o.path.as_str(), o.is_executable, digest_of(&o.digest)))
        .collect();
    assert_eq!(
        files,
        [
            ("out/lib.a", false, Digest::of_bytes(b"archive")),
            ("out/tool", true, Digest::of_bytes(b"#!/bin/sh\n")),
        ]
    );
    // Linked, not copied.
    let blob = f.store.blob_path(&Digest::of_bytes(b"archive"));
    assert_eq!(fs::metadata(&blob).unwrap().ino(), ino);
    assert_eq!(
        f.store
            .read(&Digest::of_bytes(b"archive"))
            .unwrap()
            .unwrap(),
        b"archive"
    );
    assert!(outputs.directories.is_empty() && outputs.file_symlinks.is_empty());
}

#[test]
fn collects_a_directory_as_a_tree() {
    let f = fixture();
    let d = f.root.join("gen");
    write(&d.join("b.txt"), b"bee", 0o644);
    write(&d.join("a.sh"), b"echo", 0o755);
    write(&d.join("sub/x"), b"same", 0o644);
    write(&d.join("sub2/x"), b"same", 0o644);
    fs::create_dir(d.join("empty")).unwrap();
    symlink("sub/x", d.join("link")).unwrap();
    let cmd = command("", &[], &["gen"], &[]);
    let outputs = collect(&f.store, &f.root, &cmd, LINK, None).unwrap();
    assert_eq!(outputs.directories.len(), 1);
    let out = &outputs.directories[0];
    assert_eq!(out.path, "gen");
    assert!(!out.is_topologically_sorted);
    let tree_bytes = f.store.read(&digest_of(&out.tree_digest)).unwrap().unwrap();
    let tree = reapi::Tree::decode(tree_bytes.as_slice()).unwrap();
    let root = tree.root.clone().unwrap();
    assert_eq!(
        Digest::of_message(&root),
        digest_of(&out.root_directory_digest)
    );
    let names = |d: &reapi::Directory| {
        (
            d.files
                .iter()
                .map(|f| (f.name.clone(), f.is_executable))
                .collect::<Vec<_>>(),
            d.directories
                .iter()
                .map(|d| d.name.clone())
                .collect::<Vec<_>>(),
            d.symlinks
                .iter()
                .map(|s| (s.name.clone(), s.target.clone()))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        names(&root),
        (
            vec![("a.sh".into(), true), ("b.txt".into(), false)],
            vec!["empty".into(), "sub".into(), "sub2".into()],
            vec![("link".into(), "sub/x".into())],
        )
    );
    // sub and sub2 are the same Directory: one child for both, plus
    // the empty one.
    assert_eq!(tree.children.len(), 2);
    // Everything the Tree refers to is in the store.
    let mut by_digest = HashMap::new();
    for d in tree.root.iter().chain(&tree.children) {
        let digest = Digest::of_message(d);
        assert!(f.store.contains(&digest).unwrap(), "Directory {digest}");
        by_digest.insert(digest, d);
        for file in &d.files {
            assert!(f.store.contains(&digest_of(&file.digest)).unwrap());
        }
    }
    for d in tree.root.iter().chain(&tree.children) {
        for sub in &d.directories {
            assert!(by_digest.contains_key(&digest_of(&sub.digest)));
        }
    }
    assert!(
        f.store
            .contains(&digest_of(&out.root_directory_digest))
            .unwrap()
    );
}

#[test]
fn nested_outputs_see_files_already_collected() {
    let f = fixture();
    write(&f.root.join("a/b/c.txt"), b"c", 0o644);
    write(&f.root.join("a/top.txt"), b"top", 0o644);
    // output_files may name a file inside an output directory's tree
    // only in output_paths; output directories may nest.
    let cmd = command("", &[], &[], &["a", "a/b", "a/b/c.txt"]);
    let outputs = collect(&f.store, &f.root, &cmd, LINK, None).unwrap();
    assert_eq!(outputs.directories.len(), 2);
    assert_eq!(outputs.files.len(), 1);
    assert_eq!(outputs.files[0].path, "a/b/c.txt");
    assert_eq!(digest_of(&outputs.files[0].digest), Digest::of_bytes(b"c"));
    let inner = &outputs.directories[1];
    assert_eq!(inner.path, "a/b");
    let tree = reapi::Tree::decode(
        f.store
            .read(&digest_of(&inner.tree_digest))
            .unwrap()
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert_eq!(tree.root.unwrap().files[0].name, "c.txt");
}

#[test]
fn symlinks_in_both_api_styles() {
    let f = fixture();
    write(&f.root.join("real/file"), b"x", 0o644);
    symlink("real/file", f.root.join("flink")).unwrap();
    symlink("real", f.root.join("dlink")).unwrap();
    symlink("/nonexistent/dangling", f.root.join("dangling")).unwrap();

    let old = command("", &["dangling", "flink"], &["dlink"], &[]);
    let outputs = collect(&f.store, &f.root, &old, LINK, None).unwrap();
    let pairs = |v: &[reapi::OutputSymlink]| {
        v.iter()
            .map(|s| (s.path.clone(), s.target.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        pairs(&outputs.file_symlinks),
        [
            ("dangling".to_string(), "/nonexistent/dangling".to_string()),
            ("flink".into(), "real/file".into())
        ]
    );
    assert_eq!(
        pairs(&outputs.directory_symlinks),
        [("dlink".to_string(), "real".to_string())]
    );
    assert!(outputs.symlinks.is_empty() && outputs.files.is_empty());
    assert!(outputs.directories.is_empty());

    let new = command("", &["ignored"], &[], &["dlink", "flink"]);
    let outputs = collect(&f.store, &f.root, &new, LINK, None).unwrap();
    assert_eq!(
        pairs(&outputs.symlinks),
        [
            ("dlink".to_string(), "real".to_string()),
            ("flink".into(), "real/file".into())
        ]
    );
    assert!(outputs.file_symlinks.is_empty() && outputs.directory_symlinks.is_empty());
    // The link's target was not collected.
    assert!(f.root.join("real/file").exists());
}

#[test]
fn never_looks_through_a_symlinked_parent() {
    let f = fixture();
    let outside = f._tmp.path().join("outside");
    write(&outside.join("secret"), b"secret", 0o644);
    symlink(&outside, f.root.join("escape")).unwrap();
    let cmd = command("", &["escape/secret"], &[], &["escape/secret"]);
    let outputs = collect(&f.store, &f.root, &cmd, LINK, None).unwrap();
    assert_eq!(outputs, Outputs::default());
    assert!(outside.join("secret").exists());
    assert!(!f.store.contains(&Digest::of_bytes(b"secret")).unwrap());
}

#[test]
fn missing_outputs_are_absent() {
    let f = fixture();
    let cmd = command("", &["nope"], &["nodir", "a/b/c"], &[]);
    assert_eq!(
        collect(&f.store, &f.root, &cmd, LINK, None).unwrap(),
        Outputs::default()
    );
}

#[test]
fn special_files_are_refused() {
    let f = fixture();
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o644);
    nix::unistd::mkfifo(&f.root.join("pipe"), mode).unwrap();
    fs::create_dir(f.root.join("dir")).unwrap();
    nix::unistd::mkfifo(&f.root.join("dir/inner"), mode).unwrap();
    for (cmd, shown) in [
        (command("", &["pipe"], &[], &[]), "pipe"),
        (command("", &[], &[], &["pipe"]), "pipe"),
        (command("", &[], &["dir"], &[]), "dir/inner"),
    ] {
        match collect(&f.store, &f.root, &cmd, LINK, None) {
            Err(OutputError::Special { path }) => assert_eq!(path, shown),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn wrong_types_are_refused() {
    let f = fixture();
    write(&f.root.join("file"), b"f", 0o644);
    fs::create_dir(f.root.join("dir")).unwrap();
    let cmd = command("", &["dir"], &[], &[]);
    assert!(matches!(
        collect(&f.store, &f.root, &cmd, LINK, None),
        Err(OutputError::WrongType { path, .. }) if path == "dir"
    ));
    let cmd = command("", &[], &["file"], &[]);
    assert!(matches!(
        collect(&f.store, &f.root, &cmd, LINK, None),
        Err(OutputError::WrongType { path, .. }) if path == "file"
    ));
}

#[test]
fn paths_are_relative_to_the_working_directory() {
    let f = fixture();
    write(&f.root.join("pkg/out.txt"), b"in wd", 0o644);
    write(&f.root.join("out.txt"), b"at root", 0o644);
    let cmd = command("pkg", &["out.txt"], &[], &[]);
    let outputs = collect(&f.store, &f.root, &cmd, LINK, None).unwrap();
    assert_eq!(outputs.files.len(), 1);
    assert_eq!(outputs.files[0].path, "out.txt");
    assert_eq!(
        digest_of(&outputs.files[0].digest),
        Digest::of_bytes(b"in wd")
    );
    assert!(f.root.join("out.txt").exists());

    // The whole working directory as an output directory.
    write(&f.root.join("pkg/more"), b"more", 0o644);
    let cmd = command("pkg", &[], &[""], &[]);
    let outputs = collect(&f.store, &f.root, &cmd, LINK, None).unwrap();
    assert_eq!(outputs.directories[0].path, "");

    // Up from the working directory, inside the input root.
    let cmd = command("pkg", &["../out.txt"], &[], &[]);
    let outputs = collect(&f.store, &f.root, &cmd, LINK, None).unwrap();
    assert_eq!(outputs.files[0].path, "../out.txt");
    assert_eq!(
        digest_of(&outputs.files[0].digest),
        Digest::of_bytes(b"at root")
    );

    for bad in ["../../out.txt", "/abs", "a//b"] {
        let cmd = command("pkg", &[bad], &[], &[]);
        assert!(matches!(
            collect(&f.store, &f.root, &cmd, LINK, None),
            Err(OutputError::Invalid { path, .. }) if path == bad
        ));
    }
}

#[test]
fn streams_are_ingested_and_a_missing_one_is_empty() {
    let f = fixture();
    let stdout = f.root.join("stdout");
    fs::write(&stdout, b"hello\n").unwrap();
    let d = ingest_stream(&f.store, &stdout, LINK, None).unwrap();
    assert_eq!(d, Digest::of_bytes(b"hello\n"));
    assert!(f.store.contains(&d).unwrap());
    assert_eq!(
        ingest_stream(&f.store, &f.root.join("stderr"), LINK, None).unwrap(),
        Digest::EMPTY
    );
}
