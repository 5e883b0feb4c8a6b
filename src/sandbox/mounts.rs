//! Building the sandbox's root filesystem, in the new mount namespace:
//!
//! - `/` is made private, so nothing we mount propagates to the host;
//! - a fresh tmpfs becomes the new root;
//! - the read-only paths are bound at the same place (symlinks, as in a
//!   merged-/usr system's `/bin -> usr/bin`, are recreated as symlinks);
//! - the exec root is bound read-write at [`EXEC_ROOT`];
//! - `/dev` gets null, zero, full, random, urandom and tty, a new devpts
//!   instance and a `shm` tmpfs; `/proc` is a fresh procfs of the new pid
//!   namespace; `/tmp` a size-limited tmpfs; `/etc` a few fixed files;
//! - the root tmpfs is made read-only, and we `pivot_root` into it and
//!   detach the old root.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statvfs::{FsFlags, statvfs};

use super::{EXEC_ROOT, HOSTNAME, INSIDE_ID, Spec};

type R = Result<(), String>;

fn ctx<E: std::fmt::Display>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> String {
    move |e| format!("{}: {e}", what())
}

fn bind(src: &Path, dst: &Path, flags: MsFlags) -> R {
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .map_err(ctx(|| {
        format!("bind {} on {}", src.display(), dst.display())
    }))
}

/// Remounts a bind mount read-only, keeping the flags that a user
/// namespace may not clear (nosuid, nodev, noexec, atime flags).
fn remount_read_only(dst: &Path) -> R {
    let locked = statvfs(dst)
        .map_err(ctx(|| format!("statvfs {}", dst.display())))?
        .flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (st, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if locked.contains(st) {
            flags |= ms;
        }
    }
    mount(None::<&str>, dst, None::<&str>, flags, None::<&str>)
        .map_err(ctx(|| format!("remount {} read-only", dst.display())))
}

fn mkdir_p(path: &Path) -> R {
    fs::create_dir_all(path).map_err(ctx(|| format!("mkdir {}", path.display())))
}

fn tmpfs(dst: &Path, flags: MsFlags, options: &str) -> R {
    mount(Some("tmpfs"), dst, Some("tmpfs"), flags, Some(options))
        .map_err(ctx(|| format!("mount tmpfs on {}", dst.display())))
}

/// `root` joined with an absolute inside path.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Makes `host` visible read-only at the same path under `root`.
fn bind_read_only(root: &Path, host: &Path) -> R {
    let Ok(meta) = fs::symlink_metadata(host) else {
        // A configured path that does not exist on this host is skipped;
        // start-up logs the list in effect.
        return Ok(());
    };
    let dst = inside(root, host);
    if let Some(parent) = dst.parent() {
        mkdir_p(parent)?;
    }
    if meta.file_type().is_symlink() {
        let target = fs::read_link(host).map_err(ctx(|| format!("readlink {}", host.display())))?;
        return symlink(&target, &dst).map_err(ctx(|| format!("symlink {}", dst.display())));
    }
    if meta.is_dir() {
        mkdir_p(&dst)?;
    } else {
        fs::write(&dst, b"").map_err(ctx(|| format!("create {}", dst.display())))?;
    }
    bind(host, &dst, MsFlags::MS_REC)?;
    remount_read_only(&dst)
}

fn dev(root: &Path) -> R {
    let dev = root.join("dev");
    mkdir_p(&dev)?;
    tmpfs(
        &dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "mode=0755,size=64k",
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let dst = dev.join(name);
        fs::write(&dst, b"").map_err(ctx(|| format!("create {}", dst.display())))?;
        bind(&Path::new("/dev").join(name), &dst, MsFlags::empty())?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(ctx(|| format!("mount devpts on {}", pts.display())))?;
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    tmpfs(
        &shm,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=1777,size=64m",
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).map_err(ctx(|| format!("symlink /dev/{link}")))?;
    }
    // Only the device nodes, pts and shm stay writable.
    mount(
        None::<&str>,
        &dev,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(ctx(|| "remount /dev read-only".to_owned()))
}

fn etc(root: &Path) -> R {
    let etc = root.join("etc");
    mkdir_p(&etc)?;
    let id = INSIDE_ID;
    for (name, content) in [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/:/bin/sh\nbuild:x:{id}:{id}:build:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
            ),
        ),
        (
            "group",
            format!("root:x:0:\nbuild:x:{id}:\nnogroup:x:65534:\n"),
        ),
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n".to_owned()),
        ("hostname", format!("{HOSTNAME}\n")),
    ] {
        fs::write(etc.join(name), content).map_err(ctx(|| format!("write /etc/{name}")))?;
    }
    Ok(())
}

/// Builds the new root at `spec.sandbox_root` and pivots into it.
pub fn build_root(spec: &Spec) -> R {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ctx(|| "make / private".to_owned()))?;
    let root = &spec.sandbox_root;
    tmpfs(
        root,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755,size=16m",
    )?;
    for path in &spec.read_only_paths {
        bind_read_only(root, path)?;
    }
    let exec = inside(root, Path::new(EXEC_ROOT));
    mkdir_p(&exec)?;
    bind(&spec.exec_root, &exec, MsFlags::empty())?;
    mount(
        None::<&str>,
        &exec,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(ctx(|| "remount the exec root nosuid,nodev".to_owned()))?;
    dev(root)?;
    let proc = root.join("proc");
    mkdir_p(&proc)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(ctx(|| "mount a new /proc".to_owned()))?;
    let tmp = root.join("tmp");
    mkdir_p(&tmp)?;
    tmpfs(
        &tmp,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &format!("mode=1777,size={}", spec.tmp_size.max(4096)),
    )?;
    etc(root)?;
    // Nothing may be written outside the exec root, /tmp and /dev/shm.
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(ctx(|| "remount the new root read-only".to_owned()))?;
    nix::unistd::chdir(root).map_err(ctx(|| format!("chdir {}", root.display())))?;
    nix::unistd::pivot_root(".", ".").map_err(ctx(|| "pivot_root".to_owned()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ctx(|| "detach the old root".to_owned()))?;
    nix::unistd::chdir("/").map_err(ctx(|| "chdir /".to_owned()))?;
    Ok(())
}
