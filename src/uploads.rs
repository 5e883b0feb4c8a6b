//! Unfinished ByteStream uploads: the ones being written and the ones an
//! interrupted client may resume, by resource name.
//!
//! Each uid may hold `max-uploads-per-user` of them and
//! `max-upload-bytes-per-user` bytes received, everyone together
//! `max-uploads` and `max-upload-bytes`. When a new upload or more data
//! would pass a cap, uploads waiting to be resumed make room first, oldest
//! first: the caller's own for its own caps, anyone's for the total ones.
//! Only when uploads in progress alone fill a cap is the call refused
//! (RESOURCE_EXHAUSTED). Waiting uploads hold no descriptor (their writers
//! are suspended) and expire after `upload-keep`; their temporary files
//! count in the store's size while they exist (see `cas::writer`).
//!
//! QueryWriteStatus reads the bytes received here: live for an upload in
//! progress, as kept for one that waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cas::{self, BlobWriter, SuspendedWriter};
use crate::per_user::{Uid, who};

/// The caps (see the module documentation).
#[derive(Debug, Clone)]
pub struct UploadLimits {
    pub per_user: usize,
    pub bytes_per_user: u64,
    pub total: usize,
    pub bytes_total: u64,
    pub keep: Duration,
}

impl UploadLimits {
    pub fn from_config(l: &crate::config::Limits) -> Self {
        UploadLimits {
            per_user: l.max_uploads_per_user,
            bytes_per_user: l.max_upload_bytes_per_user.0,
            total: l.max_uploads,
            bytes_total: l.max_upload_bytes.0,
            keep: l.upload_keep.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A cap is reached by uploads in progress alone.
    #[error("{0}")]
    Exhausted(String),
    #[error(transparent)]
    Store(#[from] cas::Error),
}

/// Counts against the caps: uploads and bytes received.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    uploads: usize,
    bytes: u64,
}

struct Waiting {
    writer: SuspendedWriter,
    since: Instant,
}

struct Entry {
    owner: Uid,
    /// Bytes received; the upload in progress keeps it current.
    received: Arc<AtomicU64>,
    /// Bytes charged against the caps for it.
    charged: u64,
    /// `Some` while the upload waits to be resumed.
    waiting: Option<Waiting>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    by_uid: HashMap<Uid, Held>,
    total: Held,
}

/// What `status` shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UploadStats {
    pub in_progress: u64,
    pub waiting: u64,
    pub bytes: u64,
}

pub struct Uploads {
    limits: UploadLimits,
    state: Mutex<State>,
}

/// An upload in progress. Dropped without [`finish`](Self::finish) or
/// [`interrupt`](Self::interrupt) (bad data), it is forgotten and its
/// temporary file removed.
pub struct Upload {
    uploads: Arc<Uploads>,
    name: String,
    owner: Uid,
    writer: Option<BlobWriter>,
    received: Arc<AtomicU64>,
}

impl Uploads {
    pub fn new(limits: UploadLimits) -> Arc<Self> {
        Arc::new(Uploads {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the upload `name` for `owner`, or resumes it if it waits
    /// and is theirs. `create` makes the writer of a new upload.
    pub fn begin(
        self: &Arc<Self>,
        name: &str,
        owner: Uid,
        create: impl FnOnce() -> cas::Result<BlobWriter>,
    ) -> Result<Upload, UploadError> {
        let resumed = {
            let mut st = self.lock();
            match st.entries.get_mut(name) {
                Some(e) if e.owner == owner && e.waiting.is_some() => {
                    let w = e.waiting.take().expect("checked");
                    Some((w.writer, Arc::clone(&e.received)))
                }
                // Someone else's, or being written right now: this call
                // writes a copy of its own, which is not resumable.
                Some(_) => None,
                None => {
                    self.make_room(&mut st, owner, 1, 0)?;
                    self.charge(&mut st, owner, 1, 0);
                    let received = Arc::new(AtomicU64::new(0));
                    st.entries.insert(
                        name.to_owned(),
                        Entry {
                            owner,
                            received: Arc::clone(&received),
                            charged: 0,
                            waiting: None,
                        },
                    );
                    drop(st);
                    return match create() {
                        Ok(writer) => Ok(self.upload(name, owner, writer, received)),
                        Err(e) => {
                            self.forget(name);
                            Err(e.into())
                        }
                    };
                }
            }
        };
        match resumed {
            Some((writer, received)) => match writer.resume() {
                Ok(w) => Ok(self.upload(name, owner, w, received)),
                Err(e) => {
                    self.forget(name);
                    Err(e.into())
                }
            },
            None => {
                // A second writer under a name that is taken: charged like
                // any upload, under a key no QueryWriteStatus asks for.
                let key = format!("{name}\0{}", uuid::Uuid::new_v4());
                self.begin(&key, owner, create)
            }
        }
    }

    fn upload(
        self: &Arc<Self>,
        name: &str,
        owner: Uid,
        writer: BlobWriter,
        received: Arc<AtomicU64>,
    ) -> Upload {
        Upload {
            uploads: Arc::clone(self),
            name: name.to_owned(),
            owner,
            writer: Some(writer),
            received,
        }
    }

    /// Bytes received so far for `name`, if it is an unfinished upload.
    pub fn received(&self, name: &str) -> Option<u64> {
        self.lock()
            .entries
            .get(name)
            .map(|e| e.received.load(Ordering::Relaxed))
    }

    pub fn stats(&self) -> UploadStats {
        let st = self.lock();
        let waiting = st.entries.values().filter(|e| e.waiting.is_some()).count() as u64;
        UploadStats {
            in_progress: st.entries.len() as u64 - waiting,
            waiting,
            bytes: st.total.bytes,
        }
    }

    /// Forgets uploads that have waited longer than `upload-keep`.
    pub fn expire(&self) {
        let keep = self.limits.keep;
        let expired: Vec<String> = self
            .lock()
            .entries
            .iter()
            .filter(|(_, e)| {
                e.waiting
                    .as_ref()
                    .is_some_and(|w| w.since.elapsed() >= keep)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            self.forget(name.as_str());
        }
    }

    fn held(st: &State, owner: Uid) -> Held {
        st.by_uid.get(&owner).copied().unwrap_or_default()
    }

    /// Makes `uploads` more uploads and `bytes` more bytes fit under the
    /// caps for `owner`, dropping waiting uploads as needed.
    fn make_room(
        &self,
        st: &mut State,
        owner: Uid,
        uploads: usize,
        bytes: u64,
    ) -> Result<(), UploadError> {
        let l = &self.limits;
        let mine_over = |st: &State| {
            let h = Self::held(st, owner);
            h.uploads + uploads > l.per_user || h.bytes + bytes > l.bytes_per_user
        };
        let all_over = |st: &State| {
            st.total.uploads + uploads > l.total || st.total.bytes + bytes > l.bytes_total
        };
        while mine_over(st) {
            if !Self::drop_oldest_waiting(st, Some(owner)) {
                let h = Self::held(st, owner);
                return Err(UploadError::Exhausted(format!(
                    "{} has {} unfinished uploads holding {} bytes; max-uploads-per-user is {} and \
                     max-upload-bytes-per-user {}",
                    who(owner),
                    h.uploads,
                    h.bytes,
                    l.per_user,
                    l.bytes_per_user
                )));
            }
        }
        while all_over(st) {
            if !Self::drop_oldest_waiting(st, None) {
                return Err(UploadError::Exhausted(format!(
                    "the daemon has {} unfinished uploads holding {} bytes; max-uploads is {} and \
                     max-upload-bytes {}",
                    st.total.uploads, st.total.bytes, l.total, l.bytes_total
                )));
            }
        }
        Ok(())
    }

    /// Drops the oldest waiting upload (of `owner`, if given). False if
    /// there is none.
    fn drop_oldest_waiting(st: &mut State, owner: Option<Uid>) -> bool {
        let oldest = st
            .entries
            .iter()
            .filter(|(_, e)| owner.is_none_or(|o| e.owner == o))
            .filter_map(|(n, e)| Some((e.waiting.as_ref()?.since, n.clone())))
            .min();
        let Some((_, name)) = oldest else {
            return false;
        };
        if let Some(e) = st.entries.remove(&name) {
            tracing::debug!(upload = %crate::quote::Quoted::new(&name), "dropped a waiting upload to make room");
            Self::uncharge(st, e.owner, 1, e.charged);
        }
        true
    }

    fn charge(&self, st: &mut State, owner: Uid, uploads: usize, bytes: u64) {
        let h = st.by_uid.entry(owner).or_default();
        h.uploads += uploads;
        h.bytes += bytes;
        st.total.uploads += uploads;
        st.total.bytes += bytes;
    }

    fn uncharge(st: &mut State, owner: Uid, uploads: usize, bytes: u64) {
        if let Some(h) = st.by_uid.get_mut(&owner) {
            h.uploads = h.uploads.saturating_sub(uploads);
            h.bytes = h.bytes.saturating_sub(bytes);
            if h.uploads == 0 {
                st.by_uid.remove(&owner);
            }
        }
        st.total.uploads = st.total.uploads.saturating_sub(uploads);
        st.total.bytes = st.total.bytes.saturating_sub(bytes);
    }

    /// Removes an entry and what it was charged; a waiting writer goes
    /// with it (its file is removed).
    fn forget(&self, name: &str) {
        let mut st = self.lock();
        if let Some(e) = st.entries.remove(name) {
            Self::uncharge(&mut st, e.owner, 1, e.charged);
        }
    }

    /// Charges `bytes` more for the upload `name`, making room if needed.
    fn grow(&self, name: &str, owner: Uid, bytes: u64) -> Result<(), UploadError> {
        let mut st = self.lock();
        self.make_room(&mut st, owner, 0, bytes)?;
        self.charge(&mut st, owner, 0, bytes);
        if let Some(e) = st.entries.get_mut(name) {
            e.charged += bytes;
        }
        Ok(())
    }

    /// Sets what an upload is charged to what its file now holds.
    fn recharge(&self, name: &str, owner: Uid, now: u64) {
        let mut st = self.lock();
        let Some(charged) = st.entries.get(name).map(|e| e.charged) else {
            return;
        };
        if now < charged {
            Self::uncharge(&mut st, owner, 0, charged - now);
        } else {
            self.charge(&mut st, owner, 0, now - charged);
        }
        if let Some(e) = st.entries.get_mut(name) {
            e.charged = now;
        }
    }
}

impl Upload {
    fn writer(&mut self) -> &mut BlobWriter {
        self.writer.as_mut().expect("present until consumed")
    }

    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.writer.as_ref().map_or(0, BlobWriter::written)
    }

    /// Appends data, within the caps.
    pub fn write(&mut self, data: &[u8]) -> Result<(), UploadError> {
        self.uploads
            .grow(&self.name, self.owner, data.len() as u64)?;
        let result = self.writer().write(data);
        let now = self.written();
        self.received.store(now, Ordering::Relaxed);
        if result.is_err() {
            self.uploads.recharge(&self.name, self.owner, now);
        }
        result.map_err(Into::into)
    }

    /// Starts again from offset 0.
    pub fn restart(&mut self) -> Result<(), UploadError> {
        self.writer().restart()?;
        self.received.store(0, Ordering::Relaxed);
        self.uploads.recharge(&self.name, self.owner, 0);
        Ok(())
    }

    /// Publishes the blob (if it matches its digest) and forgets the
    /// upload either way.
    pub fn finish(mut self) -> Result<(), UploadError> {
        let writer = self.writer.take().expect("present until consumed");
        writer.commit().map_err(Into::into)
    }

    /// Keeps the upload, descriptor closed, for the client to resume. (A
    /// copy written beside another call's upload of the same name is not
    /// kept: nothing could ask for it.)
    pub fn interrupt(mut self) {
        let writer = self.writer.take().expect("present until consumed");
        if self.name.contains('\0') {
            return;
        }
        let mut st = self.uploads.lock();
        if let Some(e) = st.entries.get_mut(&self.name) {
            e.waiting = Some(Waiting {
                writer: writer.suspend(),
                since: Instant::now(),
            });
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Finished, failed or dropped: not kept (an interrupted upload's
        // entry holds its writer and stays).
        let interrupted = self.writer.is_none()
            && self
                .uploads
                .lock()
                .entries
                .get(&self.name)
                .is_some_and(|e| e.waiting.is_some());
        if !interrupted {
            self.uploads.forget(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::tests::test_store;
    use crate::digest::Digest;

    fn limits(per_user: usize, bytes_per_user: u64) -> UploadLimits {
        UploadLimits {
            per_user,
            bytes_per_user,
            total: 100,
            bytes_total: 1 << 30,
            keep: Duration::from_secs(60),
        }
    }

    #[test]
    fn interrupted_uploads_resume_and_make_room_for_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let uploads = Uploads::new(limits(2, 1 << 20));
        let data = vec![1u8; 1000];
        let d = Digest::of_bytes(&data);
        let new = || store.writer(d);
        let mut a = uploads.begin("a", Some(1), new).unwrap();
        a.write(&data[..400]).unwrap();
        assert_eq!(uploads.received("a"), Some(400));
        a.interrupt();
        assert_eq!(
            uploads.stats(),
            UploadStats {
                in_progress: 0,
                waiting: 1,
                bytes: 400
            }
        );
        // Another uid may not resume it: its call writes a copy.
        let other = uploads.begin("a", Some(2), new).unwrap();
        assert_eq!(other.written(), 0);
        drop(other);
        let mut a = uploads.begin("a", Some(1), new).unwrap();
        assert_eq!(a.written(), 400);
        a.write(&data[400..]).unwrap();
        a.finish().unwrap();
        assert_eq!(uploads.received("a"), None);
        assert!(store.contains(&d).unwrap());

        // Two uploads in progress fill uid 1's count; a waiting one makes
        // room, two in progress do not.
        let b = uploads.begin("b", Some(1), new).unwrap();
        b.interrupt();
        let _c = uploads.begin("c", Some(1), new).unwrap();
        let _e = uploads.begin("e", Some(1), new).unwrap();
        assert_eq!(uploads.received("b"), None, "the waiting upload made room");
        let err = uploads.begin("f", Some(1), new).err().unwrap().to_string();
        assert!(
            err.contains("uid 1") && err.contains("max-uploads-per-user"),
            "{err}"
        );
        assert!(
            uploads.begin("g", Some(3), new).is_ok(),
            "other uids are not held up"
        );
    }

    #[test]
    fn bytes_over_the_cap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        let uploads = Uploads::new(limits(10, 1000));
        let d = Digest::of_bytes(&[0u8; 5000]);
        let mut a = uploads.begin("a", None, || store.writer(d)).unwrap();
        a.write(&[0u8; 800]).unwrap();
        let err = a.write(&[0u8; 800]).err().unwrap();
        assert!(matches!(err, UploadError::Exhausted(_)), "{err}");
        assert_eq!(a.written(), 800);
        drop(a);
        assert_eq!(uploads.stats(), UploadStats::default());
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }
}
