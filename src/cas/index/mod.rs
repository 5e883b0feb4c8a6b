//! An in-memory index of the blobs under `cas/`, so that FindMissingBlobs
//! (and every other presence check) answers from memory instead of one
//! `stat` per digest.
//!
//! It is built in the background after start-up (start-up stays O(1);
//! until it is ready, and whenever it has been thrown away, presence falls
//! back to `stat`), and kept in step with the directory by inotify, not by
//! the store's own bookkeeping: every way a blob file can go (eviction,
//! `verify`, an operator's `rm` or `mv`, a crash-replaced file, a process
//! we do not know about) is a directory event the kernel reports.
//!
//! # Why "present" is never wrong
//!
//! The index may say "missing" for a blob that is there (a file put in
//! place behind the daemon's back, or one whose entry an old event
//! removed): that is harmless, the client uploads it again and the upload
//! puts it back in the index. It must never say "present" for a blob that
//! is gone. Two rules give that:
//!
//! 1. **Entries are added only under the lock, and only for a file that
//!    exists at that moment**: either its `stat` was taken while the lock
//!    was held (the background walk, an upload that found the file already
//!    there), or it was renamed into place while the lock was held (a new
//!    blob). So when an entry is added, its file exists, and any removal of
//!    the file happens after that point.
//! 2. **Every answer drains the inotify queue first, under the same lock.**
//!    Linux queues the event of an `unlink`, a `rename` away or over, or a
//!    write/truncate (`IN_DELETE`, `IN_MOVED_FROM`, `IN_MOVED_TO`,
//!    `IN_MODIFY`) inside the system call, before it returns. A removal
//!    that happened after an entry was added (rule 1) therefore has its
//!    event in the queue, and no drain could have consumed it before the
//!    entry existed (the lock was held from the file's check to the
//!    insertion). The drain that precedes an answer removes the entry.
//!
//! So an answer "present" means: the file was there when its entry was
//! added, and no removal of it had completed by the time the answer was
//! computed — exactly what a `stat` at that moment would have said. A
//! removal racing with the request is a race with a `stat` too.
//!
//! Whatever would break that chain throws the whole index away (back to
//! `stat`, then a fresh build): a lost event (`IN_Q_OVERFLOW`), a shard
//! directory removed, moved or unmounted (`IN_DELETE_SELF`, `IN_MOVE_SELF`,
//! `IN_IGNORED`, `IN_UNMOUNT`), `cas/` itself moved or deleted, or the path
//! of `cas/` naming another directory than the watched one (checked with one
//! `stat` per answer: the state directory replaced by a rename of a parent).
//! Not covered, because inotify cannot see it: a file system mounted over a
//! shard directory by root; that replaces the store under the daemon's
//! feet in every other respect as well.
//!
//! Sizes: an entry records the file's length, and a digest is present only
//! if its size is that length (as with `stat`). Last use and the charged
//! group are recorded too, so that an answer refreshes a stale last use and
//! shares a blob charged to another user exactly as a `stat` would (see
//! `last_use`, `shares`); the refresh is done after the lock is released.
//!
//! Memory: about 60–120 bytes per blob (a 32-byte hash, a 24-byte entry
//! and the hash table's spare room): 125 MiB for 1,000,000 blobs, against
//! an idle daemon of about 7 MiB. An exact set of SHA-256 hashes cannot be
//! much smaller (some 30 bytes each), so the index is kept only for stores
//! of up to [`MAX_BLOBS`] blobs; a larger store answers by `stat` as before
//! (and the index is tried again every [`RETRY_TOO_BIG`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::digest::Digest;

/// How long the background thread waits for events before looking again
/// whether the index needs building.
const POLL: Duration = Duration::from_millis(200);
/// The most blobs the index holds (about 8 MiB of memory); see the module
/// comment.
pub const MAX_BLOBS: usize = 100_000;
/// After the store was found too large to index, how long until the next
/// try.
const RETRY_TOO_BIG: Duration = Duration::from_secs(600);
/// How long after start-up the first build begins.
const START_DELAY: Duration = Duration::from_millis(200);
/// Why a build stopped when the index was thrown away meanwhile.
const THROWN_AWAY: &str = "thrown away while it was built";
/// How long the background thread waits after draining the queue, at
/// least. The queue holds 16,384 events by default: far more than a
/// busy store changes in this time.
const DRAIN_PAUSE: Duration = Duration::from_millis(20);
/// After a build failed (no inotify instance or watch left), how long
/// until the next try.
const RETRY: Duration = Duration::from_secs(60);

