//! The input tree of an action: checking it, and laying it out on disk as
//! the action's exec root.
//!
//! [`resolve`] walks the `Directory` messages from the input root digest and
//! validates the whole tree before anything runs, collecting every blob the
//! store lacks so the client can upload them all in one round trip.
//! [`materialize`] then creates the tree under a host directory, hard-linking
//! files from the store (the store's files are 0444/0555 and owned by the
//! daemon, so an action running as another uid cannot change them).
//! [`create_output_parents`] creates the parents of the declared outputs, as
//! REAPI requires of the server.
//!
//! Paths inside an [`InputTree`] are relative to the input root, use `/`,
//! and have no `.`/`..` components: every name was checked.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prost::Message;

use crate::cas::{self, Store};
use crate::digest::Digest;
use crate::proto::reapi;

/// The most entries (directories, files and symlinks, counted once per
/// path) an input tree may expand to. A Merkle DAG that reuses a directory
/// at many paths can describe a huge tree in a few bytes; this bounds the
/// memory and disk a single request can make us spend.
pub const MAX_ENTRIES: usize = 2 << 20;

/// The longest relative path an input or output may have, in bytes. The
/// exec root's own path must fit in front of it within `PATH_MAX` (4096).
pub const MAX_PATH_LEN: usize = 3072;

/// The largest Action, Command or Directory message read, in bytes. Each
/// is read whole into memory, so a bigger one is refused from its digest,
/// before a byte of it is read. Real ones are far smaller: a Directory of
/// 100,000 files takes about 10 MiB.
pub const MAX_MESSAGE_SIZE: u64 = 16 << 20;

/// The most bytes of Directory messages and of paths one input tree may
/// make us hold while it is resolved.
pub const MAX_TREE_BYTES: u64 = 512 << 20;

/// The longest file name Linux allows.
const NAME_MAX: usize = 255;

/// Why an input tree cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Blobs the store lacks: absent Directory messages and absent file
    /// contents, deduplicated and sorted. The caller reports them as
    /// FAILED_PRECONDITION with a `PreconditionFailure` listing each one.
    #[error("{} input blob(s) missing from the CAS: {}", .0.len(), list_digests(.0))]
    Missing(Vec<Digest>),
    /// The tree (or an output path, or the working directory) breaks a
    /// rule. `path` is relative to the input root for tree entries, and the
    /// path as the client sent it for outputs. INVALID_ARGUMENT.
    #[error("invalid input tree at {path:?}: {reason}")]
    Invalid { path: String, reason: String },
    /// The exec root cannot be created where asked.
    #[error("cannot materialize inputs into {path}: {reason}")]
    Destination { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] cas::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn list_digests(digests: &[Digest]) -> String {
    const SHOWN: usize = 5;
    let mut s = digests
        .iter()
        .take(SHOWN)
        .map(Digest::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if digests.len() > SHOWN {
        s.push_str(&format!(" and {} more", digests.len() - SHOWN));
    }
    s
}

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> InputError {
    InputError::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InputError + 'a {
    move |source| InputError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A file of the input tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Relative to the input root.
    pub path: String,
    pub digest: Digest,
    pub is_executable: bool,
}

/// A symbolic link of the input tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSymlink {
    /// Relative to the input root.
    pub path: String,
    /// As the client sent it: relative, and staying inside the input root
    /// when resolved lexically from the link's directory.
    pub target: String,
}

/// A validated input tree, expanded to one entry per path. Directories come
/// before their contents (pre-order), so creating them in order always
/// finds the parent in place.
#[derive(Debug, Clone, Default)]
pub struct InputTree {
    directories: Vec<String>,
    files: Vec<InputFile>,
    symlinks: Vec<InputSymlink>,
    /// Distinct Directory digests, the root included.
    directory_digests: Vec<Digest>,
    /// Distinct file digests.
    file_digests: Vec<Digest>,
    file_bytes: u64,
}

impl InputTree {
    /// Every directory below the root (the root itself is not listed),
    /// relative to it, parents first.
    pub fn directories(&self) -> &[String] {
        &self.directories
    }

    pub fn files(&self) -> &[InputFile] {
        &self.files
    }

    pub fn symlinks(&self) -> &[InputSymlink] {
        &self.symlinks
    }

    /// Every blob the tree refers to: file contents and Directory messages,
    /// each once. Pin these while the action runs.
    pub fn digests(&self) -> Vec<Digest> {
        let mut all = Vec::with_capacity(self.file_digests.len() + self.directory_digests.len());
        all.extend_from_slice(&self.file_digests);
        all.extend_from_slice(&self.directory_digests);
        all
    }

