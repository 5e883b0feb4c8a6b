//! ContentAddressableStorage: FindMissingBlobs, the batch calls and GetTree.

use std::pin::Pin;
use std::sync::Arc;

use prost::Message;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::{Context, RequestError, blocking, caller, check_digest_function};
use crate::cas::tree;
use crate::digest::Digest;
use crate::proto::google::rpc;
use crate::proto::reapi::{self, content_addressable_storage_server::ContentAddressableStorage};

/// Directories per GetTree response when the client does not say.
const DEFAULT_TREE_PAGE: usize = 1000;
/// Bytes of directories per GetTree response, well under gRPC's 4 MiB.
const TREE_PAGE_BYTES: usize = 2 << 20;

pub struct CasService {
    ctx: Arc<Context>,
}

impl CasService {
    pub fn new(ctx: Arc<Context>) -> Self {
        CasService { ctx }
    }
}

fn rpc_status(code: Code, message: impl Into<String>) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: code as i32,
        message: message.into(),
        details: vec![],
    })
}

fn ok() -> Option<rpc::Status> {
    rpc_status(Code::Ok, "")
}

fn to_rpc_status(status: Status) -> Option<rpc::Status> {
    rpc_status(status.code(), status.message())
}

/// Reads each blob from the store, with a per-blob status.
async fn read_blobs(
    store: Arc<crate::cas::Store>,
    digests: Vec<reapi::Digest>,
) -> Result<Vec<reapi::batch_read_blobs_response::Response>, Status> {
    blocking(move || {
        Ok(digests
            .into_iter()
            .map(|proto| {
                let (data, status) = match Digest::from_proto(&proto) {
                    Err(e) => (Vec::new(), to_rpc_status(e.into())),
                    Ok(d) => match store.read(&d) {
                        Ok(Some(data)) => (data, ok()),
                        Ok(None) => (
                            Vec::new(),
                            rpc_status(Code::NotFound, format!("blob {d} is not in the store")),
                        ),
                        Err(e) => (Vec::new(), to_rpc_status(e.into())),
                    },
                };
                reapi::batch_read_blobs_response::Response {
                    digest: Some(proto),
                    data: data.into(),
                    status,
                    compressor: reapi::compressor::Value::Identity as i32,
                }
            })
            .collect())
    })
    .await
}

