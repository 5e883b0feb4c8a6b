//! Collecting an action's outputs from its exec root into the CAS.
//!
//! Output paths are relative to the command's working directory (not the
//! input root). With REAPI 2.1's `output_paths`, each may turn out to be a
//! file, a directory or a symlink; with the older `output_files` and
//! `output_directories`, a symlink found at a declared path is reported in
//! `output_file_symlinks` or `output_directory_symlinks`. A declared output
//! that does not exist is simply left out.
//!
//! Files are moved into the store with [`Store::ingest_file`] (renamed, not
//! copied), so collecting is destructive: the exec root is not usable
//! afterwards except for removal. A file is ingested once even when several
//! declared outputs cover it (an output directory may contain another).
//!
//! Nothing here follows a symlink: types come from `lstat`, a symlink's
//! target is recorded as it is, and an output whose parent directory is a
//! symlink (or not a directory) counts as absent rather than being looked
//! for wherever the link points.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstatat};

use prost::Message;

use super::inputs::{self, OutputKind};
use crate::cas::{self, Ingest, Store, User};
use crate::digest::Digest;
use crate::proto::reapi;

/// Output directories nested deeper than this are refused, which keeps the
/// recursion that walks them bounded.
const MAX_DEPTH: usize = 512;

/// Why outputs could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A declared output path (or the working directory) is malformed.
    /// INVALID_ARGUMENT.
    #[error("invalid output path {path:?}: {reason}")]
    Invalid { path: String, reason: String },
    /// A fifo, socket or device among the outputs, which REAPI cannot
    /// represent. `path` is relative to the working directory.
    #[error("output {path:?} is a special file (fifo, socket or device)")]
    Special { path: String },
    /// An output of `output_files` that is a directory, or of
    /// `output_directories` that is a file. REAPI asks for
    /// FAILED_PRECONDITION.
    #[error("output {path:?} was declared as {declared} but is {found}")]
    WrongType {
        path: String,
        declared: &'static str,
        found: &'static str,
    },
    /// A name or symlink target that is not UTF-8, or a tree too deep; REAPI
    /// paths are strings.
    #[error("output {path:?} cannot be reported: {reason}")]
    Unrepresentable { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] cas::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The outputs of one action, ready for its `ActionResult`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outputs {
    /// `output_files`.
    pub files: Vec<reapi::OutputFile>,
    /// `output_directories`.
    pub directories: Vec<reapi::OutputDirectory>,
    /// `output_symlinks`: symlinks found at `output_paths` (REAPI 2.1).
    pub symlinks: Vec<reapi::OutputSymlink>,
    /// `output_file_symlinks`: symlinks found at `output_files`.
    pub file_symlinks: Vec<reapi::OutputSymlink>,
    /// `output_directory_symlinks`: symlinks found at `output_directories`.
    pub directory_symlinks: Vec<reapi::OutputSymlink>,
}

/// What was found at a path of the exec root.
#[derive(Debug, Clone)]
enum Node {
    File {
        digest: Digest,
        is_executable: bool,
    },
    /// The digest of its `Directory` message.
    Dir(Digest),
    Symlink(String),
}

/// Collects the outputs `command` declares from `exec_root` into `store`.
///
/// `how` says whether files may be stored by a new name for their inode or
/// must be copied (see [`Ingest`]). The action's processes must all be gone.
///
/// Each output directory becomes a `Tree` (its root `Directory` and every
/// distinct descendant, lists sorted by name) stored in the CAS, with every
/// `Directory` message stored too so that `root_directory_digest` is usable
/// on its own. Outputs are reported in the order declared.
pub fn collect(
    store: &Arc<Store>,
    exec_root: &Path,
    command: &reapi::Command,
    how: Ingest,
    user: User,
) -> Result<Outputs, OutputError> {
    let declared = inputs::output_paths(&command.working_directory, command)
        .map_err(|(path, reason)| OutputError::Invalid { path, reason })?;
    let root = open_dir_path(exec_root)?;
    let mut c = Collector {
        store,
        exec_root,
        root,
        how,
        user,
        found: HashMap::new(),
        directories: HashMap::new(),
        parents: HashMap::new(),
    };
    // Outer paths first: walking a directory records everything below it,
    // so an output inside an output directory is found in `found` instead
    // of being looked for after its file was taken into the store.
    let mut order: Vec<usize> = (0..declared.len()).collect();
    order.sort_by_key(|&i| declared[i].components.len());
    let mut nodes: Vec<Option<Node>> = vec![None; declared.len()];
    for i in order {
        let out = &declared[i];
        nodes[i] = c.node_at(&out.components, out.declared)?;
    }
    let mut outputs = Outputs::default();
    for (out, node) in declared.iter().zip(nodes) {
        let Some(node) = node else { continue };
        let path = out.declared.to_owned();
        match (node, out.kind) {
            (
                Node::File {
                    digest,
                    is_executable,
                },
                OutputKind::Any | OutputKind::File,
            ) => outputs.files.push(reapi::OutputFile {
                path,
                digest: Some(digest.to_proto()),
                is_executable,
                ..Default::default()
            }),
            (Node::Dir(root), OutputKind::Any | OutputKind::Directory) => {
                outputs.directories.push(c.output_directory(path, &root)?)
            }
            (Node::Symlink(target), kind) => {
                let link = reapi::OutputSymlink {
                    path,
                    target,
                    ..Default::default()
                };
                match kind {
                    OutputKind::Any => outputs.symlinks.push(link),
                    OutputKind::File => outputs.file_symlinks.push(link),
                    OutputKind::Directory => outputs.directory_symlinks.push(link),
                }
            }
            (Node::File { .. }, OutputKind::Directory) => {
                return Err(OutputError::WrongType {
                    path,
                    declared: "an output directory",
                    found: "a regular file",
                });
            }
            (Node::Dir(_), OutputKind::File) => {
                return Err(OutputError::WrongType {
                    path,
                    declared: "an output file",
                    found: "a directory",
                });
            }
        }
    }
    Ok(outputs)
}

