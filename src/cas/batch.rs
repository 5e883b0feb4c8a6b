//! Storing a batch of blobs held in memory (BatchUpdateBlobs), with the
//! work a batch can share done once:
//!
//! - one presence check for the whole batch (the index, or `stat`);
//! - `tmp/` and `cas/` opened once per batch: every temporary file is
//!   created relative to `tmp/` and renamed to `<shard>/<hash>` relative to
//!   `cas/`, so no blob walks the state directory's path;
//! - a large batch's files hashed and written by two threads;
//! - the renames done in groups under one hold of the index's lock, each
//!   blob recorded from its rename's own inotify event, without a `stat`
//!   (see `Index::publishing_many`).
//!
//! Crash safety is that of every write (`writes`): each blob is checked
//! against its digest before its temporary file exists, the file is
//! created read-only with its fixed mtime, flushed when `fsync` is on, and
//! only then renamed into place with `RENAME_NOREPLACE`.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::Mode;

use super::index::NewFile;
use super::shares::User;
use super::writes::{check_hash, check_size};
use super::{Error, Result, Store, usage::disk_cost};
use crate::digest::Digest;

/// Blobs of a batch renamed into place under one hold of the index's
/// lock (so that presence checks wait at most for one group).
const PUBLISH_GROUP: usize = 128;
/// Blobs to write from which a batch is split between two threads.
const TWO_THREADS_FROM: usize = 64;

/// `tmp/` and `cas/`, opened for one batch.
struct Dirs {
    tmp: OwnedFd,
    cas: OwnedFd,
}

/// A blob of the batch to be written: its index in the batch, digest and
/// bytes, and the temporary name it gets.
struct Job<'a> {
    i: usize,
    digest: Digest,
    data: &'a [u8],
    tmp: String,
}

