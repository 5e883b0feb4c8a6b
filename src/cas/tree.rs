//! Walking a Directory tree stored in the CAS, for GetTree and for checking
//! that a tree's blobs are present.

use std::collections::{HashSet, VecDeque};
use std::ops::ControlFlow;

use prost::Message;

use super::{Error, Result, Store};
use crate::digest::Digest;
use crate::proto::reapi;

/// Visits every Directory reachable from `root` in breadth-first order,
/// each distinct digest once. Subdirectories missing from the store are
/// skipped, as GetTree specifies; a missing root is `NotFound`. A
/// Directory that does not decode is `Corrupt`.
pub fn walk(
    store: &Store,
    root: &Digest,
    mut visit: impl FnMut(&Digest, reapi::Directory) -> ControlFlow<()>,
) -> Result<(), TreeError> {
    let mut w = TreeWalk::new(*root);
    while let Some((digest, dir)) = w.next(store)? {
        if visit(&digest, dir).is_break() {
            break;
        }
    }
    Ok(())
}

/// The state of a [`walk`] that can stop and go on later (GetTree pages
/// are made one at a time, each on the blocking pool).
pub struct TreeWalk {
    queue: VecDeque<Digest>,
    seen: HashSet<Digest>,
    first: bool,
}

impl TreeWalk {
    pub fn new(root: Digest) -> TreeWalk {
        TreeWalk {
            queue: VecDeque::from([root]),
            seen: HashSet::from([root]),
            first: true,
        }
    }

    /// The next Directory, or `None` when the walk is over.
    pub fn next(&mut self, store: &Store) -> Result<Option<(Digest, reapi::Directory)>, TreeError> {
        while let Some(digest) = self.queue.pop_front() {
            let Some(bytes) = store.read(&digest)? else {
                if self.first {
                    return Err(Error::NotFound(digest).into());
                }
                continue;
            };
            self.first = false;
            let dir =
                reapi::Directory::decode(bytes.as_slice()).map_err(|e| TreeError::Corrupt {
                    digest,
                    reason: e.to_string(),
                })?;
            for child in &dir.directories {
                let child = Digest::from_required(child.digest.as_ref()).map_err(|e| {
                    TreeError::Corrupt {
                        digest,
                        reason: format!("subdirectory {:?}: {e}", child.name),
                    }
                })?;
                if self.seen.insert(child) {
                    self.queue.push_back(child);
                }
            }
            return Ok(Some((digest, dir)));
        }
        Ok(None)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Store(#[from] Error),
    #[error("directory {digest} is not a valid Directory message: {reason}")]
    Corrupt { digest: Digest, reason: String },
}

#[cfg(test)]
mod tests {
    use super::super::tests::test_store;
    use super::*;

    fn put_dir(store: &std::sync::Arc<Store>, dir: &reapi::Directory) -> Digest {
        let bytes = dir.encode_to_vec();
        let d = Digest::of_bytes(&bytes);
        store.put(&d, &bytes).unwrap();
        d
    }

    #[test]
    fn walks_breadth_first_once_per_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(tmp.path(), 1 << 30);
        let leaf = put_dir(&store, &reapi::Directory::default());
        let node = |name: &str, d: &Digest| reapi::DirectoryNode {
            name: name.into(),
            digest: Some(d.to_proto()),
        };
        let mid = put_dir(
            &store,
            &reapi::Directory {
                directories: vec![node("x", &leaf)],
                ..Default::default()
            },
        );
        let root = put_dir(
            &store,
            &reapi::Directory {
                directories: vec![node("a", &leaf), node("b", &mid)],
                ..Default::default()
            },
        );
        let mut order = vec![];
        walk(&store, &root, |d, _| {
            order.push(*d);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(order, vec![root, leaf, mid]);
        let missing = Digest::of_bytes(b"nope");
        assert!(matches!(
            walk(&store, &missing, |_, _| ControlFlow::Continue(())),
            Err(TreeError::Store(Error::NotFound(_)))
        ));
    }
}
