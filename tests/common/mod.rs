//! The test-support module of the tests and the benchmarks (each bench
//! includes it with `#[path = "../tests/common/mod.rs"] mod common;`): runs
//! the real daemon binary on a private state directory, unix socket and
//! loopback TCP port ([`Daemon`]), connects tonic clients to it, optionally
//! as another uid, and uploads, finds and names blobs. Request builders
//! shared with the client live in `nativelink_lre::client::wire`.

#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

mod daemon;
pub mod exec;
pub mod upstream;
pub mod users;

pub use daemon::*;
pub use nativelink_lre::client::wire;
pub use nativelink_lre::digest::Digest;
pub use nativelink_lre::proto::bytestream;
pub use nativelink_lre::proto::google::longrunning::Operation;
pub use nativelink_lre::proto::reapi;

/// Runs `connect` on a fresh thread whose effective uid and gid are `uid`.
/// Linux credentials are per thread; glibc's setresuid would change every
/// thread of the test process, so this uses the raw system calls, and the
/// thread switches back to root before it ends. The kernel records the
/// credentials at socket creation (TCP owner) and connect (SO_PEERCRED).
pub fn as_uid<T: Send + 'static>(uid: u32, connect: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: raw setresgid/setresuid affect only this thread's
        // credentials; -1 leaves the real and saved ids (root) in place so
        // the thread can switch back, which it does before returning.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, -1i64, uid as i64, -1i64),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, -1i64, uid as i64, -1i64),
                0
            );
        }
        let out = connect();
        // SAFETY: as above; back to root for this thread only.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresuid, -1i64, 0i64, -1i64), 0);
            assert_eq!(libc::syscall(libc::SYS_setresgid, -1i64, 0i64, -1i64), 0);
        }
        out
    })
    .join()
    .unwrap()
}

/// A channel over one connected stream (see [`wire::channel_over`]).
pub async fn channel_over<S>(stream: S) -> Channel
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    wire::channel_over(stream).await.unwrap()
}

pub async fn unix_channel(path: &Path, uid: Option<u32>) -> Channel {
    let path = path.to_owned();
    let std_stream = match uid {
        Some(uid) => as_uid(uid, move || {
            std::os::unix::net::UnixStream::connect(path).unwrap()
        }),
        None => std::os::unix::net::UnixStream::connect(path).unwrap(),
    };
    std_stream.set_nonblocking(true).unwrap();
    channel_over(tokio::net::UnixStream::from_std(std_stream).unwrap()).await
}

pub async fn tcp_channel(addr: SocketAddr, uid: Option<u32>) -> Channel {
    let std_stream = match uid {
        Some(uid) => as_uid(uid, move || std::net::TcpStream::connect(addr).unwrap()),
        None => std::net::TcpStream::connect(addr).unwrap(),
    };
    std_stream.set_nodelay(true).unwrap();
    std_stream.set_nonblocking(true).unwrap();
    channel_over(tokio::net::TcpStream::from_std(std_stream).unwrap()).await
}

/// Content of a given size that differs per seed.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Uploads blobs with BatchUpdateBlobs, `per_request` at a time (keep a
/// request under the 4 MiB batch limit); asserts that each was stored.
pub async fn upload_batched(ch: &Channel, blobs: &[Vec<u8>], per_request: usize) {
    let mut client =
        reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(ch.clone());
    for chunk in blobs.chunks(per_request) {
        let resp = client
            .batch_update_blobs(wire::batch_update_of(chunk.iter().map(Vec::as_slice)))
            .await
            .expect("BatchUpdateBlobs")
            .into_inner();
        for r in resp.responses {
            let status = r.status.unwrap();
            assert_eq!(status.code, 0, "{}", status.message);
        }
    }
}

/// FindMissingBlobs: which of `digests` the daemon lacks.
pub async fn find_missing(ch: &Channel, digests: &[Digest]) -> Vec<Digest> {
    reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(ch.clone())
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            blob_digests: digests.iter().map(Digest::to_proto).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
        .iter()
        .map(|d| Digest::from_proto(d).unwrap())
        .collect()
}

pub fn upload_name(d: &Digest) -> String {
    format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        d.hex(),
        d.size()
    )
}

pub fn read_name(d: &Digest) -> String {
    format!("blobs/{}/{}", d.hex(), d.size())
}

/// Verifies that every blob file under `state/cas` hashes to its name.
/// Returns how many were checked.
pub fn verify_store(state: &Path) -> usize {
    let mut n = 0;
    for shard in std::fs::read_dir(state.join("cas")).unwrap() {
        let shard = shard.unwrap();
        if !shard.file_type().unwrap().is_dir() {
            continue;
        }
        for blob in std::fs::read_dir(shard.path()).unwrap() {
            let blob = blob.unwrap();
            let bytes = std::fs::read(blob.path()).unwrap();
            let d = Digest::of_bytes(&bytes);
            assert_eq!(
                d.hex(),
                blob.file_name().to_string_lossy(),
                "blob {} does not hash to its name",
                blob.path().display()
            );
            n += 1;
        }
    }
    n
}
