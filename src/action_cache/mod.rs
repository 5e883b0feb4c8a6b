//! The action cache: ActionResults by action digest, in a shared view that
//! only trusted writers (and our own sandbox) may change, and one private
//! view per untrusted uid.
//!
//! ```text
//! ac/shared/ab/ab12…ef        the entry every caller sees
//! ac/user-1000/ab/ab12…ef     what uid 1000 wrote itself; only 1000 sees it
//! ac/input-root/shared/…      the same two views, for the instances whose
//! ac/input-root/user-1000/…   actions run with the input root as `/`
//! ```
//!
//! The cache is partitioned by the sandbox's root mode of the instance a
//! request names ([`Partition`], chosen in `crate::instance`): the same
//! Action run with the input root as `/` and with the host's toolchain
//! paths can give different results, so a result produced (or uploaded)
//! through an instance of one mode never answers a lookup through an
//! instance of the other. The default partition keeps the layout it has
//! always had.
//!
//! An entry is an encoded `ActionResult` whose inline data has been moved
//! into the CAS, framed (see [`frame`]) with a magic and the SHA-256 of the
//! message, so that an entry a power loss left empty, truncated or full of
//! garbage is recognised as such. A lookup returns an entry only if its
//! frame checks and every blob it refers to is still in the store;
//! otherwise the entry is dropped (a torn one with a warning) and the lookup
//! misses, so a client never gets a result that is not the one stored, nor
//! one that points at missing data. `verify` checks every entry's frame.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use prost::Message;

use crate::cas::{self, Store, disk_cost};
use crate::digest::{Digest, DigestError};
use crate::lookups::Lookups;
use crate::proto::reapi;
use crate::sandbox::RootMode;

/// Which partition of the cache a request sees: the one of its instance's
/// root mode (see the module comment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Partition {
    root: RootMode,
}

impl Partition {
    pub fn of(root: RootMode) -> Partition {
        Partition { root }
    }

    /// The partition of the default instance settings (the host mode): the
    /// only one shared with an upstream.
    pub fn is_default(self) -> bool {
        self == Partition::default()
    }

    /// Its directory under `ac/`; the default partition is `ac/` itself.
    fn dir(self) -> Option<&'static str> {
        match self.root {
            RootMode::Host => None,
            RootMode::Input => Some("input-root"),
        }
    }
}

/// Which view of the cache a write goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Seen by everyone. Trusted callers and our own sandbox only.
    Shared,
    /// Seen only by this uid.
    Private(u32),
}

