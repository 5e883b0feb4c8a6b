//! The cap on what one action may write into its exec root
//! (`sandbox.max-exec-root-size`).
//!
//! The exec root must live on the store's file system (inputs are hard
//! links, outputs are linked into the store), so it cannot be a
//! size-limited mount, and walking it all the time would cost more than
//! the actions. Instead the file system's own usage is watched: while it
//! has grown by less than the cap since the action started, no action can
//! have written more than the cap, and nothing is walked. Past that, the
//! exec root is measured: every inode once (hard links to one inode count
//! once), less the bytes of the action's own inputs.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Watches one action's exec root.
pub struct DiskLimit {
    exec_root: PathBuf,
    cap: u64,
    /// Bytes of the input files (each distinct blob once).
    input_bytes: u64,
    /// The file system's used bytes when the action started.
    used_at_start: u64,
}

impl DiskLimit {
    pub fn new(exec_root: PathBuf, cap: u64, input_bytes: u64) -> DiskLimit {
        let used_at_start = fs_used(&exec_root).unwrap_or(0);
        DiskLimit {
            exec_root,
            cap,
            input_bytes,
            used_at_start,
        }
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The bytes the action has written, if that is more than the cap.
    /// Blocking: it may walk the exec root. Other actions' scratch
    /// directories removed meanwhile can hide growth from this look; the
    /// look at the end ([`exceeded_after`](Self::exceeded_after)) has the
    /// action's own count of what it wrote too.
    pub fn exceeded(&self) -> Option<u64> {
        self.exceeded_after(0)
    }

    /// [`exceeded`](Self::exceeded), with `written`, what the action's
    /// processes say they wrote, as a second reason to measure.
    pub fn exceeded_after(&self, written: u64) -> Option<u64> {
        let used = fs_used(&self.exec_root)?;
        if used.saturating_sub(self.used_at_start) < self.cap && written < self.cap {
            return None;
        }
        let written = tree_bytes(&self.exec_root).saturating_sub(self.input_bytes);
        (written > self.cap).then_some(written)
    }
}

/// Bytes in use on the file system that holds `path`.
fn fs_used(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = st.fragment_size() as u64;
    Some((st.blocks() as u64).saturating_sub(st.blocks_free() as u64) * frsize)
}

/// Bytes of every distinct inode below `root` (blocks allocated), without
/// following symlinks.
fn tree_bytes(root: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            }
            if seen.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_inode_once_less_the_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("input"), vec![1u8; 8192]).unwrap();
        fs::create_dir(root.join("out")).unwrap();
        fs::write(root.join("out/big"), vec![2u8; 1 << 20]).unwrap();
        for i in 0..5 {
            fs::hard_link(root.join("out/big"), root.join(format!("out/link{i}"))).unwrap();
        }
        let bytes = tree_bytes(root);
        let expected = (1 << 20) + 8192..(1 << 20) + 64 * 1024;
        assert!(expected.contains(&bytes), "{bytes}");
        let limit = DiskLimit {
            exec_root: root.to_owned(),
            cap: 512 * 1024,
            input_bytes: 8192,
            used_at_start: 0,
        };
        assert!(limit.exceeded().is_some_and(|w| w >= 1 << 20));
        let roomy = DiskLimit {
            cap: 4 << 20,
            ..limit
        };
        assert_eq!(roomy.exceeded(), None);
    }
}
