//! The services called directly, without a daemon: a [`Context`] on a
//! store in a temporary directory, requests carrying the [`Caller`] that
//! `admit` would attach. Client-streaming calls (ByteStream Write) go
//! through a tonic server on an in-process pipe, since `Streaming` is made
//! only by tonic.

mod bytestream;
mod get_tree;
mod trust;

use std::sync::Arc;

use tonic::Request;
use tonic::transport::Channel;

use super::Context;
use crate::action_cache::ActionCache;
use crate::cas::{Store, StoreConfig};
use crate::config::Config;
use crate::digest::Digest;
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::reapi;
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorage as _;
use crate::trust::{Caller, Policy};

/// A service context on a fresh store.
struct Harness {
    _dir: tempfile::TempDir,
    ctx: Arc<Context>,
}

impl Harness {
    /// The context for a configuration file holding `extra`.
    fn new(extra: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let text = format!("state-dir = {:?}\n{extra}", state.display().to_string());
        let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let store = Store::open(StoreConfig {
            root: state,
            max_size: config.store.max_size.0,
            high_watermark: config.store.high_watermark,
            low_watermark: config.store.low_watermark,
            fsync: false,
            per_user_max_size: config.store.per_user_max_size(),
        })
        .unwrap();
        let action_cache = Arc::new(ActionCache::new(
            Arc::clone(&store),
            config.action_cache.inline_max_size.0,
        ));
        let policy = Arc::new(Policy::from_config(&config));
        let ctx = Context::new(&config, store, action_cache, policy, None);
        Harness { _dir: dir, ctx }
    }

    fn cas(&self) -> super::cas::CasService {
        super::cas::CasService::new(Arc::clone(&self.ctx))
    }

    /// Stores `blobs` through BatchUpdateBlobs, as `caller`.
    async fn upload(&self, caller: &Caller, blobs: &[&[u8]]) {
        let answer = self
            .cas()
            .batch_update_blobs(as_caller(
                caller,
                crate::client::wire::batch_update_of(blobs.iter().copied()),
            ))
            .await
            .unwrap()
            .into_inner();
        for r in answer.responses {
            assert_eq!(r.status.unwrap_or_default().code, 0);
        }
    }

    /// A channel to a ByteStream server on this context whose calls all
    /// come from `caller`.
    async fn bytestream_channel(&self, caller: Caller) -> Channel {
        let (client, server) = tokio::io::duplex(1 << 20);
        let svc = super::bytestream::ByteStreamService::new(Arc::clone(&self.ctx));
        let svc = ByteStreamServer::with_interceptor(svc, move |mut req: Request<()>| {
            req.extensions_mut().insert(caller.clone());
            Ok(req)
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(server))),
        );
        crate::client::wire::channel_over(client).await.unwrap()
    }
}

/// A request as `admit` passes it on: with its caller attached.
fn as_caller<T>(caller: &Caller, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.extensions_mut().insert(caller.clone());
    req
}

fn user(uid: u32, trusted: bool) -> Caller {
    Caller {
        uid: Some(uid),
        name: None,
        trusted,
    }
}

fn proto(d: &Digest) -> Option<reapi::Digest> {
    Some(d.to_proto())
}
