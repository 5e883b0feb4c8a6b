//! The toolchain identity: what an action can run, as a digest.
//!
//! Actions run the host's compilers and interpreters (the read-only paths,
//! `/usr /bin /lib /lib64` by default), which are not inputs: two machines
//! with different compilers would share cache entries. So at start the
//! worker fixes the list of read-only paths it binds (those that exist
//! then, plus the `/etc` entries that their symbolic links point into,
//! such as Debian's `/etc/alternatives`), and computes a digest over:
//!
//! - `/etc/os-release`;
//! - that list of paths;
//! - for each of a fixed set of compilers, interpreters and tools found in
//!   a `bin` directory of the read-only paths: its name, the file it
//!   resolves to, and the SHA-256 of that file; and the C library.
//!
//! It is logged, shown by `status`, and accepted as the platform property
//! `lre-toolchain=<digest>`, which puts it in the action's key (clients
//! add it with Bazel's `--remote_default_exec_properties`); with
//! `[execution] require-toolchain` an action must name it. A cluster that
//! runs the same toolchain computes the same digest, so the cache stays
//! shared with it. On NixOS, actions name `/nix/store` paths that already
//! pin their tools, and nothing needs to be required.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// The platform property that names a toolchain identity.
pub const PROPERTY: &str = "lre-toolchain";

/// Programs whose files make up the identity, where they exist.
const TOOLS: &[&str] = &[
    "cc",
    "c++",
    "cpp",
    "gcc",
    "g++",
    "clang",
    "clang++",
    "ld",
    "ld.bfd",
    "ld.gold",
    "ld.lld",
    "as",
    "ar",
    "ranlib",
    "nm",
    "strip",
    "objcopy",
    "make",
    "cmake",
    "ninja",
    "python",
    "python3",
    "perl",
    "ruby",
    "java",
    "javac",
    "node",
    "go",
    "rustc",
    "cargo",
    "sh",
    "bash",
    "dash",
    "awk",
    "sed",
    "grep",
    "tar",
    "gzip",
    "bzip2",
    "xz",
    "zip",
    "unzip",
    "m4",
    "bison",
    "flex",
    "pkg-config",
    "protoc",
];

/// The C library and dynamic loader, looked for in the library directories.
const LIBRARIES: &[&str] = &["libc.so.6", "ld-linux-x86-64.so.2", "libstdc++.so.6"];

/// Directories below a read-only path whose symbolic links are followed
/// into `/etc` ([`etc_paths`]): where programs and runtimes live.
const LINK_DIRS: &[&str] = &["bin", "sbin", "local/bin", "lib/jvm", "lib/ssl"];

/// The identity and what it was computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Toolchain {
    /// Hex SHA-256 of [`Toolchain::lines`].
    pub digest: String,
    /// The read-only paths every action gets, in order.
    pub read_only_paths: Vec<PathBuf>,
    /// What went into the digest, one item per line.
    pub lines: Vec<String>,
}

/// The read-only paths in effect: `configured` that exist now, then the
/// `/etc` entries their programs' symbolic links point into.
pub fn read_only_paths(configured: &[PathBuf]) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = configured
        .iter()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .cloned()
        .collect();
    for etc in etc_paths(&paths) {
        if !paths.iter().any(|p| etc.starts_with(p)) {
            paths.push(etc);
        }
    }
    paths
}

/// The top-level `/etc` entries that symbolic links in [`LINK_DIRS`] below
/// `paths` point into (`/etc/alternatives`, `/etc/java-17-openjdk`, ...),
/// sorted. An action that runs `awk` on Debian goes through
/// `/usr/bin/awk -> /etc/alternatives/awk -> /usr/bin/mawk`.
pub fn etc_paths(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = BTreeSet::new();
    let mut stack: Vec<PathBuf> = paths
        .iter()
        .flat_map(|p| LINK_DIRS.iter().map(move |d| p.join(d)))
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(dir) = stack.pop() {
        let Ok(real) = fs::canonicalize(&dir) else {
            continue;
        };
        if !seen.insert(real) {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_symlink()
                && let Ok(target) = fs::read_link(entry.path())
            {
                let target = if target.is_absolute() {
                    target
                } else {
                    dir.join(target)
                };
                if let Some(top) = etc_entry(&target) {
                    found.insert(top);
                }
            }
        }
    }
    found
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect()
}

/// `/etc/<entry>` if `path` (lexically normalized) lies below `/etc`.
fn etc_entry(path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => parts.push(n),
            std::path::Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    match parts.as_slice() {
        [etc, entry, ..] if *etc == "etc" => Some(Path::new("/etc").join(entry)),
        _ => None,
    }
}

/// The toolchain identity, computed once in the background at start-up:
/// hashing the compilers and interpreters takes 100–200 ms, which the
/// daemon's first answer must not wait for. Whoever needs it waits for it
/// (only just after start can that take a moment).
#[derive(Clone)]
pub struct Identity(std::sync::Arc<Pending>);

struct Pending {
    cell: std::sync::OnceLock<Toolchain>,
    /// The thread computing it, until someone has waited for it.
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<Toolchain>>>,
    read_only_paths: Vec<PathBuf>,
    required: bool,
}

impl Identity {
    /// Starts computing the identity of `read_only_paths`, and logs it.
    pub fn start(read_only_paths: Vec<PathBuf>, required: bool) -> Identity {
        let paths = read_only_paths.clone();
        let thread = std::thread::Builder::new()
            .name("lre-toolchain".into())
            .spawn(move || announce(&paths, required))
            .ok();
        Identity(std::sync::Arc::new(Pending {
            cell: std::sync::OnceLock::new(),
            thread: std::sync::Mutex::new(thread),
            read_only_paths,
            required,
        }))
    }