type TreeStream = Pin<Box<dyn Stream<Item = Result<reapi::GetTreeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        req: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        let user = caller(&req)?.uid;
        let req = req.into_inner();
        self.ctx.check_instance(&req.instance_name)?;
        check_digest_function(req.digest_function)?;
        let digests = req
            .blob_digests
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Digest::from_proto(d)
                    .map_err(|e| RequestError::Invalid(format!("blob_digests[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // What a user is told is present, that user uses (see `cas::shares`).
        let missing = self.ctx.blobs.find_missing(digests, user).await?;
        Ok(Response::new(reapi::FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(Digest::to_proto).collect(),
        }))
    }

    async fn batch_update_blobs(
        &self,
        req: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        let user = caller(&req)?.uid;
        let req = req.into_inner();
        self.ctx.check_instance(&req.instance_name)?;
        check_digest_function(req.digest_function)?;
        self.ctx
            .check_batch(req.requests.iter().map(|r| r.data.len() as u64))?;
        let store = Arc::clone(&self.ctx.store);
        // One hop to a blocking thread for the whole batch, and the work a
        // batch can share done once (`Store::put_batch`).
        let responses = blocking(move || {
            let mut statuses: Vec<Option<Option<rpc::Status>>> = Vec::new();
            let mut blobs: Vec<(Digest, &[u8])> = Vec::new();
            for r in &req.requests {
                if r.compressor != reapi::compressor::Value::Identity as i32 {
                    statuses.push(Some(rpc_status(
                        Code::InvalidArgument,
                        format!(
                            "compressor {} is not supported; this server advertises no compressors",
                            r.compressor
                        ),
                    )));
                    continue;
                }
                match Digest::from_required(r.digest.as_ref()) {
                    Err(e) => statuses.push(Some(to_rpc_status(e.into()))),
                    Ok(d) => {
                        statuses.push(None);
                        blobs.push((d, &r.data));
                    }
                }
            }
            let mut stored = store.put_batch(user, &blobs).into_iter();
            let responses = req
                .requests
                .iter()
                .zip(statuses)
                .map(|(r, status)| {
                    let status = status.unwrap_or_else(|| match stored.next() {
                        Some(Ok(())) => ok(),
                        Some(Err(e)) => to_rpc_status(e.into()),
                        None => rpc_status(Code::Internal, "no result for this blob"),
                    });
                    reapi::batch_update_blobs_response::Response {
                        digest: r.digest.clone(),
                        status,
                    }
                })
                .collect();
            Ok(responses)
        })
        .await?;
        Ok(Response::new(reapi::BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        req: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        let req = req.into_inner();
        self.ctx.check_instance(&req.instance_name)?;
        check_digest_function(req.digest_function)?;
        self.ctx
            .check_batch(req.digests.iter().map(|d| d.size_bytes.max(0) as u64))?;
        let store = Arc::clone(&self.ctx.store);
        let mut responses = read_blobs(Arc::clone(&store), req.digests).await?;
        // What the local store lacks is fetched from the upstream (verified
        // like any upload) and read again; the rest is answered as it is.
        if self.ctx.blobs.reads_through() {
            let missing: Vec<(usize, Digest)> = responses
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.status
                        .as_ref()
                        .is_some_and(|s| s.code == Code::NotFound as i32)
                })
                .filter_map(|(i, r)| Some((i, Digest::from_proto(r.digest.as_ref()?).ok()?)))
                .collect();
            if !missing.is_empty() {
                let digests: Vec<Digest> = missing.iter().map(|(_, d)| *d).collect();
                self.ctx.blobs.fetch(&digests).await;
                let again =
                    read_blobs(store, digests.iter().map(Digest::to_proto).collect()).await?;
                for ((i, _), r) in missing.into_iter().zip(again) {
                    responses[i] = r;
                }
            }
        }
        Ok(Response::new(reapi::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(
        &self,
        req: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let req = req.into_inner();
        self.ctx.check_instance(&req.instance_name)?;
        check_digest_function(req.digest_function)?;
        let root = Digest::from_required(req.root_digest.as_ref())
            .map_err(|e| RequestError::Invalid(format!("root_digest: {e}")))?;
        if req.page_size < 0 {
            return Err(
                RequestError::Invalid(format!("page_size {} is negative", req.page_size)).into(),
            );
        }
        let page_size = match req.page_size {
            0 => DEFAULT_TREE_PAGE,
            n => n as usize,
        };
        // The token is the number of directories already returned.
        let skip: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse().map_err(|_| {
                RequestError::Invalid(format!(
                    "page_token {:?} was not issued by this server",
                    req.page_token
                ))
            })?
        };
        self.ctx.blobs.fetch_tree(root).await;
        // Fail a missing root before streaming starts, so the client sees
        // NOT_FOUND as the call's status.
        let store = Arc::clone(&self.ctx.store);
        if !blocking({
            let store = Arc::clone(&store);
            move || Ok(store.contains(&root)?)
        })
        .await?
        {
            return Err(Status::not_found(format!(
                "root directory {root} is not in the store"
            )));
        }
        // One page at a time on the blocking pool, each only once the
        // client has room for it: a client that takes nothing holds no
        // thread.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut walk = Some(tree::TreeWalk::new(root));
            let mut index = 0usize;
            while let Some(mut w) = walk.take() {
                let Ok(permit) = tx.reserve().await else {
                    return; // the client went away
                };
                let store = Arc::clone(&store);
                let page = tokio::task::spawn_blocking(move || {
                    let mut page = Vec::new();
                    let mut page_bytes = 0usize;
                    while let Some((_, dir)) = w.next(&store)? {
                        index += 1;
                        if index <= skip {
                            continue;
                        }
                        page_bytes += dir.encoded_len();
                        page.push(dir);
                        if page.len() >= page_size || page_bytes >= TREE_PAGE_BYTES {
                            return Ok((Some(w), page, index));
                        }
                    }
                    Ok::<_, tree::TreeError>((None, page, index))
                })
                .await;
                let item = match page {
                    Ok(Ok((rest, directories, at))) => {
                        index = at;
                        let next_page_token = match &rest {
                            Some(_) => index.to_string(),
                            None => String::new(),
                        };
                        walk = rest;
                        Ok(reapi::GetTreeResponse {
                            directories,
                            next_page_token,
                        })
                    }
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(Status::internal(format!("walking tree {root}: {e}"))),
                };
                permit.send(item);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
