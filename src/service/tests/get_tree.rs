//! GetTree's paging: every directory exactly once across the pages, the
//! token the service issued and no other.

use tokio_stream::StreamExt as _;
use tonic::Code;

use super::{Harness, as_caller, proto, user};
use crate::digest::Digest;
use crate::proto::reapi;
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorage as _;
use prost::Message as _;

/// A root with `n` empty-but-distinct child directories. Returns the root
/// digest and every directory's digest.
async fn tree(h: &Harness, n: usize) -> (Digest, Vec<Digest>) {
    let mut blobs = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let child = reapi::Directory {
            node_properties: None,
            files: vec![],
            directories: vec![],
            symlinks: vec![reapi::SymlinkNode {
                name: format!("link{i}"),
                target: format!("target{i}"),
                node_properties: None,
            }],
        }
        .encode_to_vec();
        nodes.push(reapi::DirectoryNode {
            name: format!("d{i:03}"),
            digest: proto(&Digest::of_bytes(&child)),
        });
        blobs.push(child);
    }
    let root = reapi::Directory {
        directories: nodes,
        ..Default::default()
    }
    .encode_to_vec();
    blobs.push(root.clone());
    let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    h.upload(&user(1000, false), &refs).await;
    (
        Digest::of_bytes(&root),
        blobs.iter().map(|b| Digest::of_bytes(b)).collect(),
    )
}

async fn page(
    h: &Harness,
    root: &Digest,
    size: i32,
    token: &str,
) -> Result<Vec<reapi::GetTreeResponse>, Code> {
    let stream = h
        .cas()
        .get_tree(as_caller(
            &user(1000, false),
            reapi::GetTreeRequest {
                root_digest: proto(root),
                page_size: size,
                page_token: token.to_owned(),
                ..Default::default()
            },
        ))
        .await
        .map_err(|s| s.code())?
        .into_inner();
    let pages: Vec<_> = stream.collect().await;
    pages.into_iter().map(|p| p.map_err(|s| s.code())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_cover_every_directory_once_and_tokens_continue() {
    let h = Harness::new("");
    let (root, all) = tree(&h, 25).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls < 20, "paging never ends");
        let responses = page(&h, &root, 10, &token).await.unwrap();
        // One call may stream several pages; the last one's token says
        // where the next call starts.
        let last = responses.last().expect("at least one response").clone();
        for r in &responses {
            assert!(r.directories.len() <= 10, "a page over page_size");
            seen.extend(
                r.directories
                    .iter()
                    .map(|d| Digest::of_bytes(&d.encode_to_vec())),
            );
        }
        if last.next_page_token.is_empty() {
            break;
        }
        token = last.next_page_token;
    }
    let mut want = all.clone();
    want.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, want, "every directory, each once");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_the_service_did_not_issue_and_missing_roots_are_refused() {
    let h = Harness::new("");
    let (root, _) = tree(&h, 3).await;
    assert_eq!(
        page(&h, &root, 2, "not-a-token").await.unwrap_err(),
        Code::InvalidArgument
    );
    assert_eq!(
        page(&h, &root, -1, "").await.unwrap_err(),
        Code::InvalidArgument
    );
    let absent = Digest::of_bytes(b"no such directory");
    assert_eq!(page(&h, &absent, 0, "").await.unwrap_err(), Code::NotFound);
}
