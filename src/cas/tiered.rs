//! The one blob source the services and the executor use: the local store,
//! and behind it the upstream's CAS when read-through is on (the tvix
//! castore combinator, NativeLink's `fast_slow` store).
//!
//! The miss policy lives here and nowhere else: a blob the local store
//! lacks is asked of the upstream; what the upstream sends is checked
//! against its digest and stored like any upload (`upstream::fetch`), and
//! then read from the local store again, so every answer comes from the
//! local store. An upstream that fails is a local miss: logged at debug,
//! never an error of the call.

use std::sync::Arc;

use super::{Blob, Error, Store, User};
use crate::digest::Digest;
use crate::upstream::Upstream;

pub struct Tiered {
    local: Arc<Store>,
    /// The upstream, when misses fall back to it.
    upstream: Option<Arc<Upstream>>,
}

impl Tiered {
    /// `upstream` is used only if its policy reads through.
    pub fn new(local: Arc<Store>, upstream: Option<Arc<Upstream>>) -> Tiered {
        Tiered {
            local,
            upstream: upstream.filter(|u| u.policy.read_through),
        }
    }

    pub fn local(&self) -> &Arc<Store> {
        &self.local
    }

    /// The digests neither tier holds. What the upstream has counts as
    /// present: it is fetched when it is read.
    pub async fn find_missing(
        &self,
        digests: Vec<Digest>,
        user: User,
    ) -> Result<Vec<Digest>, Error> {
        // From memory when the store's index is ready (no blocking-pool hop
        // for what is a few hash lookups), from `stat`s on a blocking
        // thread otherwise.
        let missing = match self.local.find_missing_indexed(&digests, user) {
            Some(missing) => missing,
            None => {
                let store = Arc::clone(&self.local);
                blocking(move || store.find_missing_as(&digests, user)).await?
            }
        };
        let Some(up) = &self.upstream else {
            return Ok(missing);
        };
        if missing.is_empty() {
            return Ok(missing);
        }
        match up.find_missing(&missing).await {
            Ok(m) => Ok(m),
            Err(e) => {
                tracing::debug!("upstream FindMissingBlobs failed: {e}");
                Ok(missing)
            }
        }
    }

    /// Brings `missing` (blobs the local store lacks) from the upstream into
    /// the local store; whether any of them came.
    pub async fn fetch(&self, missing: &[Digest]) -> bool {
        let Some(up) = &self.upstream else {
            return false;
        };
        if missing.is_empty() {
            return false;
        }
        match up.fetch(missing).await {
            Ok(absent) => absent.len() < missing.len(),
            Err(e) => {
                tracing::debug!("upstream fetch failed: {e}");
                false
            }
        }
    }

    /// Brings a Directory tree the local store lacks parts of.
    pub async fn fetch_tree(&self, root: Digest) {
        if let Some(up) = &self.upstream
            && let Err(e) = up.fetch_tree(root).await
        {
            tracing::debug!("upstream fetch of tree {root} failed: {e}");
        }
    }

    /// Opens a blob from the local store, fetching it first if only the
    /// upstream has it.
    pub async fn open_blob(&self, digest: Digest) -> Result<Option<Blob>, Error> {
        let open = || {
            let store = Arc::clone(&self.local);
            blocking(move || store.open_blob(&digest))
        };
        let blob = open().await?;
        if blob.is_some() || !self.fetch(&[digest]).await {
            return Ok(blob);
        }
        open().await
    }

    /// Whether a read of these blobs could fall back to the upstream.
    pub fn reads_through(&self) -> bool {
        self.upstream.is_some()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Error::Io {
            op: "run a blocking store task",
            path: std::path::PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}
