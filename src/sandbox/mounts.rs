//! Building the sandbox's root filesystem, in the new mount namespace.
//! The helper entered the exec root while it was still privileged; the
//! clone carried that working directory into the new mount namespace, so
//! no host path under the state directory is ever resolved here (the
//! state directory's `exec/` is the daemon's alone, mode 0700):
//!
//! - `/` is made private, so nothing we mount propagates to the host;
//! - the exec root's mount is made from the working directory, detached
//!   ([`exec_root::open`]: an overlayfs that shows no host path), and a
//!   fresh ramfs, attached on top of the working directory, becomes the
//!   new root (`fsmount`, `move_mount`), which we enter;
//! - the read-only paths are bound at the same place (symlinks, as in a
//!   merged-/usr system's `/bin -> usr/bin`, are recreated as symlinks);
//! - the exec root is attached read-write at [`EXEC_ROOT`], and its input
//!   files are bound read-only onto themselves
//!   ([`exec_root::bind_inputs_read_only`]);
//! - `/dev` gets null, zero, full, random, urandom and tty, a new devpts
//!   instance and a `shm` tmpfs; `/proc` is a fresh procfs of the new pid
//!   namespace with the files docker masks hidden (`keys`, `kcore`, ...)
//!   and `sys`, `sysrq-trigger`, `irq`, `bus` read-only; `/tmp` a
//!   size-limited tmpfs; `/etc` a few fixed files;
//! - the root, `/dev` and the masks are ramfs, which (unlike a tmpfs made
//!   in a user namespace) name no host uid in mountinfo; they are
//!   read-only once built. As root, the helper makes `/tmp` and `/dev/shm`
//!   before it gives up its privileges ([`Early`]), so that theirs name
//!   none either;
//! - we `pivot_root` into it and detach the old root;
//! - the read-only paths are made read-only in their whole subtree
//!   (`mount_setattr(AT_RECURSIVE)`, or on kernels before 5.12 a remount
//!   of each mount listed under them in mountinfo), and the root too.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statvfs::{FsFlags, statvfs};

use std::os::fd::OwnedFd;

use super::mount_api::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use super::{EXEC_ROOT, HOSTNAME, INSIDE_ID, RootMode, Spec, exec_root};

type R = Result<(), String>;

pub(super) fn ctx<E: std::fmt::Display>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> String {
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

pub(super) fn mkdir_p(path: &Path) -> R {
    fs::create_dir_all(path).map_err(ctx(|| format!("mkdir {}", path.display())))
}

/// `root` joined with an absolute inside path.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Binds `host` (recursively) at the same path under `root`; it is made
/// read-only after the pivot, by [`make_read_only`]. Returns whether it
/// made a mount (not for a symlink).
fn bind_read_only(root: &Path, host: &Path) -> Result<bool, String> {
    // The list was fixed at start-up to the paths that existed then (and
    // went into the toolchain identity): one gone since would change what
    // the action sees.
    let meta = fs::symlink_metadata(host).map_err(ctx(|| {
        format!(
            "read-only path {} (in effect since the daemon started; restart it to change the list)",
            host.display()
        )
    }))?;
    let dst = inside(root, host);
    if let Some(parent) = dst.parent() {
        mkdir_p(parent)?;
    }
    if meta.file_type().is_symlink() {
        let target = fs::read_link(host).map_err(ctx(|| format!("readlink {}", host.display())))?;
        symlink(&target, &dst).map_err(ctx(|| format!("symlink {}", dst.display())))?;
        return Ok(false);
    }
    if meta.is_dir() {
        mkdir_p(&dst)?;
    } else {
        fs::write(&dst, b"").map_err(ctx(|| format!("create {}", dst.display())))?;
    }
    bind(host, &dst, MsFlags::MS_REC)?;
    Ok(true)
}

pub(super) fn dev(root: &Path, shm_fs: OwnedFd) -> R {
    let dev = root.join("dev");
    mkdir_p(&dev)?;
    let fs = ramfs("dev", MOUNT_ATTR_NOSUID | mount_api::MOUNT_ATTR_NOEXEC)
        .map_err(ctx(|| "create the /dev ramfs".to_owned()))?;
    mount_api::attach(&fs, &dev).map_err(ctx(|| "attach /dev".to_owned()))?;
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
    mount_api::attach(&shm_fs, &shm).map_err(ctx(|| "attach /dev/shm".to_owned()))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).map_err(ctx(|| format!("symlink /dev/{link}")))?;
    }
    stamp_own(&dev)?;
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
            format!("root:x:0:0:root:/:/bin/sh\nnobody:x:{id}:{id}:nobody:/tmp:/bin/sh\n"),
        ),
        ("group", format!("root:x:0:\nnogroup:x:{id}:\n")),
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n".to_owned()),
        ("hostname", format!("{HOSTNAME}\n")),
    ] {
        fs::write(etc.join(name), content).map_err(ctx(|| format!("write /etc/{name}")))?;
    }
    Ok(())
}

