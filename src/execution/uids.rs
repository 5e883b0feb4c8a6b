//! Host uids and gids for running actions: as root, one of a configured
//! range per running action; as any other user, the daemon's own.

use std::sync::Mutex;

/// Host uids and gids for running actions.
pub enum Ids {
    /// As root: a configured range; each running action takes its own.
    Range(Mutex<Vec<u32>>),
    /// As an ordinary user: we can map only ourselves.
    Own { uid: u32, gid: u32 },
}

/// A uid and gid taken for one action, given back when dropped.
pub struct IdLease<'a> {
    ids: &'a Ids,
    pub id: u32,
    pub gid: u32,
}

impl Ids {
    /// A uid and gid for one action; `None` when every uid of the range
    /// is in use.
    pub fn take(&self) -> Option<IdLease<'_>> {
        match self {
            Ids::Range(free) => {
                let id = free.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
                Some(IdLease {
                    ids: self,
                    id,
                    gid: id,
                })
            }
            Ids::Own { uid, gid } => Some(IdLease {
                ids: self,
                id: *uid,
                gid: *gid,
            }),
        }
    }
}

impl Drop for IdLease<'_> {
    fn drop(&mut self) {
        if let Ids::Range(free) = self.ids {
            free.lock().unwrap_or_else(|e| e.into_inner()).push(self.id);
        }
    }
}

impl Ids {
    /// The ids this daemon can give: `[start, start + count)` as root, its
    /// own uid and gid otherwise.
    pub fn for_daemon(root: bool, start: u32, count: u32) -> Ids {
        if root {
            Ids::Range(Mutex::new((start..start + count).rev().collect()))
        } else {
            Ids::Own {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_gives_each_action_its_own_uid_and_takes_it_back() {
        let ids = Ids::for_daemon(true, 5000, 2);
        let a = ids.take().unwrap();
        let b = ids.take().unwrap();
        assert_eq!((a.id, a.gid, b.id), (5000, 5000, 5001));
        assert!(ids.take().is_none(), "a third action got a uid of two");
        drop(a);
        assert_eq!(ids.take().unwrap().id, 5000);
    }

    #[test]
    fn an_ordinary_user_shares_its_own_uid() {
        let ids = Ids::for_daemon(false, 5000, 2);
        let (a, b) = (ids.take().unwrap(), ids.take().unwrap());
        assert_eq!(a.id, nix::unistd::geteuid().as_raw());
        assert_eq!(a.id, b.id);
    }
}