    /// Directories below the root.
    pub fn directory_count(&self) -> usize {
        self.directories.len()
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Bytes of all files, counting a file once per path.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// Bytes of the distinct file contents.
    pub fn distinct_file_bytes(&self) -> u64 {
        self.file_digests.iter().map(Digest::size).sum()
    }
}

/// Reads and validates the tree under `root`.
///
/// Every reachable Directory is decoded once per digest (a digest reused at
/// several paths is fine: the tree is a DAG) and checked: names are not
/// empty, `.` or `..`, and contain no `/` or NUL; each of the file,
/// directory and symlink lists is sorted by name without duplicates, and no
/// name is in two lists; every digest is well formed; symlink targets are
/// relative and do not leave the input root when resolved lexically from
/// the link's directory (we advertise `symlink_absolute_path_strategy:
/// DISALLOWED`).
///
/// Errors: the first rule broken, as [`InputError::Invalid`] naming the
/// path; otherwise, if any Directory or file blob is absent,
/// [`InputError::Missing`] with all of them. A missing Directory's children
/// are unknown, so they cannot be checked or reported until it is uploaded.
pub fn resolve(store: &Store, root: &Digest) -> Result<InputTree, InputError> {
    resolve_limited(store, root, MAX_ENTRIES)
}

/// [`resolve`] with a different bound on the number of entries.
fn resolve_limited(
    store: &Store,
    root: &Digest,
    max_entries: usize,
) -> Result<InputTree, InputError> {
    let mut r = Resolver {
        store,
        max_entries,
        loaded: HashMap::new(),
        missing: BTreeSet::new(),
        file_digests: HashSet::new(),
        tree: InputTree::default(),
        entries: 0,
        bytes: 0,
    };
    // Pre-order walk with an explicit stack: (directory digest, its path,
    // its depth below the root).
    let mut stack: Vec<(Digest, String, usize)> = vec![(*root, String::new(), 0)];
    while let Some((digest, path, depth)) = stack.pop() {
        let Some(dir) = r.load(&digest, &path)? else {
            continue;
        };
        if !path.is_empty() {
            r.tree.directories.push(path.clone());
        }
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let n = dir.files.len() + dir.symlinks.len() + dir.directories.len();
        r.count(n, &path)?;
        // Each entry's path is the prefix and a name.
        r.hold((n * (prefix.len() + 16)) as u64, &path)?;
        for f in &dir.files {
            // Validated in `load`.
            let digest = Digest::from_required(f.digest.as_ref()).expect("checked digest");
            r.tree.file_bytes += digest.size();
            r.file_digests.insert(digest);
            r.tree.files.push(InputFile {
                path: join(&prefix, &f.name)?,
                digest,
                is_executable: f.is_executable,
            });
        }
        for s in &dir.symlinks {
            let link_path = join(&prefix, &s.name)?;
            check_symlink_target(&link_path, &s.target, depth)?;
            r.tree.symlinks.push(InputSymlink {
                path: link_path,
                target: s.target.clone(),
            });
        }
        // Reversed, so that children are visited in name order.
        for d in dir.directories.iter().rev() {
            let child = Digest::from_required(d.digest.as_ref()).expect("checked digest");
            stack.push((child, join(&prefix, &d.name)?, depth + 1));
        }
    }
    let mut files: Vec<Digest> = r.file_digests.into_iter().collect();
    files.sort_unstable();
    let mut missing = r.missing;
    missing.extend(store.find_missing(&files)?);
    if !missing.is_empty() {
        return Err(InputError::Missing(missing.into_iter().collect()));
    }
    r.tree.file_digests = files;
    Ok(r.tree)
}

struct Resolver<'a> {
    store: &'a Store,
    /// Each Directory read so far, by digest; `None` if it is missing.
    loaded: HashMap<Digest, Option<Rc<reapi::Directory>>>,
    missing: BTreeSet<Digest>,
    file_digests: HashSet<Digest>,
    tree: InputTree,
    entries: usize,
    max_entries: usize,
    /// Bytes of Directory messages and paths held so far.
    bytes: u64,
}

impl Resolver<'_> {
    /// The Directory `digest`, read, decoded and validated the first time
    /// it is seen (at `path`); `None` if the store lacks it.
    fn load(
        &mut self,
        digest: &Digest,
        path: &str,
    ) -> Result<Option<Rc<reapi::Directory>>, InputError> {
        if let Some(dir) = self.loaded.get(digest) {
            return Ok(dir.clone());
        }
        if digest.size() > MAX_MESSAGE_SIZE {
            return Err(invalid(
                path,
                format!(
                    "directory {digest} is {} bytes, over the limit of {MAX_MESSAGE_SIZE} bytes for one Directory",
                    digest.size()
                ),
            ));
        }
        self.hold(digest.size(), path)?;
        let dir = match self.store.read(digest)? {
            None => {
                self.missing.insert(*digest);
                None
            }
            Some(bytes) => {
                let dir = reapi::Directory::decode(bytes.as_slice()).map_err(|e| {
                    invalid(path, format!("directory {digest} does not decode: {e}"))
                })?;
                validate_directory(&dir, path)?;
                self.tree.directory_digests.push(*digest);
                Some(Rc::new(dir))
            }
        };
        self.loaded.insert(*digest, dir.clone());
        Ok(dir)
    }

    /// Accounts for `n` more bytes held.
    fn hold(&mut self, n: u64, path: &str) -> Result<(), InputError> {
        self.bytes += n;
        if self.bytes > MAX_TREE_BYTES {
            return Err(invalid(
                path,
                format!("the tree's Directory messages and paths exceed {MAX_TREE_BYTES} bytes"),
            ));
        }
        Ok(())
    }

    fn count(&mut self, n: usize, path: &str) -> Result<(), InputError> {
        self.entries += n;
        if self.entries > self.max_entries {
            return Err(invalid(
                path,
                format!("the tree expands to more than {} entries", self.max_entries),
            ));
        }
        Ok(())
    }
}

/// `prefix` (empty or ending in `/`) followed by `name`, within the length
/// limit.
fn join(prefix: &str, name: &str) -> Result<String, InputError> {
    let mut s = String::with_capacity(prefix.len() + name.len());
    s.push_str(prefix);
    s.push_str(name);
    if s.len() > MAX_PATH_LEN {
        return Err(invalid(
            s,
            format!("path is longer than {MAX_PATH_LEN} bytes"),
        ));
    }
    Ok(s)
}