/// What a caller asked to have inlined into a result.
#[derive(Debug, Default, Clone)]
pub struct Inline<'a> {
    pub stdout: bool,
    pub stderr: bool,
    pub files: &'a [String],
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] cas::Error),
    #[error("{field}: {source}")]
    BadDigest { field: String, source: DigestError },
    #[error("{field}: inline contents do not match the digest: {source}")]
    BadInline { field: String, source: cas::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub struct ActionCache {
    store: Arc<Store>,
    inline_max: u64,
    lookups: Lookups,
}

impl ActionCache {
    pub fn new(store: Arc<Store>, inline_max: u64) -> Self {
        ActionCache {
            store,
            inline_max,
            lookups: Lookups::default(),
        }
    }

    /// Hits and misses, counted once per action (see `lookups`).
    pub fn lookups(&self) -> &Lookups {
        &self.lookups
    }

    fn entry_path(&self, partition: Partition, scope: Scope, action: &Digest) -> PathBuf {
        let view = match scope {
            Scope::Shared => "shared".to_owned(),
            Scope::Private(uid) => format!("user-{uid}"),
        };
        let hex = action.hex();
        let mut dir = self.store.ac_dir().to_owned();
        if let Some(part) = partition.dir() {
            dir.push(part);
        }
        dir.join(view).join(&hex[..2]).join(hex)
    }

    /// Looks up an action in a partition: the shared view first, then the
    /// caller's own.
    pub fn get(
        &self,
        partition: Partition,
        action: &Digest,
        viewer: Option<u32>,
        inline: &Inline<'_>,
    ) -> Result<Option<reapi::ActionResult>> {
        let scopes = [Some(Scope::Shared), viewer.map(Scope::Private)];
        for scope in scopes.into_iter().flatten() {
            if let Some(mut result) = self.get_in(partition, scope, action)? {
                self.inline(&mut result, inline)?;
                return Ok(Some(result));
            }
        }
        Ok(None)
    }

    /// The shared entry for `action` in the default partition, as
    /// [`get`](Self::get) would serve it (its outputs leased), without
    /// counting a hit or a miss: for the determinism checks.
    pub fn shared_entry(&self, action: &Digest) -> Result<Option<reapi::ActionResult>> {
        self.get_in(Partition::default(), Scope::Shared, action)
    }

    /// The hashes of the actions that have a shared entry in the default
    /// partition.
    pub fn shared_hashes(&self) -> Result<Vec<String>> {
        let dir = self.store.ac_dir().join("shared");
        let mut out = Vec::new();
        let shards = match fs::read_dir(&dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(cas::Error::io("read directory", &dir)(e).into()),
        };
        for shard in shards.flatten() {
            let Ok(entries) = fs::read_dir(shard.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push(name);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// [`get`](Self::get) on the caller's thread, for a hit that needs no
    /// disk I/O: the entry read from the page cache (`RWF_NOWAIT`), its
    /// outputs checked in the store's index. `None` means "not answered
    /// here": a miss, an entry that needs work (torn, outputs gone, output
    /// trees to read, inline contents asked for), or anything that could
    /// block; the caller then does the full [`get`](Self::get) on a
    /// blocking thread. What this returns is exactly what `get` would.
    pub fn get_cached(
        &self,
        partition: Partition,
        action: &Digest,
        viewer: Option<u32>,
        inline: &Inline<'_>,
    ) -> Option<reapi::ActionResult> {
        if inline.stdout || inline.stderr || !inline.files.is_empty() {
            return None;
        }
        let scopes = [Some(Scope::Shared), viewer.map(Scope::Private)];
        for scope in scopes.into_iter().flatten() {
            let path = self.entry_path(partition, scope, action);
            let file = match fs::File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => return None,
            };
            let meta = file.metadata().ok()?;
            if meta.len() > cas::CACHED_READ_MAX {
                return None;
            }
            let bytes = cas::read_nowait(&file, meta.len() as usize)?;
            let result = unframe(&bytes).ok()?;
            if !result.output_directories.is_empty() {
                return None;
            }
            let mut blobs = Vec::new();
            for (_, digest) in referenced(&result) {
                blobs.push(Digest::from_proto(digest).ok()?);
            }
            if !self.store.contains_all_cached(&blobs)? {
                return None;
            }
            self.store.lease(blobs);
            if cas::last_use::is_stale(&meta) {
                cas::last_use::touch(&path);
            }
            return Some(result);
        }
        None
    }

    fn get_in(
        &self,
        partition: Partition,
        scope: Scope,
        action: &Digest,
    ) -> Result<Option<reapi::ActionResult>> {
        let path = self.entry_path(partition, scope, action);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cas::Error::io("read", &path)(e).into()),
        };
        let result = match unframe(&bytes) {
            Ok(result) => result,
            Err(why) => {
                self.drop_torn(&path, bytes.len() as u64, &why);
                return Ok(None);
            }
        };
        let Some(blobs) = self.complete(&result)? else {
            tracing::debug!(action = %action, ?scope, "dropping action cache entry whose outputs were evicted");
            if fs::remove_file(&path).is_ok() {
                self.store.account_removed(disk_cost(bytes.len() as u64));
            }
            return Ok(None);
        };
        // A store that evicts hard could take them before the client reads
        // them: keep them for a while.
        self.store.lease(blobs);
        self.store.touch_path(&path);
        Ok(Some(result))
    }

    /// Removes an entry that does not decode: it is a miss from now on,
    /// and this is the one time it is logged.
    fn drop_torn(&self, path: &std::path::Path, len: u64, why: &str) {
        tracing::warn!(path = %path.display(), "removing a torn action cache entry ({why}); it is a miss");
        if fs::remove_file(path).is_ok() {
            self.store.account_removed(disk_cost(len));
        }
    }

    /// Checks the frame of every entry (of every partition and view) and
    /// removes the torn ones; returns (entries checked, paths removed).
    /// For `nativelink-lre verify`.
    pub fn verify(&self) -> Result<(u64, Vec<PathBuf>)> {
        let mut checked = 0;
        let mut removed = Vec::new();
        let root = self.store.ac_dir();
        if let Err(e) = fs::read_dir(root) {
            return Err(cas::Error::io("read directory", root)(e).into());
        }
        // ac/[partition/]view/shard/entry: at most four levels.
        let mut dirs = vec![(root.to_path_buf(), 0)];
        while let Some((dir, depth)) = dirs.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() && depth < 3 => dirs.push((path, depth + 1)),
                    Ok(t) if t.is_file() => {
                        let Ok(bytes) = fs::read(&path) else {
                            continue; // evicted meanwhile
                        };
                        checked += 1;
                        if let Err(why) = unframe(&bytes) {
                            self.drop_torn(&path, bytes.len() as u64, &why);
                            removed.push(path);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok((checked, removed))
    }

    /// Every blob the result refers to (output Trees read for their
    /// files), if all of them are in the store; `None` otherwise. Marks
    /// them all as used.
    fn complete(&self, result: &reapi::ActionResult) -> Result<Option<Vec<Digest>>> {
        let mut blobs = Vec::new();
        for (field, digest) in referenced(result) {
            let Ok(d) = Digest::from_proto(digest) else {
                tracing::warn!(field, "action cache entry has a malformed digest");
                return Ok(None);
            };
            // Trees are read below, which checks them.
            if field != TREE_FIELD && !self.store.contains(&d)? {
                return Ok(None);
            }
            blobs.push(d);
        }
        let Ok(files) = output_tree_files(&self.store, result)? else {
            return Ok(None);
        };
        for d in files {
            if !self.store.contains(&d)? {
                return Ok(None);
            }
            blobs.push(d);
        }
        Ok(Some(blobs))
    }

    /// Fills in the inline data a caller asked for, up to the size cap.
    pub fn inline(&self, result: &mut reapi::ActionResult, inline: &Inline<'_>) -> Result<()> {
        let mut budget = self.inline_max;
        let mut take = |digest: &Option<reapi::Digest>| -> Result<Option<Vec<u8>>> {
            let Some(d) = digest.as_ref().and_then(|d| Digest::from_proto(d).ok()) else {
                return Ok(None);
            };
            if d.size() > budget {
                return Ok(None);
            }
            let data = self.store.read(&d)?;
            if data.is_some() {
                budget -= d.size();
            }
            Ok(data)
        };
        if inline.stdout
            && let Some(data) = take(&result.stdout_digest)?
        {
            result.stdout_raw = data.into();
        }
        if inline.stderr
            && let Some(data) = take(&result.stderr_digest)?
        {
            result.stderr_raw = data.into();
        }
        for file in &mut result.output_files {
            if inline.files.contains(&file.path)
                && let Some(data) = take(&file.digest)?
            {
                file.contents = data.into();
            }
        }
        Ok(())
    }

    /// Stores a result in a partition. Inline contents are checked against
    /// their digests and moved into the CAS; the stored entry holds digests
    /// only. Returns the result as stored.
    pub fn put(
        &self,
        partition: Partition,
        action: &Digest,
        mut result: reapi::ActionResult,
        scope: Scope,
    ) -> Result<reapi::ActionResult> {
        for (field, digest) in referenced(&result) {
            Digest::from_proto(digest).map_err(|source| Error::BadDigest {
                field: field.to_owned(),
                source,
            })?;
        }
        for dir in &result.output_directories {
            Digest::from_required(dir.tree_digest.as_ref()).map_err(|source| Error::BadDigest {
                field: format!("output_directories[{:?}].tree_digest", dir.path),
                source,
            })?;
        }
        let user = match scope {
            Scope::Shared => None,
            Scope::Private(uid) => Some(uid),
        };
        self.move_inline_into_cas(&mut result, user)?;
        let path = self.entry_path(partition, scope, action);
        let dir = path.parent().expect("entry paths have a parent");
        fs::create_dir_all(dir).map_err(cas::Error::io("create directory", dir))?;
        let bytes = frame(&result);
        let tmp = self.store.temp_path(&format!("ac.{}", action.hex()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            if self.store.config().fsync {
                f.sync_data()?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(cas::Error::io("write", &tmp)(e).into());
        }
        let old = fs::metadata(&path).map(|m| disk_cost(m.len())).unwrap_or(0);
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(cas::Error::io("rename", &path)(e).into());
        }
        self.store.account_removed(old);
        self.store.account_added(disk_cost(bytes.len() as u64));
        Ok(result)
    }

    /// Moves inline contents into the CAS, charged to `user` (see
    /// `cas::shares`).
    fn move_inline_into_cas(
        &self,
        result: &mut reapi::ActionResult,
        user: crate::cas::User,
    ) -> Result<()> {
        let store = &self.store;
        let ingest = |field: String,
                      digest: &mut Option<reapi::Digest>,
                      raw: &mut prost::bytes::Bytes|
         -> Result<()> {
            if raw.is_empty() {
                return Ok(());
            }
            let d = match digest.as_ref() {
                Some(d) => Digest::from_proto(d).map_err(|source| Error::BadDigest {
                    field: field.clone(),
                    source,
                })?,
                None => Digest::of_bytes(raw),
            };
            store
                .put_as(user, &d, raw)
                .map_err(|source| Error::BadInline { field, source })?;
            *digest = Some(d.to_proto());
            *raw = Default::default();
            Ok(())
        };
        ingest(
            "stdout_raw".into(),
            &mut result.stdout_digest,
            &mut result.stdout_raw,
        )?;
        ingest(
            "stderr_raw".into(),
            &mut result.stderr_digest,
            &mut result.stderr_raw,
        )?;
        for file in &mut result.output_files {
            ingest(
                format!("output_files[{:?}].contents", file.path),
                &mut file.digest,
                &mut file.contents,
            )?;
        }
        Ok(())
    }
}

/// The first bytes of every entry file.
const MAGIC: &[u8; 8] = b"LREac\x001\n";

/// An entry file: [`MAGIC`], the SHA-256 of the encoded result, then the
/// encoded result.
pub fn frame(result: &reapi::ActionResult) -> Vec<u8> {
    use sha2::Digest as _;
    let message = result.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + 32 + message.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&sha2::Sha256::digest(&message));
    out.extend_from_slice(&message);
    out
}

/// The result in an entry file, or why the file is not a whole entry (an
/// entry written before entries were framed counts as torn: a truncated
/// message can decode as a different, valid result).
pub fn unframe(bytes: &[u8]) -> Result<reapi::ActionResult, String> {
    use sha2::Digest as _;
    let head = MAGIC.len() + 32;
    if bytes.len() < head {
        return Err(format!("{} bytes, shorter than any entry", bytes.len()));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err("no entry header".into());
    }
    let message = &bytes[head..];
    if sha2::Sha256::digest(message)[..] != bytes[MAGIC.len()..head] {
        return Err("its checksum does not match its contents".into());
    }
    reapi::ActionResult::decode(message).map_err(|e| format!("does not decode: {e}"))
}

/// The blob digests a result refers to directly, with the field each is in.
const TREE_FIELD: &str = "output_directories.tree_digest";

/// The digests a result names directly, with the field each is in.
pub(crate) fn referenced(result: &reapi::ActionResult) -> Vec<(&'static str, &reapi::Digest)> {
    let mut out = Vec::new();
    for f in &result.output_files {
        if let Some(d) = &f.digest {
            out.push(("output_files.digest", d));
        }
    }
    for d in &result.output_directories {
        if let Some(d) = &d.tree_digest {
            out.push((TREE_FIELD, d));
        }
    }
    if let Some(d) = &result.stdout_digest {
        out.push(("stdout_digest", d));
    }
    if let Some(d) = &result.stderr_digest {
        out.push(("stderr_digest", d));
    }
    out
}

/// The files of a result's output directories, read from the local store's
/// Trees. `Ok(Err(why))` when a Tree is missing or malformed.
pub(crate) fn output_tree_files(
    store: &Store,
    result: &reapi::ActionResult,
) -> Result<Result<Vec<Digest>, String>, cas::Error> {
    let mut files = Vec::new();
    for dir in &result.output_directories {
        let t = match Digest::from_required(dir.tree_digest.as_ref()) {
            Ok(t) => t,
            Err(e) => return Ok(Err(format!("{}: tree_digest: {e}", dir.path))),
        };
        let Some(bytes) = store.read(&t)? else {
            return Ok(Err(format!("tree {t} is gone")));
        };
        let tree = match reapi::Tree::decode(bytes.as_slice()) {
            Ok(tree) => tree,
            Err(e) => return Ok(Err(format!("tree {t}: {e}"))),
        };
        match tree_files(&tree) {
            Ok(f) => files.extend(f),
            Err(e) => return Ok(Err(format!("tree {t}: {e}"))),
        }
    }
    Ok(Ok(files))
}

/// The file digests in a Tree's directories; an error for a malformed one.
pub(crate) fn tree_files(tree: &reapi::Tree) -> Result<Vec<Digest>, DigestError> {
    let mut out = Vec::new();
    for directory in tree.root.iter().chain(&tree.children) {
        for file in &directory.files {
            out.push(Digest::from_required(file.digest.as_ref())?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