/// What the index knows of one blob file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub(super) size: u64,
    /// Last use (the file's ctime), whole seconds since the epoch.
    pub(super) last_use: u64,
    /// The file's group: who it is charged to (see `shares`).
    pub(super) gid: u32,
}

impl Entry {
    pub(super) fn of(meta: &std::fs::Metadata) -> Entry {
        Entry {
            size: meta.len(),
            last_use: u64::try_from(meta.ctime()).unwrap_or(0),
            gid: meta.gid(),
        }
    }
}

pub(super) struct Index {
    cas_dir: PathBuf,
    /// Whether answers may come from `entries` (a cheap first look; the
    /// truth is `State::ready`, read under the lock).
    ready: AtomicBool,
    state: Mutex<State>,
    /// [`MAX_BLOBS`], smaller in tests.
    max_blobs: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct State {
    ready: bool,
    /// The inotify instance and its watches, while building or ready.
    watch: Option<Arc<Watch>>,
    entries: HashMap<[u8; 32], Entry>,
    /// Bumped whenever the index is thrown away, so that a build in
    /// progress notices.
    generation: u64,
    /// The store outgrew [`MAX_BLOBS`]: thrown away, not to be rebuilt at
    /// once.
    too_big: bool,
}

struct Watch {
    inotify: Inotify,
    /// Watch descriptor of each shard directory, by its first hash byte.
    shards: HashMap<WatchDescriptor, u8>,
    /// `cas/` as it was when watched: (device, inode).
    cas_id: (u64, u64),
}

/// A file a batch publishes: its hash, length and group.
pub(super) struct NewFile {
    pub(super) hash: [u8; 32],
    pub(super) size: u64,
    pub(super) gid: u32,
}

/// An answer of the index for one digest.
pub(super) enum Lookup {
    Present(Entry),
    Missing,
}

impl Index {
    pub(super) fn new(cas_dir: PathBuf) -> Index {
        Index {
            cas_dir,
            ready: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            max_blobs: std::sync::atomic::AtomicUsize::new(MAX_BLOBS),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the thread that builds the index and keeps draining its
    /// events (so that the queue does not overflow while no one asks).
    pub(super) fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("store-index".into())
            .spawn(move || background(weak))
            .map(drop)
    }

    /// Answers for `digests` from memory, or `None` while the index is not
    /// ready (the caller then asks the file system). `each` gets every
    /// answer, in order, after the lock is released.
    pub(super) fn lookup(&self, digests: &[Digest], mut each: impl FnMut(&Digest, Lookup)) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return false;
        }
        let answers: Vec<Option<Entry>> = {
            let mut state = self.lock();
            if !self.refresh(&mut state) {
                return false;
            }
            digests
                .iter()
                .map(|d| {
                    state
                        .entries
                        .get_mut(d.hash())
                        .filter(|e| e.size == d.size())
                        .map(|e| {
                            let before = *e;
                            // The caller refreshes a stale last use; record it
                            // now so that the next answer does not again.
                            if super::last_use::is_stale_secs(e.last_use) {
                                e.last_use = now_secs();
                            }
                            before
                        })
                })
                .collect()
        };
        for (d, a) in digests.iter().zip(answers) {
            each(d, a.map_or(Lookup::Missing, Lookup::Present));
        }
        true
    }

    /// Records that the blob file of `hash` was given group `gid`.
    pub(super) fn set_gid(&self, hash: &[u8; 32], gid: u32) {
        if let Some(e) = self.lock().entries.get_mut(hash) {
            e.gid = gid;
        }
    }