/// The checks that depend only on the Directory itself, not on where it is.
fn validate_directory(dir: &reapi::Directory, path: &str) -> Result<(), InputError> {
    let at = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}/{name}")
        }
    };
    check_sorted(dir.files.iter().map(|f| f.name.as_str()), "files", &at)?;
    check_sorted(
        dir.directories.iter().map(|d| d.name.as_str()),
        "directories",
        &at,
    )?;
    check_sorted(
        dir.symlinks.iter().map(|s| s.name.as_str()),
        "symlinks",
        &at,
    )?;
    let lists_used = [
        dir.files.is_empty(),
        dir.directories.is_empty(),
        dir.symlinks.is_empty(),
    ]
    .iter()
    .filter(|empty| !**empty)
    .count();
    if lists_used > 1 {
        let mut names: Vec<&str> = dir
            .files
            .iter()
            .map(|f| f.name.as_str())
            .chain(dir.directories.iter().map(|d| d.name.as_str()))
            .chain(dir.symlinks.iter().map(|s| s.name.as_str()))
            .collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(
                at(w[0]),
                "the name is used by more than one of files, directories and symlinks",
            ));
        }
    }
    for f in &dir.files {
        Digest::from_required(f.digest.as_ref())
            .map_err(|e| invalid(at(&f.name), format!("file digest: {e}")))?;
    }
    for d in &dir.directories {
        Digest::from_required(d.digest.as_ref())
            .map_err(|e| invalid(at(&d.name), format!("directory digest: {e}")))?;
    }
    Ok(())
}

/// Each name valid, and the list strictly increasing (sorted, no
/// duplicates) in byte order, which is what REAPI's "sorted by name" means.
fn check_sorted<'a>(
    names: impl Iterator<Item = &'a str>,
    list: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<(), InputError> {
    let mut prev: Option<&str> = None;
    for name in names {
        check_name(name).map_err(|reason| invalid(at(name), reason))?;
        if let Some(p) = prev {
            if p == name {
                return Err(invalid(at(name), format!("duplicate name in {list}")));
            }
            if p > name {
                return Err(invalid(
                    at(name),
                    format!("{list} are not sorted by name: {name:?} follows {p:?}"),
                ));
            }
        }
        prev = Some(name);
    }
    Ok(())
}

/// A single path component as REAPI allows it.
fn check_name(name: &str) -> Result<(), String> {
    match name {
        "" => Err("empty name".into()),
        "." | ".." => Err(format!("{name:?} is not a valid name")),
        _ if name.contains('/') => Err("name contains '/'".into()),
        _ if name.contains('\0') => Err("name contains a NUL character".into()),
        _ if name.len() > NAME_MAX => Err(format!("name is longer than {NAME_MAX} bytes")),
        _ => Ok(()),
    }
}

/// A symlink at `link_path`, whose directory is `depth` levels below the
/// input root, may point anywhere inside the input root, including at
/// things that do not exist, but not outside it (lexically) and not at an
/// absolute path.
fn check_symlink_target(link_path: &str, target: &str, depth: usize) -> Result<(), InputError> {
    if target.is_empty() {
        return Err(invalid(link_path, "empty symlink target"));
    }
    if target.contains('\0') {
        return Err(invalid(
            link_path,
            "symlink target contains a NUL character",
        ));
    }
    if target.starts_with('/') {
        return Err(invalid(
            link_path,
            format!("symlink target {target:?} is absolute, which this server does not allow"),
        ));
    }
    if target.len() > MAX_PATH_LEN {
        return Err(invalid(
            link_path,
            format!("symlink target is longer than {MAX_PATH_LEN} bytes"),
        ));
    }
    let mut level = depth;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                level = level.checked_sub(1).ok_or_else(|| {
                    invalid(
                        link_path,
                        format!("symlink target {target:?} points outside the input root"),
                    )
                })?;
            }
            _ => level += 1,
        }
    }
    Ok(())
}

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
        fix_mode: process_umask() & 0o755 != 0,
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
fn first_uses(files: &[InputFile]) -> (Vec<InputFile>, Vec<(&InputFile, &InputFile)>) {
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
const PARALLEL_FROM: usize = 1000;

/// Threads that lay out one tree. Two halve the time of the links on a
/// 2-core machine; the work is in the kernel (directory and inode locks),
/// so more threads than that bring little.
const MAX_WORKERS: usize = 2;

/// How long a worker waits for another to create a parent directory.
const PARENT_WAIT: Duration = Duration::from_secs(10);

/// Entries a worker claims at a time.
const DIR_CHUNK: usize = 16;
const FILE_CHUNK: usize = 128;

/// One [`materialize`] call, shared by its worker threads.
struct Job<'a> {
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
fn prepare_destination(dest: &Path, owner: Option<(u32, u32)>) -> Result<(), InputError> {
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
fn finish_dir(path: &Path, owner: Option<(u32, u32)>, fix_mode: bool) -> Result<(), InputError> {
    if fix_mode {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", path))?;
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    }
    Ok(())
}

enum CopyError {
    Source(io::Error),
    Dest(&'static str, io::Error),
}

/// Copies a store file to a new file `dest`, 0444 or 0555, owned by us.
fn copy_file(src: &Path, dest: &Path, size: u64, executable: bool) -> Result<(), CopyError> {
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
struct Scratch {
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

/// The process's umask, from `/proc/self/status` (reading it with umask(2)
/// would change it for every thread meanwhile). If it cannot be read, the
/// most restrictive mask is assumed, which only costs a chmod per directory.
/// Read once: nothing in the daemon changes its umask.
fn process_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o777)
    })
}

/// Splits a relative path the client sent (an output path or the working
/// directory) into components, resolving `.` and `..` lexically. It must
/// not be absolute, have empty segments (`a//b`, a leading or trailing
/// `/`), contain NUL, or climb above where it starts. The empty string is
/// the starting directory itself, allowed only where `allow_empty` says.
pub(crate) fn split_relative(path: &str, allow_empty: bool) -> Result<Vec<&str>, String> {
    resolve_beneath(Vec::new(), path, allow_empty)
}

/// [`split_relative`] for a path relative to the directory `base` (given
/// as components): `..` may climb out of `base` but not out of the root
/// `base` is relative to. Returns the components relative to that root.
/// REAPI makes output paths relative to the working directory, and clients
/// such as BuildStream declare `../../../install` from a working directory
/// three levels down; buildbox and Buildbarn accept that as long as the
/// result stays inside the input root, and so does this.
pub(crate) fn resolve_beneath<'a>(
    base: Vec<&'a str>,
    path: &'a str,
    allow_empty: bool,
) -> Result<Vec<&'a str>, String> {
    if path.is_empty() {
        return if allow_empty {
            Ok(base)
        } else {
            Err("empty path".into())
        };
    }
    if path.starts_with('/') {
        return Err("path is absolute".into());
    }
    if path.contains('\0') {
        return Err("path contains a NUL character".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("path is longer than {MAX_PATH_LEN} bytes"));
    }
    let mut parts = base;
    for part in path.split('/') {
        match part {
            "" => return Err("path has an empty segment".into()),
            "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("'..' climbs out of the input root".into());
                }
            }
            _ if part.len() > NAME_MAX => {
                return Err(format!("a path segment is longer than {NAME_MAX} bytes"));
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// One declared output, checked: what the client called it and its
/// components relative to the exec root.
pub(crate) struct OutputPath<'a> {
    pub declared: &'a str,
    pub components: Vec<&'a str>,
    pub kind: OutputKind,
}

