//! Taking the files an action produced into the store.
//!
//! A file arrives already open: the output collector walks the exec root
//! from directory descriptors and opens each file without following links,
//! so the inode hashed here is the inode stored, and no path is resolved
//! twice. How it enters the store is the caller's decision ([`Ingest`]):
//!
//! - **by a new name** for the same inode (no copy), when no other process
//!   can hold the file open for writing: every process of the action is
//!   dead, and its exec root was never reachable by another user's
//!   processes. The file is given to the daemon (`fchown`, so the action's
//!   uid cannot chmod it later), made 0444, hashed, and linked into the
//!   store through `/proc/self/fd`, which names exactly the open inode;
//! - **by copy** into a fresh file otherwise (a per-user daemon, whose
//!   owner's other processes can reach the exec root; an action that had
//!   the host network and could have passed a descriptor out), and always
//!   for a file with more than one link (the action may have kept another
//!   name for the inode, or linked an input).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use super::{COPY_BUF, Error, Result, Store, User, file_kind, hash_file};
use crate::digest::Digest;

/// How an output file may enter the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// Under a new name for the same inode. Only when nothing else can
    /// write to it any more (see the module comment). `take_ownership`:
    /// the file belongs to the action's uid, which must lose it.
    Link { take_ownership: bool },
    /// By copying its bytes into a fresh file of the daemon's.
    Copy,
}

impl Store {
    /// Opens `path` (not following a symlink there; a fifo cannot block
    /// us) and ingests it. For the daemon's own files, such as an action's
    /// captured stdout.
    pub fn ingest_file(self: &Arc<Self>, path: &Path, how: Ingest, user: User) -> Result<Digest> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    not_regular(path, "a symbolic link")
                } else {
                    Error::io("open", path)(e)
                }
            })?;
        self.ingest_open(&file, path, how, user)
    }

    /// Ingests an open file and returns its digest; a new blob is charged
    /// to `user` (see `shares`). `shown` names it in errors. Anything but a
    /// regular file is refused.
    pub fn ingest_open(
        self: &Arc<Self>,
        file: &File,
        shown: &Path,
        how: Ingest,
        user: User,
    ) -> Result<Digest> {
        let meta = file.metadata().map_err(Error::io("stat", shown))?;
        if !meta.is_file() {
            return Err(not_regular(shown, file_kind(&meta.file_type())));
        }
        match how {
            Ingest::Link { take_ownership } if meta.nlink() == 1 => {
                self.link_in(file, shown, take_ownership, user)
            }
            _ => {
                let digest = hash_file(file, shown)?;
                self.copy_in(file, shown, &digest, user)?;
                Ok(digest)
            }
        }
    }

    /// Stores the open file's own inode under its hash.
    fn link_in(
        self: &Arc<Self>,
        file: &File,
        shown: &Path,
        take_ownership: bool,
        user: User,
    ) -> Result<Digest> {
        if take_ownership {
            let group = self
                .shares
                .group_for(user)
                .unwrap_or(nix::unistd::getegid().as_raw());
            std::os::unix::fs::fchown(file, Some(nix::unistd::geteuid().as_raw()), Some(group))
                .map_err(Error::io("chown", shown))?;
        }
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(Error::io("chmod", shown))?;
        let digest = hash_file(file, shown)?;
        if self.contains_as(&digest, user)? {
            // Already stored; the action's copy goes with its exec root.
            return Ok(digest);
        }
        // Every store file has the same mtime (see `last_use`); the action
        // may have set any time at all.
        file.set_modified(super::last_use::fixed_mtime())
            .map_err(Error::io("set mtime of", shown))?;
        if self.config.fsync {
            file.sync_data().map_err(Error::io("fsync", shown))?;
        }
        let tmp = self.temp_path("out");
        let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        match nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            fd_path.as_str(),
            nix::fcntl::AT_FDCWD,
            &tmp,
            nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
        ) {
            Ok(()) => {}
            // The exec root is on another file system after all.
            Err(nix::errno::Errno::EXDEV) => {
                self.copy_in(file, shown, &digest, user)?;
                return Ok(digest);
            }
            Err(e) => return Err(Error::io("link into store", &tmp)(e.into())),
        }
        if let Err(e) = self.publish(&tmp, &digest) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(digest)
    }

    /// Copies an open file whose digest is known into the store, unless the
    /// store already has the blob. The writer checks the hash again, so a
    /// file that changed meanwhile is refused, never stored wrongly.
    fn copy_in(
        self: &Arc<Self>,
        file: &File,
        shown: &Path,
        digest: &Digest,
        user: User,
    ) -> Result<()> {
        if self.contains_as(digest, user)? {
            return Ok(());
        }
        let mut writer = self.writer_as(user, *digest)?;
        let mut buf = vec![0u8; COPY_BUF.min(digest.size().max(1) as usize)];
        let mut offset = 0u64;
        loop {
            let n = file
                .read_at(&mut buf, offset)
                .map_err(Error::io("read", shown))?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n])?;
            offset += n as u64;
        }
        writer.commit()
    }
}

