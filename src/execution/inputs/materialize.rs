//! Laying out an input tree on disk as the exec root: hard links to the
//! store or copies, in parallel for large trees.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::cas::Store;
use crate::digest::Digest;

/// How [`materialize`] lays out files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Materialize {
    /// Hard-link each file from the store (falling back to a copy where a
    /// link is impossible). Only safe when the action runs as a uid other
    /// than the daemon's: the linked inode is the store's own file, and its
    /// owner could chmod it. `dir_owner` (uid, gid) is given every created
    /// directory so that the action can create outputs in them.
    HardLink { dir_owner: Option<(u32, u32)> },
    /// Copy every blob once (mode 0444 or 0555, owned by the daemon) and
    /// hard-link its other paths to that copy, as the store's links would
    /// be shared. For actions that run as the daemon's own uid.
    Copy { dir_owner: Option<(u32, u32)> },
}

/// What [`materialize`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaterializeStats {
    /// Hard links: to the store, or (when copying) to the copy made for an
    /// earlier path of the same blob.
    pub files_linked: u64,
    pub files_copied: u64,
    /// Directories created, the exec root included.
    pub directories: u64,
    pub symlinks: u64,
    /// Bytes of all files, linked or copied.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Creates the input tree under `dest`, which must not exist or be an empty
/// directory. Directories are 0755 (owned by `dir_owner` when given), files
/// are hard links to the store's 0444/0555 files (or copies, see
/// [`Materialize`]), and symlinks are created with their targets as given.
///
/// A linked file is never chmodded: it shares its inode with the store. The
/// executable bit comes from linking the blob's executable twin instead
/// (see [`Store::link_source`]). A link that fails with `EMLINK` (ext4 allows
/// 65,000 links per inode) or `EXDEV` falls back to a copy.
///
/// The caller pins `tree.digests()` first; a blob evicted anyway is reported
/// as [`InputError::Missing`]. On error `dest` is left partly built for the
/// caller to remove.
pub fn materialize(
    store: &Arc<Store>,
    tree: &InputTree,
    dest: &Path,
    mode: Materialize,
) -> Result<MaterializeStats, InputError> {
    let started = Instant::now();
    let (copy_all, dir_owner) = match mode {
        Materialize::HardLink { dir_owner } => (false, dir_owner),
        Materialize::Copy { dir_owner } => (true, dir_owner),
    };
    prepare_destination(dest, dir_owner)?;
    let job = Job {
        store,
        dest,
        copy_all,
        dir_owner,
        // mkdir applies the umask; chmod only when it would narrow 0755.
        fix_mode: crate::umask::process_umask() & 0o755 != 0,
        abort: AtomicBool::new(false),
    };
    let workers = if tree.directories.len() + tree.files.len() >= PARALLEL_FROM {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS))
    } else {
        1
    };
    let mut stats = MaterializeStats {
        directories: 1,
        ..Default::default()
    };
    // Directories, then files: all parents exist before the first link.
    let next = AtomicUsize::new(0);
    job.in_parallel(workers, &mut stats, |job, stats| {
        job.make_dirs(&tree.directories, &next, stats)
    })?;
    // Copies share an inode wherever links to the store would (the same
    // blob with the same executable bit), so that what an action sees of
    // its inputs' link structure (tar's hard links, say) does not depend on
    // how they were laid out: each blob is copied once, at its first path,
    // and linked at the others.
    let (first, again) = if copy_all {
        first_uses(&tree.files)
    } else {
        (Vec::new(), Vec::new())
    };
    let placed: &[InputFile] = if copy_all { &first } else { &tree.files };
    let next = AtomicUsize::new(0);
    job.in_parallel(workers, &mut stats, |job, stats| {
        job.place_files(placed, &next, stats)
    })?;
    for (path, like) in &again {
        job.link_copy(path, like, &mut stats)?;
    }
    let mut at = Scratch::new(dest);
    for s in &tree.symlinks {
        let path = at.path(&s.path);
        std::os::unix::fs::symlink(&s.target, path).map_err(io_err("create symlink", path))?;
        stats.symlinks += 1;
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}

/// The files at the first path of each (blob, executable bit), in tree
/// order, and for every other path the first file it repeats.
pub(super) fn first_uses(files: &[InputFile]) -> (Vec<InputFile>, Vec<(&InputFile, &InputFile)>) {
    let mut seen: HashMap<(Digest, bool), &InputFile> = HashMap::new();
    let mut first = Vec::new();
    let mut again = Vec::new();
    for f in files {
        match seen.entry((f.digest, f.is_executable)) {
            std::collections::hash_map::Entry::Occupied(e) => again.push((f, *e.get())),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(f);
                first.push(f.clone());
            }
        }
    }
    (first, again)
}

/// Trees with fewer directories and files than this are laid out by the
/// calling thread alone: a thread costs more than it saves.
pub(super) const PARALLEL_FROM: usize = 1000;

/// Threads that lay out one tree. Two halve the time of the links on a
/// 2-core machine; the work is in the kernel (directory and inode locks),
/// so more threads than that bring little.
pub(super) const MAX_WORKERS: usize = 2;

