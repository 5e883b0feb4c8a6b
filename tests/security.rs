//! Multi-user security, attacked the way a second local user would: the
//! real daemon as root, a throwaway account (`common::users`) talking to it
//! over the unix socket and over loopback TCP. Each test names the hole it
//! closes (issue 8 and issue 15 of the project's tracker).

mod common;

use common::exec::*;
use common::users::User;
use common::*;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient as CasClient;
use tonic::transport::Channel;

fn status_code(r: &reapi::ExecuteResponse) -> i32 {
    r.status.as_ref().map_or(0, |s| s.code)
}

/// Both transports of `d`, as `uid`.
async fn channels_as(d: &Daemon, uid: u32) -> [(&'static str, Channel); 2] {
    [("unix", d.unix_as(uid).await), ("tcp", d.tcp_as(uid).await)]
}

async fn bytestream_read(ch: &Channel, d: &reapi::Digest) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = bytestream::byte_stream_client::ByteStreamClient::new(ch.clone())
        .read(bytestream::ReadRequest {
            resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// Issue 8.1: a client-supplied size only ever means "not present". A
/// second user who asks for another user's blob (pinned by a running
/// action, too) with the right hash and a wrong size, through every call
/// that takes a digest, removes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_size_never_removes_anothers_blob() {
    let attacker = User::create();
    let d = Daemon::start("");
    let owner = d.unix().await;
    let victim = b"#!/bin/sh\necho the victim tool\n".to_vec();
    let real = Digest::of_bytes(&victim);
    // The blob is an executable input of a long-running action, so both
    // its file and its executable copy exist and are pinned.
    let long = ActionSpec::sh("sleep 3; ./tool")
        .exe("tool", &victim)
        .salt("pinned");
    let long_action = prepare(&owner, &long).await;
    let running = tokio::spawn({
        let owner = owner.clone();
        async move { execute_ops(&owner, &long_action, true).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    for wrong_size in [real.size() + 1, real.size() - 1, 0, 1 << 40] {
        let wrong = reapi::Digest {
            hash: real.hex(),
            size_bytes: wrong_size as i64,
        };
        for (transport, ch) in channels_as(&d, attacker.uid).await {
            let cas = CasClient::new(ch.clone());
            let missing = cas
                .clone()
                .find_missing_blobs(reapi::FindMissingBlobsRequest {
                    blob_digests: vec![wrong.clone()],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .missing_blob_digests;
            if wrong_size != 0 {
                assert_eq!(
                    missing,
                    std::slice::from_ref(&wrong),
                    "{transport}: {wrong_size}"
                );
            }
            let _ = cas
                .clone()
                .batch_read_blobs(reapi::BatchReadBlobsRequest {
                    digests: vec![wrong.clone()],
                    ..Default::default()
                })
                .await;
            let _ = bytestream_read(&ch, &wrong).await;
            // An action whose input names the blob with the wrong size,
            // as a plain and as an executable file.
            for exe in [false, true] {
                let mut spec = ActionSpec::sh("true").salt(&format!("{transport}{wrong_size}"));
                spec.files.push(("x".into(), victim.clone(), exe));
                let (action, mut blobs) = encode(&spec);
                // Replace the file's digest by the wrong one in the root.
                let root = reapi::Directory {
                    files: vec![reapi::FileNode {
                        name: "x".into(),
                        digest: Some(wrong.clone()),
                        is_executable: exe,
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let bad = bad_root_action(&mut blobs, &action, root);
                upload(&ch, &blobs[1..]).await;
                let ops = execute_ops(&ch, &bad, true).await;
                let r = response_of(ops.last().unwrap());
                assert_ne!(
                    status_code(&r),
                    0,
                    "{transport}: ran with a wrong-size input"
                );
            }
        }
        // Still there, whole, for its owner.
        assert_eq!(read_blob(&owner, &real.to_proto()).await, victim);
        assert!(find_missing(&owner, &[real]).await.is_empty());
    }
    let ops = running.await.unwrap();
    let r = response_of(ops.last().unwrap());
    assert_eq!(status_code(&r), 0, "{:?}", r.status);
    let stderr = stderr_of(&owner, &r).await;
    assert_eq!(r.result.unwrap().exit_code, 0, "{stderr}");
    assert_eq!(read_blob(&owner, &real.to_proto()).await, victim);
    assert_eq!(verify_store(&d.state), verify_store(&d.state));
}

/// Re-encodes `action` (the last blob of `blobs`) with `root` as its input
/// root; returns the new action digest. `blobs` gets the new root and
/// action; the original file contents stay first.
fn bad_root_action(blobs: &mut Vec<Vec<u8>>, action: &Digest, root: reapi::Directory) -> Digest {
    use prost::Message;
    let bytes = blobs.pop().expect("the action is last");
    assert_eq!(Digest::of_bytes(&bytes), *action);
    let mut a = reapi::Action::decode(bytes.as_slice()).unwrap();
    let root_bytes = root.encode_to_vec();
    a.input_root_digest = Some(Digest::of_bytes(&root_bytes).to_proto());
    blobs.push(root_bytes);
    let a_bytes = a.encode_to_vec();
    let d = Digest::of_bytes(&a_bytes);
    blobs.push(a_bytes);
    d
}
