//! Running actions attacked around the API, through the file system
//! (issue 15): the state directory laid out as packaged (mode 0755, on an
//! ext4 file system the test makes, with a root-only file beside it), and a
//! throwaway second user who runs both an action and an ordinary host
//! process at the same time.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::exec::*;
use common::users::User;
use common::*;

/// An ext4 image mounted on a fresh directory; unmounted when dropped.
struct Ext4 {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl Ext4 {
    fn new(size: &str) -> Ext4 {
        let dir = tempfile::Builder::new()
            .prefix("lre-ext4")
            .tempdir()
            .unwrap();
        let image = dir.path().with_extension("img");
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(std::process::Command::new("truncate")
            .args(["-s", size])
            .arg(&image));
        run(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image));
        run(std::process::Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&image)
            .arg(dir.path()));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Ext4 { dir, image }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// The packaged layout: the state directory 0755 on ext4, and a root-only
/// secret on the same file system.
struct Packaged {
    fs: Ext4,
    secret: PathBuf,
}

const SECRET: &[u8] = b"root's secret, never to leave this file\n";

impl Packaged {
    fn new() -> Packaged {
        let fs = Ext4::new("256M");
        let dir = fs.path().join("root-only");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let state = fs.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        Packaged { fs, secret }
    }

    fn state(&self) -> PathBuf {
        self.fs.path().join("state")
    }

    fn secret_is_intact(&self) {
        let meta = std::fs::metadata(&self.secret).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777),
            (0, 0o600),
            "the secret was chowned or chmodded"
        );
        assert_eq!(std::fs::read(&self.secret).unwrap(), SECRET);
    }
}

/// Runs `script` with `sh` as `user` on the host, in the background; its
/// output is returned by the handle.
fn host_process(user: &User, script: String) -> std::thread::JoinHandle<String> {
    let (uid, gid) = (user.uid, user.gid);
    std::thread::spawn(move || {
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .uid(uid)
            .gid(gid)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    })
}

/// What the attacker's host process does while its action runs: for ten
/// seconds, find any exec root and (1) swap its `a` for a symlink to the
/// root-only directory, (2) open an output for writing and keep it, (3)
/// read specs and stdout files, (4) connect to a socket the action bound.
/// Every success is printed as a line starting with `GOT`.
fn attack_script(state: &Path, secret_dir: &Path) -> String {
    let state = state.display();
    let secret_dir = secret_dir.display();
    format!(
        r#"
end=$(( $(date +%s) + 10 ))
while [ $(date +%s) -lt $end ]; do
  ls {state}/exec >/dev/null 2>&1 && echo "GOT listing of exec/"
  # exec/ may not be listable; its entries were numbered from 1.
  for n in $(seq 1 20); do for root in {state}/exec/$n/exec {state}/exec/$n; do
    [ -d "$root/a" ] && mv "$root/a" "$root/a.old" 2>/dev/null && ln -s {secret_dir} "$root/a" 2>/dev/null && echo "GOT swapped $root/a"
    [ -e "$root/out.txt" ] && exec 7>>"$root/out.txt" 2>/dev/null && echo "GOT a writable descriptor on $root/out.txt"
    for f in "$root/spec.json" "$root/stdout" "$root/../stdout"; do
      [ -r "$f" ] && cat "$f" >/dev/null 2>&1 && echo "GOT read $f"
    done
    [ -S "$root/sock" ] && python3 -c "import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);print('GOT connected')" "$root/sock" 2>/dev/null
  done; done
  python3 -c "import socket;s=socket.socket(socket.AF_UNIX);s.connect('\0lre-attack');print('GOT abstract socket')" 2>/dev/null
  sleep 0.05
done
echo finished
"#
    )
}

/// Issue 15, attacks 1-4: nothing of a running action is reachable by path
/// from another user's host process, output collection never follows a
/// link out of the exec root, and no output can be rewritten after the
/// fact.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_process_cannot_reach_a_running_action() {
    let attacker = User::create();
    let layout = Packaged::new();
    let d = Daemon::start_on(&layout.state(), "");
    let ch = d.tcp_as(attacker.uid).await;
    let outputs: Vec<String> = std::iter::once("a/s/secret".to_owned())
        .chain((0..50).map(|i| format!("a/o{i}")))
        .chain(["out.txt".to_owned()])
        .collect();
    let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let spec = ActionSpec::sh(
        "mkdir -p a/s && chmod 777 . a a/s && echo original > out.txt && chmod 666 out.txt \
         && python3 -c \"import socket,time;u=socket.socket(socket.AF_UNIX);u.bind('sock');u.listen();a=socket.socket(socket.AF_UNIX);a.bind('\\0lre-attack');a.listen();time.sleep(4)\" \
         && for i in $(seq 0 49); do echo $i > a/o$i; done",
    )
    .outputs(&outputs);
    let action = prepare(&ch, &spec).await;
    let host = host_process(
        &attacker,
        attack_script(&layout.state(), layout.secret.parent().unwrap()),
    );
    let r = response_of(execute_ops(&ch, &action, true).await.last().unwrap());
    let seen = host.join().unwrap();
    assert!(seen.contains("finished"), "{seen}");
    assert!(
        !seen.contains("GOT"),
        "the host process reached the action:\n{seen}"
    );
    assert_eq!(
        r.status.clone().unwrap_or_default().code,
        0,
        "{:?}",
        r.status
    );
    let result = r.result.clone().unwrap();
    assert_eq!(result.exit_code, 0, "{}", stderr_of(&ch, &r).await);
    // (1) The secret stayed where it was, as it was, and is in no output.
    layout.secret_is_intact();
    for f in &result.output_files {
        assert_ne!(
            read_blob(&ch, f.digest.as_ref().unwrap()).await,
            SECRET,
            "{}",
            f.path
        );
    }
    assert!(find_missing(&ch, &[Digest::of_bytes(SECRET)]).await == [Digest::of_bytes(SECRET)]);
    // (2) The output is what the action wrote, and stays so.
    assert_eq!(output_file(&ch, &r, "out.txt").await, b"original\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(output_file(&ch, &r, "out.txt").await, b"original\n");
    assert_eq!(verify_store(&d.state), verify_store(&d.state));
    // The directories that make the exec roots unreachable.
    let exec = std::fs::metadata(d.state.join("exec")).unwrap();
    assert_eq!((exec.uid(), exec.mode() & 0o777), (0, 0o700));
}

/// Issue 15, "the in-sandbox view shows no host path and no counter": the
/// action's own view of its command line does not name the state
/// directory.
#[tokio::test(flavor = "multi_thread")]
async fn the_action_does_not_see_the_host_spec_path() {
    let layout = Packaged::new();
    let d = Daemon::start_on(&layout.state(), "");
    let ch = d.unix().await;
    let r = run(&ch, &ActionSpec::sh("tr '\\0' ' ' < /proc/1/cmdline"), true).await;
    let out = stdout_of(&ch, &r).await;
    assert!(
        !out.contains(&layout.state().display().to_string()),
        "{out}"
    );
    assert!(!out.contains("spec"), "{out}");
}