    /// Runs `publish` (which renames a checked file to `dest`, or finds
    /// one already there) under the lock, then records `dest` if it now
    /// holds a file of `size` bytes: rule 1 of the module comment. The
    /// queue is drained before the rename (events about an earlier file of
    /// this name must not remove the new entry) and again after it (the
    /// rename's own `IN_MOVED_TO`), and only then is `dest` looked at: a
    /// removal before that look makes it fail, one after it queues an
    /// event that a later drain applies.
    pub(super) fn publishing<T, E>(
        &self,
        hash: &[u8; 32],
        dest: &Path,
        size: u64,
        publish: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let mut state = self.lock();
        if state.watch.is_none() || !self.drain(&mut state) {
            drop(state);
            return publish();
        }
        let result = publish();
        if result.is_ok()
            && self.drain(&mut state)
            && let Ok(meta) = std::fs::symlink_metadata(dest)
            && meta.is_file()
            && meta.len() == size
        {
            state.entries.insert(*hash, Entry::of(&meta));
            self.check_size(&mut state);
        }
        result
    }

    /// Throws the index away if it outgrew [`MAX_BLOBS`].
    fn check_size(&self, state: &mut State) {
        if state.entries.len() > self.max_blobs() {
            tracing::info!(
                max = MAX_BLOBS,
                "the store holds more blobs than its index keeps; presence checks use stat"
            );
            self.invalidate(state);
            state.too_big = true;
        }
    }

    /// [`publishing`](Self::publishing) for many files at once, under one
    /// lock and two drains, without looking at the files afterwards:
    /// `publish(i)` publishes the `i`th of `files` and says whether it
    /// renamed that file into place (`Ok(true)`) or found one already there
    /// (`Ok(false)`, then `look(i)` stats the destination as `publishing`
    /// does). One result per file, in order.
    ///
    /// A file renamed into place is recorded without a `stat` when the
    /// second drain holds exactly one event for its name: its rename's own
    /// `IN_MOVED_TO`, which the kernel queued inside the rename (the first
    /// drain ran before it, under the same lock). Any removal, rename over
    /// or write after that rename would be a second event for the name in
    /// the same drain (inotify merges only identical events, and a rename's
    /// cookie is its own), so one event means the file is still the one we
    /// renamed, of the size we checked. Otherwise `look(i)` decides.
    pub(super) fn publishing_many<E>(
        &self,
        files: &[NewFile],
        mut publish: impl FnMut(usize) -> Result<bool, E>,
        look: impl Fn(usize) -> Option<std::fs::Metadata>,
    ) -> Vec<Result<bool, E>> {
        let mut state = self.lock();
        let indexing = state.watch.is_some() && self.drain(&mut state);
        let results: Vec<Result<bool, E>> = (0..files.len()).map(&mut publish).collect();
        if !indexing {
            return results;
        }
        let mut seen: HashMap<[u8; 32], u32> = HashMap::with_capacity(files.len());
        if !self.drain_counting(&mut state, Some(&mut seen)) {
            return results;
        }
        let now = now_secs();
        for (i, (file, result)) in files.iter().zip(&results).enumerate() {
            let entry = match result {
                Ok(true) if seen.get(&file.hash) == Some(&1) => Some(Entry {
                    size: file.size,
                    last_use: now,
                    gid: file.gid,
                }),
                Ok(_) => look(i)
                    .filter(|meta| meta.is_file() && meta.len() == file.size)
                    .map(|meta| Entry::of(&meta)),
                Err(_) => None,
            };
            if let Some(entry) = entry {
                state.entries.insert(file.hash, entry);
            }
        }
        self.check_size(&mut state);
        results
    }

    /// Applies the queued events and checks that `cas/` is still the watched
    /// directory. False if the index had to be thrown away.
    fn refresh(&self, state: &mut State) -> bool {
        if !state.ready || !self.drain(state) {
            return false;
        }
        let id = std::fs::metadata(&self.cas_dir).map(|m| (m.dev(), m.ino()));
        let watched = state.watch.as_ref().map(|w| w.cas_id);
        if id.ok() != watched {
            tracing::warn!(dir = %self.cas_dir.display(), "the store directory was replaced; rebuilding its index");
            self.invalidate(state);
            return false;
        }
        true
    }

