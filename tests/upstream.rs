//! The upstream end to end: our daemon in front of a real third-party
//! server (BuildGrid 0.4.4 from PyPI, cache-only), and in front of a second
//! nativelink-lre acting as the cluster for execution forwarding.

mod common;
// Forwarding of executions.
#[path = "upstream/forwarding.rs"]
mod forwarding;
#[path = "upstream/frozen.rs"]
mod frozen;
#[path = "upstream/no_execution.rs"]
mod no_execution;

use std::time::{Duration, Instant};

use common::exec::*;
use common::upstream::*;
use common::*;
use nativelink_lre::client;
use reapi::action_cache_client::ActionCacheClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient as CasClient;
use tonic::Code;
use tonic::transport::Channel;

fn upstream_config(endpoint: &str, extra: &str) -> String {
    format!("\n[upstream]\nendpoint = \"{endpoint}\"\ninstance-name = \"upstream\"\n{extra}\n")
}

async fn get_action(ch: &Channel, action: &Digest) -> Result<reapi::ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            inline_stdout: true,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn upstream_status(
    ch: &Channel,
) -> nativelink_lre::proto::nativelink_lre::v1::UpstreamStatus {
    client::status(ch)
        .await
        .unwrap()
        .upstream
        .expect("status has no upstream section")
}

async fn bytestream_read(ch: &Channel, d: &Digest) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = bytestream::byte_stream_client::ByteStreamClient::new(ch.clone())
        .read(bytestream::ReadRequest {
            resource_name: read_name(d),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        out.extend_from_slice(&msg.data);
    }
    Ok(out)
}

/// Whether the daemon's own store holds the blob (a file under cas/).
fn stored_locally(d: &Daemon, digest: &Digest) -> bool {
    let hex = digest.hex();
    d.state.join("cas").join(&hex[..2]).join(&hex).exists()
}

/// Polls `f` every 200 ms until it is true or `limit` passes.
async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn status_code(r: &reapi::ExecuteResponse) -> Code {
    Code::from(r.status.as_ref().map_or(0, |s| s.code))
}

