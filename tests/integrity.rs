//! Never a wrong answer from the execution side (issue 9): an
//! infrastructure failure is an error status, never a result; a cache hit
//! is never followed by its outputs vanishing; an oversized structural blob
//! is refused before it is read.

mod common;

use std::time::Duration;

use common::exec::*;
use common::*;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient as CasClient;
use tonic::Code;
use tonic::transport::Channel;

fn status_code(r: &reapi::ExecuteResponse) -> i32 {
    r.status.as_ref().map_or(0, |s| s.code)
}

/// Issue 9.1: when the sandbox helper cannot write its report (the disk is
/// full), the action's outcome is unknown: the response is an error status
/// naming the cause, not a result with exit code 137.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreported_outcome_is_an_error_not_a_kill() {
    let mut d = Daemon::prepare("", &[]);
    d.state_on_tmpfs(24 << 20);
    d.spawn();
    let ch = d.unix().await;
    // Fill the disk from inside the action, then succeed.
    let spec = ActionSpec::sh("dd if=/dev/zero of=fill bs=1M count=64 2>/dev/null; exit 0");
    let r = run(&ch, &spec, true).await;
    let status = r.status.clone().unwrap_or_default();
    assert_ne!(
        status.code,
        0,
        "a lost report became a result: {:?}",
        r.result.map(|r| r.exit_code)
    );
    assert!(
        status.message.contains("report"),
        "the cause is not named: {}",
        status.message
    );
    // The daemon still serves once there is room again (the action's
    // scratch directory is removed in the background).
    let exec = d.state.join("exec");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&exec).unwrap().count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "scratch never removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = run(&ch, &ActionSpec::sh("echo fine").salt("after"), true).await;
    assert_eq!(status_code(&r), 0, "{:?}", r.status);
    assert_eq!(stdout_of(&ch, &r).await, "fine\n");
}

/// Issue 9.4: an eviction right after a hit does not take the outputs the
/// hit named. The outputs were last used a moment ago (too recently for a
/// hit to refresh their recorded use), before newer uploads, so they are
/// the oldest files of the store, and an eviction that must free that many
/// bytes comes right after the hits, before the client reads them.
#[tokio::test(flavor = "multi_thread")]
async fn a_hits_outputs_outlive_the_hit() {
    use nativelink_lre::proto::nativelink_lre::v1 as admin;
    let d = Daemon::start("");
    let ch = d.unix().await;
    let mut actions = Vec::new();
    let mut outputs = Vec::new();
    for i in 0..10 {
        let spec = ActionSpec::sh("head -c 204800 /dev/urandom > out")
            .outputs(&["out"])
            .salt(&i.to_string());
        let action = prepare(&ch, &spec).await;
        let r = response_of(execute_ops(&ch, &action, true).await.last().unwrap());
        assert_eq!(status_code(&r), 0);
        actions.push(action);
        outputs.push(r.result.unwrap().output_files[0].digest.clone().unwrap());
    }
    // Their last use was a moment ago: too recent for a hit to record a
    // new one, and older than everything that comes next.
    upload(&ch, &[data(1, 1 << 20), data(2, 1 << 20)]).await;
    let ac = reapi::action_cache_client::ActionCacheClient::new(ch.clone());
    for action in &actions {
        ac.clone()
            .get_action_result(reapi::GetActionResultRequest {
                action_digest: Some(action.to_proto()),
                ..Default::default()
            })
            .await
            .expect("a hit");
    }
    // Free as many bytes as the outputs take.
    let admin = admin::admin_client::AdminClient::new(ch.clone());
    let status = admin
        .clone()
        .status(admin::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let freed = admin
        .clone()
        .collect_garbage(admin::CollectGarbageRequest {
            target_bytes: Some(status.store_bytes - 10 * 204800),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(freed.removed_bytes >= 10 * 204800, "{freed:?}");
    for out in outputs {
        let read = CasClient::new(ch.clone())
            .batch_read_blobs(reapi::BatchReadBlobsRequest {
                digests: vec![out.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            read.responses[0].status.as_ref().unwrap().code,
            0,
            "the output {} of a hit was evicted right after it was served",
            out.hash
        );
    }
}

async fn bytestream_upload(ch: &Channel, blob: &[u8]) {
    let d = Digest::of_bytes(blob);
    let msgs: Vec<bytestream::WriteRequest> = blob
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, chunk)| bytestream::WriteRequest {
            resource_name: if i == 0 {
                upload_name(&d)
            } else {
                String::new()
            },
            write_offset: (i << 20) as i64,
            finish_write: (i + 1) << 20 >= blob.len(),
            data: chunk.to_vec().into(),
        })
        .collect();
    bytestream::byte_stream_client::ByteStreamClient::new(ch.clone())
        .write(tokio_stream::iter(msgs))
        .await
        .unwrap();
}

/// Issue 9.11: an Action's Command or input Directory over the documented
/// limit is refused with INVALID_ARGUMENT from its digest, before it is
/// read into memory.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_structural_blobs_are_refused_unread() {
    use prost::Message;
    let d = Daemon::start("");
    let ch = d.unix().await;
    let huge = data(7, 64 << 20);
    let huge_digest = Digest::of_bytes(&huge);
    bytestream_upload(&ch, &huge).await;
    drop(huge);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = d.peak_rss_kib();
    let empty_root = reapi::Directory::default().encode_to_vec();
    let small_command = reapi::Command {
        arguments: vec!["true".into()],
        ..Default::default()
    }
    .encode_to_vec();
    upload(&ch, &[empty_root.clone(), small_command.clone()]).await;
    for (command, root, what) in [
        (huge_digest, Digest::of_bytes(&empty_root), "command"),
        (Digest::of_bytes(&small_command), huge_digest, "directory"),
    ] {
        let action = reapi::Action {
            command_digest: Some(command.to_proto()),
            input_root_digest: Some(root.to_proto()),
            ..Default::default()
        }
        .encode_to_vec();
        upload(&ch, std::slice::from_ref(&action)).await;
        let ops = execute_ops(&ch, &Digest::of_bytes(&action), true).await;
        let r = response_of(ops.last().unwrap());
        let status = r.status.unwrap_or_default();
        assert_eq!(
            status.code,
            Code::InvalidArgument as i32,
            "{what}: {status:?}"
        );
        assert!(
            status.message.contains("over the limit"),
            "{what}: {}",
            status.message
        );
    }
    let grown = d.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 32 << 10,
        "the daemon's peak memory grew by {grown} KiB reading a refused blob"
    );
}

/// A command may truncate its stdout up to sandbox.max-file-size: that
/// costs no memory (a memory file's hole), and saving it after the run
/// must not cost that much disk either. In a 24 MiB state directory, a
/// stdout of 1 GiB (one short line, then a hole) is kept whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_sparse_stdout_costs_no_disk_after_the_run() {
    let mut d = Daemon::prepare("", &[]);
    d.state_on_tmpfs(24 << 20);
    d.spawn();
    let ch = d.unix().await;
    let spec = ActionSpec::sh("truncate -s 1073741824 /proc/self/fd/1 && echo x");
    let r = run(&ch, &spec, true).await;
    assert_eq!(status_code(&r), 0, "{:?}", r.status);
    let result = r.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.stdout_digest.unwrap().size_bytes, 1 << 30);
}