/// Which list an output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputKind {
    /// `output_paths` (REAPI 2.1): a file, directory or symlink.
    Any,
    /// `output_files`.
    File,
    /// `output_directories`.
    Directory,
}

/// The command's outputs, relative to `working_dir` (normally the
/// command's own), checked, in the order declared: `output_paths`
/// if it is not empty, else `output_files` then `output_directories`. The
/// empty path (the whole working directory) is allowed for directories and
/// `output_paths`, as REAPI allows it. Errors name the offending path.
pub(crate) fn output_paths<'a>(
    working_dir: &'a str,
    command: &'a reapi::Command,
) -> Result<Vec<OutputPath<'a>>, (String, String)> {
    let wd = split_relative(working_dir, true).map_err(|reason| {
        (
            working_dir.to_owned(),
            format!("working directory: {reason}"),
        )
    })?;
    let declared: Vec<(&str, OutputKind)> = if !command.output_paths.is_empty() {
        command
            .output_paths
            .iter()
            .map(|p| (p.as_str(), OutputKind::Any))
            .collect()
    } else {
        #[allow(deprecated)]
        let (files, dirs) = (&command.output_files, &command.output_directories);
        files
            .iter()
            .map(|p| (p.as_str(), OutputKind::File))
            .chain(dirs.iter().map(|p| (p.as_str(), OutputKind::Directory)))
            .collect()
    };
    declared
        .into_iter()
        .map(|(declared, kind)| {
            let components = resolve_beneath(wd.clone(), declared, kind != OutputKind::File)
                .map_err(|reason| (declared.to_owned(), format!("output path: {reason}")))?;
            Ok(OutputPath {
                declared,
                components,
                kind,
            })
        })
        .collect()
}

/// The input files an action may not change: every file of `tree` except
/// those at or below a declared output of `command`, which it may replace.
/// Paths relative to the input root, in tree order.
pub fn read_only_candidates(tree: &InputTree, command: &reapi::Command) -> Vec<String> {
    let outputs: Vec<String> = output_paths(&command.working_directory, command)
        .map(|outs| outs.iter().map(|o| o.components.join("/")).collect())
        .unwrap_or_default();
    let under = |path: &str, out: &str| {
        out.is_empty()
            || path == out
            || (path.starts_with(out) && path.as_bytes().get(out.len()) == Some(&b'/'))
    };
    tree.files
        .iter()
        .filter(|f| !outputs.iter().any(|o| under(&f.path, o)))
        .map(|f| f.path.clone())
        .collect()
}

