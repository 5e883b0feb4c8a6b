//! The store's file system: what kind it is, its free space against
//! `store.max-size`, and whether hard links and reflinks work there.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Finding;
use super::facts::Facts;
use crate::cli::words::bytes;
use crate::config::Config;

pub fn all(facts: &Facts, _config: &Config) -> Vec<Finding> {
    let dir = &facts.state_dir;
    let Some(existing) = dir.ancestors().find(|a| a.exists()).map(Path::to_owned) else {
        return vec![Finding::fail(
            "store",
            format!("{}: no part of the path exists", dir.display()),
            "set state-dir to an absolute path",
        )];
    };
    let mut out = vec![kind(dir, &existing), free_space(facts, &existing)];
    if existing == *dir {
        out.extend(links(facts, dir));
    } else {
        out.push(Finding::pass(
            "store links",
            format!(
                "{} does not exist yet (the daemon makes it); not tested",
                dir.display()
            ),
        ));
    }
    out
}

/// The file system's name, from statfs(2)'s magic number.
fn fs_name(magic: i64) -> &'static str {
    match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0xFF53_4D42 | 0xFE53_4D42 => "cifs",
        0x6573_5546 => "fuse",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0x0102_1997 => "9p",
        _ => "another file system",
    }
}

fn kind(dir: &Path, existing: &Path) -> Finding {
    const CHECK: &str = "store file system";
    let magic = match nix::sys::statfs::statfs(existing) {
        Ok(s) => s.filesystem_type().0,
        Err(e) => {
            return Finding::warn(
                CHECK,
                format!("statfs {}: {e}", existing.display()),
                "check that the directory is readable",
            );
        }
    };
    let name = fs_name(magic);
    let at = format!("{} is on {name}", dir.display());
    match name {
        "tmpfs" => Finding::warn(
            CHECK,
            format!("{at}: the store lives in memory and is lost at every reboot"),
            "set state-dir to a directory on a disk",
        ),
        "nfs" | "cifs" | "fuse" | "9p" => Finding::warn(
            CHECK,
            format!(
                "{at}: a network or user-space file system, where hard links, renames and \
                     change times may not behave as the store needs"
            ),
            "set state-dir to a local file system (ext4, xfs, btrfs)",
        ),
        _ => Finding::pass(CHECK, at),
    }
}

fn free_space(facts: &Facts, existing: &Path) -> Finding {
    const CHECK: &str = "store free space";
    let st = match nix::sys::statvfs::statvfs(existing) {
        Ok(s) => s,
        Err(e) => return Finding::warn(CHECK, format!("statvfs: {e}"), ""),
    };
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let used = facts.store_bytes;
    let room = free + used;
    let limit = facts.store_limit;
    let holds = if facts.from_daemon {
        format!("the store holds {} and", bytes(used))
    } else {
        "the store".to_owned()
    };
    let detail = format!(
        "{} free; {holds} may grow to {} (store.max-size)",
        bytes(free),
        bytes(limit)
    );
    if room < limit {
        Finding::warn(
            CHECK,
            format!("{detail}: the disk fills up before eviction starts"),
            format!(
                "lower store.max-size below {} or free space on that file system",
                bytes(room)
            ),
        )
    } else {
        Finding::pass(CHECK, detail)
    }
}

/// Hard links (how a root daemon lays out inputs) and reflinks, tried on
/// two scratch files in the store directory (names that start with a dot,
/// which the store's walks skip).
fn links(facts: &Facts, dir: &Path) -> Vec<Finding> {
    let tag = format!(
        ".doctor-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let a = dir.join(&tag);
    let b = dir.join(format!("{tag}.link"));
    let c = dir.join(format!("{tag}.clone"));
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&a)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"doctor"));
    if let Err(e) = made {
        return vec![Finding::warn(
            "store links",
            format!(
                "cannot write in {} as uid {} ({e}), so hard links are not tested",
                dir.display(),
                nix::unistd::geteuid()
            ),
            "run `nativelink-lre doctor` as the daemon's user (root for the system daemon)",
        )];
    }
    let linked = std::fs::hard_link(&a, &b)
        .and_then(|()| std::fs::metadata(&a))
        .map(|m| m.nlink());
    let cloned = reflink(&a, &c);
    for p in [&a, &b, &c] {
        let _ = std::fs::remove_file(p);
    }
    let how = if facts.per_action_uids {
        "inputs are hard-linked from the store into each sandbox"
    } else {
        "a per-user daemon copies inputs instead (its actions run as its own uid)"
    };
    let link = match linked {
        Ok(2) => Finding::pass("store links", format!("hard links work; {how}")),
        Ok(n) => Finding::warn(
            "store links",
            format!("a hard link left the link count at {n}, not 2"),
            "put state-dir on a local file system (ext4, xfs, btrfs)",
        ),
        Err(e) if facts.per_action_uids => Finding::fail(
            "store links",
            format!("hard links fail ({e}): every action's inputs must be copied"),
            "put state-dir on a file system with hard links (ext4, xfs, btrfs)",
        ),
        Err(e) => Finding::warn("store links", format!("hard links fail ({e}); {how}"), ""),
    };
    let clone = Finding::pass(
        "store reflinks",
        match cloned {
            Ok(()) => "supported by the file system (copies could share blocks)".to_owned(),
            Err(e) => format!("not supported ({e}); copies of inputs take their full size"),
        },
    );
    vec![link, clone]
}

/// FICLONE from `src` to a new file `dst`.
fn reflink(src: &Path, dst: &PathBuf) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    let from = std::fs::File::open(src)?;
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open files owned by this function for the call.
    let r = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
