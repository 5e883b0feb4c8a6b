//! Write-back: results our own sandbox produced, pushed to the upstream in
//! the background. Only the executor enqueues; a client's own
//! UpdateActionResult is never forwarded.
//!
//! The queue is bounded and in memory. Enqueueing never waits: when the
//! queue is full the result is dropped (counted and logged), so a slow or
//! dead upstream never slows a local build. One worker pushes in order:
//! the blobs the upstream lacks first (FindMissingBlobs, then batches or
//! ByteStream), then UpdateActionResult, because servers such as BuildGrid
//! drop action-cache entries whose blobs are missing. While the upstream is
//! down the worker waits for it and retries the same result.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Error, MAX_MESSAGE, SHA256, Upstream, plan_transfers};
use crate::action_cache;
use crate::digest::Digest;
use crate::listener::{Activity, BusyGuard};
use crate::proto::bytestream::{self, byte_stream_client::ByteStreamClient};
use crate::proto::reapi::{
    self, action_cache_client::ActionCacheClient,
    content_addressable_storage_client::ContentAddressableStorageClient,
};

/// Bytes per ByteStream.Write message.
const CHUNK: usize = 1 << 20;
/// Attempts for a result whose push fails for a reason other than the
/// upstream being down (which is waited out, not counted).
const ATTEMPTS: u32 = 3;

/// One result to push. Its guard counts it as pending (see
/// `Activity::push_pending`) until the push is done or given up.
struct Item {
    action: Digest,
    /// The Action's own blobs (Action, Command), pushed too, so the
    /// upstream can show or re-run the action.
    extra: Vec<Digest>,
    result: reapi::ActionResult,
    _pending: BusyGuard,
}

pub struct Queue {
    tx: mpsc::Sender<Item>,
    /// Counts the results waiting or being pushed (each item's guard).
    activity: Arc<Activity>,
}

impl Queue {
    pub(super) fn start(up: &Arc<Upstream>, capacity: usize, activity: Arc<Activity>) -> Queue {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let worker = Arc::clone(up);
        tokio::spawn(async move { worker.push_loop(rx).await });
        Queue { tx, activity }
    }

    /// Results waiting or being pushed.
    pub fn pending(&self) -> usize {
        self.activity.pending_pushes()
    }
}

impl Upstream {
    /// Results waiting to be pushed, or being pushed.
    pub fn pending_pushes(&self) -> usize {
        self.push.get().map_or(0, Queue::pending)
    }

    /// At a stop: waits, at most `limit` and only while the upstream is
    /// not known to be down, until the pending results are pushed. Returns
    /// how many were left (and are dropped).
    pub async fn drain(&self, limit: Duration) -> usize {
        let at_start = self.pending_pushes();
        if at_start == 0 {
            return 0;
        }
        tracing::info!(
            "pushing {at_start} pending result(s) to {} before stopping (at most {}s)",
            self.endpoint,
            limit.as_secs()
        );
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending_pushes() > 0 && !self.is_down() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.pending_pushes();
        if left > 0 {
            tracing::warn!(
                "{left} result(s) not pushed to {}: dropped at stop",
                self.endpoint
            );
        } else {
            tracing::info!("pushed the pending results to {}", self.endpoint);
        }
        left
    }

    /// Queues a result our sandbox produced for the upstream. Never waits.
    pub fn push(&self, action: Digest, extra: Vec<Digest>, result: &reapi::ActionResult) {
        let Some(queue) = self.push.get() else {
            return;
        };
        let item = Item {
            action,
            extra,
            result: result.clone(),
            _pending: queue.activity.push_pending(),
        };
        // A result that does not fit is dropped here, with its guard.
        if queue.tx.try_send(item).is_err() {
            let dropped = self.stats.pushes_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Once, then every 100th, so a long outage does not flood the log.
            if dropped == 1 || dropped % 100 == 0 {
                tracing::warn!(
                    upstream = %self.endpoint,
                    "write-back queue full ({} results); {dropped} result(s) not pushed to {} so far",
                    queue.tx.max_capacity(),
                    self.endpoint
                );
            }
        }
    }

