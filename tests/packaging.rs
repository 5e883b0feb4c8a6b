//! packaging/install.sh, the README's install step (issue 13, items 11
//! and 13): run into a scratch DESTDIR with the test build of the program,
//! it installs a binary without debug info (kept in a separate file that the
//! binary links to), the man pages, the completions and the units.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_nativelink-lre");

/// The section names of an ELF file, from binutils' readelf.
fn sections(file: &Path) -> Vec<String> {
    let out = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(file)
        .output()
        .expect("readelf (binutils) is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("] ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn install(destdir: &Path, env: &[(&str, &str)]) {
    let out = Command::new(Path::new(ROOT).join("packaging/install.sh"))
        .env("BINARY", BIN)
        .env("DESTDIR", destdir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn install_sh_installs_a_stripped_binary_man_pages_completions_and_units() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &[]);
    let bin = dir.path().join("usr/bin/nativelink-lre");
    let debug = dir
        .path()
        .join("usr/lib/debug/usr/bin/nativelink-lre.debug");

    // The test build carries line tables; the installed binary does not,
    // the debug file does, and the binary names it.
    assert!(
        sections(Path::new(BIN)).iter().any(|s| s == ".debug_line"),
        "the test binary has no debug info to strip"
    );
    let installed = sections(&bin);
    // (.debug_gdb_scripts is loaded data, gdb's pretty-printer list.)
    assert!(
        !installed
            .iter()
            .any(|s| s.starts_with(".debug_") && s != ".debug_gdb_scripts"),
        "debug sections left in the installed binary: {installed:?}"
    );
    assert!(
        installed.iter().any(|s| s == ".gnu_debuglink"),
        "{installed:?}"
    );
    assert!(sections(&debug).iter().any(|s| s == ".debug_line"));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&bin) < size(Path::new(BIN)) / 2,
        "{} vs {}",
        size(&bin),
        size(Path::new(BIN))
    );
    // It still runs.
    let out = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("nativelink-lre {}", env!("CARGO_PKG_VERSION"))
    );

    for f in [
        "usr/share/man/man8/nativelink-lre.8",
        "usr/share/man/man5/nativelink-lre.toml.5",
        "etc/systemd/system/nativelink-lre.socket",
        "etc/systemd/system/nativelink-lre-tcp.socket",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} not installed");
    }
    for (f, needle) in [
        (
            "usr/share/bash-completion/completions/nativelink-lre",
            "complete -F _nativelink__lre",
        ),
        (
            "usr/share/zsh/vendor-completions/_nativelink-lre",
            "#compdef nativelink-lre",
        ),
        (
            "usr/share/fish/vendor_completions.d/nativelink-lre.fish",
            "complete -c nativelink-lre",
        ),
    ] {
        let text =
            std::fs::read_to_string(dir.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(text.contains(needle), "{f}");
    }
    let service =
        std::fs::read_to_string(dir.path().join("etc/systemd/system/nativelink-lre.service"))
            .unwrap();
    assert!(
        service
            .lines()
            .any(|l| l == "ExecStart=/usr/bin/nativelink-lre")
    );

    // Another prefix: the unit follows the binary.
    let other = tempfile::tempdir().unwrap();
    install(
        other.path(),
        &[
            ("PREFIX", "/opt/lre"),
            ("UNITDIR", "/opt/lre/lib/systemd/system"),
            ("DEBUG", "no"),
        ],
    );
    assert!(other.path().join("opt/lre/bin/nativelink-lre").is_file());
    assert!(!other.path().join("opt/lre/lib/debug").exists());
    let service = std::fs::read_to_string(
        other
            .path()
            .join("opt/lre/lib/systemd/system/nativelink-lre.service"),
    )
    .unwrap();
    assert!(
        service
            .lines()
            .any(|l| l == "ExecStart=/opt/lre/bin/nativelink-lre"),
        "{service}"
    );
}