/// Creates the parent directories of every output (relative to the working
/// directory, which is relative to `exec_root`), as REAPI requires before
/// the command runs: for `output_paths` if it is not empty, else for
/// `output_files` and `output_directories` (not the output directories
/// themselves). New directories are 0755 and owned by `dir_owner` if given.
///
/// Output paths and the working directory must be relative, without empty
/// segments and without `..` climbing out of where they start; otherwise
/// [`InputError::Invalid`] names the path. A parent that exists in the
/// input tree as a file or symlink is an error too: the output could not be
/// created, and we never create directories through a symlink.
pub fn create_output_parents(
    exec_root: &Path,
    working_dir: &str,
    command: &reapi::Command,
    dir_owner: Option<(u32, u32)>,
) -> Result<(), InputError> {
    let outputs =
        output_paths(working_dir, command).map_err(|(path, reason)| invalid(path, reason))?;
    let mut ready: HashSet<String> = HashSet::new();
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o755);
    for out in &outputs {
        let Some((_, parents)) = out.components.split_last() else {
            continue;
        };
        let mut rel = String::new();
        for part in parents {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(part);
            if ready.contains(&rel) {
                continue;
            }
            let path = exec_root.join(&rel);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) => {
                    return Err(invalid(
                        out.declared,
                        format!(
                            "its parent {rel:?} is {} in the input tree",
                            cas::file_kind(&meta.file_type())
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    builder
                        .create(&path)
                        .map_err(io_err("create directory", &path))?;
                    finish_dir(&path, dir_owner, true)?;
                }
                Err(e) => return Err(io_err("stat", &path)(e)),
            }
            ready.insert(rel.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cas::tests::test_store;
    use std::os::unix::fs::MetadataExt;

    /// Stores a Directory message and returns its digest.
    pub(crate) fn put_dir(store: &Arc<Store>, dir: &reapi::Directory) -> Digest {
        let bytes = dir.encode_to_vec();
        let d = Digest::of_bytes(&bytes);
        store.put(&d, &bytes).unwrap();
        d
    }

    /// Stores a blob and returns its digest.
    pub(crate) fn put_blob(store: &Arc<Store>, data: &[u8]) -> Digest {
        let d = Digest::of_bytes(data);
        store.put(&d, data).unwrap();
        d
    }

    pub(crate) fn file(name: &str, d: &Digest, exec: bool) -> reapi::FileNode {
        reapi::FileNode {
            name: name.into(),
            digest: Some(d.to_proto()),
            is_executable: exec,
            ..Default::default()
        }
    }

    pub(crate) fn dir(name: &str, d: &Digest) -> reapi::DirectoryNode {
        reapi::DirectoryNode {
            name: name.into(),
            digest: Some(d.to_proto()),
        }
    }

    pub(crate) fn link(name: &str, target: &str) -> reapi::SymlinkNode {
        reapi::SymlinkNode {
            name: name.into(),
            target: target.into(),
            ..Default::default()
        }
    }

    fn invalid_at(result: Result<InputTree, InputError>) -> (String, String) {
        match result {
            Err(InputError::Invalid { path, reason }) => (path, reason),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// A root holding `sub/` (which holds `contents`) and a file `a`.
    fn tree_with_sub(store: &Arc<Store>, contents: reapi::Directory) -> Digest {
        let sub = put_dir(store, &contents);
        let a = put_blob(store, b"a");
        put_dir(
            store,
            &reapi::Directory {
                files: vec![file("a", &a, false)],
                directories: vec![dir("sub", &sub)],
                ..Default::default()
            },
        )
    }

    #[test]
    fn resolves_a_dag_once_per_path() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(tmp.path(), 1 << 30);
        let x = put_blob(&store, b"x contents");
        let tool = put_blob(&store, b"#!/bin/sh\n");
        let leaf = put_dir(
            &store,
            &reapi::Directory {
                files: vec![file("x", &x, false)],
                symlinks: vec![link("up", "../x"), link("y", "x")],
                ..Default::default()
            },
        );
        let root = put_dir(
            &store,
            &reapi::Directory {
                files: vec![file("tool", &tool, true)],
                directories: vec![dir("a", &leaf), dir("b", &leaf)],
                symlinks: vec![link("c", "a")],
                ..Default::default()
            },
        );
        let tree = resolve(&store, &root).unwrap();
        assert_eq!(tree.directories(), ["a", "b"]);
        let files: Vec<(&str, bool)> = tree
            .files()
            .iter()
            .map(|f| (f.path.as_str(), f.is_executable))
            .collect();
        assert_eq!(files, [("tool", true), ("a/x", false), ("b/x", false)]);
        let links: Vec<&str> = tree.symlinks().iter().map(|s| s.path.as_str()).collect();
        assert_eq!(links, ["c", "a/up", "a/y", "b/up", "b/y"]);
        let mut digests = tree.digests();
        digests.sort();
        let mut expected = vec![x, tool, leaf, root];
        expected.sort();
        assert_eq!(digests, expected);
        assert_eq!(tree.file_bytes(), 10 + 10 + 10);
    }

    #[test]
    fn missing_lists_every_absent_blob_once() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(tmp.path(), 1 << 30);
        let present = put_blob(&store, b"here");
        let gone1 = Digest::of_bytes(b"gone 1");
        let gone2 = Digest::of_bytes(b"gone 2");
        let absent_dir = Digest::of_message(&reapi::Directory {
            files: vec![file("never-seen", &Digest::of_bytes(b"never"), false)],
            ..Default::default()
        });
        let sub = put_dir(
            &store,
            &reapi::Directory {
                files: vec![file("g1", &gone1, false), file("p", &present, false)],
                ..Default::default()
            },
        );
        let root = put_dir(
            &store,
            &reapi::Directory {
                files: vec![
                    file("e", &Digest::EMPTY, false),
                    file("g1", &gone1, false),
                    file("g2", &gone2, true),
                ],
                directories: vec![dir("absent", &absent_dir), dir("s1", &sub), dir("s2", &sub)],
                ..Default::default()
            },
        );
        let Err(InputError::Missing(missing)) = resolve(&store, &root) else {
            panic!("expected Missing");
        };
        let mut expected = vec![gone1, gone2, absent_dir];
        expected.sort();
        assert_eq!(missing, expected);

        // A missing root is reported as missing too.
        let nothing = Digest::of_bytes(b"no such directory");
        assert!(matches!(
            resolve(&store, &nothing),
            Err(InputError::Missing(m)) if m == vec![nothing]
        ));
    }

    #[test]
    fn refuses_unsorted_and_duplicate_names() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(tmp.path(), 1 << 30);
        let d = put_blob(&store, b"d");
        let unsorted = tree_with_sub(
            &store,
            reapi::Directory {
                files: vec![file("b", &d, false), file("a", &d, false)],
                ..Default::default()
            },
        );
        let (path, reason) = invalid_at(resolve(&store, &unsorted));
        assert_eq!(path, "sub/a");
        assert!(reason.contains("not sorted"), "{reason}");

        let dup = tree_with_sub(
            &store,
            reapi::Directory {
                symlinks: vec![link("l", "x"), link("l", "y")],
                ..Default::default()
            },
        );
        let (path, reason) = invalid_at(resolve(&store, &dup));
        assert_eq!(path, "sub/l");
        assert!(reason.contains("duplicate"), "{reason}");

        let empty = put_dir(&store, &reapi::Directory::default());
        let across = tree_with_sub(
            &store,
            reapi::Directory {
                files: vec![file("n", &d, false)],
                directories: vec![dir("n", &empty)],
                ..Default::default()
            },
        );
        let (path, reason) = invalid_at(resolve(&store, &across));
        assert_eq!(path, "sub/n");
        assert!(reason.contains("more than one"), "{reason}");
    }

    #[test]
    fn refuses_bad_names() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(tmp.path(), 1 << 30);
        let d = put_blob(&store, b"d");
        let empty = put_dir(&store, &reapi::Directory::default());
        for (name, expect) in [
            ("..", "not a valid name"),
            (".", "not a valid name"),
            ("", "empty name"),
            ("a/b", "'/'"),
            ("nul\0", "NUL"),
        ] {
            for as_dir in [false, true] {
                let contents = if as_dir {
                    reapi::Directory {
                        directories: vec![dir(name, &empty)],
                        ..Default::default()
                    }
                } else {
                    reapi::Directory {
                        files: vec![file(name, &d, false)],
                        ..Default::default()
                    }
                };
                let root = tree_with_sub(&store, contents);
                let (path, reason) = invalid_at(resolve(&store, &root));
                assert_eq!(path, format!("sub/{name}"));
                assert!(reason.contains(expect), "{name:?}: {reason}");
            }
        }
    }

    #[test]
    fn refuses_bad_digests() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(tmp.path(), 1 << 30);
        let root = tree_with_sub(
            &store,
            reapi::Directory {
                files: vec![reapi::FileNode {
                    name: "f".into(),
                    digest: Some(reapi::Digest {
                        hash: "../../etc/passwd".into(),
                        size_bytes: 1,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let (path, reason) = invalid_at(resolve(&store, &root));
        assert_eq!(path, "sub/f");
        assert!(reason.contains("digest"), "{reason}");
        let root = tree_with_sub(
            &store,
            reapi::Directory {
                directories: vec![reapi::DirectoryNode {
                    name: "d".into(),
                    digest: None,
                }],
                ..Default::default()
            },
        );
        assert_eq!(invalid_at(resolve(&store, &root)).0, "sub/d");
    }

    #[test]
    fn refuses_symlinks_leaving_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(tmp.path(), 1 << 30);
        for (target, ok) in [
            ("../a", true),
            ("..", true),
            ("./../sub/../a", true),
            ("x/../../a", true),
            ("../../x", false),
            ("../x/../../y", false),
            ("/etc/passwd", false),
            ("", false),
        ] {
            let root = tree_with_sub(
                &store,
                reapi::Directory {
                    symlinks: vec![link("l", target)],
                    ..Default::default()
                },
            );
            let result = resolve(&store, &root);
            if ok {
                assert!(result.is_ok(), "{target:?}: {result:?}");
            } else {
                let (path, reason) = invalid_at(result);
                assert_eq!(path, "sub/l", "{target:?}");
                assert!(
                    reason.contains("outside")
                        || reason.contains("absolute")
                        || reason.contains("empty"),
                    "{target:?}: {reason}"
                );
            }
        }
        // The same directory is fine one level down and escapes at the top.
        let leaf = put_dir(
            &store,
            &reapi::Directory {
                symlinks: vec![link("l", "../../x")],
                ..Default::default()
            },
        );
        let mid = put_dir(
            &store,
            &reapi::Directory {
                directories: vec![dir("leaf", &leaf)],
                ..Default::default()
            },
        );
        let root = put_dir(
            &store,
            &reapi::Directory {
                directories: vec![dir("deep", &mid), dir("top", &leaf)],
                ..Default::default()
            },
        );
        let (path, _) = invalid_at(resolve(&store, &root));
        assert_eq!(path, "top/l");
    }

    #[test]
    fn refuses_a_directory_that_does_not_decode() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(tmp.path(), 1 << 30);
        let junk = put_blob(&store, b"\xff\xff\xff not a proto");
        let root = put_dir(
            &store,
            &reapi::Directory {
                directories: vec![dir("j", &junk)],
                ..Default::default()
            },
        );
        let (path, reason) = invalid_at(resolve(&store, &root));
        assert_eq!(path, "j");
        assert!(reason.contains("decode"), "{reason}");
    }

    #[test]
    fn refuses_a_tree_that_expands_too_far() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(tmp.path(), 1 << 30);
        // 2^30 paths from 30 small Directory messages.
        let mut d = put_dir(&store, &reapi::Directory::default());
        for _ in 0..30 {
            d = put_dir(
                &store,
                &reapi::Directory {
                    directories: vec![dir("a", &d), dir("b", &d)],
                    ..Default::default()
                },
            );
        }
        let (_, reason) = invalid_at(resolve_limited(&store, &d, 10_000));
        assert!(reason.contains("more than 10000"), "{reason}");
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn materializes_links_copies_and_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(&tmp.path().join("store"), 1 << 30);
        let data = put_blob(&store, b"data");
        let tool = put_blob(&store, b"#!/bin/sh\n");
        let sub = put_dir(
            &store,
            &reapi::Directory {
                files: vec![
                    file("empty", &Digest::EMPTY, false),
                    file("x", &data, false),
                ],
                symlinks: vec![link("up", "../tool")],
                ..Default::default()
            },
        );
        let root = put_dir(
            &store,
            &reapi::Directory {
                files: vec![file("tool", &tool, true)],
                directories: vec![dir("sub", &sub)],
                ..Default::default()
            },
        );
        let tree = resolve(&store, &root).unwrap();

        let dest = tmp.path().join("exec");
        let stats = materialize(
            &store,
            &tree,
            &dest,
            Materialize::HardLink { dir_owner: None },
        )
        .unwrap();
        assert_eq!(
            (
                stats.files_linked,
                stats.files_copied,
                stats.directories,
                stats.symlinks
            ),
            (3, 0, 2, 1)
        );
        assert_eq!(stats.bytes, 14);
        assert_eq!(fs::read(dest.join("sub/x")).unwrap(), b"data");
        assert_eq!(fs::read(dest.join("sub/up")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            fs::read_link(dest.join("sub/up")).unwrap(),
            Path::new("../tool")
        );
        assert_eq!(mode_of(&dest.join("tool")), 0o555);
        assert_eq!(mode_of(&dest.join("sub/x")), 0o444);
        assert_eq!(mode_of(&dest.join("sub/empty")), 0o444);
        assert_eq!(mode_of(&dest.join("sub")), 0o755);
        assert_eq!(mode_of(&dest), 0o755);
        assert_eq!(
            fs::metadata(dest.join("sub/x")).unwrap().ino(),
            fs::metadata(store.blob_path(&data)).unwrap().ino()
        );

        let copy = tmp.path().join("copy");
        fs::create_dir(&copy).unwrap();
        let stats =
            materialize(&store, &tree, &copy, Materialize::Copy { dir_owner: None }).unwrap();
        assert_eq!((stats.files_linked, stats.files_copied), (0, 3));
        assert_eq!(fs::read(copy.join("tool")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(mode_of(&copy.join("tool")), 0o555);
        assert_eq!(mode_of(&copy.join("sub/x")), 0o444);
        assert_eq!(fs::metadata(copy.join("sub/x")).unwrap().nlink(), 1);

        // Into a directory that is not empty: refused.
        assert!(matches!(
            materialize(&store, &tree, &copy, Materialize::Copy { dir_owner: None }),
            Err(InputError::Destination { .. })
        ));
    }

    #[test]
    fn copies_share_an_inode_where_links_would() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(&tmp.path().join("store"), 1 << 30);
        let a = put_blob(&store, b"same");
        let b = put_blob(&store, b"other");
        let sub = put_dir(
            &store,
            &reapi::Directory {
                files: vec![file("a2", &a, false), file("a3", &a, true)],
                ..Default::default()
            },
        );
        let root = put_dir(
            &store,
            &reapi::Directory {
                files: vec![
                    file("a1", &a, false),
                    file("b", &b, false),
                    file("x1", &a, true),
                ],
                directories: vec![dir("sub", &sub)],
                ..Default::default()
            },
        );
        let tree = resolve(&store, &root).unwrap();
        let inode = |dest: &Path, p: &str| fs::metadata(dest.join(p)).unwrap().ino();
        let mut patterns = Vec::new();
        for (name, mode) in [
            ("linked", Materialize::HardLink { dir_owner: None }),
            ("copied", Materialize::Copy { dir_owner: None }),
        ] {
            let dest = tmp.path().join(name);
            materialize(&store, &tree, &dest, mode).unwrap();
            let paths = ["a1", "b", "x1", "sub/a2", "sub/a3"];
            // For each path, the first path with the same inode.
            let pattern: Vec<&str> = paths
                .iter()
                .map(|p| {
                    *paths
                        .iter()
                        .find(|q| inode(&dest, q) == inode(&dest, p))
                        .unwrap()
                })
                .collect();
            assert_eq!(mode_of(&dest.join("sub/a3")), 0o555);
            assert_eq!(mode_of(&dest.join("sub/a2")), 0o444);
            patterns.push(pattern);
        }
        assert_eq!(patterns[0], ["a1", "b", "x1", "a1", "x1"]);
        assert_eq!(patterns[0], patterns[1]);
    }

    #[test]
    fn materialize_gives_directories_to_the_action_uid() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(&tmp.path().join("store"), 1 << 30);
        let data = put_blob(&store, b"data");
        let root = tree_with_sub(
            &store,
            reapi::Directory {
                files: vec![file("x", &data, false)],
                ..Default::default()
            },
        );
        let tree = resolve(&store, &root).unwrap();
        let dest = tmp.path().join("exec");
        let owner = Some((54321, 54322));
        materialize(
            &store,
            &tree,
            &dest,
            Materialize::HardLink { dir_owner: owner },
        )
        .unwrap();
        for d in [&dest, &dest.join("sub")] {
            let m = fs::metadata(d).unwrap();
            assert_eq!((m.uid(), m.gid()), (54321, 54322));
        }
        // Files stay the store's.
        let m = fs::metadata(dest.join("sub/x")).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o444));
    }

    #[test]
    fn materializes_ten_thousand_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = test_store(&tmp.path().join("store"), 1 << 34);
        // 10 top directories of 100 subdirectories of 10 files each:
        // 10,000 distinct files in 1,010 directories.
        let mut top = Vec::new();
        let mut n = 0u32;
        for t in 0..10 {
            let mut subs = Vec::new();
            for s in 0..100 {
                let files = (0..10)
                    .map(|f| {
                        n += 1;
                        let d = put_blob(&store, format!("file number {n}\n").as_bytes());
                        file(&format!("f{f:02}.txt"), &d, n % 7 == 0)
                    })
                    .collect();
                let d = put_dir(
                    &store,
                    &reapi::Directory {
                        files,
                        ..Default::default()
                    },
                );
                subs.push(dir(&format!("s{s:03}"), &d));
            }
            let d = put_dir(
                &store,
                &reapi::Directory {
                    directories: subs,
                    ..Default::default()
                },
            );
            top.push(dir(&format!("t{t}"), &d));
        }
        let root = put_dir(
            &store,
            &reapi::Directory {
                directories: top,
                ..Default::default()
            },
        );
        let started = Instant::now();
        let tree = resolve(&store, &root).unwrap();
        let resolved = started.elapsed();
        assert_eq!((tree.file_count(), tree.directory_count()), (10_000, 1_010));
        // Make the executable twins first, as earlier actions would have.
        for f in tree.files() {
            store.link_source(&f.digest, f.is_executable).unwrap();
        }
        let dest = tmp.path().join("exec");
        let stats = materialize(
            &store,
            &tree,
            &dest,
            Materialize::HardLink { dir_owner: None },
        )
        .unwrap();
        // For comparison: the bare system calls, one thread, same layout,
        // same file system, right after. On this VM's disk the first tree
        // made pays for cold allocation metadata, so the comparison favours
        // the bare loop.
        let bare = tmp.path().join("bare");
        let started = Instant::now();
        fs::create_dir(&bare).unwrap();
        for d in tree.directories() {
            fs::create_dir(bare.join(d)).unwrap();
        }
        let bare_dirs = started.elapsed();
        for f in tree.files() {
            let src = store.blob_path(&f.digest);
            fs::hard_link(src, bare.join(&f.path)).unwrap();
        }
        let bare_total = started.elapsed();
        println!(
            "resolve: {resolved:?}; materialize {} files in {} directories: {:?} \
             (bare loop after it: mkdir {bare_dirs:?}, with links {bare_total:?})",
            stats.files_linked, stats.directories, stats.elapsed
        );
        assert_eq!(stats.files_linked, 10_000);
        assert_eq!(stats.directories, 1_011);
        for f in tree.files() {
            let path = dest.join(&f.path);
            let meta = fs::metadata(&path).unwrap();
            let src = store
                .link_source(&f.digest, f.is_executable)
                .unwrap()
                .unwrap();
            assert_eq!(meta.ino(), fs::metadata(&src).unwrap().ino(), "{}", f.path);
            assert_eq!(meta.mode() & 0o111 != 0, f.is_executable, "{}", f.path);
            assert_eq!(Digest::of_bytes(&fs::read(&path).unwrap()), f.digest);
        }
    }

    #[allow(deprecated)]
    pub(crate) fn command(
        wd: &str,
        files: &[&str],
        dirs: &[&str],
        paths: &[&str],
    ) -> reapi::Command {
        let v = |s: &[&str]| s.iter().map(|p| p.to_string()).collect();
        reapi::Command {
            working_directory: wd.into(),
            output_files: v(files),
            output_directories: v(dirs),
            output_paths: v(paths),
            ..Default::default()
        }
    }

    #[test]
    fn creates_output_parents_under_the_working_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir(root.join("wd")).unwrap();
        let cmd = command("wd", &["out/a/file"], &["gen/dir"], &[]);
        create_output_parents(root, "wd", &cmd, None).unwrap();
        assert!(root.join("wd/out/a").is_dir());
        assert!(root.join("wd/gen").is_dir());
        assert!(!root.join("wd/gen/dir").exists());
        assert!(!root.join("wd/out/a/file").exists());
        assert_eq!(mode_of(&root.join("wd/out/a")), 0o755);

        // output_paths wins over the older fields.
        let cmd = command("", &["ignored/x"], &[], &["p/q/r", "top"]);
        create_output_parents(root, "", &cmd, None).unwrap();
        assert!(root.join("p/q").is_dir());
        assert!(!root.join("ignored").exists());
    }

    #[test]
    fn refuses_bad_output_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for (wd, path, field) in [
            ("", "../x", 0),
            ("wd", "a/../../../x", 0),
            ("", "/abs", 0),
            ("", "a//b", 0),
            ("", "a/", 2),
            ("", "", 0),
            ("../up", "x", 1),
            ("/abs", "x", 1),
        ] {
            let cmd = match field {
                0 => command(wd, &[path], &[], &[]),
                1 => command(wd, &[], &[path], &[]),
                _ => command(wd, &[], &[], &[path]),
            };
            match create_output_parents(root, wd, &cmd, None) {
                Err(InputError::Invalid { path: p, .. }) => {
                    assert!(p == path || p == wd, "{wd:?} {path:?}: named {p:?}")
                }
                other => panic!("{wd:?} {path:?}: {other:?}"),
            }
        }
        // Climbing back in is fine; the whole working directory is a valid
        // output directory.
        let cmd = command("wd", &["a/../b"], &[""], &[]);
        create_output_parents(root, "wd", &cmd, None).unwrap();
        // So is climbing out of the working directory while staying inside
        // the input root (BuildStream's `../../install`).
        let cmd = command("a/b/c", &["../../../install/x"], &[], &[]);
        create_output_parents(root, "a/b/c", &cmd, None).unwrap();
        assert!(root.join("install").is_dir());
        assert!(root.join("wd").is_dir());
        assert_eq!(fs::read_dir(root.join("wd")).unwrap().count(), 0);
    }

    #[test]
    fn never_creates_parents_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(tmp.path(), root.join("link")).unwrap();
        let cmd = command("", &["link/escaped/x"], &[], &[]);
        let err = create_output_parents(&root, "", &cmd, None).unwrap_err();
        assert!(matches!(&err, InputError::Invalid { path, .. } if path == "link/escaped/x"));
        assert!(!tmp.path().join("escaped").exists());
    }
}
