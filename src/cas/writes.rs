//! Writing blobs: from memory after checking them ([`Store::put`]), or
//! streamed through a [`BlobWriter`].

use std::sync::Arc;

use super::shares::User;
use super::{BlobWriter, Error, Result, Store};
use crate::digest::Digest;

impl Store {
    /// Stores a blob held in memory after checking it against its digest.
    pub fn put(self: &Arc<Self>, digest: &Digest, data: &[u8]) -> Result<()> {
        self.put_as(None, digest, data)
    }

    /// [`put`](Self::put) for `user`, to whom a new blob is charged.
    pub fn put_as(self: &Arc<Self>, user: User, digest: &Digest, data: &[u8]) -> Result<()> {
        if data.len() as u64 != digest.size() {
            return Err(Error::SizeMismatch {
                expected: *digest,
                actual: data.len() as u64,
            });
        }
        let actual = Digest::of_bytes(data);
        if actual != *digest {
            return Err(Error::HashMismatch {
                expected: *digest,
                actual: actual.hex(),
            });
        }
        if self.contains_as(digest, user)? {
            return Ok(());
        }
        let mut writer = self.writer_as(user, *digest)?.already_verified();
        writer.write(data)?;
        writer.commit()
    }

    /// Starts writing a blob; see [`BlobWriter`].
    pub fn writer(self: &Arc<Self>, digest: Digest) -> Result<BlobWriter> {
        self.writer_as(None, digest)
    }

    /// [`writer`](Self::writer) for `user`, to whom the blob is charged.
    pub fn writer_as(self: &Arc<Self>, user: User, digest: Digest) -> Result<BlobWriter> {
        BlobWriter::create(Arc::clone(self), digest, self.shares.group_for(user))
    }
}