/// The error for ingesting something that is not a regular file. The
/// store's error type has no variant for it, so it is an I/O error of kind
/// `InvalidInput` that names the path and what was found there.
fn not_regular(path: &Path, kind: &str) -> Error {
    Error::Io {
        op: "ingest",
        path: path.to_owned(),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file but {kind}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::test_store;
    use super::*;

    const LINK: Ingest = Ingest::Link {
        take_ownership: false,
    };

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_singly_linked_file_is_linked_into_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let out = dir.path().join("out.o");
        fs::write(&out, b"object code").unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
        let ino = fs::metadata(&out).unwrap().ino();
        let d = store.ingest_file(&out, LINK, None).unwrap();
        assert_eq!(d, Digest::of_bytes(b"object code"));
        let blob = store.blob_path(&d);
        assert_eq!(fs::metadata(&blob).unwrap().ino(), ino, "copied");
        assert_eq!(mode_of(&blob), 0o444);
        assert_eq!(store.read(&d).unwrap().unwrap(), b"object code");
        assert_eq!(store.usage().0, 4096);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

        // The same content again: the blob is kept.
        fs::remove_file(&out).unwrap();
        fs::write(&out, b"object code").unwrap();
        assert_eq!(store.ingest_file(&out, LINK, None).unwrap(), d);
        assert_eq!(fs::metadata(&blob).unwrap().ino(), ino);
        assert_eq!(store.usage().0, 4096);

        // Empty output.
        fs::remove_file(&out).unwrap();
        fs::write(&out, b"").unwrap();
        assert_eq!(store.ingest_file(&out, LINK, None).unwrap(), Digest::EMPTY);
        assert_eq!(store.usage().0, 4096);
    }

    #[test]
    fn copy_makes_a_fresh_inode_and_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let out = dir.path().join("out");
        fs::write(&out, b"kept open by someone").unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o666)).unwrap();
        let d = store.ingest_file(&out, Ingest::Copy, None).unwrap();
        let blob = store.blob_path(&d);
        assert_ne!(
            fs::metadata(&blob).unwrap().ino(),
            fs::metadata(&out).unwrap().ino()
        );
        // Writing through the original changes nothing in the store.
        fs::write(&out, b"poisoned bytes here!").unwrap();
        assert_eq!(store.read(&d).unwrap().unwrap(), b"kept open by someone");
        assert_eq!(mode_of(&out), 0o666);
    }

    #[test]
    fn a_file_with_other_links_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let out = dir.path().join("out");
        let other = dir.path().join("other-name");
        fs::write(&out, b"shared inode").unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o640)).unwrap();
        fs::hard_link(&out, &other).unwrap();
        let d = store.ingest_file(&out, LINK, None).unwrap();
        assert!(out.exists() && other.exists());
        let blob = store.blob_path(&d);
        assert_ne!(
            fs::metadata(&blob).unwrap().ino(),
            fs::metadata(&out).unwrap().ino()
        );
        assert_eq!(store.read(&d).unwrap().unwrap(), b"shared inode");
        // The action's file keeps its mode: it was not ours to change.
        assert_eq!(mode_of(&out), 0o640);
    }

    #[test]
    fn what_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let link = dir.path().join("link");
        fs::write(dir.path().join("target"), b"x").unwrap();
        std::os::unix::fs::symlink("target", &link).unwrap();
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        for (path, kind) in [
            (&fifo, "fifo"),
            (&link, "symbolic link"),
            (&sub, "directory"),
        ] {
            let err = store.ingest_file(path, LINK, None).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(kind), "{err}");
            assert!(path.exists());
        }
        let err = store
            .ingest_file(&dir.path().join("absent"), LINK, None)
            .unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn ownership_is_taken_from_the_action_uid() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let out = dir.path().join("out");
        fs::write(&out, b"made by uid 54321").unwrap();
        std::os::unix::fs::chown(&out, Some(54321), Some(54321)).unwrap();
        let how = Ingest::Link {
            take_ownership: true,
        };
        let d = store.ingest_file(&out, how, None).unwrap();
        let meta = fs::metadata(store.blob_path(&d)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o444);
    }
}
