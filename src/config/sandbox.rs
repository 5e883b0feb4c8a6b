//! `[sandbox]`: what an action can see and how much it may write.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::ByteSize;

/// `[sandbox]`: what an action can see.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Sandbox {
    /// Host paths visible read-only inside every action. `None` means the
    /// built-in list, resolved at start-up (see [`Sandbox::read_only_paths`]).
    pub read_only_paths: Option<Vec<PathBuf>>,
    /// Size limit of each action's private /tmp.
    pub tmp_size: ByteSize,
    /// First host uid (and gid) of the range actions run as, when root.
    pub uid_range_start: u32,
    /// Number of uids in the range: at most this many actions at once.
    pub uid_range_count: u32,
    /// Whether an action may ask for the host network with the platform
    /// property `lre-network = "host"`.
    pub allow_host_network: bool,
    /// RLIMIT_NOFILE of every action, soft and hard.
    pub open_files: u64,
    /// RLIMIT_STACK (soft) of every action.
    pub stack_size: ByteSize,
    /// The nice value every action runs at.
    pub nice: i32,
    /// The most input files of one action that are bound read-only one by
    /// one (see `sandbox::exec_root`).
    pub max_read_only_inputs: usize,
    /// The largest file an action may write (RLIMIT_FSIZE), stdout and
    /// stderr included.
    pub max_file_size: ByteSize,
    /// The most bytes an action may write into its exec root.
    pub max_exec_root_size: ByteSize,
    /// Who gets private copies of their input files instead of hard links
    /// shared with other users' actions.
    pub private_inputs: PrivateInputs,
}

/// `sandbox.private-inputs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrivateInputs {
    /// Inputs are hard links to the store for everyone.
    Never,
    /// Callers outside trusted-users get copies (reflinks where the file
    /// system can).
    Untrusted,
    /// Every action gets copies.
    Always,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            read_only_paths: None,
            tmp_size: ByteSize(1 << 30),
            uid_range_start: 0x7000_0000,
            uid_range_count: 65536,
            allow_host_network: false,
            open_files: crate::sandbox::rlimits::DEFAULT_OPEN_FILES,
            stack_size: ByteSize(crate::sandbox::rlimits::DEFAULT_STACK_SIZE),
            nice: 0,
            max_read_only_inputs: 65536,
            max_file_size: ByteSize(crate::sandbox::rlimits::DEFAULT_FILE_SIZE),
            max_exec_root_size: ByteSize(32 << 30),
            private_inputs: PrivateInputs::Never,
        }
    }
}

impl Sandbox {
    /// The paths in effect: the configured list, or the built-in one:
    /// `/nix/store` where it exists, plus `/usr /bin /lib /lib64` on hosts
    /// that are not NixOS (so Bazel's auto-configured toolchain works).
    pub fn read_only_paths(&self) -> Vec<PathBuf> {
        if let Some(paths) = &self.read_only_paths {
            return paths.clone();
        }
        let mut out = Vec::new();
        if Path::new("/nix/store").is_dir() {
            out.push(PathBuf::from("/nix/store"));
        }
        if !Path::new("/etc/NIXOS").exists() {
            for p in ["/usr", "/bin", "/lib", "/lib64"] {
                if Path::new(p).exists() {
                    out.push(PathBuf::from(p));
                }
            }
        }
        out
    }
}

impl Sandbox {
    /// Refuses uid ranges and read-only paths that would expose the host.
    /// Returns the offending key and why.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        let (start, count) = (self.uid_range_start, self.uid_range_count);
        if start == 0 {
            return Err((
                "uid-range-start",
                "0 would run actions as root; start the range above every real user".into(),
            ));
        }
        if count == 0 || start.checked_add(count).is_none() {
            return Err((
                "uid-range-count",
                format!("the range {start}+{count} must be non-empty and fit in 32 bits"),
            ));
        }
        for p in self.read_only_paths.iter().flatten() {
            if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err((
                    "read-only-paths",
                    format!("{} is not an absolute path without ..", p.display()),
                ));
            }
            if p == Path::new("/") {
                return Err(("read-only-paths", "/ would expose the whole host".into()));
            }
        }
        if self.open_files < 64 {
            return Err((
                "open-files",
                format!(
                    "{} descriptors are too few for any program",
                    self.open_files
                ),
            ));
        }
        if self.stack_size.0 < 64 << 10 {
            return Err((
                "stack-size",
                format!("{} bytes are too few for any program", self.stack_size.0),
            ));
        }
        if !(-20..=19).contains(&self.nice) {
            return Err((
                "nice",
                format!("{} is not a nice value from -20 to 19", self.nice),
            ));
        }
        Ok(())
    }
}
