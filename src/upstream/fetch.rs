//! Read-through: what the local store lacks, fetched from the upstream.
//!
//! Every fetched blob goes through the store's own checks (`Store::put` for
//! a batch, a `BlobWriter` for a stream), so bytes that do not hash to their
//! digest are never stored. An ActionResult from the upstream is stored in
//! the local action cache only after every blob it refers to is local, so
//! nothing half-fetched is ever visible.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prost::Message;
use tokio::task::JoinSet;

use super::{Error, MAX_MESSAGE, SHA256, Upstream, plan_transfers};
use crate::action_cache::{self, Partition, Scope};
use crate::cas;
use crate::digest::Digest;
use crate::proto::bytestream::{self, byte_stream_client::ByteStreamClient};
use crate::proto::reapi::{
    self, action_cache_client::ActionCacheClient,
    content_addressable_storage_client::ContentAddressableStorageClient,
};

/// Digests per FindMissingBlobs call.
const FIND_MISSING_CHUNK: usize = 10_000;

/// Runs store work (file I/O) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, cas::Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::Task)?
        .map_err(Error::Store)
}

impl Upstream {
    /// Of `digests`, those the upstream does not have either.
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let mut missing = Vec::new();
        for chunk in digests.chunks(FIND_MISSING_CHUNK) {
            let req = reapi::FindMissingBlobsRequest {
                instance_name: self.instance.clone(),
                blob_digests: chunk.iter().map(Digest::to_proto).collect(),
                digest_function: SHA256,
            };
            let resp = self
                .call("FindMissingBlobs", |ch| async move {
                    ContentAddressableStorageClient::new(ch)
                        .max_decoding_message_size(MAX_MESSAGE)
                        .find_missing_blobs(req)
                        .await
                })
                .await?;
            let theirs: HashSet<Digest> = resp
                .missing_blob_digests
                .iter()
                .filter_map(|d| Digest::from_proto(d).ok())
                .collect();
            missing.extend(chunk.iter().filter(|d| theirs.contains(d)));
        }
        Ok(missing)
    }

    /// Fetches those of `digests` that the local store lacks. Returns the
    /// ones that could not be had: absent upstream, or served with bytes
    /// that do not match (those are counted and logged, never stored).
    pub async fn fetch(self: &Arc<Self>, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        if digests.is_empty() {
            return Ok(vec![]);
        }
        let store = Arc::clone(&self.store);
        let mut wanted: Vec<Digest> = {
            let mut seen = HashSet::new();
            digests
                .iter()
                .filter(|d| seen.insert(**d))
                .copied()
                .collect()
        };
        wanted = blocking(move || store.find_missing(&wanted)).await?;
        if wanted.is_empty() {
            return Ok(vec![]);
        }
        let mut jobs = JoinSet::new();
        let (batches, streams) = plan_transfers(&wanted, self.batch_bytes());
        for d in streams {
            let this = Arc::clone(self);
            jobs.spawn(async move {
                Ok(if this.fetch_stream(d).await? {
                    vec![]
                } else {
                    vec![d]
                })
            });
        }
        for batch in batches {
            let this = Arc::clone(self);
            jobs.spawn(async move { this.fetch_batch(batch).await });
        }
        let mut absent = Vec::new();
        let mut first_error = None;
        while let Some(joined) = jobs.join_next().await {
            match joined {
                Ok(Ok(a)) => absent.extend(a),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(Error::Task(e));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(absent),
        }
    }

    /// Bytes from the upstream for `d` that do not hash to it: counted,
    /// logged, and not stored.
    fn rejected(&self, d: &Digest, e: &cas::Error) {
        self.stats.blobs_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            upstream = %self.endpoint,
            "upstream {} served blob {d} with the wrong contents ({e}); not stored",
            self.endpoint
        );
    }

    fn fetched(&self, d: &Digest) {
        self.stats.blobs_fetched.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_fetched
            .fetch_add(d.size(), Ordering::Relaxed);
    }

    async fn fetch_batch(self: Arc<Self>, digests: Vec<Digest>) -> Result<Vec<Digest>, Error> {
        let req = reapi::BatchReadBlobsRequest {
            instance_name: self.instance.clone(),
            digests: digests.iter().map(Digest::to_proto).collect(),
            acceptable_compressors: vec![],
            digest_function: SHA256,
        };
        let resp = self
            .call("BatchReadBlobs", |ch| async move {
                ContentAddressableStorageClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .batch_read_blobs(req)
                    .await
            })
            .await?;
        let wanted: HashSet<Digest> = digests.iter().copied().collect();
        let mut answered = Vec::new();
        for r in resp.responses {
            let Some(d) = r.digest.as_ref().and_then(|d| Digest::from_proto(d).ok()) else {
                continue;
            };
            let code = r.status.as_ref().map_or(0, |s| s.code);
            if !wanted.contains(&d) || code != 0 {
                continue;
            }
            if r.compressor != reapi::compressor::Value::Identity as i32 {
                tracing::warn!(
                    "upstream {} answered {d} compressed, which was not asked for",
                    self.endpoint
                );
                continue;
            }
            answered.push((d, r.data));
        }
        // Every blob through the store's own check, in one blocking task.
        let store = Arc::clone(&self.store);
        let outcomes = blocking(move || {
            Ok(answered
                .into_iter()
                .map(|(d, data)| (d, store.put(&d, &data)))
                .collect::<Vec<_>>())
        })
        .await?;
        let mut stored = HashSet::new();
        for (d, outcome) in outcomes {
            match outcome {
                Ok(()) => {
                    self.fetched(&d);
                    stored.insert(d);
                }
                Err(e @ (cas::Error::HashMismatch { .. } | cas::Error::SizeMismatch { .. })) => {
                    self.rejected(&d, &e)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(digests
            .into_iter()
            .filter(|d| !stored.contains(d))
            .collect())
    }

    /// Streams one blob in through ByteStream.Read. Returns whether it was
    /// stored.
    async fn fetch_stream(self: Arc<Self>, d: Digest) -> Result<bool, Error> {
        const METHOD: &str = "ByteStream.Read";
        let _slot = self.slot().await?;
        let req = bytestream::ReadRequest {
            resource_name: format!("{}blobs/{}/{}", self.resource_prefix(), d.hex(), d.size()),
            read_offset: 0,
            read_limit: 0,
        };
        let mut client = ByteStreamClient::new(self.channel.clone());
        let mut stream = match tokio::time::timeout(self.timeout, client.read(req)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => return Ok(false),
            Ok(Err(s)) => return Err(self.failed(METHOD, s)),
            Err(_) => return Err(self.failed(METHOD, self.no_answer())),
        };
        let store = Arc::clone(&self.store);
        let mut writer = blocking(move || store.writer(d)).await?;
        loop {
            let msg = match tokio::time::timeout(self.timeout, stream.message()).await {
                Ok(Ok(Some(msg))) => msg,
                Ok(Ok(None)) => break,
                Ok(Err(s)) if s.code() == tonic::Code::NotFound => return Ok(false),
                Ok(Err(s)) => return Err(self.failed(METHOD, s)),
                Err(_) => return Err(self.failed(METHOD, self.no_answer())),
            };
            // A write of a few hundred KiB to a local file.
            if let Err(e) = tokio::task::block_in_place(|| writer.write(&msg.data)) {
                return match e {
                    cas::Error::SizeMismatch { .. } => {
                        self.rejected(&d, &e);
                        Ok(false)
                    }
                    e => Err(e.into()),
                };
            }
        }
        self.succeeded();
        match tokio::task::spawn_blocking(move || writer.commit()).await {
            Ok(Ok(())) => {
                self.fetched(&d);
                Ok(true)
            }
            Ok(Err(e @ (cas::Error::HashMismatch { .. } | cas::Error::SizeMismatch { .. }))) => {
                self.rejected(&d, &e);
                Ok(false)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(Error::Task(e)),
        }
    }

    /// Fetches a Directory tree: the root, then each level's missing
    /// directories. Returns the digests that could not be had (a missing
    /// directory hides its subtree, which is then not asked for).
    pub async fn fetch_tree(self: &Arc<Self>, root: Digest) -> Result<Vec<Digest>, Error> {
        let mut level = vec![root];
        let mut seen = HashSet::from([root]);
        let mut absent = Vec::new();
        while !level.is_empty() {
            absent.extend(self.fetch(&level).await?);
            let store = Arc::clone(&self.store);
            let this_level = std::mem::take(&mut level);
            let children = blocking(move || {
                let mut children = Vec::new();
                for d in this_level {
                    let Some(bytes) = store.read(&d)? else {
                        continue;
                    };
                    // A malformed Directory is for the caller's own checks
                    // to report; here it just has no children.
                    let Ok(dir) = reapi::Directory::decode(bytes.as_slice()) else {
                        continue;
                    };
                    children.extend(
                        dir.directories
                            .iter()
                            .filter_map(|c| Digest::from_required(c.digest.as_ref()).ok()),
                    );
                }
                Ok(children)
            })
            .await?;
            level = children.into_iter().filter(|d| seen.insert(*d)).collect();
        }
        Ok(absent)
    }

    /// A local action-cache miss: asks the upstream. A hit there is usable
    /// only if every blob it refers to can be fetched; then it is stored in
    /// the local shared view (the upstream is the administrator's choice)
    /// and `true` is returned, and the caller looks it up locally.
    pub async fn fetch_action_result(self: &Arc<Self>, action: &Digest) -> Result<bool, Error> {
        let req = reapi::GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            inline_stdout: false,
            inline_stderr: false,
            inline_output_files: vec![],
            digest_function: SHA256,
        };
        let result = match self
            .call("GetActionResult", |ch| async move {
                ActionCacheClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .get_action_result(req)
                    .await
            })
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                self.stats.ac_misses.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if let Err(why) = self.fetch_result_blobs(&result).await? {
            tracing::info!(
                upstream = %self.endpoint,
                %action,
                "upstream action result not used: {why}"
            );
            self.stats.ac_misses.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        let ac = Arc::clone(&self.action_cache);
        let action = *action;
        let stored = tokio::task::spawn_blocking(move || {
            ac.put(Partition::default(), &action, result, Scope::Shared)
        })
        .await
        .map_err(Error::Task)?;
        match stored {
            Ok(_) => {
                self.stats.ac_hits.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(action_cache::Error::Store(e)) => Err(e.into()),
            Err(e) => {
                tracing::info!(%action, "upstream action result not used: {e}");
                self.stats.ac_misses.fetch_add(1, Ordering::Relaxed);
                Ok(false)
            }
        }
    }

    /// Fetches every blob a result refers to: those it names, then the
    /// files of its output directories' Trees. `Ok(Err(why))` when some
    /// cannot be had, so the result must not be used.
    pub(super) async fn fetch_result_blobs(
        self: &Arc<Self>,
        result: &reapi::ActionResult,
    ) -> Result<Result<(), String>, Error> {
        let mut direct = Vec::new();
        for (field, d) in action_cache::referenced(result) {
            match Digest::from_proto(d) {
                Ok(d) => direct.push(d),
                Err(e) => return Ok(Err(format!("{field}: {e}"))),
            }
        }
        let absent = self.fetch(&direct).await?;
        if !absent.is_empty() {
            return Ok(Err(format!(
                "{} of its blobs are not to be had, e.g. {}",
                absent.len(),
                absent[0]
            )));
        }
        let store = Arc::clone(&self.store);
        let result = result.clone();
        let files = blocking(move || action_cache::output_tree_files(&store, &result)).await?;
        let files = match files {
            Ok(files) => files,
            Err(why) => return Ok(Err(why)),
        };
        let absent = self.fetch(&files).await?;
        if !absent.is_empty() {
            return Ok(Err(format!(
                "{} files of its output directories are not to be had",
                absent.len()
            )));
        }
        Ok(Ok(()))
    }
}

impl Upstream {
    /// Whether the local store holds this Action and it says
    /// `do_not_cache`: then its result is never copied from the upstream's
    /// action cache (NativeLink 1.6.6 caches such results all the same).
    /// Only a blob small enough to be an Action is read.
    async fn says_do_not_cache(&self, action: Digest) -> bool {
        use prost::Message;
        if action.size() > ACTION_MAX {
            return false;
        }
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            store
                .read(&action)
                .ok()
                .flatten()
                .and_then(|bytes| reapi::Action::decode(bytes.as_slice()).ok())
                .is_some_and(|a| a.do_not_cache)
        })
        .await
        .unwrap_or(false)
    }
}

/// The largest blob [`Upstream::says_do_not_cache`] reads: an Action is a
/// few digests, a timeout, a salt and the platform properties.
const ACTION_MAX: u64 = 1 << 20;

/// An action-cache lookup: the local cache first, then, on a miss and with
/// read-through, the upstream (whose hit is fetched and stored locally, and
/// then read back like any local hit). An upstream that fails is a miss:
/// its failure is logged and shown by `status`, and local work goes on.
/// Only the default partition is shared with the upstream, whose action
/// cache knows nothing of our root modes.
pub async fn lookup(
    ac: &Arc<crate::action_cache::ActionCache>,
    upstream: Option<&Arc<Upstream>>,
    partition: action_cache::Partition,
    action: crate::digest::Digest,
    viewer: Option<u32>,
    inline: crate::action_cache::Inline<'_>,
    kind: crate::lookups::Kind,
) -> Result<Option<reapi::ActionResult>, crate::action_cache::Error> {
    let found = lookup_tiers(ac, upstream, partition, action, viewer, inline).await?;
    ac.lookups().record(&action, viewer, found.is_some(), kind);
    Ok(found)
}

/// The local cache, then the upstream's (read-through).
async fn lookup_tiers(
    ac: &Arc<crate::action_cache::ActionCache>,
    upstream: Option<&Arc<Upstream>>,
    partition: action_cache::Partition,
    action: crate::digest::Digest,
    viewer: Option<u32>,
    inline: crate::action_cache::Inline<'_>,
) -> Result<Option<reapi::ActionResult>, crate::action_cache::Error> {
    let (stdout, stderr, files) = (inline.stdout, inline.stderr, inline.files.to_vec());
    let get = |files: Vec<String>| {
        let ac = Arc::clone(ac);
        async move {
            tokio::task::spawn_blocking(move || {
                ac.get(
                    partition,
                    &action,
                    viewer,
                    &crate::action_cache::Inline {
                        stdout,
                        stderr,
                        files: &files,
                    },
                )
            })
            .await
            .unwrap_or_else(|e| {
                Err(cas::Error::Io {
                    op: "look up",
                    path: std::path::PathBuf::from(action.to_string()),
                    source: std::io::Error::other(e.to_string()),
                }
                .into())
            })
        }
    };
    if let Some(hit) = get(files.clone()).await? {
        return Ok(Some(hit));
    }
    let Some(up) = upstream.filter(|u| u.policy.read_through && partition.is_default()) else {
        return Ok(None);
    };
    if up.says_do_not_cache(action).await {
        return Ok(None);
    }
    match up.fetch_action_result(&action).await {
        Ok(true) => get(files).await,
        Ok(false) => Ok(None),
        Err(e) => {
            tracing::debug!(%action, "upstream lookup failed: {e}");
            Ok(None)
        }
    }
}
