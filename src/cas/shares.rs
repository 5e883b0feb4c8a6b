//! Fair shares of the store between users.
//!
//! Without them, one user who uploads more junk than the store holds
//! evicts everybody else's blobs, since eviction is least recently used
//! first across the whole store (as in nix, bazel-remote and NativeLink).
//! So each blob is charged to the one user known to use it, and eviction
//! takes the oldest blobs of users over their share first (`gc`).
//!
//! The charge is kept in the blob file's group, so that it needs no index
//! and survives restarts: a blob written for uid U gets the group whose
//! number is U; a blob that a second user uses (uploads again, or finds
//! present with FindMissingBlobs), or that the daemon wrote for itself,
//! has the daemon's own group and is *shared*, charged to nobody. Blobs
//! that several users use are therefore never charged to the flooder
//! alone. The group of an input file is invisible to actions: their user
//! namespace maps only their own gid.
//!
//! Only a daemon run as root charges (an ordinary user cannot give files
//! arbitrary groups, and such a daemon serves its owner alone).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use super::Store;

/// Who a store operation is done for: a uid, or `None` for the daemon
/// itself (and for callers whose uid is unknown).
pub type User = Option<u32>;

pub(super) struct Shares {
    charging: bool,
    daemon_uid: u32,
    shared_gid: u32,
    /// A user's share, in bytes; 0 means no per-user share.
    pub(super) per_user_max: u64,
    /// Bytes charged to each user, as of the last walk of the store.
    by_user: Mutex<Vec<(u32, u64)>>,
}

impl Shares {
    pub(super) fn new(per_user_max: u64) -> Shares {
        Shares {
            charging: nix::unistd::geteuid().is_root(),
            daemon_uid: nix::unistd::geteuid().as_raw(),
            shared_gid: nix::unistd::getegid().as_raw(),
            per_user_max,
            by_user: Mutex::new(Vec::new()),
        }
    }

    /// The group a new blob written for `user` gets, if it is charged.
    pub(super) fn group_for(&self, user: User) -> Option<u32> {
        match user {
            Some(uid) if self.charging && uid != self.daemon_uid => Some(uid),
            _ => None,
        }
    }

    /// The user a store file with group `gid` is charged to, if any.
    pub(super) fn charged_to(&self, gid: u32) -> Option<u32> {
        (self.charging && gid != self.shared_gid).then_some(gid)
    }

    /// Records that `user` uses the file at `path`: one charged to another
    /// user becomes shared. Best effort; the ctime it stamps is a use too.
    pub(super) fn note_use(&self, path: &Path, meta: &fs::Metadata, user: User) {
        let Some(uid) = self.group_for(user) else {
            return;
        };
        if self
            .charged_to(meta.gid())
            .is_some_and(|owner| owner != uid)
        {
            let _ = std::os::unix::fs::lchown(path, None, Some(self.shared_gid));
        }
    }

    /// Whether a use by `user` of a file with group `gid` makes it shared
    /// (it is charged to another user).
    pub(super) fn takes_over(&self, gid: u32, user: User) -> bool {
        self.group_for(user)
            .is_some_and(|uid| self.charged_to(gid).is_some_and(|owner| owner != uid))
    }

    /// Charges the file at `path` to nobody. Best effort: whether it worked.
    pub(super) fn make_shared(&self, path: &Path) -> bool {
        std::os::unix::fs::lchown(path, None, Some(self.shared_gid)).is_ok()
    }

    pub(super) fn shared_gid(&self) -> u32 {
        self.shared_gid
    }

    pub(super) fn set_by_user(&self, by_user: HashMap<u32, u64>) {
        let mut v: Vec<(u32, u64)> = by_user.into_iter().collect();
        v.sort_unstable();
        *self.by_user.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

impl Store {
    /// Bytes charged to each user (uid, bytes), as of the last walk of the
    /// store (the start-up scan, then each eviction).
    pub fn usage_by_user(&self) -> Vec<(u32, u64)> {
        self.shares
            .by_user
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A user's share of the store, in bytes (0: none).
    pub fn per_user_max(&self) -> u64 {
        self.shares.per_user_max
    }
}
