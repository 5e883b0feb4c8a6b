//! Faults and hostile clients against the real daemon: a burst of 200
//! clients, descriptors and streams held by one user, clients that stall,
//! a full disk, a torn action-cache entry. Each test makes the fault real
//! (a tmpfs, a low RLIMIT_NOFILE, raw HTTP/2 clients, files truncated
//! while the daemon runs) and checks that everyone else is still served
//! and that each failure carries the right status.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reapi::action_cache_client::ActionCacheClient;

/// Stores a result for `action` whose one output is `output`.
async fn put_result(ch: &tonic::transport::Channel, action: &Digest, output: &[u8]) {
    common::exec::upload(ch, &[output.to_vec()]).await;
    ActionCacheClient::new(ch.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(reapi::ActionResult {
                output_files: vec![reapi::OutputFile {
                    path: "out".into(),
                    digest: Some(Digest::of_bytes(output).to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn get_result(
    ch: &tonic::transport::Channel,
    action: &Digest,
) -> Result<reapi::ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// 200 clients, each on its own TCP connection, all starting at once (as
/// a build with many workers does): their connections must all be
/// admitted without falling into TCP's retransmission timeouts, so the
/// slowest GetActionResult stays within a small multiple of the typical
/// one. (It was the accept loop: it read /proc/net/tcp for every
/// connection, 18 ms each with 800 sockets on the machine, and the
/// backlog of 128 overflowed: p99 1.7-2.5 s against a p50 of 22-52 ms.)
#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_clients_keep_p99_near_p50() {
    const CLIENTS: usize = 200;
    const CALLS: usize = 25;
    let d = Daemon::start("");
    let action = Digest::of_bytes(b"200 clients");
    put_result(&d.tcp().await, &action, b"output of 200 clients").await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let addr = d.tcp;
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let ch = channel_over(stream).await;
            let mut took = Vec::new();
            for _ in 0..CALLS {
                let t = Instant::now();
                get_result(&ch, &action).await.unwrap();
                took.push(t.elapsed());
            }
            took
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let (p50, p99, max) = (
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all[all.len() - 1],
    );
    eprintln!(
        "{CLIENTS} clients x {CALLS} GetActionResult in {:?}: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        start.elapsed()
    );
    assert!(
        p99 <= p50 * 10,
        "p99 {p99:?} is more than 10 times p50 {p50:?} (max {max:?})"
    );
}

use bytestream::byte_stream_client::ByteStreamClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient as CasClient;
use tonic::Code;

/// A ByteStream write of `blob` in 64 KiB messages.
async fn write_blob(ch: &tonic::transport::Channel, blob: &[u8]) -> Result<i64, tonic::Status> {
    let d = Digest::of_bytes(blob);
    let name = upload_name(&d);
    let msgs: Vec<bytestream::WriteRequest> = blob
        .chunks(64 << 10)
        .enumerate()
        .map(|(k, c)| bytestream::WriteRequest {
            resource_name: if k == 0 { name.clone() } else { String::new() },
            write_offset: (k * (64 << 10)) as i64,
            finish_write: (k + 1) * (64 << 10) >= blob.len(),
            data: c.to_vec().into(),
        })
        .collect();
    ByteStreamClient::new(ch.clone())
        .write(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner().committed_size)
}

fn status_json(d: &Daemon) -> serde_json::Value {
    let out = std::process::Command::new(BIN)
        .args(["status", "--json", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// A disk that fills up (a 6 MiB tmpfs under the store): uploads through
/// ByteStream and the batch call and action-cache writes get
/// RESOURCE_EXHAUSTED, not INTERNAL; nothing half-written becomes
/// visible; once space is back, the same uploads work.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_resource_exhausted_and_corrupts_nothing() {
    let mut d = Daemon::prepare("", &[]);
    d.state_on_tmpfs(6 << 20);
    d.spawn();
    let ch = d.unix().await;
    let small = data(1, 100_000);
    assert!(write_blob(&ch, &small).await.is_ok());
    let big = data(2, 8 << 20);
    let err = write_blob(&ch, &big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(find_missing(&ch, &[Digest::of_bytes(&big)]).await.len(), 1);
    // Fill the rest of the disk behind the daemon's back.
    let filler = d.state.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 6 << 20]);
    let blobs: Vec<Vec<u8>> = (0..4).map(|i| data(10 + i, 50_000)).collect();
    let resp = CasClient::new(ch.clone())
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: blobs
                .iter()
                .map(|b| reapi::batch_update_blobs_request::Request {
                    digest: Some(Digest::of_bytes(b).to_proto()),
                    data: b.clone().into(),
                    compressor: 0,
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for r in &resp.responses {
        let code = r.status.as_ref().unwrap().code;
        assert_eq!(code, Code::ResourceExhausted as i32, "{r:?}");
    }
    let ac = ActionCacheClient::new(ch.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(Digest::of_bytes(b"full disk action").to_proto()),
            action_result: Some(reapi::ActionResult::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(ac.code(), Code::ResourceExhausted, "{ac:?}");
    // Space again: the daemon serves as before and the store is whole.
    std::fs::remove_file(&filler).unwrap();
    common::exec::upload(&ch, &blobs).await;
    assert!(
        find_missing(
            &ch,
            &blobs
                .iter()
                .map(|b| Digest::of_bytes(b))
                .collect::<Vec<_>>()
        )
        .await
        .is_empty()
    );
    assert!(verify_store(&d.state) >= 5);
}

/// An action-cache entry torn on disk while the daemon runs (empty after a
/// power loss, truncated, garbage) is a miss, never a result and never
/// INTERNAL; `verify` finds and removes the torn ones.
#[tokio::test(flavor = "multi_thread")]
async fn torn_action_cache_entries_are_misses_and_verify_finds_them() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let actions: Vec<Digest> = (0..3u8).map(|i| Digest::of_bytes(&[b't', i])).collect();
    for a in &actions {
        put_result(&ch, a, b"torn entry output").await;
        assert!(get_result(&ch, a).await.is_ok());
    }
    let entry = |a: &Digest| d.state.join("ac/shared").join(&a.hex()[..2]).join(a.hex());
    let whole = std::fs::read(entry(&actions[0])).unwrap();
    std::fs::write(entry(&actions[0]), b"").unwrap();
    std::fs::write(entry(&actions[1]), &whole[..whole.len() / 2]).unwrap();
    let status = get_result(&ch, &actions[0]).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let out = std::process::Command::new(BIN)
        .args(["verify", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("removed 1"), "{text}");
    assert!(text.contains(&actions[1].hex()), "{text}");
    assert_eq!(
        get_result(&ch, &actions[1]).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(get_result(&ch, &actions[2]).await.is_ok());
    // The action can be cached again.
    put_result(&ch, &actions[0], b"torn entry output").await;
    assert!(get_result(&ch, &actions[0]).await.is_ok());
}

/// QueryWriteStatus: NOT_FOUND for an upload never started; during an open
/// write, the bytes received so far.
#[tokio::test(flavor = "multi_thread")]
async fn query_write_status_is_not_found_or_live() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let blob = data(3, 1 << 20);
    let dg = Digest::of_bytes(&blob);
    let name = upload_name(&dg);
    let query = |name: String| {
        let ch = ch.clone();
        async move {
            ByteStreamClient::new(ch)
                .query_write_status(bytestream::QueryWriteStatusRequest {
                    resource_name: name,
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let never = query(name.clone()).await.unwrap_err();
    assert_eq!(never.code(), Code::NotFound, "{never:?}");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = ByteStreamClient::new(ch.clone());
    let call = tokio::spawn(async move {
        client
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(bytestream::WriteRequest {
        resource_name: name.clone(),
        write_offset: 0,
        finish_write: false,
        data: blob[..300_000].to_vec().into(),
    })
    .await
    .unwrap();
    let mut seen = 0;
    for _ in 0..100 {
        seen = query(name.clone())
            .await
            .map(|s| s.committed_size)
            .unwrap_or(-1);
        if seen == 300_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 300_000, "QueryWriteStatus during the write");
    tx.send(bytestream::WriteRequest {
        resource_name: String::new(),
        write_offset: 300_000,
        finish_write: true,
        data: blob[300_000..].to_vec().into(),
    })
    .await
    .unwrap();
    drop(tx);
    assert_eq!(
        call.await.unwrap().unwrap().into_inner().committed_size,
        dg.size() as i64
    );
    assert!(query(name).await.unwrap().complete);
}

/// A 1 MB resource name (and a 1 MB digest hash) is INVALID_ARGUMENT with
/// a message that quotes a few hundred characters of it.
#[tokio::test(flavor = "multi_thread")]
async fn huge_client_input_is_quoted_cut() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let names = [
        format!("{}/blobs/{}/5", "i".repeat(1 << 20), "0".repeat(64)),
        format!("blobs/{}/5", "a".repeat(1 << 20)),
    ];
    for name in names {
        let err = ByteStreamClient::new(ch.clone())
            .read(bytestream::ReadRequest {
                resource_name: name,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{}",
            &err.message()[..100]
        );
        assert!(err.message().len() < 1200, "{} bytes", err.message().len());
    }
    let err = ActionCacheClient::new(ch.clone())
        .get_action_result(reapi::GetActionResultRequest {
            instance_name: "n".repeat(1 << 20),
            action_digest: Some(Digest::of_bytes(b"x").to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 1200, "{} bytes", err.message().len());
}

/// A gRPC message as HTTP/2 DATA: the 5-byte prefix and the protobuf.
fn grpc_frame(msg: &impl prost::Message) -> bytes::Bytes {
    let body = msg.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

/// A raw HTTP/2 connection as `uid` that never opens its receive window
/// (initial window 0) and asks for `reads` ByteStream Reads of `blob`.
/// Returns the connection's driver task and the streams it opened.
async fn stalled_reader(
    addr: std::net::SocketAddr,
    uid: u32,
    blob: Digest,
    reads: usize,
) -> (tokio::task::JoinHandle<()>, Vec<h2::client::ResponseFuture>) {
    let std_stream = as_uid(uid, move || std::net::TcpStream::connect(addr).unwrap());
    std_stream.set_nonblocking(true).unwrap();
    let io = tokio::net::TcpStream::from_std(std_stream).unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .initial_connection_window_size(65_535)
        .handshake::<_, bytes::Bytes>(io)
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut responses = Vec::new();
    for _ in 0..reads {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        let mut ready = ready;
        let req = http::Request::post(format!("http://{addr}/google.bytestream.ByteStream/Read"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let Ok((resp, mut send)) = ready.send_request(req, false) else {
            break;
        };
        let _ = send.send_data(
            grpc_frame(&bytestream::ReadRequest {
                resource_name: read_name(&blob),
                ..Default::default()
            }),
            true,
        );
        responses.push(resp);
    }
    (driver, responses)
}

/// Reads whose client never opens its receive window (it answers PINGs,
/// it just takes nothing): they hold no thread and little memory, other
/// clients are served as usual, a uid past max-streams-per-user gets
/// RESOURCE_EXHAUSTED, and after stream-idle-timeout the stalled
/// connections are closed and everything they held is given back.
#[tokio::test(flavor = "multi_thread")]
async fn reads_that_are_never_taken_stall_no_one() {
    const ATTACKER: u32 = 61_001;
    let d =
        Daemon::start("\n[limits]\nstream-idle-timeout = \"16s\"\nmax-streams-per-user = 300\n");
    let ch = d.tcp().await;
    let blob = data(5, 4 << 20);
    assert!(write_blob(&ch, &blob).await.is_ok());
    let dg = Digest::of_bytes(&blob);
    let action = Digest::of_bytes(b"stalled readers");
    put_result(&ch, &action, b"stalled readers output").await;
    let (threads_before, rss_before) = (threads(d.pid()), d.peak_rss_kib());
    // 5 connections x 100 Reads = 500 streams, 300 of them allowed.
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(stalled_reader(d.tcp, ATTACKER, dg, 100).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut refused = 0;
    for (_, responses) in &mut conns {
        for r in responses.drain(..) {
            if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_millis(50), r).await {
                let status = resp
                    .headers()
                    .get("grpc-status")
                    .map(|v| v.to_str().unwrap().to_owned());
                if status.as_deref() == Some("8") {
                    refused += 1;
                }
            }
        }
    }
    assert!(
        refused >= 150,
        "only {refused} of 200 streams over the cap were refused"
    );
    // Everyone else is served while the streams stall.
    let other = d.unix().await;
    for _ in 0..20 {
        let t = Instant::now();
        get_result(&other, &action).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "GetActionResult took {:?}",
            t.elapsed()
        );
    }
    let copy = d.unix().await;
    let mut stream = ByteStreamClient::new(copy)
        .read(bytestream::ReadRequest {
            resource_name: read_name(&dg),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = 0;
    while let Some(m) = stream.message().await.unwrap() {
        got += m.data.len();
    }
    assert_eq!(got, blob.len());
    let (threads_during, rss_during) = (threads(d.pid()), d.peak_rss_kib());
    // The blocking pool's idle threads end after 10 s; none may be
    // parked on a stalled client.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let threads_after = threads(d.pid());
    eprintln!(
        "300 stalled reads: threads {threads_before} -> {threads_during} -> {threads_after} after 11 s, \
         peak RSS {rss_before} -> {rss_during} KiB"
    );
    assert!(
        threads_after < threads_before + 8,
        "{threads_before} -> {threads_after} threads while the reads stall"
    );
    assert!(
        rss_during < rss_before + (256 << 10),
        "peak RSS {rss_before} -> {rss_during} KiB"
    );
    // After stream-idle-timeout the stalled connections are gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = conns
            .iter()
            .filter(|(driver, _)| !driver.is_finished())
            .count();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} stalled connections still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = status_json(&d);
    // Ours only: three channels and the status call itself.
    assert!(s["connections"].as_u64().unwrap() <= 4, "{s}");
}

/// Descriptors: the soft RLIMIT_NOFILE is raised to the hard one at start;
/// with a low hard limit, one uid's 600 idle connections are held to
/// max-connections-per-user and everyone else's calls (connect, upload,
/// read) still work; a connection that never sends the HTTP/2 preface is
/// closed after preface-timeout.
#[tokio::test(flavor = "multi_thread")]
async fn one_users_connections_leave_descriptors_for_everyone_else() {
    const ATTACKER: u32 = 61_002;
    let mut d = Daemon::prepare(
        "\n[limits]\nmax-connections-per-user = 50\npreface-timeout = \"2s\"\n",
        &[],
    );
    d.nofile = Some((128, 512));
    d.spawn();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        line.split_whitespace().filter(|w| *w == "512").count() == 2,
        "{line}"
    );
    let addr = d.tcp;
    let mut idle = Vec::new();
    for _ in 0..600 {
        match as_uid(ATTACKER, move || std::net::TcpStream::connect(addr)) {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    // Others are served meanwhile, over both transports.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds = open_fds(d.pid());
    assert!(
        fds < 200,
        "{fds} descriptors open for 600 connections of one uid"
    );
    for ch in [d.unix().await, d.tcp().await] {
        let blob = data(6, 300_000);
        write_blob(&ch, &blob).await.unwrap();
        assert_eq!(find_missing(&ch, &[Digest::of_bytes(&blob)]).await.len(), 0);
    }
    // The attacker's connections send no preface: all are closed by now
    // or soon.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut closed = 0;
    for s in &mut idle {
        use std::io::Read;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).unwrap();
        // The server's SETTINGS may come first; then the end.
        let mut b = [0u8; 256];
        loop {
            match s.read(&mut b) {
                Ok(0) => break closed += 1,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(_) => break closed += 1,
            }
        }
    }
    assert_eq!(
        closed,
        idle.len(),
        "connections without a preface stay open"
    );
    eprintln!(
        "{} idle connections of one uid; the daemon held {fds} descriptors",
        idle.len()
    );
}

/// Uploads that stop without finish_write: at most max-uploads-per-user
/// of them per uid (the next is RESOURCE_EXHAUSTED, other uids are not
/// held up), their bytes count in the store size and in `status`, and
/// once the client has sent nothing for stream-idle-timeout they hold no
/// descriptor.
#[tokio::test(flavor = "multi_thread")]
async fn abandoned_uploads_are_capped_counted_and_hold_no_descriptor() {
    const ATTACKER: u32 = 61_003;
    let d = Daemon::start("\n[limits]\nmax-uploads-per-user = 10\nstream-idle-timeout = \"3s\"\n");
    let fds_before = open_fds(d.pid());
    let ch = d.unix_as(ATTACKER).await;
    let mut held = Vec::new();
    for i in 0..10u64 {
        let blob = data(100 + i, 2 << 20);
        let name = upload_name(&Digest::of_bytes(&blob));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut client = ByteStreamClient::new(ch.clone());
        let call = tokio::spawn(async move {
            client
                .write(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        tx.send(bytestream::WriteRequest {
            resource_name: name,
            write_offset: 0,
            finish_write: false,
            data: blob[..1 << 20].to_vec().into(),
        })
        .await
        .unwrap();
        held.push((tx, call));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = status_json(&d);
    // On a loaded machine the first ones may already be idle (waiting).
    let unfinished =
        s["uploads_in_progress"].as_u64().unwrap() + s["uploads_waiting"].as_u64().unwrap();
    assert_eq!(unfinished, 10, "{s}");
    assert!(s["upload_bytes"].as_u64().unwrap() >= 10 << 20, "{s}");
    assert!(s["store_bytes"].as_u64().unwrap() >= 10 << 20, "{s}");
    let eleventh = write_blob(&ch, &data(200, 1 << 20)).await.unwrap_err();
    assert_eq!(eleventh.code(), Code::ResourceExhausted, "{eleventh:?}");
    assert!(
        write_blob(&d.unix().await, &data(201, 1 << 20))
            .await
            .is_ok()
    );
    // The client goes quiet (its streams stay open): after
    // stream-idle-timeout the uploads wait, descriptors closed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let s = status_json(&d);
    assert_eq!(s["uploads_waiting"], 10, "{s}");
    let fds_after = open_fds(d.pid());
    assert!(
        fds_after <= fds_before + 4,
        "{fds_before} -> {fds_after} descriptors"
    );
    drop(held);
}