/// How long a worker waits for another to create a parent directory.
pub(super) const PARENT_WAIT: Duration = Duration::from_secs(10);

/// Entries a worker claims at a time.
pub(super) const DIR_CHUNK: usize = 16;
pub(super) const FILE_CHUNK: usize = 128;

/// One [`materialize`] call, shared by its worker threads.
pub(super) struct Job<'a> {
    store: &'a Arc<Store>,
    dest: &'a Path,
    copy_all: bool,
    dir_owner: Option<(u32, u32)>,
    fix_mode: bool,
    /// Set when a worker fails, so that the others stop early.
    abort: AtomicBool,
}

impl Job<'_> {
    /// Runs `work` on `workers` threads (the caller's included) and adds up
    /// their stats. The first error wins.
    fn in_parallel(
        &self,
        workers: usize,
        stats: &mut MaterializeStats,
        work: impl Fn(&Self, &mut MaterializeStats) -> Result<(), InputError> + Sync,
    ) -> Result<(), InputError> {
        let run = || {
            let mut local = MaterializeStats::default();
            let result = work(self, &mut local);
            if result.is_err() {
                self.abort.store(true, Ordering::Relaxed);
            }
            (local, result)
        };
        let results = if workers <= 1 {
            vec![run()]
        } else {
            std::thread::scope(|scope| {
                let helpers: Vec<_> = (1..workers).map(|_| scope.spawn(run)).collect();
                let mut results = vec![run()];
                for h in helpers {
                    match h.join() {
                        Ok(r) => results.push(r),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                results
            })
        };
        let mut first_error = None;
        for (local, result) in results {
            stats.files_linked += local.files_linked;
            stats.files_copied += local.files_copied;
            stats.directories += local.directories;
            stats.bytes += local.bytes;
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Claims chunks of `dirs` (parents before children) until none are
    /// left, creating each directory. A parent in a chunk another worker
    /// holds may not exist yet: then we wait for it.
    fn make_dirs(
        &self,
        dirs: &[String],
        next: &AtomicUsize,
        stats: &mut MaterializeStats,
    ) -> Result<(), InputError> {
        let mut at = Scratch::new(self.dest);
        let mut builder = fs::DirBuilder::new();
        builder.mode(0o755);
        loop {
            let start = next.fetch_add(DIR_CHUNK, Ordering::Relaxed);
            if start >= dirs.len() {
                return Ok(());
            }
            for dir in &dirs[start..dirs.len().min(start + DIR_CHUNK)] {
                let path = at.path(dir);
                let mut waiting_since = None;
                loop {
                    match builder.create(path) {
                        Ok(()) => break,
                        // Another worker has yet to create the parent, or
                        // has given up; or, if this lasts, someone removed
                        // the destination under us.
                        Err(e)
                            if e.kind() == io::ErrorKind::NotFound
                                && waiting_since.get_or_insert_with(Instant::now).elapsed()
                                    < PARENT_WAIT =>
                        {
                            if self.abort.load(Ordering::Relaxed) {
                                return Ok(());
                            }
                            std::thread::yield_now();
                        }
                        Err(e) => return Err(io_err("create directory", path)(e)),
                    }
                }
                finish_dir(path, self.dir_owner, self.fix_mode)?;
                stats.directories += 1;
            }
            if self.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
    }

    /// Claims chunks of `files` until none are left, linking or copying
    /// each file.
    fn place_files(
        &self,
        files: &[InputFile],
        next: &AtomicUsize,
        stats: &mut MaterializeStats,
    ) -> Result<(), InputError> {
        let mut at = Scratch::new(self.dest);
        let mut blobs = Scratch::new(self.store.cas_dir());
        loop {
            let start = next.fetch_add(FILE_CHUNK, Ordering::Relaxed);
            if start >= files.len() || self.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            for f in &files[start..files.len().min(start + FILE_CHUNK)] {
                self.place_file(f, at.path(&f.path), &mut blobs, stats)?;
            }
        }
    }

    fn place_file(
        &self,
        f: &InputFile,
        path: &Path,
        blobs: &mut Scratch,
        stats: &mut MaterializeStats,
    ) -> Result<(), InputError> {
        stats.bytes += f.digest.size();
        if !self.copy_all && !f.is_executable && !f.digest.is_empty() {
            // Fast path: `resolve` has just checked (and marked as used)
            // every file blob, and the caller pins them, so link the blob
            // without looking at it again. Anything unusual goes the
            // general way below.
            let mut hex = [0u8; 64];
            hex::encode_to_slice(f.digest.hash(), &mut hex).expect("64 bytes for 32");
            match fs::hard_link(blobs.path2(&hex[..2], &hex), path) {
                Ok(()) => {
                    stats.files_linked += 1;
                    return Ok(());
                }
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || matches!(e.raw_os_error(), Some(libc::EMLINK | libc::EXDEV)) => {}
                Err(e) => return Err(io_err("hard-link", path)(e)),
            }
        }
        let Some(source) = self.store.link_source(&f.digest, f.is_executable)? else {
            return Err(InputError::Missing(vec![f.digest]));
        };
        if !self.copy_all {
            match fs::hard_link(&source, path) {
                Ok(()) => {
                    stats.files_linked += 1;
                    return Ok(());
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMLINK | libc::EXDEV)) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Evicted between link_source and link: not pinned.
                    return Err(InputError::Missing(vec![f.digest]));
                }
                Err(e) => return Err(io_err("hard-link", path)(e)),
            }
        }
        copy_file(&source, path, f.digest.size(), f.is_executable).map_err(|e| match e {
            CopyError::Source(e) if e.kind() == io::ErrorKind::NotFound => {
                InputError::Missing(vec![f.digest])
            }
            CopyError::Source(e) => io_err("read", &source)(e),
            CopyError::Dest(op, e) => io_err(op, path)(e),
        })?;
        stats.files_copied += 1;
        Ok(())
    }

    /// Lays out `f` as another name of the copy already made for `like`
    /// (a copy of its own if the link count is exhausted).
    fn link_copy(
        &self,
        f: &InputFile,
        like: &InputFile,
        stats: &mut MaterializeStats,
    ) -> Result<(), InputError> {
        let (path, first) = (self.dest.join(&f.path), self.dest.join(&like.path));
        match fs::hard_link(&first, &path) {
            Ok(()) => {
                stats.bytes += f.digest.size();
                stats.files_linked += 1;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {
                let mut blobs = Scratch::new(self.store.cas_dir());
                self.place_file(f, &path, &mut blobs, stats)
            }
            Err(e) => Err(io_err("hard-link", &path)(e)),
        }
    }
}

/// Creates `dest`, or accepts it if it is an empty directory (not a
/// symlink to one).
pub(super) fn prepare_destination(
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), InputError> {
    match fs::create_dir(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(dest).map_err(io_err("stat", dest))?;
            if !meta.is_dir() {
                return Err(InputError::Destination {
                    path: dest.to_owned(),
                    reason: "it exists and is not a directory".into(),
                });
            }
            let mut entries = fs::read_dir(dest).map_err(io_err("read directory", dest))?;
            if entries.next().is_some() {
                return Err(InputError::Destination {
                    path: dest.to_owned(),
                    reason: "the directory is not empty".into(),
                });
            }
        }
        Err(e) => return Err(io_err("create directory", dest)(e)),
    }
    finish_dir(dest, owner, true)
}

/// Sets a created directory's mode (if the umask may have narrowed it) and
/// owner.
pub(super) fn finish_dir(
    path: &Path,
    owner: Option<(u32, u32)>,
    fix_mode: bool,
) -> Result<(), InputError> {
    if fix_mode {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", path))?;
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    }
    Ok(())
}

pub(super) enum CopyError {
    Source(io::Error),
    Dest(&'static str, io::Error),
}

/// Copies a store file to a new file `dest`, 0444 or 0555, owned by us.
pub(super) fn copy_file(
    src: &Path,
    dest: &Path,
    size: u64,
    executable: bool,
) -> Result<(), CopyError> {
    let mut from = File::open(src).map_err(CopyError::Source)?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| CopyError::Dest("create", e))?;
    // `io::copy` between files uses copy_file_range, which may share
    // extents instead of copying bytes.
    let copied = io::copy(&mut from, &mut to).map_err(|e| CopyError::Dest("copy to", e))?;
    if copied != size {
        return Err(CopyError::Source(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("store file has {copied} bytes, expected {size}"),
        )));
    }
    // The same mtime as a linked store file: an input's timestamps do not
    // depend on how it was laid out.
    to.set_modified(crate::cas::last_use::fixed_mtime())
        .map_err(|e| CopyError::Dest("set mtime of", e))?;
    let mode = if executable { 0o555 } else { 0o444 };
    to.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| CopyError::Dest("chmod", e))
}

/// One reusable buffer holding `dest/` followed by a relative path, so that
/// building each of thousands of paths allocates nothing.
pub(super) struct Scratch {
    buf: Vec<u8>,
    base: usize,
}

impl Scratch {
    fn new(dest: &Path) -> Scratch {
        let mut buf = dest.as_os_str().as_bytes().to_vec();
        if buf.last() != Some(&b'/') {
            buf.push(b'/');
        }
        buf.reserve(256);
        let base = buf.len();
        Scratch { buf, base }
    }

    fn path(&mut self, rel: &str) -> &Path {
        self.buf.truncate(self.base);
        self.buf.extend_from_slice(rel.as_bytes());
        Path::new(OsStr::from_bytes(&self.buf))
    }

    /// The base followed by `a/b`.
    fn path2(&mut self, a: &[u8], b: &[u8]) -> &Path {
        self.buf.truncate(self.base);
        self.buf.extend_from_slice(a);
        self.buf.push(b'/');
        self.buf.extend_from_slice(b);
        Path::new(OsStr::from_bytes(&self.buf))
    }
}
