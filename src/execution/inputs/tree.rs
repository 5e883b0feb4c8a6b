//! The input tree: resolved from the root digest and validated whole.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use prost::Message;

use super::*;
use crate::cas::Store;
use crate::digest::Digest;
use crate::proto::reapi;

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
    pub(super) directories: Vec<String>,
    pub(super) files: Vec<InputFile>,
    pub(super) symlinks: Vec<InputSymlink>,
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
pub(super) fn resolve_limited(
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

pub(super) struct Resolver<'a> {
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
pub(super) fn join(prefix: &str, name: &str) -> Result<String, InputError> {
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
pub(super) fn validate_directory(dir: &reapi::Directory, path: &str) -> Result<(), InputError> {
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
pub(super) fn check_sorted<'a>(
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
pub(super) fn check_name(name: &str) -> Result<(), String> {
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
pub(super) fn check_symlink_target(
    link_path: &str,
    target: &str,
    depth: usize,
) -> Result<(), InputError> {
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
