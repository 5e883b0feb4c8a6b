//! The per-user fallback directory, `/tmp/nativelink-lre-UID`.
//!
//! A daemon run by an ordinary user keeps its socket in
//! `$XDG_RUNTIME_DIR/nativelink-lre` and its store under `~/.cache`. Without
//! `XDG_RUNTIME_DIR` (or `HOME`) it falls back to a directory in `/tmp`,
//! where any other user may have created that name first and put their own
//! socket in it. Like ssh-agent and tmux, the daemon and the client use
//! such a directory only when it is a real directory owned by the user and
//! closed to everyone else.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A fallback directory that another user could control.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: {why}; refusing to use it (another user could put their own socket or files there). \
     Remove it, or set XDG_RUNTIME_DIR (for the socket) and HOME (for the store)"
)]
pub struct Unsafe {
    pub path: PathBuf,
    pub why: String,
}

/// `/tmp/nativelink-lre-UID` for the effective uid.
pub fn fallback() -> PathBuf {
    PathBuf::from(format!("/tmp/nativelink-lre-{}", nix::unistd::geteuid()))
}

/// If `path` is inside the fallback directory, makes sure that directory
/// is ours alone, creating it (mode 0700) when `create` is set and it is
/// missing. Paths elsewhere are left alone.
pub fn guard(path: &Path, create: bool) -> Result<(), Unsafe> {
    let dir = fallback();
    if !path.starts_with(&dir) {
        return Ok(());
    }
    if create {
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Unsafe {
                    path: dir,
                    why: format!("cannot create it: {e}"),
                });
            }
        }
    }
    check(&dir)
}

/// Whether `dir` is a directory (not a link to one) owned by us and closed
/// to group and others. A missing directory is fine: nobody controls it.
fn check(dir: &Path) -> Result<(), Unsafe> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Unsafe {
                path: dir.to_owned(),
                why: format!("cannot inspect it: {e}"),
            });
        }
    };
    let bad = |why: String| {
        Err(Unsafe {
            path: dir.to_owned(),
            why,
        })
    };
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_dir() {
        return bad("it is not a directory".into());
    }
    if meta.uid() != me {
        return bad(format!(
            "it is owned by uid {}, not by us (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return bad(format!(
            "its mode is {:04o}: group or others have access",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_a_private_directory_of_ours_passes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        assert!(check(&dir).is_ok(), "a missing directory controls nothing");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check(&dir).is_ok());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check(&dir).unwrap_err();
        assert!(e.to_string().contains("0777"), "{e}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(check(&link).unwrap_err().why.contains("not a directory"));
        if nix::unistd::geteuid().is_root() {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&dir, Some(4242), None).unwrap();
            assert!(check(&dir).unwrap_err().why.contains("owned by uid 4242"));
        }
    }

    #[test]
    fn paths_elsewhere_are_not_checked() {
        assert!(guard(Path::new("/run/nativelink-lre/socket"), false).is_ok());
    }
}