#[tokio::test(flavor = "multi_thread")]
async fn read_through_fetches_a_buildgrid_hit_and_every_blob_it_names() {
    let bg = BuildGrid::start();
    // A 3 MiB output goes by ByteStream, the rest by batches.
    let (action, seeded) = bg.seed("upstream", "read-through", 3 << 20);
    let d = Daemon::start(&upstream_config(&bg.endpoint(), ""));
    let ch = d.unix().await;
    let action = digest_of(&action);
    assert!(!stored_locally(&d, &action) && find_missing(&ch, &[]).await.is_empty());

    let result = get_action(&ch, &action).await.expect("an upstream hit");
    let outputs = seeded["outputs"].as_object().unwrap();
    assert_eq!(result.output_files.len(), outputs.len());
    for f in &result.output_files {
        let want = outputs[&f.path].as_str().unwrap();
        let got = Digest::from_proto(f.digest.as_ref().unwrap()).unwrap();
        assert_eq!(hs(&got), want, "{}", f.path);
        assert!(stored_locally(&d, &got), "{} was not fetched", f.path);
        let bytes = bytestream_read(&ch, &got).await.unwrap();
        assert_eq!(Digest::of_bytes(&bytes), got);
    }
    let stdout = Digest::from_proto(result.stdout_digest.as_ref().unwrap()).unwrap();
    assert_eq!(hs(&stdout), seeded["stdout"].as_str().unwrap());
    assert_eq!(
        Digest::of_bytes(&result.stdout_raw),
        stdout,
        "inline stdout"
    );

    // Everything is local now: a dead upstream does not matter.
    bg.kill();
    let again = get_action(&ch, &action).await.expect("a local hit");
    assert_eq!(again.output_files, result.output_files);
    let st = upstream_status(&ch).await;
    assert_eq!(st.action_cache_hits, 1, "{st:?}");
    assert!(
        st.blobs_fetched >= 3 && st.bytes_fetched >= 3 << 20,
        "{st:?}"
    );
    assert_eq!(st.blobs_rejected, 0);
    // Unknown everywhere: a plain miss, even with the upstream gone.
    let unknown = Digest::of_bytes(b"no such action");
    assert_eq!(
        get_action(&ch, &unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    drop(ch);
    let mut d = d;
    d.stop();
    assert!(verify_store(&d.state) >= 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn cas_reads_and_find_missing_fall_back_to_buildgrid() {
    let bg = BuildGrid::start();
    let tmp = tempfile::tempdir().unwrap();
    let small = data(11, 300);
    let big = data(12, 5 << 20);
    let mut put = Vec::new();
    for (name, bytes) in [("small", &small), ("big", &big)] {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = bg.client_ok(&["put", "upstream", path.to_str().unwrap()]);
        put.push(digest_of(out.trim()));
    }
    assert_eq!(put, vec![Digest::of_bytes(&small), Digest::of_bytes(&big)]);
    let absent = Digest::of_bytes(b"in neither store");

    let d = Daemon::start(&upstream_config(&bg.endpoint(), ""));
    let ch = d.unix().await;
    // Present upstream counts as present; nothing is fetched for that.
    assert_eq!(
        find_missing(&ch, &[put[0], put[1], absent]).await,
        vec![absent]
    );
    assert!(!stored_locally(&d, &put[0]) && !stored_locally(&d, &put[1]));
    // Reads fetch: BatchReadBlobs for the small one, ByteStream for the big.
    assert_eq!(read_blob(&ch, &put[0].to_proto()).await, small);
    assert_eq!(bytestream_read(&ch, &put[1]).await.unwrap(), big);
    assert!(stored_locally(&d, &put[0]) && stored_locally(&d, &put[1]));
    assert_eq!(
        bytestream_read(&ch, &absent).await.unwrap_err().code(),
        Code::NotFound
    );
    let st = upstream_status(&ch).await;
    assert_eq!(st.blobs_fetched, 2, "{st:?}");
    assert_eq!(st.bytes_fetched, (300 + (5 << 20)) as u64);
}

/// An action whose outputs include a file big enough for ByteStream.
fn producing(salt: &str) -> ActionSpec {
    ActionSpec::sh(
        "echo hello > out.txt; head -c 2500000 /dev/zero | tr '\\0' x > big.bin; echo done",
    )
    .outputs(&["out.txt", "big.bin"])
    .salt(salt)
}

#[tokio::test(flavor = "multi_thread")]
async fn write_back_pushes_sandbox_results_but_never_a_clients_own_update() {
    let bg = BuildGrid::start();
    let d = Daemon::start(&upstream_config(&bg.endpoint(), "write-back = true"));
    let ch = d.unix().await;

    // A client's own UpdateActionResult (root is trusted: it goes to the
    // shared cache) is never forwarded.
    let blob = data(21, 100);
    upload(&ch, std::slice::from_ref(&blob)).await;
    let own = Digest::of_bytes(b"a client's own action");
    ActionCacheClient::new(ch.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(own.to_proto()),
            action_result: Some(reapi::ActionResult {
                stdout_digest: Some(Digest::of_bytes(&blob).to_proto()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();

    // Then a result our sandbox produces is pushed: blobs, then the entry.
    let spec = producing("write-back");
    let (action, _) = encode(&spec);
    let r = run(&ch, &spec, false).await;
    assert_eq!(status_code(&r), Code::Ok);
    let local = r.result.unwrap();
    assert!(
        eventually(Duration::from_secs(60), async || bg
            .get_action("upstream", &hs(&action))
            .is_some())
        .await,
        "the result never reached BuildGrid"
    );
    let theirs = bg.get_action("upstream", &hs(&action)).unwrap();
    let files = theirs["output_files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    for f in files {
        let path = f["path"].as_str().unwrap();
        let ours = local.output_files.iter().find(|o| o.path == path).unwrap();
        let want = Digest::from_proto(ours.digest.as_ref().unwrap()).unwrap();
        assert_eq!(hs_json(&f["digest"]), hs(&want), "{path}");
        // Read back with BuildGrid's own ByteStream: the bytes are there.
        assert_eq!(
            bg.read("upstream", &hs(&want)).as_deref(),
            Some(format!("{} {}", want.hex(), want.size()).as_str())
        );
    }
    let stdout = Digest::from_proto(local.stdout_digest.as_ref().unwrap()).unwrap();
    assert!(bg.read("upstream", &hs(&stdout)).is_some());
    // The queue is in order: had the client's update been forwarded, it
    // would be there by now.
    assert!(
        bg.get_action("upstream", &hs(&own)).is_none(),
        "a client's own UpdateActionResult was forwarded"
    );
    let st = upstream_status(&ch).await;
    assert_eq!(
        (st.pushes_done, st.pushes_dropped, st.pushes_failed),
        (1, 0, 0),
        "{st:?}"
    );
    assert!(st.blobs_pushed >= 4, "{st:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn buildgrid_killed_mid_build_local_work_goes_on_and_pushes_resume() {
    let mut bg = BuildGrid::start();
    let d = Daemon::start(&upstream_config(
        &bg.endpoint(),
        "write-back = true\ntimeout = \"5s\"\nretry-min = \"1s\"\nretry-max = \"2s\"",
    ));
    let ch = d.unix().await;
    let first = ActionSpec::sh("echo before").salt("kill-0");
    assert_eq!(status_code(&run(&ch, &first, false).await), Code::Ok);
    let (first_action, _) = encode(&first);
    assert!(
        eventually(Duration::from_secs(60), async || bg
            .get_action("upstream", &hs(&first_action))
            .is_some())
        .await
    );

    bg.kill();
    // The build goes on: every action runs and answers, lookups miss.
    let mut during = Vec::new();
    for i in 1..=5 {
        let spec = ActionSpec::sh(&format!("echo during {i}")).salt(&format!("kill-{i}"));
        let r = run(&ch, &spec, false).await;
        assert_eq!(status_code(&r), Code::Ok, "{:?}", r.status);
        assert_eq!(r.result.as_ref().unwrap().exit_code, 0);
        during.push(encode(&spec).0);
    }
    let unknown = Digest::of_bytes(b"unknown while down");
    assert_eq!(
        get_action(&ch, &unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    let st = upstream_status(&ch).await;
    assert_eq!(st.state, "down", "{st:?}");
    assert!(!st.error.is_empty() && st.calls_failed > 0, "{st:?}");
    let shown = client::format_status(&client::status(&ch).await.unwrap());
    assert!(
        shown.contains(&format!(
            "upstream: {} (instance \"upstream\") is down",
            bg.endpoint()
        )),
        "{shown}"
    );

    // Back: the probe notices, and what waited in the queue is pushed.
    bg.restart();
    assert!(
        eventually(Duration::from_secs(30), async || upstream_status(&ch)
            .await
            .state
            == "up")
        .await,
        "the upstream was not noticed back"
    );
    for action in &during {
        assert!(
            eventually(Duration::from_secs(60), async || bg
                .get_action("upstream", &hs(action))
                .is_some())
            .await,
            "a result queued while BuildGrid was down was not pushed"
        );
    }
    let st = upstream_status(&ch).await;
    assert_eq!((st.pushes_done, st.pushes_dropped), (6, 0), "{st:?}");
    drop(ch);
    let mut d = d;
    let (_, log) = d.stop();
    let endpoint = bg.endpoint();
    assert!(
        log.contains(&format!("upstream {endpoint} is unavailable")),
        "{log}"
    );
    assert!(
        log.contains(&format!("upstream {endpoint} is back")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_never_slows_a_local_build() {
    // An upstream that accepts connections and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hole.incoming() {
            held.push(c);
        }
    });
    let d = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"grpc://127.0.0.1:{port}\"\nread-through = false\nwrite-back = true\nwrite-back-queue = 2\ntimeout = \"10m\"\n"
    ));
    let ch = d.unix().await;
    // No upstream call can have returned (each would wait ten minutes), so
    // every one of these finishing shows that none waited for the upstream.
    for i in 0..6 {
        let r = run(
            &ch,
            &ActionSpec::sh("echo x").salt(&format!("slow-{i}")),
            false,
        )
        .await;
        assert_eq!(status_code(&r), Code::Ok);
    }
    let st = upstream_status(&ch).await;
    assert_eq!(st.pushes_done, 0, "{st:?}");
    // One being pushed, two waiting, the rest dropped.
    assert!(st.pushes_queued <= 3 && st.pushes_dropped >= 3, "{st:?}");
    assert_eq!(st.pushes_queued + st.pushes_dropped, 6, "{st:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_that_do_not_match_their_digest_are_never_stored() {
    // The upstream is a second nativelink-lre over its unix socket, whose
    // blob files we corrupt on disk (same length, other bytes).
    let b = Daemon::start("");
    let bch = b.unix().await;
    let small = data(31, 500);
    let big = data(32, 3 << 20);
    upload(&bch, std::slice::from_ref(&small)).await;
    // Big blobs exceed the batch limit: ByteStream.
    let bd = Digest::of_bytes(&big);
    bytestream::byte_stream_client::ByteStreamClient::new(bch.clone())
        .write(tokio_stream::iter(vec![bytestream::WriteRequest {
            resource_name: upload_name(&bd),
            write_offset: 0,
            finish_write: true,
            data: big.clone().into(),
        }]))
        .await
        .unwrap();
    let sd = Digest::of_bytes(&small);
    let action = Digest::of_bytes(b"refers to a corrupt blob");
    ActionCacheClient::new(bch.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(reapi::ActionResult {
                stdout_digest: Some(sd.to_proto()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    for (d, len) in [(sd, small.len()), (bd, big.len())] {
        let hex = d.hex();
        let path = b.state.join("cas").join(&hex[..2]).join(&hex);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::write(&path, vec![b'!'; len]).unwrap();
    }

    let a = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"unix:{}\"\n",
        b.socket.display()
    ));
    let ach = a.unix().await;
    assert_eq!(
        get_action(&ach, &action).await.unwrap_err().code(),
        Code::NotFound,
        "a result whose blob came corrupt was used"
    );
    let r = CasClient::new(ach.clone())
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![sd.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.responses[0].status.as_ref().unwrap().code,
        Code::NotFound as i32
    );
    assert_eq!(
        bytestream_read(&ach, &bd).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(!stored_locally(&a, &sd) && !stored_locally(&a, &bd));
    let st = upstream_status(&ach).await;
    assert!(st.blobs_rejected >= 2, "{st:?}");
    assert_eq!(st.blobs_fetched, 0, "{st:?}");
    // Nothing half-written is left either.
    drop(ach);
    let mut a = a;
    a.stop();
    verify_store(&a.state);
    assert_eq!(
        std::fs::read_dir(a.state.join("tmp")).map_or(0, |d| d.count()),
        0,
        "temporary files left behind"
    );
}

/// Runs a `lre-remote=true` action that must end up running here (the
/// upstream cannot take it); checks its output and that this daemon ran it.
async fn runs_here_although_routed(ch: &Channel, salt: &str) -> ActionSpec {
    let mut spec = forwardable(salt);
    spec.platform = vec![("lre-remote".into(), "true".into())];
    let before = client::status(ch).await.unwrap().actions_executed;
    let r = run(ch, &spec, false).await;
    assert_eq!(status_code(&r), Code::Ok, "{:?}", r.status);
    assert_eq!(
        output_file(ch, &r, "out/copy.txt").await,
        b"forwarded input"
    );
    assert_eq!(
        client::status(ch).await.unwrap().actions_executed,
        before + 1,
        "it did not run here"
    );
    spec
}

fn forwardable(salt: &str) -> ActionSpec {
    let mut spec = ActionSpec::sh(
        "mkdir -p out/dir; cat in.txt > out/copy.txt; echo nested > out/dir/f; uname -n; echo ran",
    )
    .file("in.txt", b"forwarded input")
    .salt(salt);
    spec.output_files = vec!["out/copy.txt".into()];
    spec.output_dirs = vec!["out/dir".into()];
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_to_buildgrid_and_what_a_wrong_certificate_looks_like() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(tmp.path());
    let bg = BuildGrid::start_tls(Some(&certs), true);
    let (action, _) = bg.seed("upstream", "tls", 0);
    let action = digest_of(&action);
    let file = |n: &str| certs.join(n).display().to_string();
    let tls = |ca: &str, client: bool| {
        let mut s = format!("tls-ca-file = \"{}\"\n", file(ca));
        if client {
            s += &format!(
                "tls-client-cert = \"{}\"\ntls-client-key = \"{}\"\n",
                file("client.pem"),
                file("client.key")
            );
        }
        s
    };
    let good = Daemon::start(&upstream_config(&bg.endpoint(), &tls("ca.pem", true)));
    let ch = good.unix().await;
    get_action(&ch, &action)
        .await
        .expect("a hit over mutual TLS");
    assert_eq!(upstream_status(&ch).await.state, "up");

    // No tls-ca-file: the system's trust store, which SSL_CERT_FILE
    // points at our CA here (rustls-native-certs reads it).
    let client_only = format!(
        "tls-client-cert = \"{}\"\ntls-client-key = \"{}\"\n",
        file("client.pem"),
        file("client.key")
    );
    let system = Daemon::start_with_env(
        &upstream_config(&bg.endpoint(), &client_only),
        &[("SSL_CERT_FILE", &file("ca.pem"))],
    );
    get_action(&system.unix().await, &action)
        .await
        .expect("a hit with the system trust store");

    for (name, config) in [
        ("no client certificate", tls("ca.pem", false)),
        (
            "a CA that did not sign the server",
            tls("other-ca.pem", true),
        ),
    ] {
        let d = Daemon::start(&upstream_config(&bg.endpoint(), &config));
        let ch = d.unix().await;
        assert_eq!(
            get_action(&ch, &action).await.unwrap_err().code(),
            Code::NotFound,
            "{name}"
        );
        let st = upstream_status(&ch).await;
        assert_eq!(st.action_cache_hits, 0, "{name}: {st:?}");
        assert!(
            eventually(Duration::from_secs(10), async || upstream_status(&ch)
                .await
                .state
                == "down")
            .await,
            "{name}: {:?}",
            upstream_status(&ch).await
        );
        eprintln!("{name}: {}", upstream_status(&ch).await.error);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_reach_the_upstream_and_the_token_is_never_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let token = "Bearer s3cr3t-token-4711";
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let recorder = Recorder::start(0.0);
    let port = recorder.port;
    let mut d = Daemon::start_with_env(
        &format!(
            "\n[upstream]\nendpoint = \"grpc://127.0.0.1:{port}\"\ninstance-name = \"upstream\"\nheaders = {{ \"x-team\" = \"blue\" }}\nheader-files = {{ authorization = \"{}\" }}\n",
            token_file.display()
        ),
        // Everything, from every crate, at debug: the token must still not
        // appear.
        &[("RUST_LOG", "debug")],
    );
    let ch = d.unix().await;
    let action = Digest::of_bytes(b"asked of the recorder");
    assert_eq!(
        get_action(&ch, &action).await.unwrap_err().code(),
        Code::NotFound
    );
    let status_text = client::format_status(&client::status(&ch).await.unwrap());
    drop(ch);
    let (_, daemon_log) = d.stop();
    let calls = recorder.calls();
    let get = calls
        .iter()
        .find(|c| c["method"].as_str().unwrap().ends_with("/GetActionResult"))
        .expect("no GetActionResult reached the recorder");
    assert_eq!(get["metadata"]["authorization"], token);
    assert_eq!(get["metadata"]["x-team"], "blue");
    assert_eq!(get["instance_name"], "upstream");
    assert!(
        get["metadata"]["user-agent"]
            .as_str()
            .unwrap()
            .contains("nativelink-lre/"),
        "{get}"
    );
    assert!(
        calls
            .iter()
            .all(|c| c["metadata"]["authorization"] == token),
        "a call went without the token"
    );
    assert!(!daemon_log.contains("s3cr3t"), "the token is in the log");
    assert!(!status_text.contains("s3cr3t"), "the token is in status");
    assert!(daemon_log.len() > 1000, "debug logging was not on");
}

#[test]
fn check_config_reads_the_files_the_upstream_names_unless_told_not_to() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(tmp.path());
    let config = tmp.path().join("config.toml");
    let check = |text: &str, no_files: bool| {
        std::fs::write(&config, text).unwrap();
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("check-config");
        if no_files {
            cmd.arg("--no-files");
        }
        let out = cmd.arg(&config).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca = certs.join("ca.pem");
    let good = format!(
        "[upstream]\nendpoint = \"grpcs://localhost:1\"\ntls-ca-file = \"{}\"\ntls-client-cert = \"{}\"\ntls-client-key = \"{}\"\n",
        ca.display(),
        certs.join("client.pem").display(),
        certs.join("client.key").display()
    );
    assert_eq!(check(&good, false), (Some(0), String::new()));

    let missing = "[upstream]\nendpoint = \"grpc://x:1\"\nheader-files = { authorization = \"/run/secrets/none\" }\n";
    let (code, err) = check(missing, false);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("header-files") && err.contains("/run/secrets/none"),
        "{err}"
    );
    assert_eq!(check(missing, true).0, Some(0));

    // A key file that is not PEM, and a certificate that does not parse.
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    let bad_key = good.replace(
        &certs.join("client.key").display().to_string(),
        &junk.display().to_string(),
    );
    let (code, err) = check(&bad_key, false);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("tls-client-key") && err.contains("junk.pem"),
        "{err}"
    );
    let garbled = tmp.path().join("garbled.pem");
    std::fs::write(
        &garbled,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let bad_ca = good.replace(&ca.display().to_string(), &garbled.display().to_string());
    let (code, err) = check(&bad_ca, false);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("upstream"), "{err}");
    eprintln!("garbled CA: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_killed_in_the_middle_of_a_fetch_leaves_nothing_behind() {
    let mut b = Daemon::start("");
    let bch = b.unix().await;
    let big = data(41, 512 << 20);
    let bd = Digest::of_bytes(&big);
    let chunks: Vec<bytestream::WriteRequest> = big
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, c)| bytestream::WriteRequest {
            resource_name: if i == 0 {
                upload_name(&bd)
            } else {
                String::new()
            },
            write_offset: (i << 20) as i64,
            finish_write: (i + 1) << 20 >= big.len(),
            data: c.to_vec().into(),
        })
        .collect();
    drop(big);
    bytestream::byte_stream_client::ByteStreamClient::new(bch.clone())
        .write(tokio_stream::iter(chunks))
        .await
        .unwrap();
    drop(bch);

    let a = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"unix:{}\"\n",
        b.socket.display()
    ));
    let ach = a.unix().await;
    let reader = {
        let ach = ach.clone();
        tokio::spawn(async move { bytestream_read(&ach, &bd).await.map(|v| v.len()) })
    };
    // Kill the upstream once the fetch has begun to write.
    let tmp = a.state.join("tmp");
    let started = eventually(Duration::from_secs(30), async || {
        std::fs::read_dir(&tmp)
            .map(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
            .unwrap_or(false)
    })
    .await;
    assert!(started, "the fetch never started writing");
    b.kill9();
    let read = reader.await.unwrap();
    assert_eq!(
        read.as_ref().map_err(|s| s.code()),
        Err(Code::NotFound),
        "a read of a blob whose fetch broke off"
    );
    assert!(!stored_locally(&a, &bd), "a half-fetched blob is visible");
    assert!(
        eventually(Duration::from_secs(5), async || std::fs::read_dir(&tmp)
            .map_or(0, |d| d.count())
            == 0)
        .await,
        "the partial download was left in tmp/"
    );
    assert_eq!(upstream_status(&ach).await.state, "down");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_waits_a_bounded_time_for_pending_pushes() {
    let b = Daemon::start("");
    let a = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"unix:{}\"\nwrite-back = true\nread-through = false\ntimeout = \"30s\"\n",
        b.socket.display()
    ));
    let ach = a.unix().await;
    let bpid = nix::unistd::Pid::from_raw(b.pid() as i32);
    // A frozen upstream: pushes wait (it is not down, just not answering).
    nix::sys::signal::kill(bpid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut actions = Vec::new();
    for i in 0..3 {
        let spec = ActionSpec::sh("echo pending").salt(&format!("drain-{i}"));
        assert_eq!(status_code(&run(&ach, &spec, false).await), Code::Ok);
        actions.push(encode(&spec).0);
    }
    assert_eq!(upstream_status(&ach).await.pushes_queued, 3);
    drop(ach);
    // Thaw it a second after the stop begins.
    let thaw = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        nix::sys::signal::kill(bpid, nix::sys::signal::Signal::SIGCONT).unwrap();
    });
    let mut a = a;
    let (status, log) = a.stop();
    thaw.join().unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("pushing 3 pending result(s)"), "{log}");
    assert!(log.contains("pushed the pending results"), "{log}");
    let bch = b.unix().await;
    for action in &actions {
        get_action(&bch, action)
            .await
            .expect("a result pending at the stop did not reach the upstream");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrent_calls_bounds_what_is_open_upstream_at_once() {
    let mut seen = Vec::new();
    for limit in [2, 16] {
        // Each answer takes 300 ms, so that calls overlap.
        let recorder = Recorder::start(0.3);
        let d = Daemon::start(&format!(
            "\n[upstream]\nendpoint = \"grpc://127.0.0.1:{}\"\nmax-concurrent-calls = {limit}\n",
            recorder.port
        ));
        let ch = d.unix().await;
        // Wait for the start-up GetCapabilities, so that it is not counted.
        assert!(
            eventually(Duration::from_secs(10), async || upstream_status(&ch)
                .await
                .state
                == "up")
            .await
        );
        let lookups: Vec<_> = (0..8)
            .map(|i| {
                let ch = ch.clone();
                tokio::spawn(async move {
                    get_action(&ch, &Digest::of_bytes(format!("miss {i}").as_bytes())).await
                })
            })
            .collect();
        for l in lookups {
            assert_eq!(l.await.unwrap().unwrap_err().code(), Code::NotFound);
        }
        let most = recorder
            .calls()
            .iter()
            .filter(|c| c["method"].as_str().unwrap().ends_with("/GetActionResult"))
            .map(|c| c["in_flight"].as_u64().unwrap())
            .max()
            .unwrap();
        seen.push(most);
    }
    // With a limit of 2 at most 2 are open; without a binding one, more are:
    // the limit, not the client, is what held them back.
    assert_eq!(seen[0], 2, "max-concurrent-calls = 2: {seen:?}");
    assert!(seen[1] > 2, "max-concurrent-calls = 16: {seen:?}");
}