    async fn push_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Item>) {
        while let Some(item) = rx.recv().await {
            let mut failures = 0;
            loop {
                match self.push_one(&item).await {
                    Ok(pushed) => {
                        self.stats.pushes_done.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(action = %item.action, blobs = pushed, "pushed to the upstream");
                        break;
                    }
                    // An outage is waited out (the health probe notices
                    // when it is over) and the same result pushed again;
                    // meanwhile the queue fills and new results are dropped.
                    Err(e) if e.is_unavailable() => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        while self.is_down() {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures >= ATTEMPTS {
                            self.stats.pushes_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                action = %item.action,
                                "not pushed to the upstream after {ATTEMPTS} attempts: {e}"
                            );
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    /// Pushes one result: its blobs, then the ActionResult. Returns the
    /// number of blobs uploaded.
    async fn push_one(self: &Arc<Self>, item: &Item) -> Result<usize, Error> {
        let mut blobs = item.extra.clone();
        blobs.extend(self.result_blobs(&item.result).await?);
        let uploaded = self.upload_missing(&blobs).await?;
        let req = reapi::UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(item.action.to_proto()),
            action_result: Some(item.result.clone()),
            results_cache_policy: None,
            digest_function: SHA256,
        };
        self.call("UpdateActionResult", |ch| async move {
            ActionCacheClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE)
                .update_action_result(req)
                .await
        })
        .await?;
        Ok(uploaded)
    }

    /// Every blob a local result needs: those it names and the files of its
    /// output directories' Trees.
    pub(super) async fn result_blobs(
        &self,
        result: &reapi::ActionResult,
    ) -> Result<Vec<Digest>, Error> {
        let mut blobs: Vec<Digest> = action_cache::referenced(result)
            .into_iter()
            .filter_map(|(_, d)| Digest::from_proto(d).ok())
            .collect();
        let store = Arc::clone(&self.store);
        let result = result.clone();
        let files =
            tokio::task::spawn_blocking(move || action_cache::output_tree_files(&store, &result))
                .await
                .map_err(Error::Task)??
                .map_err(|why| Error::Protocol {
                    endpoint: self.endpoint.clone(),
                    reason: format!("a local result's output directory: {why}"),
                })?;
        blobs.extend(files);
        Ok(blobs)
    }

    /// Uploads those of `blobs` that the upstream lacks, from the local
    /// store. Returns how many were uploaded.
    pub(super) async fn upload_missing(self: &Arc<Self>, blobs: &[Digest]) -> Result<usize, Error> {
        let mut unique = blobs.to_vec();
        unique.sort_by_key(|d| *d.hash());
        unique.dedup();
        let missing = self.find_missing(&unique).await?;
        let (batches, streams) = plan_transfers(&missing, self.batch_bytes());
        for d in streams {
            self.upload_stream(d).await?;
        }
        for batch in batches {
            self.upload_batch(batch).await?;
        }
        self.stats
            .blobs_pushed
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        Ok(missing.len())
    }

    async fn upload_batch(&self, digests: Vec<Digest>) -> Result<(), Error> {
        let store = Arc::clone(&self.store);
        let requests = tokio::task::spawn_blocking(move || -> Result<Vec<_>, Error> {
            digests
                .into_iter()
                .map(|d| {
                    let data = store.read(&d)?.ok_or(crate::cas::Error::NotFound(d))?;
                    Ok(reapi::batch_update_blobs_request::Request {
                        digest: Some(d.to_proto()),
                        data: data.into(),
                        compressor: reapi::compressor::Value::Identity as i32,
                    })
                })
                .collect()
        })
        .await
        .map_err(Error::Task)??;
        let req = reapi::BatchUpdateBlobsRequest {
            instance_name: self.instance.clone(),
            requests,
            digest_function: SHA256,
        };
        let resp = self
            .call("BatchUpdateBlobs", |ch| async move {
                ContentAddressableStorageClient::new(ch)
                    .max_encoding_message_size(MAX_MESSAGE)
                    .batch_update_blobs(req)
                    .await
            })
            .await?;
        for r in resp.responses {
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                let d = r
                    .digest
                    .as_ref()
                    .and_then(|d| Digest::from_proto(d).ok())
                    .map_or_else(|| "?".into(), |d| d.to_string());
                return Err(Error::Protocol {
                    endpoint: self.endpoint.clone(),
                    reason: format!(
                        "BatchUpdateBlobs refused {d}: {:?}: {}",
                        tonic::Code::from(s.code),
                        s.message
                    ),
                });
            }
        }
        Ok(())
    }

    /// Uploads one blob through ByteStream.Write, read from the store in
    /// chunks (bounded memory whatever the blob's size).
    async fn upload_stream(&self, d: Digest) -> Result<(), Error> {
        const METHOD: &str = "ByteStream.Write";
        let store = Arc::clone(&self.store);
        let blob = tokio::task::spawn_blocking(move || store.open_blob(&d))
            .await
            .map_err(Error::Task)??
            .ok_or(crate::cas::Error::NotFound(d))?;
        let resource = format!(
            "{}uploads/{}/blobs/{}/{}",
            self.resource_prefix(),
            uuid::Uuid::new_v4(),
            d.hex(),
            d.size()
        );
        let _slot = self.slot().await?;
        let (tx, rx) = mpsc::channel(2);
        let size = d.size();
        // Reads the blob in chunks and feeds them to the call.
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut offset = 0u64;
            loop {
                let n = ((size - offset) as usize).min(CHUNK);
                let mut buf = vec![0u8; n];
                let mut got = 0;
                while got < n {
                    let r = blob.read_at(&mut buf[got..], offset + got as u64)?;
                    if r == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    got += r;
                }
                let msg = bytestream::WriteRequest {
                    resource_name: if offset == 0 {
                        resource.clone()
                    } else {
                        String::new()
                    },
                    write_offset: offset as i64,
                    finish_write: offset + n as u64 == size,
                    data: buf.into(),
                };
                offset += n as u64;
                if tx.blocking_send(msg).is_err() || offset == size {
                    return Ok(());
                }
            }
        });
        let mut client =
            ByteStreamClient::new(self.channel.clone()).max_encoding_message_size(MAX_MESSAGE);
        // The whole transfer at the slowest rate we accept: 1 MiB per
        // timeout period, and at least one timeout.
        let limit = self.timeout * (1 + (size / CHUNK as u64) as u32);
        let result = tokio::time::timeout(
            limit,
            client.write(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let _ = reader.await;
        match result {
            Ok(Ok(r)) => {
                self.succeeded();
                let committed = r.into_inner().committed_size;
                if committed != size as i64 {
                    return Err(Error::Protocol {
                        endpoint: self.endpoint.clone(),
                        reason: format!("{METHOD} of {d} committed {committed} bytes"),
                    });
                }
                Ok(())
            }
            Ok(Err(s)) => Err(self.failed(METHOD, s)),
            Err(_) => Err(self.failed(METHOD, self.no_answer())),
        }
    }
}
