//! Building blocks every REAPI client of the daemon needs, shared by this
//! crate's client commands, the integration tests and the benchmarks: the
//! BatchUpdateBlobs request, and a channel over a stream that is already
//! connected (so that a caller can connect as another uid first).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::digest::Digest;
use crate::proto::reapi;
use reapi::batch_update_blobs_request::Request as BatchBlob;

/// One blob of a BatchUpdateBlobs request, uncompressed.
pub fn batch_blob(digest: reapi::Digest, data: impl Into<Bytes>) -> BatchBlob {
    BatchBlob {
        digest: Some(digest),
        data: data.into(),
        compressor: 0,
    }
}

/// A BatchUpdateBlobs request for the default instance and digest function.
pub fn batch_update(blobs: impl IntoIterator<Item = BatchBlob>) -> reapi::BatchUpdateBlobsRequest {
    reapi::BatchUpdateBlobsRequest {
        requests: blobs.into_iter().collect(),
        ..Default::default()
    }
}

/// A BatchUpdateBlobs request for `blobs`, each under its own digest.
pub fn batch_update_of<'a>(
    blobs: impl IntoIterator<Item = &'a [u8]>,
) -> reapi::BatchUpdateBlobsRequest {
    batch_update(
        blobs
            .into_iter()
            .map(|b| batch_blob(Digest::of_bytes(b).to_proto(), Bytes::copy_from_slice(b))),
    )
}

/// A channel over one already-connected stream. It cannot reconnect: when
/// the stream closes, calls on the channel fail.
pub async fn channel_over<S>(stream: S) -> Result<Channel, tonic::transport::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let slot = Arc::new(Mutex::new(Some(stream)));
    Endpoint::from_static("http://lre.invalid")
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let s = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            async move {
                s.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("this channel cannot reconnect"))
            }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_requests_carry_each_blob_under_its_digest() {
        let r = batch_update_of([&b"a"[..], b"bc"]);
        assert_eq!(r.requests.len(), 2);
        assert_eq!(
            r.requests[1].digest,
            Some(Digest::of_bytes(b"bc").to_proto())
        );
        assert_eq!(&r.requests[1].data[..], b"bc");
        assert_eq!(r.instance_name, "");
    }
}