impl Store {
    /// Stores a batch of blobs held in memory, each checked against its
    /// digest: [`put_as`](Self::put_as) for each, with the work a batch can
    /// share done once (see the module comment). One result per blob, in
    /// order.
    pub fn put_batch(&self, user: User, blobs: &[(Digest, &[u8])]) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = blobs
            .iter()
            .map(|(digest, data)| check_size(digest, data))
            .collect();
        let sized: Vec<Digest> = blobs
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|((d, _), _)| *d)
            .collect();
        let present = match self.indexed(&sized, user) {
            Some(present) => present,
            None => sized
                .iter()
                .map(|d| self.contains_as(d, user).unwrap_or(false))
                .collect(),
        };
        let mut present = present.into_iter();
        let mut jobs = Vec::new();
        let mut hash_only = Vec::new();
        for (i, ((digest, data), result)) in blobs.iter().zip(&results).enumerate() {
            if result.is_err() {
                continue;
            }
            if present.next().unwrap_or(false) || digest.is_empty() {
                hash_only.push(i);
            } else {
                let tmp = super::layout::temp_name(&digest.hex());
                jobs.push(Job {
                    i,
                    digest: *digest,
                    data,
                    tmp,
                });
            }
        }
        // A blob already stored is still checked: bad bytes are an error
        // whether or not the store has the blob they claim to be.
        for i in hash_only {
            results[i] = check_hash(&blobs[i].0, blobs[i].1);
        }
        if jobs.is_empty() {
            return results;
        }
        let dirs = match self.open_dirs() {
            Ok(dirs) => dirs,
            Err((path, errno)) => {
                for job in &jobs {
                    results[job.i] = Err(Error::io("open", &path)(errno.into()));
                }
                return results;
            }
        };
        let gid = self
            .shares
            .group_for(user)
            .unwrap_or_else(|| self.shares.shared_gid());
        let written = self.write_all(&dirs, user, &jobs);
        let mut ready = Vec::with_capacity(jobs.len());
        for (job, r) in jobs.iter().zip(written) {
            match r {
                Ok(()) => ready.push(job),
                Err(e) => {
                    let _ = nix::unistd::unlinkat(
                        &dirs.tmp,
                        job.tmp.as_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                    results[job.i] = Err(e);
                }
            }
        }
        for group in ready.chunks(PUBLISH_GROUP) {
            let files: Vec<NewFile> = group
                .iter()
                .map(|job| NewFile {
                    hash: *job.digest.hash(),
                    size: job.digest.size(),
                    gid,
                })
                .collect();
            let published = self.index.publishing_many(
                &files,
                |k| self.rename_in(&dirs, group[k]),
                |k| std::fs::symlink_metadata(self.blob_path(&group[k].digest)).ok(),
            );
            for (job, r) in group.iter().zip(published) {
                results[job.i] = r.map(drop);
            }
        }
        results
    }

    fn open_dirs(&self) -> std::result::Result<Dirs, (PathBuf, nix::errno::Errno)> {
        let open = |path: &PathBuf| {
            nix::fcntl::open(
                path,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| (path.clone(), e))
        };
        Ok(Dirs {
            tmp: open(&self.tmp_dir)?,
            cas: open(&self.cas_dir)?,
        })
    }

    /// Checks and writes every job's temporary file, by two threads for a
    /// large batch. One result per job, in order.
    fn write_all(&self, dirs: &Dirs, user: User, jobs: &[Job]) -> Vec<Result<()>> {
        let write = |jobs: &[Job]| -> Vec<Result<()>> {
            jobs.iter()
                .map(|job| {
                    check_hash(&job.digest, job.data)?;
                    self.write_temp_at(dirs, user, job)
                })
                .collect()
        };
        if jobs.len() < TWO_THREADS_FROM {
            return write(jobs);
        }
        let (first, second) = jobs.split_at(jobs.len() / 2);
        std::thread::scope(|s| {
            let other = std::thread::Builder::new()
                .name("store-batch".into())
                .spawn_scoped(s, || write(second));
            let mut results = write(first);
            match other {
                Ok(handle) => match handle.join() {
                    Ok(rest) => results.extend(rest),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                // No thread to be had: this one does the rest.
                Err(_) => results.extend(write(second)),
            }
            results
        })
    }

    /// Writes one checked blob to its new temporary file in `tmp/`,
    /// created relative to the open `tmp/`; then as every write
    /// ([`fill_temp`](Self::fill_temp)).
    fn write_temp_at(&self, dirs: &Dirs, user: User, job: &Job) -> Result<()> {
        let shown = self.tmp_dir.join(&job.tmp);
        let fd = openat(
            &dirs.tmp,
            job.tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o444),
        )
        .map_err(|e| Error::io("create", &shown)(e.into()))?;
        self.fill_temp(user, File::from(fd), &shown, job.data)
    }

    /// Renames a job's temporary file to `<shard>/<hash>` in `cas/` unless
    /// that exists. Whether the file was renamed into place; as
    /// `publish_at` otherwise (an existing blob is kept, a damaged one
    /// replaced).
    fn rename_in(&self, dirs: &Dirs, job: &Job) -> Result<bool> {
        let hex = job.digest.hex();
        let dest = format!("{}/{hex}", &hex[..2]);
        let rename = || {
            renameat2(
                &dirs.tmp,
                job.tmp.as_str(),
                &dirs.cas,
                dest.as_str(),
                RenameFlags::RENAME_NOREPLACE,
            )
        };
        let renamed = match rename() {
            // The shard directory is made on first use (see `layout`).
            Err(nix::errno::Errno::ENOENT) => {
                super::layout::create_shard(&self.blob_path(&job.digest))?;
                rename()
            }
            other => other,
        };
        match renamed {
            Ok(()) => {
                self.usage.add(disk_cost(job.digest.size()));
                self.maybe_wake_gc();
                Ok(true)
            }
            Err(e) => {
                let tmp = self.tmp_dir.join(&job.tmp);
                let result = if e == nix::errno::Errno::EEXIST {
                    self.publish_at(&tmp, &self.blob_path(&job.digest), job.digest.size())
                } else {
                    Err(Error::io("rename into store", &self.blob_path(&job.digest))(e.into()))
                };
                if result.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                result
            }
        }
    }
}
