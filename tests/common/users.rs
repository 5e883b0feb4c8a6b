//! Throwaway local accounts for the attack tests: a real passwd entry (so
//! the daemon's NSS lookups and `allowed-users` names work), removed when
//! dropped.

#![allow(dead_code)]

use std::process::Command;

/// A local user created for one test, with a group of the same name.
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    /// Creates `lre-t<random>` with no home directory and no login shell.
    pub fn create() -> User {
        assert!(
            nix::unistd::geteuid().is_root(),
            "throwaway users need root: run the tests as root"
        );
        let name = format!("lre-t{:08x}", rand_u32());
        let out = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin", &name])
            .output()
            .expect("useradd");
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("the new user exists");
        User {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u32::from_ne_bytes(b)
}
