//! SIGKILL during uploads: after a restart every stored blob still hashes to
//! its name, every acknowledged upload is present, and leftovers of the
//! interrupted writes are cleared.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient as CasClient;

/// Uploads distinct blobs in a loop until the daemon dies; returns the
/// digests whose upload was acknowledged.
async fn upload_until_error(
    ch: tonic::transport::Channel,
    seed: u64,
    acked: Arc<Mutex<Vec<Digest>>>,
) {
    let mut i = 0u64;
    loop {
        i += 1;
        let blob = data(seed * 1_000_000 + i, 1 << 20 | (i as usize * 4099 % 65536));
        let dg = Digest::of_bytes(&blob);
        let name = upload_name(&dg);
        let chunks: Vec<bytestream::WriteRequest> = blob
            .chunks(64 << 10)
            .enumerate()
            .map(|(k, c)| bytestream::WriteRequest {
                resource_name: if k == 0 { name.clone() } else { String::new() },
                write_offset: (k * (64 << 10)) as i64,
                finish_write: (k + 1) * (64 << 10) >= blob.len(),
                data: c.to_vec().into(),
            })
            .collect();
        let write = bytestream::byte_stream_client::ByteStreamClient::new(ch.clone())
            .write(tokio_stream::iter(chunks))
            .await;
        // Small blobs through the batch path as well.
        let small: Vec<Vec<u8>> = (0..8)
            .map(|k| data(seed * 7_000_000 + i * 8 + k, 3000))
            .collect();
        let batch = CasClient::new(ch.clone())
            .batch_update_blobs(wire::batch_update_of(small.iter().map(Vec::as_slice)))
            .await;
        match (write, batch) {
            (Ok(_), Ok(resp)) => {
                let mut acked = acked.lock().unwrap();
                acked.push(dg);
                for (b, r) in small.iter().zip(resp.into_inner().responses) {
                    if r.status.is_some_and(|s| s.code == 0) {
                        acked.push(Digest::of_bytes(b));
                    }
                }
            }
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_uploads_leaves_only_whole_blobs() {
    let mut d = Daemon::start("");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut interrupted = 0;
    for round in 0..3u64 {
        let mut tasks = Vec::new();
        for w in 0..4u64 {
            let ch = if w % 2 == 0 {
                d.unix().await
            } else {
                d.tcp().await
            };
            tasks.push(tokio::spawn(upload_until_error(
                ch,
                round * 10 + w + 1,
                Arc::clone(&acked),
            )));
        }
        tokio::time::sleep(Duration::from_millis(700 + round * 400)).await;
        d.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        // Temporary files of the writes the kill interrupted.
        interrupted += std::fs::read_dir(d.state.join("tmp")).unwrap().count();
        let checked = verify_store(&d.state);
        let acked_now = acked.lock().unwrap().len();
        assert!(
            acked_now > 0,
            "no upload finished before the kill in round {round}"
        );
        assert!(
            checked >= acked_now,
            "round {round}: {checked} blobs on disk, {acked_now} acknowledged"
        );

        d.spawn();
        // Leftover temporary files are cleared at start-up.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let leftovers: Vec<String> = std::fs::read_dir(&d.state)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("tmp.stale"))
                .collect();
            let tmp_files = std::fs::read_dir(d.state.join("tmp")).unwrap().count();
            if leftovers.is_empty() && tmp_files == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "leftovers after restart: {leftovers:?}, {tmp_files} in tmp/"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Everything acknowledged before the kill is still served.
        let all: Vec<reapi::Digest> = acked.lock().unwrap().iter().map(Digest::to_proto).collect();
        let missing = CasClient::new(d.unix().await)
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                blob_digests: all,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests;
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged blobs lost: {missing:?}"
        );
    }
    assert!(interrupted > 0, "no kill landed in the middle of a write");
    eprintln!(
        "{interrupted} writes interrupted; {} acknowledged blobs survived 3 SIGKILLs; {} blobs verified on disk",
        acked.lock().unwrap().len(),
        verify_store(&d.state)
    );
}
