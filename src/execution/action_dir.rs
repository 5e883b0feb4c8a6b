//! The per-action directory under the state directory's `exec/`, and the
//! memory files that hold the command's standard output and error.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::error::Error;
use crate::io_error::IoError;
use crate::sandbox;

/// An action's directory, removed when dropped: `sandbox/exec` (the exec
/// root) beside the overlay's `sandbox/work` and `sandbox/lower`, and
/// `stdout`, `stderr`, `result.json`. Mode 0700: the daemon's alone.
pub struct ActionDir {
    pub path: PathBuf,
}

impl ActionDir {
    pub fn create(path: PathBuf) -> Result<ActionDir, Error> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(&path).map_err(IoError::at("cannot create", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(IoError::at("cannot chmod", &path))?;
        Ok(ActionDir { path })
    }

    /// The exec root: `sandbox/exec`, beside the overlay layers in
    /// `sandbox/` ([`sandbox::exec_root::layer_dirs`]).
    pub fn exec_root(&self) -> PathBuf {
        self.path.join("sandbox/exec")
    }

    /// Creates `sandbox/` and the overlay's work and lower directories,
    /// owned by `owner` (the action's uid as root): the sandbox mounts the
    /// overlay after it has given up the daemon's identity.
    pub fn make_layers(&self, owner: Option<(u32, u32)>) -> Result<(), Error> {
        let sandbox = self.path.join("sandbox");
        let [_, work, lower] = sandbox::exec_root::layer_dirs(&sandbox);
        for dir in [&sandbox, &work, &lower] {
            std::fs::create_dir(dir)
                .and_then(|()| match owner {
                    Some((uid, gid)) => std::os::unix::fs::chown(dir, Some(uid), Some(gid)),
                    None => Ok(()),
                })
                .map_err(IoError::at("cannot create", dir))?;
        }
        Ok(())
    }
}

impl Drop for ActionDir {
    fn drop(&mut self) {
        // overlayfs leaves its `work/work` at mode 0, which a daemon that is
        // not root could not list to remove.
        let inner = self.path.join("sandbox/work/work");
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700));
        let path = std::mem::take(&mut self.path);
        // Removing a large tree is slow; do not hold up the caller.
        std::thread::spawn(move || remove_tree(&path));
    }
}

fn remove_tree(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

/// The command's standard output and error: memory files
/// ([`sandbox::stream`]), so that its `/proc/self/fd/1` names no host path.
/// The daemon keeps these descriptors; what was written survives a killed
/// sandbox and is saved to the scratch directory for ingestion.
pub struct Streams {
    stdout: File,
    stderr: File,
}

impl Streams {
    pub fn new() -> io::Result<Streams> {
        Ok(Streams {
            stdout: sandbox::stream("stdout")?,
            stderr: sandbox::stream("stderr")?,
        })
    }

    /// New descriptors of both (sharing their offsets: read them only with
    /// positioned reads).
    pub fn clones(&self) -> io::Result<(File, File)> {
        Ok((self.stdout.try_clone()?, self.stderr.try_clone()?))
    }

    /// Copies both into `stdout` and `stderr` in `dir`; an error names
    /// the file.
    pub fn save(self, dir: &Path) -> Result<(), (PathBuf, io::Error)> {
        for (stream, name) in [(self.stdout, "stdout"), (self.stderr, "stderr")] {
            let path = dir.join(name);
            sandbox::save_stream(stream, &path).map_err(|e| (path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_directory_is_private_has_its_layers_and_goes_when_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("7");
        let dir = ActionDir::create(path.clone()).unwrap();
        dir.make_layers(None).unwrap();
        std::fs::create_dir(dir.exec_root()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        for layer in ["sandbox/work", "sandbox/lower", "sandbox/exec"] {
            assert!(path.join(layer).is_dir(), "{layer}");
        }
        drop(dir);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while path.exists() {
            assert!(std::time::Instant::now() < deadline, "never removed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn streams_are_saved_whole_whatever_was_read_meanwhile() {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let streams = Streams::new().unwrap();
        let (mut out, _err) = streams.clones().unwrap();
        out.write_all(b"partial ").unwrap();
        // A reader of the live log reads with positioned reads.
        let (reader, _) = streams.clones().unwrap();
        let mut buf = [0u8; 7];
        reader.read_at(&mut buf, 0).unwrap();
        out.write_all(b"and the rest").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        streams.save(tmp.path()).unwrap();
        let saved = std::fs::read(tmp.path().join("stdout")).unwrap();
        assert_eq!(saved, b"partial and the rest");
        assert_eq!(std::fs::read(tmp.path().join("stderr")).unwrap(), b"");
    }
}
