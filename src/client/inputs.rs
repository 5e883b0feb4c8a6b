//! `run --input DIR`: a local directory as an action's input root. The
//! tree becomes REAPI `Directory` messages (children sorted by name, as the
//! protocol requires), and every blob the daemon lacks is uploaded: small
//! ones in batches, large ones streamed with ByteStream Write.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use prost::Message;
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

use super::ClientError;
use crate::digest::Digest;
use crate::proto::bytestream::{self, byte_stream_client::ByteStreamClient};
use crate::proto::reapi::{
    self, content_addressable_storage_client::ContentAddressableStorageClient,
};

/// Blobs up to this size go in batches; the daemon accepts batches of at
/// least 4 MiB (`store.max-batch-size`), and the request has some overhead.
const BATCH_LIMIT: u64 = 3 << 20;
/// The size of each ByteStream Write message.
const CHUNK: usize = 1 << 20;

/// Where a blob's bytes are.
pub enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Every blob of an input root, by digest.
#[derive(Default)]
pub struct Blobs(BTreeMap<Digest, Source>);

impl Blobs {
    pub fn add_bytes(&mut self, bytes: Vec<u8>) -> Digest {
        let d = Digest::of_bytes(&bytes);
        self.0.entry(d).or_insert(Source::Bytes(bytes));
        d
    }

    pub fn add_message(&mut self, msg: &impl Message) -> Digest {
        self.add_bytes(msg.encode_to_vec())
    }

    fn add_file(&mut self, path: &Path) -> Result<Digest, ClientError> {
        let local = |source| ClientError::Local {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(local)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).map_err(local)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let d = Digest::new(hasher.finalize().into(), size);
        self.0.entry(d).or_insert(Source::File(path.to_owned()));
        Ok(d)
    }

    /// Uploads the blobs the daemon does not have yet.
    pub async fn upload(self, ch: &Channel) -> Result<(), ClientError> {
        let mut cas = ContentAddressableStorageClient::new(ch.clone());
        let missing = cas
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                blob_digests: self.0.keys().map(Digest::to_proto).collect(),
                ..Default::default()
            })
            .await
            .map_err(ClientError::rpc("upload (FindMissingBlobs)"))?
            .into_inner()
            .missing_blob_digests;
        let mut batch: Vec<reapi::batch_update_blobs_request::Request> = Vec::new();
        let mut batch_bytes = 0u64;
        for d in missing {
            let digest = Digest::from_proto(&d).map_err(|e| {
                ClientError::Protocol(format!("the daemon named a bad digest: {e}"))
            })?;
            let Some(source) = self.0.get(&digest) else {
                continue;
            };
            if digest.size() > BATCH_LIMIT {
                write_stream(ch, &digest, source).await?;
                continue;
            }
            if batch_bytes + digest.size() > BATCH_LIMIT {
                send_batch(&mut cas, std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += digest.size();
            batch.push(super::wire::batch_blob(d, read_all(source)?));
        }
        if !batch.is_empty() {
            send_batch(&mut cas, batch).await?;
        }
        Ok(())
    }
}

fn read_all(source: &Source) -> Result<Vec<u8>, ClientError> {
    match source {
        Source::Bytes(b) => Ok(b.clone()),
        Source::File(p) => std::fs::read(p).map_err(|source| ClientError::Local {
            path: p.clone(),
            source,
        }),
    }
}

async fn send_batch(
    cas: &mut ContentAddressableStorageClient<Channel>,
    requests: Vec<reapi::batch_update_blobs_request::Request>,
) -> Result<(), ClientError> {
    let answers = cas
        .batch_update_blobs(super::wire::batch_update(requests))
        .await
        .map_err(ClientError::rpc("upload (BatchUpdateBlobs)"))?
        .into_inner();
    for r in answers.responses {
        if let Some(s) = r.status.filter(|s| s.code != 0) {
            return Err(ClientError::Rpc {
                call: "upload (BatchUpdateBlobs)",
                status: tonic::Status::new(s.code.into(), s.message),
            });
        }
    }
    Ok(())
}

async fn write_stream(ch: &Channel, digest: &Digest, source: &Source) -> Result<(), ClientError> {
    let data = read_all(source)?;
    let name = format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        digest.hex(),
        digest.size()
    );
    let total = data.len();
    let messages: Vec<bytestream::WriteRequest> = data
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, chunk)| bytestream::WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * CHUNK) as i64,
            finish_write: i * CHUNK + chunk.len() == total,
            data: chunk.to_vec().into(),
        })
        .collect();
    ByteStreamClient::new(ch.clone())
        .write(tokio_stream::iter(messages))
        .await
        .map_err(ClientError::rpc("upload (ByteStream Write)"))?;
    Ok(())
}

/// The input root for `dir`: its digest, with every blob of the tree in
/// `blobs`. Files keep their executable bit; symbolic links are kept as
/// links; anything else (sockets, devices) is an error.
pub fn tree(dir: &Path, blobs: &mut Blobs) -> Result<Digest, ClientError> {
    let local = |path: &Path| {
        let path = path.to_owned();
        move |source| ClientError::Local { path, source }
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(local(dir))?
        .collect::<Result<_, _>>()
        .map_err(local(dir))?;
    entries.sort_by_key(|e| e.file_name());
    let mut out = reapi::Directory::default();
    for entry in entries {
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| ClientError::Local {
                path: path.clone(),
                source: std::io::Error::other("the name is not UTF-8, which REAPI requires"),
            })?;
        let meta = std::fs::symlink_metadata(&path).map_err(local(&path))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            let digest = tree(&path, blobs)?;
            out.directories.push(reapi::DirectoryNode {
                name,
                digest: Some(digest.to_proto()),
            });
        } else if kind.is_file() {
            let digest = blobs.add_file(&path)?;
            out.files.push(reapi::FileNode {
                name,
                digest: Some(digest.to_proto()),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                ..Default::default()
            });
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(local(&path))?;
            out.symlinks.push(reapi::SymlinkNode {
                name,
                target: target.to_string_lossy().into_owned(),
                ..Default::default()
            });
        } else {
            return Err(ClientError::Local {
                path,
                source: std::io::Error::other(
                    "not a file, directory or symbolic link, so it cannot be an input",
                ),
            });
        }
    }
    Ok(blobs.add_message(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_lists_files_links_and_directories_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), b"bee").unwrap();
        std::fs::write(dir.path().join("a.sh"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.path().join("a.sh"), PermissionsExt::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("sub/b", dir.path().join("link")).unwrap();
        let mut blobs = Blobs::default();
        let root = tree(dir.path(), &mut blobs).unwrap();
        let Source::Bytes(bytes) = &blobs.0[&root] else {
            panic!("the root is a message")
        };
        let d = reapi::Directory::decode(bytes.as_slice()).unwrap();
        assert_eq!(d.files.len(), 1);
        assert_eq!(d.files[0].name, "a.sh");
        assert!(d.files[0].is_executable);
        assert_eq!(d.symlinks[0].target, "sub/b");
        assert_eq!(d.directories[0].name, "sub");
        assert!(blobs.0.contains_key(&Digest::of_bytes(b"bee")));
    }
}