/// /proc files that show kernel-wide state (other users' key counts,
/// kernel memory, timers of every process) or act on the whole machine,
/// as docker's default masks them. Missing ones are skipped.
const PROC_MASKED_FILES: [&str; 6] = [
    "keys",
    "key-users",
    "kcore",
    "timer_list",
    "sched_debug",
    "latency_stats",
];
const PROC_MASKED_DIRS: [&str; 3] = ["acpi", "scsi", "asound"];
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];

pub(super) fn proc(root: &Path) -> R {
    let proc = root.join("proc");
    mkdir_p(&proc)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), &proc, Some("proc"), flags, None::<&str>)
        .map_err(ctx(|| "mount a new /proc".to_owned()))?;
    for name in PROC_MASKED_FILES {
        let dst = proc.join(name);
        if dst.exists() {
            bind(Path::new("/dev/null"), &dst, MsFlags::empty())?;
        }
    }
    for name in PROC_MASKED_DIRS {
        let dst = proc.join(name);
        if dst.is_dir() {
            let empty = ramfs(
                "masked",
                MOUNT_ATTR_RDONLY
                    | MOUNT_ATTR_NOSUID
                    | MOUNT_ATTR_NODEV
                    | mount_api::MOUNT_ATTR_NOEXEC,
            )
            .map_err(ctx(|| format!("create a ramfs for /proc/{name}")))?;
            mount_api::attach(&empty, &dst).map_err(ctx(|| format!("mask /proc/{name}")))?;
        }
    }
    for name in PROC_READ_ONLY {
        let dst = proc.join(name);
        if dst.exists() {
            bind(&dst, &dst, MsFlags::MS_REC)?;
            mount(
                None::<&str>,
                &dst,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
                None::<&str>,
            )
            .map_err(ctx(|| format!("remount /proc/{name} read-only")))?;
        }
    }
    Ok(())
}

/// How the read-only paths were made read-only in their whole subtree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnlyMethod {
    /// mount_setattr(AT_RECURSIVE), Linux 5.12.
    Recursive,
    /// A remount of each mount under the path, found in mountinfo.
    EachMount,
}

impl ReadOnlyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadOnlyMethod::Recursive => "mount_setattr(AT_RECURSIVE)",
            ReadOnlyMethod::EachMount => "a read-only remount of each mount in mountinfo",
        }
    }
}

/// `/tmp` and `/dev/shm`, which the helper makes before it gives up its
/// privileges (as root), so that mountinfo names no host uid for them; the
/// sandbox makes them itself otherwise (a per-user daemon's uid then shows
/// in their options).
#[derive(Default)]
pub struct Early {
    tmp: Option<OwnedFd>,
    shm: Option<OwnedFd>,
}

impl Early {
    /// `/tmp` and `/dev/shm`, made now.
    pub fn make(spec: &Spec) -> Result<Early, String> {
        let tmp = tmp_tmpfs(spec).map_err(ctx(|| "create the /tmp tmpfs".to_owned()))?;
        let shm = shm_tmpfs().map_err(ctx(|| "create the /dev/shm tmpfs".to_owned()))?;
        for fs in [&tmp, &shm] {
            // Only their maker may set their roots' times.
            use std::os::fd::AsRawFd;
            stamp(
                Path::new(&format!("/proc/self/fd/{}", fs.as_raw_fd())),
                true,
            )?;
        }
        Ok(Early {
            tmp: Some(tmp),
            shm: Some(shm),
        })
    }

    /// The `/tmp` and `/dev/shm` file systems: the ones made early, or
    /// new ones now.
    pub(super) fn or_make(self, spec: &Spec) -> Result<(OwnedFd, OwnedFd), String> {
        let early = match self.tmp {
            Some(_) => self,
            None => Early::make(spec)?,
        };
        match (early.tmp, early.shm) {
            (Some(tmp), Some(shm)) => Ok((tmp, shm)),
            _ => Err("the /tmp and /dev/shm file systems were not made".into()),
        }
    }
}

/// Sets the fixed access and modification time (see `cas::last_use`) on
/// `path`, following a final symbolic link only if `follow`.
fn stamp(path: &Path, follow: bool) -> R {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    let fixed = nix::sys::time::TimeSpec::new(crate::cas::last_use::FIXED_MTIME_SECS as i64, 0);
    let flags = if follow {
        UtimensatFlags::FollowSymlink
    } else {
        UtimensatFlags::NoFollowSymlink
    };
    utimensat(nix::fcntl::AT_FDCWD, path, &fixed, &fixed, flags)
        .map_err(ctx(|| format!("set the fixed time of {}", path.display())))
}