    /// The identity, once computed (blocks until then; callers that come
    /// meanwhile wait for the same computation).
    pub fn wait(&self) -> &Toolchain {
        let p = &self.0;
        p.cell.get_or_init(|| {
            let thread = p.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
            thread
                .and_then(|t| t.join().ok())
                .unwrap_or_else(|| announce(&p.read_only_paths, p.required))
        })
    }
}

/// Computes the identity of `read_only_paths` and logs it with the paths
/// (at start-up).
pub fn announce(read_only_paths: &[PathBuf], required: bool) -> Toolchain {
    let started = std::time::Instant::now();
    let toolchain = compute(read_only_paths);
    tracing::info!(
        "read-only paths of every action: {}",
        read_only_paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    tracing::info!(
        "toolchain identity {PROPERTY}={} ({} items, {} ms){}",
        toolchain.digest,
        toolchain.lines.len(),
        started.elapsed().as_millis(),
        if required {
            "; actions must name it"
        } else {
            ""
        }
    );
    toolchain
}

/// Computes the identity of what actions see through `read_only_paths`.
pub fn compute(read_only_paths: &[PathBuf]) -> Toolchain {
    let mut lines = vec!["nativelink-lre toolchain identity 1".to_owned()];
    match file_digest(Path::new("/etc/os-release")) {
        Some(d) => lines.push(format!("os-release {d}")),
        None => lines.push("os-release absent".into()),
    }
    for p in read_only_paths {
        lines.push(format!("read-only-path {}", p.display()));
    }
    let visible = |p: &Path| read_only_paths.iter().any(|r| p.starts_with(r));
    let bin_dirs = dirs_below(read_only_paths, &["local/bin", "bin", "sbin"]);
    for name in TOOLS {
        if let Some(line) = resolve(name, &bin_dirs, &visible) {
            lines.push(format!("tool {line}"));
        }
    }
    let lib_dirs = dirs_below(
        read_only_paths,
        &[
            "lib/x86_64-linux-gnu",
            "lib64",
            "lib",
            "lib/aarch64-linux-gnu",
        ],
    );
    for name in LIBRARIES {
        if let Some(line) = resolve(name, &lib_dirs, &visible) {
            lines.push(format!("library {line}"));
        }
    }
    let mut text = String::new();
    for l in &lines {
        let _ = writeln!(text, "{l}");
    }
    Toolchain {
        digest: hex::encode(Sha256::digest(text.as_bytes())),
        read_only_paths: read_only_paths.to_vec(),
        lines,
    }
}

/// The existing directories `sub` below each of `roots`, each once (by
/// its real path), in order.
fn dirs_below(roots: &[PathBuf], sub: &[&str]) -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in roots {
        for s in sub {
            if let Ok(real) = fs::canonicalize(r.join(s))
                && real.is_dir()
                && seen.insert(real.clone())
            {
                out.push(real);
            }
        }
    }
    out
}

/// `name <real path> <sha256>` for the first `name` in `dirs` that
/// resolves to a file an action can see.
fn resolve(name: &str, dirs: &[PathBuf], visible: &dyn Fn(&Path) -> bool) -> Option<String> {
    dirs.iter().find_map(|dir| {
        let real = fs::canonicalize(dir.join(name)).ok()?;
        if !visible(&real) || !real.is_file() {
            return None;
        }
        let digest = file_digest(&real)?;
        Some(format!("{name} {} {digest}", real.display()))
    })
}

fn file_digest(path: &Path) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return None,
        }
    }
    Some(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_into_etc_are_found_and_tools_resolved_through_them() {
        let tmp = tempfile::tempdir().unwrap();
        let usr = tmp.path().join("usr");
        fs::create_dir_all(usr.join("bin")).unwrap();
        fs::write(usr.join("bin/mawk"), b"mawk 1").unwrap();
        // As Debian: /usr/bin/awk -> /etc/alternatives/awk (absolute),
        // here into a fake etc by a relative link that climbs.
        symlink("/etc/alternatives/awk", usr.join("bin/awk")).unwrap();
        symlink("../../etc/java-17/x", usr.join("bin/relative")).unwrap();
        assert_eq!(
            etc_entry(Path::new("/usr/bin/../../etc/java-17/x")),
            Some(PathBuf::from("/etc/java-17"))
        );
        assert_eq!(etc_entry(Path::new("/usr/etc/x")), None);
        // Found links are kept only where the /etc entry exists here.
        let found = etc_paths(std::slice::from_ref(&usr));
        assert_eq!(
            found,
            [PathBuf::from("/etc/alternatives")]
                .into_iter()
                .filter(|p| p.exists())
                .collect::<Vec<_>>()
        );
        let one = compute(std::slice::from_ref(&usr));
        assert!(
            one.lines
                .contains(&format!("read-only-path {}", usr.display())),
            "{:?}",
            one.lines
        );
        // awk resolves (through the host's /etc/alternatives) to a file
        // outside these read-only paths, which an action could not run.
        assert!(!one.lines.iter().any(|l| l.starts_with("tool awk ")));
        fs::write(usr.join("bin/gcc"), b"gcc 12").unwrap();
        let two = compute(std::slice::from_ref(&usr));
        assert_ne!(
            one.digest, two.digest,
            "a new compiler changes the identity"
        );
        assert!(two.lines.iter().any(|l| l.starts_with("tool gcc ")));
        fs::write(usr.join("bin/gcc"), b"gcc 13").unwrap();
        assert_ne!(compute(std::slice::from_ref(&usr)).digest, two.digest);
        assert_eq!(
            compute(std::slice::from_ref(&usr)).digest,
            compute(&[usr]).digest
        );
    }
}
