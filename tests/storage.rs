//! The storage service end to end: the real daemon binary, driven by tonic
//! clients over its unix socket and loopback TCP, as root and as other uids.

mod common;

use common::*;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

use bytestream::byte_stream_client::ByteStreamClient;
use reapi::action_cache_client::ActionCacheClient;
use reapi::capabilities_client::CapabilitiesClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient as CasClient;

const HELLO: &[u8] = b"hello";

fn digest_proto(hash: &str, size: i64) -> reapi::Digest {
    reapi::Digest {
        hash: hash.into(),
        size_bytes: size,
    }
}

async fn batch_put(ch: &Channel, blobs: &[&[u8]]) {
    let owned: Vec<Vec<u8>> = blobs.iter().map(|b| b.to_vec()).collect();
    common::exec::upload(ch, &owned).await;
}

async fn bs_write(
    ch: &Channel,
    name: String,
    chunks: Vec<(i64, Vec<u8>, bool)>,
) -> Result<i64, tonic::Status> {
    let msgs: Vec<bytestream::WriteRequest> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, (offset, data, finish))| bytestream::WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: offset,
            finish_write: finish,
            data: data.into(),
        })
        .collect();
    ByteStreamClient::new(ch.clone())
        .write(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner().committed_size)
}

async fn bs_read(
    ch: &Channel,
    name: String,
    offset: i64,
    limit: i64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = ByteStreamClient::new(ch.clone())
        .read(bytestream::ReadRequest {
            resource_name: name,
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        out.extend_from_slice(&msg.data);
    }
    Ok(out)
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{needle:?} not in {:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn capabilities_over_unix_and_tcp() {
    let d = Daemon::start("");
    for ch in [d.unix().await, d.tcp().await] {
        let caps = CapabilitiesClient::new(ch)
            .get_capabilities(reapi::GetCapabilitiesRequest::default())
            .await
            .unwrap()
            .into_inner();
        let cache = caps.cache_capabilities.unwrap();
        assert_eq!(
            cache.digest_functions,
            vec![reapi::digest_function::Value::Sha256 as i32]
        );
        assert!(cache.max_batch_total_size_bytes >= 4 << 20);
        assert!(
            cache
                .action_cache_update_capabilities
                .unwrap()
                .update_enabled
        );
        assert!(cache.supported_compressors.is_empty());
        assert!(caps.execution_capabilities.unwrap().exec_enabled);
        let low = caps.low_api_version.unwrap();
        let high = caps.high_api_version.unwrap();
        assert_eq!((low.major, low.minor), (2, 0));
        assert!(high.major == 2 && high.minor >= low.minor);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn execution_can_be_switched_off() {
    let d = Daemon::start("\n[execution]\nenabled = false\n");
    let caps = CapabilitiesClient::new(d.unix().await)
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!caps.execution_capabilities.unwrap().exec_enabled);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_capability_follows_the_callers_trust() {
    let d = Daemon::start("untrusted-action-cache-writes = \"deny\"\n");
    let caps = |ch| async move {
        CapabilitiesClient::new(ch)
            .get_capabilities(reapi::GetCapabilitiesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .cache_capabilities
            .unwrap()
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    };
    assert!(caps(d.unix().await).await, "root is trusted");
    assert!(
        !caps(d.unix_as(4001).await).await,
        "untrusted writes are denied"
    );
    assert!(
        !caps(d.tcp_as(4001).await).await,
        "untrusted writes are denied over TCP too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_calls_report_each_blob() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let good = Digest::of_bytes(HELLO);
    let other = Digest::of_bytes(b"other");
    let resp = CasClient::new(ch.clone())
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![
                reapi::batch_update_blobs_request::Request {
                    digest: Some(good.to_proto()),
                    data: HELLO.to_vec().into(),
                    compressor: 0,
                },
                // Wrong hash for the data.
                reapi::batch_update_blobs_request::Request {
                    digest: Some(other.to_proto()),
                    data: b"0ther".to_vec().into(),
                    compressor: 0,
                },
                // Right hash, wrong size.
                reapi::batch_update_blobs_request::Request {
                    digest: Some(digest_proto(&Digest::of_bytes(b"sized").hex(), 4)),
                    data: b"sized".to_vec().into(),
                    compressor: 0,
                },
                // Malformed digest.
                reapi::batch_update_blobs_request::Request {
                    digest: Some(digest_proto("../../etc/passwd", 5)),
                    data: HELLO.to_vec().into(),
                    compressor: 0,
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = resp
        .responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(
        codes,
        vec![
            0,
            Code::InvalidArgument as i32,
            Code::InvalidArgument as i32,
            Code::InvalidArgument as i32
        ]
    );
    assert!(
        resp.responses[1]
            .status
            .as_ref()
            .unwrap()
            .message
            .contains("hashes to")
    );
    // Only the good blob is stored; the empty blob is always present.
    let m = find_missing(
        &ch,
        &[good, other, Digest::of_bytes(b"sized"), Digest::EMPTY],
    )
    .await;
    assert_eq!(m, vec![other, Digest::of_bytes(b"sized")]);

    let read = CasClient::new(ch.clone())
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![
                good.to_proto(),
                other.to_proto(),
                Digest::EMPTY.to_proto(),
                digest_proto("zz", 1),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(i32, Vec<u8>)> = read
        .responses
        .iter()
        .map(|r| (r.status.as_ref().unwrap().code, r.data.to_vec()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, HELLO.to_vec()),
            (Code::NotFound as i32, vec![]),
            (0, vec![]),
            (Code::InvalidArgument as i32, vec![])
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_digests_are_invalid_in_every_rpc() {
    let d = Daemon::start("");
    // A file that exists on the host under a path-like "hash".
    let probes = [
        digest_proto("../../../../etc/passwd", 1),
        digest_proto(&"A".repeat(64), 1),
        digest_proto(&Digest::of_bytes(HELLO).hex(), -5),
        digest_proto(&"0".repeat(63), 1),
    ];
    let ch = d.tcp().await;
    for p in &probes {
        let r = CasClient::new(ch.clone())
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                blob_digests: vec![p.clone()],
                ..Default::default()
            })
            .await;
        assert_status(r, Code::InvalidArgument, "blob_digests[0]");
        let r = ActionCacheClient::new(ch.clone())
            .get_action_result(reapi::GetActionResultRequest {
                action_digest: Some(p.clone()),
                ..Default::default()
            })
            .await;
        assert_status(r, Code::InvalidArgument, "action_digest");
        let r = ActionCacheClient::new(ch.clone())
            .update_action_result(reapi::UpdateActionResultRequest {
                action_digest: Some(p.clone()),
                action_result: Some(Default::default()),
                ..Default::default()
            })
            .await;
        assert_status(r, Code::InvalidArgument, "action_digest");
        let r = CasClient::new(ch.clone())
            .get_tree(reapi::GetTreeRequest {
                root_digest: Some(p.clone()),
                ..Default::default()
            })
            .await;
        assert_status(r, Code::InvalidArgument, "root_digest");
        let r = bs_read(&ch, format!("blobs/{}/{}", p.hash, p.size_bytes), 0, 0).await;
        assert_status(r, Code::InvalidArgument, "resource name");
        let r = ByteStreamClient::new(ch.clone())
            .query_write_status(bytestream::QueryWriteStatusRequest {
                resource_name: format!(
                    "uploads/{}/blobs/{}/{}",
                    uuid::Uuid::new_v4(),
                    p.hash,
                    p.size_bytes
                ),
            })
            .await;
        assert_status(r, Code::InvalidArgument, "resource name");
    }
    // An action result that refers to a malformed digest is refused too.
    let r = ActionCacheClient::new(ch.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(Digest::of_bytes(b"a").to_proto()),
            action_result: Some(reapi::ActionResult {
                stdout_digest: Some(probes[0].clone()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_status(r, Code::InvalidArgument, "stdout_digest");
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_limit_is_enforced() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let big = vec![1u8; 3 << 20];
    let r = CasClient::new(ch.clone())
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: (0..2)
                .map(|_| reapi::batch_update_blobs_request::Request {
                    digest: Some(Digest::of_bytes(&big).to_proto()),
                    data: big.clone().into(),
                    compressor: 0,
                })
                .collect(),
            ..Default::default()
        })
        .await;
    assert_status(r, Code::InvalidArgument, "max_batch_total_size_bytes");
    let r = CasClient::new(ch.clone())
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![digest_proto(&"a".repeat(64), 5 << 20)],
            ..Default::default()
        })
        .await;
    assert_status(r, Code::InvalidArgument, "max_batch_total_size_bytes");
    // Sizes whose sum overflows 64 bits are refused, not wrapped.
    let r = CasClient::new(ch.clone())
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![digest_proto(&"a".repeat(64), i64::MAX); 3],
            ..Default::default()
        })
        .await;
    assert_status(r, Code::InvalidArgument, "max_batch_total_size_bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_instance_names_are_refused_by_name() {
    let d = Daemon::start("instance-names = [\"\", \"main\"]\n");
    let ch = d.unix().await;
    let r = CasClient::new(ch.clone())
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            instance_name: "other".into(),
            ..Default::default()
        })
        .await;
    assert_status(r, Code::InvalidArgument, "\"other\"");
    let ok = CasClient::new(ch.clone())
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            instance_name: "main".into(),
            ..Default::default()
        })
        .await;
    assert!(ok.is_ok());
    let r = bs_read(
        &ch,
        format!("other/{}", read_name(&Digest::of_bytes(HELLO))),
        0,
        0,
    )
    .await;
    assert_status(r, Code::InvalidArgument, "\"other\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn bytestream_write_and_ranged_read() {
    let d = Daemon::start("");
    let ch = d.tcp().await;
    let blob = data(1, 3 << 20);
    let dg = Digest::of_bytes(&blob);
    let chunks: Vec<(i64, Vec<u8>, bool)> = blob
        .chunks(64 << 10)
        .enumerate()
        .map(|(i, c)| {
            (
                (i * (64 << 10)) as i64,
                c.to_vec(),
                (i + 1) * (64 << 10) >= blob.len(),
            )
        })
        .collect();
    assert_eq!(
        bs_write(&ch, upload_name(&dg), chunks).await.unwrap(),
        dg.size() as i64
    );
    assert_eq!(bs_read(&ch, read_name(&dg), 0, 0).await.unwrap(), blob);
    assert_eq!(
        bs_read(&ch, read_name(&dg), 1000, 0).await.unwrap(),
        &blob[1000..]
    );
    assert_eq!(
        bs_read(&ch, read_name(&dg), 1000, 10).await.unwrap(),
        &blob[1000..1010]
    );
    assert_eq!(
        bs_read(&ch, read_name(&dg), dg.size() as i64, 0)
            .await
            .unwrap(),
        b""
    );
    assert_status(
        bs_read(&ch, read_name(&dg), dg.size() as i64 + 1, 0).await,
        Code::OutOfRange,
        "past the end",
    );
    assert_status(
        bs_read(&ch, read_name(&dg), -1, 0).await,
        Code::OutOfRange,
        "negative",
    );
    assert_status(
        bs_read(&ch, read_name(&dg), 0, -1).await,
        Code::InvalidArgument,
        "negative",
    );
    assert_status(
        bs_read(&ch, read_name(&Digest::of_bytes(b"absent")), 0, 0).await,
        Code::NotFound,
        "not in the store",
    );
    // Writing a blob that exists answers at once with its full size.
    let again = bs_write(&ch, upload_name(&dg), vec![(0, blob[..10].to_vec(), false)]).await;
    assert_eq!(again.unwrap(), dg.size() as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn bytestream_refuses_bad_data_and_names() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let dg = Digest::of_bytes(HELLO);
    // Wrong data for the digest: refused, nothing stored.
    let r = bs_write(&ch, upload_name(&dg), vec![(0, b"jello".to_vec(), true)]).await;
    assert_status(r, Code::InvalidArgument, "hashes to");
    // Too much data.
    let r = bs_write(&ch, upload_name(&dg), vec![(0, b"hello!".to_vec(), true)]).await;
    assert_status(r, Code::InvalidArgument, "received 6 bytes");
    // Too little.
    let r = bs_write(&ch, upload_name(&dg), vec![(0, b"hell".to_vec(), true)]).await;
    assert_status(r, Code::InvalidArgument, "received 4 bytes");
    // A gap in the offsets.
    let r = bs_write(
        &ch,
        upload_name(&dg),
        vec![(0, b"he".to_vec(), false), (3, b"lo".to_vec(), true)],
    )
    .await;
    assert_status(r, Code::InvalidArgument, "write_offset 3");
    assert_eq!(find_missing(&ch, &[dg]).await.len(), 1);
    let tmp_files = std::fs::read_dir(d.state.join("tmp")).unwrap().count();
    assert_eq!(tmp_files, 0, "refused uploads left temporary files");

    let h = dg.hex();
    let u = uuid::Uuid::new_v4();
    for (name, needle) in [
        (format!("uploads/{u}/blobs/{h}"), "expected"),
        (format!("uploads/not-a-uuid/blobs/{h}/5"), "not a UUID"),
        (format!("uploads/{u}/blobs/{h}/-5"), "negative"),
        (format!("uploads/{u}/blobs/{h}/5x"), "decimal"),
        (format!("blobs/{h}/5"), "expected"),
        (
            format!("uploads/{u}/compressed-blobs/zstd/{h}/5"),
            "not supported",
        ),
        (String::new(), "empty"),
    ] {
        let r = bs_write(&ch, name.clone(), vec![(0, HELLO.to_vec(), true)]).await;
        assert_status(r, Code::InvalidArgument, needle);
    }
    for (name, needle) in [
        (format!("blobs/{h}/5/extra"), "expected"),
        (format!("uploads/{u}/blobs/{h}/5"), "expected"),
        (format!("a//b/blobs/{h}/5"), "empty path segment"),
    ] {
        assert_status(
            bs_read(&ch, name, 0, 0).await,
            Code::InvalidArgument,
            needle,
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_upload_is_invisible_and_resumable() {
    let d = Daemon::start("");
    let blob = data(7, 2 << 20);
    let dg = Digest::of_bytes(&blob);
    let name = upload_name(&dg);
    let half = blob.len() / 2;
    {
        // Send half, then drop the connection in the middle of the stream.
        let ch = d.unix().await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut client = ByteStreamClient::new(ch);
        let call = tokio::spawn(async move {
            client
                .write(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        tx.send(bytestream::WriteRequest {
            resource_name: name.clone(),
            write_offset: 0,
            finish_write: false,
            data: blob[..half].to_vec().into(),
        })
        .await
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        call.abort();
        let _ = call.await;
    }
    let ch = d.unix().await;
    // Give the daemon a moment to notice the reset.
    let mut status = None;
    for _ in 0..50 {
        let s = ByteStreamClient::new(ch.clone())
            .query_write_status(bytestream::QueryWriteStatusRequest {
                resource_name: name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if s.committed_size == half as i64 {
            status = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = status.expect("the partial upload was not kept");
    assert!(!status.complete);
    assert_eq!(
        find_missing(&ch, &[dg]).await.len(),
        1,
        "a partial upload became visible"
    );
    // Resume at the committed offset.
    let n = bs_write(
        &ch,
        name.clone(),
        vec![(half as i64, blob[half..].to_vec(), true)],
    )
    .await;
    assert_eq!(n.unwrap(), dg.size() as i64);
    assert_eq!(bs_read(&ch, read_name(&dg), 0, 0).await.unwrap(), blob);
    let s = ByteStreamClient::new(ch.clone())
        .query_write_status(bytestream::QueryWriteStatusRequest {
            resource_name: name,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(s.complete);
    assert_eq!(s.committed_size, dg.size() as i64);
}

fn put_directory(dirs: &mut Vec<Vec<u8>>, dir: reapi::Directory) -> Digest {
    let bytes = dir.encode_to_vec();
    let d = Digest::of_bytes(&bytes);
    dirs.push(bytes);
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn get_tree_pages_through_the_whole_tree() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let mut blobs = Vec::new();
    // root -> 5 children, each with a distinct leaf file.
    let children: Vec<reapi::DirectoryNode> = (0..5)
        .map(|i| {
            let file = format!("file {i}");
            let dd = put_directory(
                &mut blobs,
                reapi::Directory {
                    files: vec![reapi::FileNode {
                        name: format!("f{i}"),
                        digest: Some(Digest::of_bytes(file.as_bytes()).to_proto()),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            );
            reapi::DirectoryNode {
                name: format!("d{i}"),
                digest: Some(dd.to_proto()),
            }
        })
        .collect();
    let root = put_directory(
        &mut blobs,
        reapi::Directory {
            directories: children,
            ..Default::default()
        },
    );
    let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
    batch_put(&ch, &refs).await;
    let get = |token: String| {
        let ch = ch.clone();
        async move {
            let mut s = CasClient::new(ch)
                .get_tree(reapi::GetTreeRequest {
                    root_digest: Some(root.to_proto()),
                    page_size: 2,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut pages = Vec::new();
            while let Some(p) = s.message().await.unwrap() {
                pages.push(p);
            }
            pages
        }
    };
    let pages = get(String::new()).await;
    let sizes: Vec<usize> = pages.iter().map(|p| p.directories.len()).collect();
    assert_eq!(sizes, vec![2, 2, 2, 0]);
    assert_eq!(pages.last().unwrap().next_page_token, "");
    assert_eq!(Digest::of_message(&pages[0].directories[0]), root);
    // Resuming from the second page's token gives the rest.
    let rest = get(pages[1].next_page_token.clone()).await;
    let total: usize = rest.iter().map(|p| p.directories.len()).sum();
    assert_eq!(total, 2);
    // A missing root is NOT_FOUND, a bad token INVALID_ARGUMENT.
    let r = CasClient::new(ch.clone())
        .get_tree(reapi::GetTreeRequest {
            root_digest: Some(Digest::of_bytes(b"nope").to_proto()),
            ..Default::default()
        })
        .await;
    assert_status(r, Code::NotFound, "not in the store");
    let r = CasClient::new(ch.clone())
        .get_tree(reapi::GetTreeRequest {
            root_digest: Some(root.to_proto()),
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await;
    assert_status(r, Code::InvalidArgument, "page_token");
}

fn result_for(out: &Digest) -> reapi::ActionResult {
    reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out/a.txt".into(),
            digest: Some(out.to_proto()),
            ..Default::default()
        }],
        stdout_digest: Some(Digest::of_bytes(b"stdout text").to_proto()),
        ..Default::default()
    }
}

async fn get_result(
    ch: &Channel,
    action: &Digest,
    inline: bool,
) -> Result<reapi::ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            inline_stdout: inline,
            inline_output_files: if inline {
                vec!["out/a.txt".into()]
            } else {
                vec![]
            },
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn put_result(
    ch: &Channel,
    action: &Digest,
    result: reapi::ActionResult,
) -> Result<(), tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            ..Default::default()
        })
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn action_cache_inlines_and_never_returns_missing_outputs() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let out = Digest::of_bytes(b"output");
    batch_put(&ch, &[b"output", b"stdout text"]).await;
    let action = Digest::of_bytes(b"action 1");
    assert_status(
        get_result(&ch, &action, false).await,
        Code::NotFound,
        "no action result",
    );
    put_result(&ch, &action, result_for(&out)).await.unwrap();
    let plain = get_result(&ch, &action, false).await.unwrap();
    assert!(plain.stdout_raw.is_empty() && plain.output_files[0].contents.is_empty());
    let inlined = get_result(&ch, &action, true).await.unwrap();
    assert_eq!(&inlined.stdout_raw[..], b"stdout text");
    assert_eq!(&inlined.output_files[0].contents[..], b"output");
    // The output disappears from the store (as eviction would do it): the
    // entry must now be a miss, not a result that points at nothing.
    let path = d.state.join("cas").join(&out.hex()[..2]).join(out.hex());
    std::fs::remove_file(path).unwrap();
    assert_status(
        get_result(&ch, &action, false).await,
        Code::NotFound,
        "no action result",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_users_see_only_their_own_entries_and_roots() {
    let d = Daemon::start("");
    let root = d.unix().await;
    batch_put(&root, &[b"output", b"stdout text"]).await;
    let out = Digest::of_bytes(b"output");
    let a = Digest::of_bytes(b"action by 4001");
    let b = Digest::of_bytes(b"action by 4002");
    let shared = Digest::of_bytes(b"action by root");
    // uid 4001 writes over TCP, uid 4002 over the unix socket.
    let u1 = d.tcp_as(4001).await;
    let u2 = d.unix_as(4002).await;
    put_result(&u1, &a, result_for(&out)).await.unwrap();
    put_result(&u2, &b, result_for(&out)).await.unwrap();
    put_result(&root, &shared, result_for(&out)).await.unwrap();
    // Each sees its own, over either transport.
    assert!(get_result(&u1, &a, false).await.is_ok());
    assert!(get_result(&d.unix_as(4001).await, &a, false).await.is_ok());
    assert!(get_result(&u2, &b, false).await.is_ok());
    assert!(get_result(&d.tcp_as(4002).await, &b, false).await.is_ok());
    // Nobody else does, root included.
    assert_status(get_result(&u2, &a, false).await, Code::NotFound, "");
    assert_status(get_result(&u1, &b, false).await, Code::NotFound, "");
    assert_status(get_result(&root, &a, false).await, Code::NotFound, "");
    // Root's entry is shared.
    assert!(get_result(&u1, &shared, false).await.is_ok());
    assert!(get_result(&u2, &shared, false).await.is_ok());
    // An untrusted user cannot overwrite the shared entry for everyone:
    // their write goes to their own view.
    let poisoned = reapi::ActionResult {
        exit_code: 66,
        ..result_for(&out)
    };
    put_result(&u1, &shared, poisoned).await.unwrap();
    assert_eq!(get_result(&u2, &shared, false).await.unwrap().exit_code, 0);
    assert_eq!(
        get_result(&root, &shared, false).await.unwrap().exit_code,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn disallowed_users_and_denied_writes() {
    let d = Daemon::start(
        "allowed-users = [\"root\", \"4001\"]\nuntrusted-action-cache-writes = \"deny\"\n",
    );
    for ch in [d.unix_as(4002).await, d.tcp_as(4002).await] {
        let r = CapabilitiesClient::new(ch)
            .get_capabilities(reapi::GetCapabilitiesRequest::default())
            .await;
        assert_status(r, Code::PermissionDenied, "allowed-users");
    }
    let u1 = d.unix_as(4001).await;
    assert!(find_missing(&u1, &[Digest::EMPTY]).await.is_empty());
    let r = put_result(&u1, &Digest::of_bytes(b"x"), Default::default()).await;
    assert_status(r, Code::PermissionDenied, "untrusted-action-cache-writes");
    assert!(
        put_result(&d.unix().await, &Digest::of_bytes(b"x"), Default::default())
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_gib_upload_streams_in_bounded_memory() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let chunk = data(3, 1 << 20);
    let total = 1usize << 30;
    // Hash the blob without holding it.
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    for _ in 0..total / chunk.len() {
        sha2::Digest::update(&mut hasher, &chunk);
    }
    let dg = Digest::new(sha2::Digest::finalize(hasher).into(), total as u64);
    let name = upload_name(&dg);
    let n = total / chunk.len();
    let chunk_for_stream = chunk.clone();
    let stream = tokio_stream::iter((0..n).map(move |i| bytestream::WriteRequest {
        resource_name: if i == 0 { name.clone() } else { String::new() },
        write_offset: (i * chunk_for_stream.len()) as i64,
        finish_write: i + 1 == n,
        data: chunk_for_stream.clone().into(),
    }));
    let committed = ByteStreamClient::new(ch.clone())
        .write(stream)
        .await
        .unwrap()
        .into_inner()
        .committed_size;
    assert_eq!(committed, total as i64);
    let rss_mib = d.peak_rss_kib() / 1024;
    eprintln!("daemon peak RSS after a 1 GiB upload: {rss_mib} MiB");
    assert!(
        rss_mib < 200,
        "daemon peak RSS {rss_mib} MiB for a 1 GiB upload"
    );
    assert!(find_missing(&ch, &[dg]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_notifies() {
    let mut d = Daemon::start("");
    let _ = d.unix().await;
    let pid = d.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let seen = d.wait_for_notify("STOPPING=1", std::time::Duration::from_secs(10));
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=Stopping on SIGTERM")),
        "{seen:?}"
    );
    let status = common::wait_timeout(
        d.child.as_mut().unwrap(),
        std::time::Duration::from_secs(30),
    )
    .unwrap();
    assert!(status.success(), "{status}");
}

/// Bytes the store keeps on disk, counted as the daemon counts them.
fn store_bytes(state: &std::path::Path) -> u64 {
    let mut total = 0;
    for shard in std::fs::read_dir(state.join("cas")).unwrap().flatten() {
        if shard.file_type().unwrap().is_dir() {
            for blob in std::fs::read_dir(shard.path()).unwrap().flatten() {
                total += blob.metadata().unwrap().len().div_ceil(4096) * 4096;
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn store_evicts_least_recently_used_down_to_the_low_watermark() {
    let d =
        Daemon::start("\n[store]\nmax-size = \"1MiB\"\nhigh-watermark = 90\nlow-watermark = 50\n");
    let ch = d.unix().await;
    let blobs: Vec<Vec<u8>> = (0..24).map(|i| data(100 + i, 60 << 10)).collect();
    for b in &blobs {
        batch_put(&ch, &[b]).await;
        // Distinct last-use times, oldest first.
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store_bytes(&d.state) > 512 << 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "store still holds {} bytes, over the low watermark",
            store_bytes(&d.state)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of_bytes(b)).collect();
    let gone = find_missing(&ch, &digests).await;
    assert!(!gone.is_empty());
    assert!(gone.contains(&digests[0]), "the oldest blob was kept");
    assert!(!gone.contains(&digests[23]), "the newest blob was evicted");
    // Eviction took the oldest: every evicted blob is older than every kept one.
    let newest_gone = digests.iter().rposition(|d| gone.contains(d)).unwrap();
    assert_eq!(
        newest_gone + 1,
        gone.len(),
        "eviction was not least-recently-used first"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watchdog_is_pinged_when_systemd_asks() {
    let mut d = Daemon::start_with_env("", &[("WATCHDOG_USEC", "300000")]);
    // Two pings within a couple of intervals.
    d.wait_for_notify("WATCHDOG=1", std::time::Duration::from_secs(5));
    d.wait_for_notify("WATCHDOG=1", std::time::Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn journal_lines_carry_syslog_priorities() {
    let mut d = Daemon::start_with_env("", &[("JOURNAL_STREAM", "8:12345")]);
    let (_, stderr) = d.stop();
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("<6>"), "{stderr}");
    assert!(stderr.lines().all(|l| l.starts_with('<')), "{stderr}");
}

/// grpc-core and grpc-java clients send the socket's path as `:authority`
/// on a unix socket, which the HTTP/2 library would refuse. This speaks
/// raw HTTP/2 the way they do and checks the call is answered.
#[test]
fn unix_socket_accepts_the_socket_path_as_authority() {
    use std::io::{Read, Write};
    let d = Daemon::start("");
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    };
    let literal = |index: u8, value: &str| {
        let mut v = vec![0x40 | index, value.len() as u8];
        v.extend(value.as_bytes());
        v
    };
    let authority = d.socket.display().to_string().replace('/', "%2F");
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.extend(literal(
        4,
        "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
    ));
    block.extend(literal(1, &authority));
    let mut content_type = vec![0x40 | 31, 16];
    content_type.extend(b"application/grpc");
    block.extend(content_type);
    let mut te = vec![0x40, 2];
    te.extend(b"te");
    te.push(8);
    te.extend(b"trailers");
    block.extend(te);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // an empty request message
    s.write_all(&out).unwrap();
    // Read frames until stream 1 ends; it must not be reset.
    let mut got_data = false;
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match (head[3], stream) {
            (0x3, 1) => panic!("the server reset the stream (error {:?})", payload),
            (0x0, 1) => got_data |= len > 5,
            (0x1, 1) if head[4] & 0x1 != 0 => break, // trailers, END_STREAM
            (0x4, 0) if head[4] & 0x1 == 0 => s.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(), // ack SETTINGS
            (0x7, _) => panic!("GOAWAY: {payload:?}"),
            _ => {}
        }
    }
    assert!(got_data, "no response message before the trailers");
}

/// FindMissingBlobs answers from the daemon's in-memory index once it is
/// built (a few milliseconds after start on a small store); whatever takes
/// a blob file away behind the daemon's back must make it missing at once.
#[tokio::test(flavor = "multi_thread")]
async fn find_missing_never_claims_a_blob_removed_behind_the_daemons_back() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let blobs: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("behind {i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
    batch_put(&ch, &refs).await;
    // Give the background index time to be built and take over.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of_bytes(b)).collect();
    let missing = |ch: Channel, digests: Vec<Digest>| async move {
        let r = CasClient::new(ch)
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                blob_digests: digests.iter().map(Digest::to_proto).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        r.missing_blob_digests
            .iter()
            .map(|d| Digest::from_proto(d).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(missing(ch.clone(), digests.clone()).await.is_empty());
    let blob_file = |dg: &Digest| d.state.join("cas").join(&dg.hex()[..2]).join(dg.hex());
    // An operator's rm, a mv away, and a truncation in place (root).
    std::fs::remove_file(blob_file(&digests[0])).unwrap();
    std::fs::rename(blob_file(&digests[1]), d.state.join("moved-away")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(blob_file(&digests[2]))
        .unwrap();
    assert_eq!(missing(ch.clone(), digests.clone()).await, digests[..3]);
    // GetActionResult and Execute rely on the same answers: uploaded again,
    // the blobs are present again.
    batch_put(&ch, &refs[..3]).await;
    assert!(missing(ch.clone(), digests.clone()).await.is_empty());
    // The whole shard directory moved away: every blob in it is missing.
    let shard = blob_file(&digests[5]).parent().unwrap().to_owned();
    std::fs::rename(&shard, d.state.join("shard-away")).unwrap();
    let in_shard: Vec<Digest> = digests
        .iter()
        .filter(|dg| blob_file(dg).parent() == Some(shard.as_path()))
        .copied()
        .collect();
    assert_eq!(missing(ch.clone(), digests.clone()).await, in_shard);
}