/// Takes a captured stdout or stderr file into the store. A file that
/// does not exist is the empty blob.
pub fn ingest_stream(
    store: &Arc<Store>,
    path: &Path,
    how: Ingest,
    user: User,
) -> Result<Digest, OutputError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(store.ingest_file(path, how, user)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Digest::EMPTY),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

/// Parent directories kept open at once; past this the cache starts over.
const OPEN_PARENTS: usize = 64;

const O_DIR: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn open_dir_path(path: &Path) -> Result<OwnedFd, OutputError> {
    nix::fcntl::open(path, O_DIR, Mode::empty()).map_err(|e| io_err("open", path)(e.into()))
}

/// Everything the collector walks is reached from descriptors: the exec
/// root is opened once, each declared output's parent directory is opened
/// beneath it with `openat2` refusing every symlink (`RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`), and each entry below is
/// opened relative to its directory with `O_NOFOLLOW`. No path string is
/// resolved twice, and nothing is ever looked for through a link, so
/// swapping a directory for a symlink while outputs are collected leads
/// nowhere.
struct Collector<'a> {
    store: &'a Arc<Store>,
    exec_root: &'a Path,
    root: OwnedFd,
    how: Ingest,
    /// Whom new blobs are charged to (see `cas::shares`).
    user: User,
    /// Everything found so far, by path relative to the exec root.
    found: HashMap<String, Node>,
    /// Every Directory message built, by digest.
    directories: HashMap<Digest, reapi::Directory>,
    /// Parent directories opened so far (`None`: not a real directory).
    parents: HashMap<String, Option<Rc<OwnedFd>>>,
}

