//! The state directory as a whole: one daemon at a time, and an identity
//! of its own.
//!
//! - `lock`: held (`flock`, exclusive) for the daemon's whole life. A second
//!   daemon on the same directory (started by hand with other sockets, or
//!   another port) would otherwise wipe the first one's scratch
//!   directories and kill its actions; it exits instead, naming the pid
//!   that holds the lock, which the holder writes into the file.
//! - `instance-id`: a random name made once, so that what the daemon
//!   creates outside the directory (its cgroup) is unique to this
//!   directory even where two daemons see the same path (different mount
//!   namespaces, containers).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::io_error::IoError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "another nativelink-lre ({holder}) is using the state directory {dir}; stop it, or give this one another state-dir"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error(transparent)]
    Io(#[from] IoError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io(IoError::new(op, path, source))
}

/// The exclusive lock on a state directory; released when dropped (or
/// when the process ends, however it ends).
pub struct Lock {
    _file: nix::fcntl::Flock<File>,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("state_dir::Lock")
    }
}

/// Creates `dir` if needed and takes its lock.
pub fn lock(dir: &Path) -> Result<Lock, Error> {
    use nix::fcntl::{Flock, FlockArg};
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_err("open", &path))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            let pid = format!("{}\n", std::process::id());
            locked
                .set_len(0)
                .and_then(|()| locked.rewind())
                .and_then(|()| locked.write_all(pid.as_bytes()))
                .map_err(io_err("write", &path))?;
            Ok(Lock { _file: locked })
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "pid unknown".to_owned(),
                pid => format!("pid {pid}"),
            };
            Err(Error::Locked {
                dir: dir.to_owned(),
                holder,
            })
        }
        Err((_, errno)) => Err(io_err("lock", &path)(errno.into())),
    }
}

/// This directory's instance id, made on first use: 32 hex digits.
pub fn instance_id(dir: &Path) -> Result<String, Error> {
    let path = dir.join("instance-id");
    match fs::read_to_string(&path) {
        Ok(id) if is_id(id.trim()) => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read", &path)(e)),
    }
    let id = format!("{:032x}", rand::random::<u128>());
    let tmp = dir.join(format!(".instance-id.{}", std::process::id()));
    fs::write(&tmp, format!("{id}\n")).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    Ok(id)
}

fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let first = lock(tmp.path()).unwrap();
        let e = lock(tmp.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        lock(tmp.path()).unwrap();
    }

    #[test]
    fn the_instance_id_is_made_once() {
        let tmp = tempfile::tempdir().unwrap();
        let id = instance_id(tmp.path()).unwrap();
        assert!(is_id(&id));
        assert_eq!(instance_id(tmp.path()).unwrap(), id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(instance_id(other.path()).unwrap(), id);
    }
}