/// Stamps `dir` and everything below it on the same file system (what we
/// made on a ramfs), never a mount point, whose times are another file
/// system's (the host's, for the read-only paths).
pub(super) fn stamp_own(dir: &Path) -> R {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::symlink_metadata(dir)
        .map_err(ctx(|| format!("stat {}", dir.display())))?
        .dev();
    let entries = fs::read_dir(dir).map_err(ctx(|| format!("list {}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(ctx(|| format!("list {}", dir.display())))?
            .path();
        let meta =
            fs::symlink_metadata(&path).map_err(ctx(|| format!("stat {}", path.display())))?;
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            stamp_own(&path)?;
        } else {
            stamp(&path, false)?;
        }
    }
    stamp(dir, false)
}

fn tmp_tmpfs(spec: &Spec) -> std::io::Result<OwnedFd> {
    let size = spec.tmp_size.max(4096).to_string();
    mount_api::new_tmpfs(
        &[("source", "tmpfs"), ("mode", "1777"), ("size", &size)],
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
}

fn shm_tmpfs() -> std::io::Result<OwnedFd> {
    mount_api::new_tmpfs(
        &[("source", "tmpfs"), ("mode", "1777"), ("size", "64m")],
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
}

/// A new, empty ramfs (mode 0755) named `source`.
fn ramfs(source: &str, attrs: u64) -> std::io::Result<OwnedFd> {
    mount_api::new_fs("ramfs", &[("source", Some(source))], attrs)
}

/// What [`build_root`] did, for the probe.
pub struct Built {
    pub read_only: ReadOnlyMethod,
    pub exec_root: exec_root::Method,
}

/// Builds the new root on top of the working directory (the exec root, or
/// its parent with the overlay layers) and pivots into it. See the module
/// comment for the steps.
pub fn build_root(spec: &Spec, early: Early) -> Result<Built, String> {
    if spec.root == RootMode::Input {
        return super::root_mode::build_input_root(spec, early);
    }
    let cwd = Path::new(".");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ctx(|| "make / private".to_owned()))?;
    // Made first either way, so that mountinfo, which lists mounts in the
    // order they were made, lists them alike.
    let (tmp_fs, shm_fs) = early.or_make(spec)?;
    let (exec_root, exec_method) = exec_root::open(spec)?;
    let new_root = ramfs("sandbox", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
        .map_err(ctx(|| "create the root ramfs".to_owned()))?;
    mount_api::attach(&new_root, cwd).map_err(ctx(|| "attach the root tmpfs".to_owned()))?;
    nix::unistd::fchdir(&new_root).map_err(ctx(|| "enter the root tmpfs".to_owned()))?;
    drop(new_root);

    let mut read_only = Vec::new();
    for path in &spec.read_only_paths {
        if bind_read_only(cwd, path)? {
            read_only.push(path.clone());
        }
    }
    let exec = inside(cwd, Path::new(EXEC_ROOT));
    mkdir_p(&exec)?;
    mount_api::attach(&exec_root, &exec)
        .map_err(ctx(|| format!("attach the exec root on {EXEC_ROOT}")))?;
    exec_root::bind_inputs_read_only(&exec_root, &exec, &spec.read_only_inputs)?;
    drop(exec_root);
    dev(cwd, shm_fs)?;
    proc(cwd)?;
    let tmp = cwd.join("tmp");
    mkdir_p(&tmp)?;
    mount_api::attach(&tmp_fs, &tmp).map_err(ctx(|| "attach /tmp".to_owned()))?;
    etc(cwd)?;
    // What we made of the root gets fixed times, as the exec root.
    stamp_own(cwd)?;
    nix::unistd::pivot_root(".", ".").map_err(ctx(|| "pivot_root".to_owned()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ctx(|| "detach the old root".to_owned()))?;
    nix::unistd::chdir("/").map_err(ctx(|| "chdir /".to_owned()))?;
    let method = make_read_only(&read_only)?;
    // Nothing may be written outside the exec root, /tmp and /dev/shm.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(ctx(|| "remount the new root read-only".to_owned()))?;
    Ok(Built {
        read_only: method,
        exec_root: exec_method,
    })
}

/// Makes each of `paths` (inside paths, after the pivot) read-only with
/// every mount below it.
fn make_read_only(paths: &[PathBuf]) -> Result<ReadOnlyMethod, String> {
    let mut method = ReadOnlyMethod::Recursive;
    for path in paths {
        if method == ReadOnlyMethod::Recursive {
            match mount_api::set_recursive(path, MOUNT_ATTR_RDONLY) {
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    method = ReadOnlyMethod::EachMount;
                }
                Err(e) => return Err(format!("make {} read-only: {e}", path.display())),
            }
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(ctx(|| "read /proc/self/mountinfo".to_owned()))?;
        for point in mounts_under(&mountinfo, path) {
            remount_read_only(&point)?;
        }
    }
    Ok(method)
}

/// The mount points in `mountinfo` that are `top` or below it, in the
/// order listed (parents before children).
fn mounts_under(mountinfo: &str, top: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| p.starts_with(top))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submounts_are_found_in_mountinfo() {
        let info = "\
22 1 8:1 / / ro - tmpfs sandbox rw
23 22 8:2 /usr /usr ro,nosuid - ext4 /dev/sda rw
24 23 0:40 / /usr/local/with\\040space rw - tmpfs t rw
25 22 0:41 / /usrx rw - tmpfs t rw
26 23 0:42 / /usr/lib/sub rw - tmpfs t rw
";
        assert_eq!(
            mounts_under(info, Path::new("/usr")),
            vec![
                PathBuf::from("/usr"),
                PathBuf::from("/usr/local/with space"),
                PathBuf::from("/usr/lib/sub"),
            ]
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape_mountinfo("trailing\\04"), "trailing\\04");
    }
}