    /// Reads every queued event and applies it. False if the index was
    /// thrown away.
    fn drain(&self, state: &mut State) -> bool {
        self.drain_counting(state, None)
    }

    /// [`drain`](Self::drain), counting in `seen` the events of each blob
    /// name.
    fn drain_counting(
        &self,
        state: &mut State,
        mut seen: Option<&mut HashMap<[u8; 32], u32>>,
    ) -> bool {
        let Some(watch) = state.watch.clone() else {
            return false;
        };
        loop {
            match watch.inotify.read_events() {
                Ok(events) => {
                    for ev in events {
                        if !apply(state, &watch, &ev, seen.as_deref_mut()) {
                            tracing::info!(event = ?ev.mask, "store index thrown away; rebuilding it");
                            self.invalidate(state);
                            return false;
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!("reading the store's inotify events: {e}; rebuilding its index");
                    self.invalidate(state);
                    return false;
                }
            }
        }
    }

    fn invalidate(&self, state: &mut State) {
        self.ready.store(false, Ordering::Release);
        state.ready = false;
        state.watch = None;
        state.entries = HashMap::new();
        state.generation += 1;
    }

    /// Builds the index: watches first, then a walk of each shard under
    /// the lock (rule 1). Returns how many blobs it holds.
    fn build(&self) -> Result<usize, String> {
        let watch = Arc::new(self.watch_all()?);
        let generation = {
            let mut state = self.lock();
            self.invalidate(&mut state);
            state.watch = Some(Arc::clone(&watch));
            state.generation
        };
        let mut name_buf = String::with_capacity(2);
        for shard in 0..=255u8 {
            use std::fmt::Write;
            name_buf.clear();
            let _ = write!(name_buf, "{shard:02x}");
            let dir = self.cas_dir.join(&name_buf);
            let mut state = self.lock();
            if state.generation != generation || !self.drain(&mut state) {
                return Err(THROWN_AWAY.into());
            }
            walk_shard(&dir, shard, &mut state.entries)?;
            if state.entries.len() > self.max_blobs() {
                self.check_size(&mut state);
                return Err(format!(
                    "the store holds more than {} blobs",
                    self.max_blobs()
                ));
            }
        }
        let mut state = self.lock();
        if state.generation != generation || !self.drain(&mut state) {
            return Err(THROWN_AWAY.into());
        }
        state.entries.shrink_to_fit();
        state.ready = true;
        self.ready.store(true, Ordering::Release);
        Ok(state.entries.len())
    }

    /// A new inotify instance watching `cas/` and all 256 shard
    /// directories (created here if missing).
    fn watch_all(&self) -> Result<Watch, String> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| format!("inotify_init: {e}"))?;
        let dir_self = AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR
            | AddWatchFlags::IN_DONT_FOLLOW;
        let files = AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MODIFY;
        let cas_wd = inotify
            .add_watch(&self.cas_dir, dir_self)
            .map_err(|e| format!("watch {}: {e}", self.cas_dir.display()))?;
        let meta = std::fs::metadata(&self.cas_dir)
            .map_err(|e| format!("stat {}: {e}", self.cas_dir.display()))?;
        let mut shards = HashMap::with_capacity(256);
        for shard in 0..=255u8 {
            let dir = self.cas_dir.join(format!("{shard:02x}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("create {}: {e}", dir.display())),
            }
            let wd = inotify
                .add_watch(&dir, dir_self | files)
                .map_err(|e| format!("watch {}: {e}", dir.display()))?;
            if wd == cas_wd {
                return Err(format!(
                    "{} is the same directory as its parent",
                    dir.display()
                ));
            }
            shards.insert(wd, shard);
        }
        Ok(Watch {
            inotify,
            shards,
            cas_id: (meta.dev(), meta.ino()),
        })
    }

    fn max_blobs(&self) -> usize {
        self.max_blobs.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(super) fn set_max_blobs(&self, n: usize) {
        self.max_blobs.store(n, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// Applies one event. False if it means the index can no longer be trusted.
fn apply(
    state: &mut State,
    watch: &Watch,
    ev: &nix::sys::inotify::InotifyEvent,
    seen: Option<&mut HashMap<[u8; 32], u32>>,
) -> bool {
    let fatal = AddWatchFlags::IN_Q_OVERFLOW
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_IGNORED
        | AddWatchFlags::IN_UNMOUNT;
    if ev.mask.intersects(fatal) {
        return false;
    }
    let Some(&shard) = watch.shards.get(&ev.wd) else {
        // Only self events are asked of `cas/`: all of them fatal.
        return false;
    };
    if let Some(hash) = ev.name.as_deref().and_then(hash_of_name)
        && hash[0] == shard
    {
        state.entries.remove(&hash);
        if let Some(seen) = seen {
            *seen.entry(hash).or_default() += 1;
        }
    }
    true
}

/// The hash a store file name stands for, if it is one.
fn hash_of_name(name: &OsStr) -> Option<[u8; 32]> {
    let bytes = name.as_encoded_bytes();
    let mut hash = [0u8; 32];
    (bytes.len() == 64 && hex::decode_to_slice(bytes, &mut hash).is_ok()).then_some(hash)
}

/// Adds every blob file of one shard directory.
fn walk_shard(dir: &Path, shard: u8, entries: &mut HashMap<[u8; 32], Entry>) -> Result<(), String> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) => return Err(format!("read {}: {e}", dir.display())),
    };
    let empty = *Digest::EMPTY.hash();
    for entry in read.flatten() {
        let Some(hash) = hash_of_name(&entry.file_name()) else {
            continue;
        };
        if hash[0] != shard || hash == empty {
            continue;
        }
        // `DirEntry::metadata` is an `fstatat` relative to the open
        // directory, without following a link.
        if let Ok(meta) = entry.metadata()
            && meta.is_file()
        {
            entries.insert(hash, Entry::of(&meta));
        }
    }
    Ok(())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The index's thread: builds it when it is not there, and drains events
/// while it waits. Ends when the store is gone.
fn background(index: Weak<Index>) {
    // Let the daemon start serving first: the build's mkdirs and walk
    // would compete with it for the disk and the CPU.
    std::thread::sleep(START_DELAY);
    let mut retry_at: Option<Instant> = None;
    loop {
        let Some(ix) = index.upgrade() else { return };
        let watch = {
            let mut state = ix.lock();
            if std::mem::take(&mut state.too_big) {
                retry_at = Some(Instant::now() + RETRY_TOO_BIG);
            }
            state.watch.clone()
        };
        match watch {
            None if retry_at.is_none_or(|t| Instant::now() >= t) => {
                let started = Instant::now();
                match ix.build() {
                    Ok(blobs) => {
                        retry_at = None;
                        tracing::info!(
                            blobs,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "store index ready"
                        );
                    }
                    Err(e) => {
                        let mut state = ix.lock();
                        let wait = if std::mem::take(&mut state.too_big) {
                            RETRY_TOO_BIG
                        } else if e == THROWN_AWAY {
                            // Something changed while it was built: again
                            // at once, from the new state of things.
                            Duration::ZERO
                        } else {
                            RETRY
                        };
                        retry_at = Some(Instant::now() + wait);
                        ix.invalidate(&mut state);
                        tracing::info!("store index not built ({e}); presence checks use stat");
                    }
                }
            }
            None => {
                drop(ix);
                std::thread::sleep(POLL);
            }
            Some(watch) => {
                drop(ix);
                if wait_readable(&watch.inotify, POLL) {
                    let Some(ix) = index.upgrade() else { return };
                    let mut state = ix.lock();
                    ix.drain(&mut state);
                    drop(state);
                    drop(ix);
                    // Answers drain the queue themselves; this thread only
                    // keeps it from overflowing when no one asks, so it
                    // need not wake for every event.
                    std::thread::sleep(DRAIN_PAUSE);
                }
            }
        }
    }
}

/// Waits until the inotify descriptor has events, or `timeout`.
fn wait_readable(inotify: &Inotify, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, ms), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests;