impl Collector<'_> {
    /// What is at the path made of `parts` (relative to the exec root),
    /// ingesting it if it is new; `None` if nothing is there. `shown` is
    /// the path as the client declared it, for errors.
    fn node_at(&mut self, parts: &[&str], shown: &str) -> Result<Option<Node>, OutputError> {
        let rel = parts.join("/");
        if let Some(node) = self.found.get(&rel) {
            return Ok(Some(node.clone()));
        }
        let Some((name, parent_parts)) = parts.split_last() else {
            // The exec root itself (a working directory of "" declared as
            // an output directory).
            let dir = Dir::from_fd(self.dup_root()?).map_err(|e| self.io("open", "", e))?;
            let node = Node::Dir(self.walk_dir(dir, "", shown, 0)?);
            self.found.insert(rel, node.clone());
            return Ok(Some(node));
        };
        let Some(parent) = self.parent(&parent_parts.join("/"))? else {
            return Ok(None);
        };
        match fstatat(&*parent, *name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => {}
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(self.io("stat", &rel, e)),
        }
        let node = self.visit(&*parent, name, &rel, shown, 0)?;
        Ok(Some(node))
    }

    fn dup_root(&self) -> Result<OwnedFd, OutputError> {
        self.root.try_clone().map_err(io_err("dup", self.exec_root))
    }

    /// The directory at `rel` beneath the exec root, opened without
    /// following any symlink; `None` when it is missing, a symlink or not
    /// a directory (an output below it is absent).
    fn parent(&mut self, rel: &str) -> Result<Option<Rc<OwnedFd>>, OutputError> {
        if let Some(fd) = self.parents.get(rel) {
            return Ok(fd.clone());
        }
        let how = OpenHow::new().flags(O_DIR).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        let path = if rel.is_empty() { "." } else { rel };
        let fd = match nix::fcntl::openat2(&self.root, path, how) {
            Ok(fd) => Some(Rc::new(fd)),
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => {
                tracing::debug!(
                    path = %self.exec_root.join(rel).display(),
                    "an output's parent is not a real directory; the output is absent"
                );
                None
            }
            Err(e) => return Err(self.io("open", rel, e)),
        };
        if self.parents.len() >= OPEN_PARENTS {
            self.parents.clear();
        }
        self.parents.insert(rel.to_owned(), fd.clone());
        Ok(fd)
    }

    /// Records (and ingests) the entry `name` of the open directory
    /// `parent`. `rel` is its path relative to the exec root, `shown` to
    /// the working directory.
    fn visit(
        &mut self,
        parent: &impl AsFd,
        name: &str,
        rel: &str,
        shown: &str,
        depth: usize,
    ) -> Result<Node, OutputError> {
        let st = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| self.io("stat", rel, e))?;
        let node = match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFLNK => {
                let target =
                    readlinkat(parent, name).map_err(|e| self.io("read symlink", rel, e))?;
                let target = target
                    .into_string()
                    .map_err(|_| OutputError::Unrepresentable {
                        path: shown.to_owned(),
                        reason: "the symlink target is not UTF-8".into(),
                    })?;
                Node::Symlink(target)
            }
            SFlag::S_IFREG => {
                let fd = openat(
                    parent,
                    name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io("open", rel, e))?;
                let file = fs::File::from(fd);
                // The mode before ingestion, which may make it 0444.
                let mode = file
                    .metadata()
                    .map_err(io_err("stat", &self.exec_root.join(rel)))?;
                let digest = self.store.ingest_open(
                    &file,
                    &self.exec_root.join(rel),
                    self.how,
                    self.user,
                )?;
                Node::File {
                    digest,
                    is_executable: mode.mode() & 0o111 != 0,
                }
            }
            SFlag::S_IFDIR => {
                let dir = Dir::openat(parent, name, O_DIR, Mode::empty())
                    .map_err(|e| self.io("open", rel, e))?;
                Node::Dir(self.walk_dir(dir, rel, shown, depth)?)
            }
            _ => {
                return Err(OutputError::Special {
                    path: shown.to_owned(),
                });
            }
        };
        self.found.insert(rel.to_owned(), node.clone());
        Ok(node)
    }

    /// Builds (and stores) the Directory message for the open directory
    /// `dir`, ingesting its files; returns its digest.
    fn walk_dir(
        &mut self,
        mut dir: Dir,
        rel: &str,
        shown: &str,
        depth: usize,
    ) -> Result<Digest, OutputError> {
        if depth > MAX_DEPTH {
            return Err(OutputError::Unrepresentable {
                path: shown.to_owned(),
                reason: format!("directories nested more than {MAX_DEPTH} deep"),
            });
        }
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| self.io("read directory", rel, e))?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let name =
                String::from_utf8(bytes.to_vec()).map_err(|_| OutputError::Unrepresentable {
                    path: join(shown, &String::from_utf8_lossy(bytes)),
                    reason: "the name is not UTF-8".into(),
                })?;
            names.push(name);
        }
        let mut out = reapi::Directory::default();
        for name in names {
            let child_rel = join(rel, &name);
            let child_shown = join(shown, &name);
            let node = self.visit(&dir, &name, &child_rel, &child_shown, depth + 1)?;
            match node {
                Node::File {
                    digest,
                    is_executable,
                } => out.files.push(reapi::FileNode {
                    name,
                    digest: Some(digest.to_proto()),
                    is_executable,
                    ..Default::default()
                }),
                Node::Dir(digest) => out.directories.push(reapi::DirectoryNode {
                    name,
                    digest: Some(digest.to_proto()),
                }),
                Node::Symlink(target) => out.symlinks.push(reapi::SymlinkNode {
                    name,
                    target,
                    ..Default::default()
                }),
            }
        }
        out.files.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        out.directories.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        out.symlinks.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let bytes = out.encode_to_vec();
        let digest = Digest::of_bytes(&bytes);
        if !self.directories.contains_key(&digest) {
            self.store.put(&digest, &bytes)?;
            self.directories.insert(digest, out);
        }
        Ok(digest)
    }

    fn io(&self, op: &'static str, rel: &str, e: Errno) -> OutputError {
        io_err(op, &self.exec_root.join(rel))(e.into())
    }

    /// The `OutputDirectory` for a directory whose Directory message is
    /// `root`: a `Tree` of it and every distinct descendant, stored in the
    /// CAS.
    fn output_directory(
        &self,
        path: String,
        root: &Digest,
    ) -> Result<reapi::OutputDirectory, OutputError> {
        let mut children = Vec::new();
        let mut seen = HashSet::from([*root]);
        let mut queue = VecDeque::from([*root]);
        while let Some(d) = queue.pop_front() {
            let dir = &self.directories[&d];
            for sub in &dir.directories {
                let sub = Digest::from_required(sub.digest.as_ref()).expect("digest we made");
                if seen.insert(sub) {
                    children.push(self.directories[&sub].clone());
                    queue.push_back(sub);
                }
            }
        }
        let tree = reapi::Tree {
            root: Some(self.directories[root].clone()),
            children,
        };
        let bytes = tree.encode_to_vec();
        let tree_digest = Digest::of_bytes(&bytes);
        self.store.put(&tree_digest, &bytes)?;
        Ok(reapi::OutputDirectory {
            path,
            tree_digest: Some(tree_digest.to_proto()),
            is_topologically_sorted: false,
            root_directory_digest: Some(root.to_proto()),
        })
    }
}

/// `base/name`, or `name` when `base` is empty.
fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_owned()
    } else {
        format!("{base}/{name}")
    }
}

#[cfg(test)]
mod tests;
