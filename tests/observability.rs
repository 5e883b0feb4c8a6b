//! What an operator sees (issue 13, items 1-3): one log line per action
//! and per refused request, the Prometheus endpoint, and `status` per
//! running action and per user.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::exec::*;
use common::users::User;
use common::*;

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

/// The value of the sample `name{labels}` in a Prometheus text page; every
/// label given must match.
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (n, rest) = key.split_once('{').unwrap_or((key, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// Every line of the page parses as Prometheus text: comments, or a metric
/// name with optional labels and a number.
fn assert_prometheus_text(page: &str) {
    for line in page.lines().filter(|l| !l.is_empty()) {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line == "# EOF"
                    || line.starts_with("# UNIT "),
                "{line}"
            );
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && name.starts_with("lre_"),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_as_the_daemon_works() {
    let port = free_port();
    let user = User::create();
    let d = Daemon::start(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let before = scrape(addr);
    assert_prometheus_text(&before);
    let ch = d.unix_as(user.uid).await;
    let uid = user.uid.to_string();
    find_missing(&ch, &[Digest::of_bytes(b"x")]).await;
    let fmb = "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs";
    // A remote execution as Bazel does it: GetActionResult misses, Execute
    // runs it; then a hit. One miss is counted, not two.
    let spec = ActionSpec::sh("echo hello").salt("metrics");
    let action = prepare(&ch, &spec).await;
    let ac = reapi::action_cache_client::ActionCacheClient::new(ch.clone());
    let get = || {
        let mut ac = ac.clone();
        async move {
            ac.get_action_result(reapi::GetActionResultRequest {
                action_digest: Some(action.to_proto()),
                ..Default::default()
            })
            .await
        }
    };
    assert!(get().await.is_err());
    let r = response_of(execute_ops(&ch, &action, false).await.last().unwrap());
    assert_eq!(r.result.unwrap().exit_code, 0);
    assert!(get().await.is_ok());
    let page = scrape(addr);
    assert_prometheus_text(&page);
    assert_eq!(
        sample(&page, "lre_rpcs_total", &[("method", fmb), ("code", "OK")]),
        1.0
    );
    assert_eq!(
        sample(
            &page,
            "lre_action_cache_lookups_total",
            &[("result", "miss"), ("user", &uid)]
        ),
        1.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "lre_action_cache_lookups_total",
            &[("result", "hit"), ("user", &uid)]
        ),
        1.0
    );
    assert_eq!(
        sample(&page, "lre_executions_total", &[("outcome", "succeeded")]),
        1.0
    );
    assert!(sample(&page, "lre_store_bytes", &[]) > 0.0);
    assert!(sample(&page, "lre_queue_wait_seconds_count", &[]) >= 1.0);
    assert!(sample(&page, "lre_rpc_duration_seconds_count", &[("method", fmb)]) >= 1.0);
    // A refused call is counted by its code.
    let e = reapi::action_cache_client::ActionCacheClient::new(d.tcp().await)
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(Digest::of_bytes(b"bad").to_proto()),
            action_result: Some(reapi::ActionResult {
                stdout_digest: Some(reapi::Digest {
                    hash: "nothex".into(),
                    size_bytes: 1,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(e.is_err());
    let page = scrape(addr);
    let uar = "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult";
    assert_eq!(
        sample(
            &page,
            "lre_rpcs_total",
            &[("method", uar), ("code", "INVALID_ARGUMENT")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_line_per_action_and_per_refusal() {
    let (user, stranger) = (User::create(), User::create());
    let mut d = Daemon::start(&format!("allowed-users = [\"root\", \"{}\"]", user.name));
    let ch = d.unix_as(user.uid).await;
    let ok = ActionSpec::sh("true").salt("log-ok");
    run(&ch, &ok, false).await;
    run(&ch, &ok, false).await; // answered from the cache
    run(&ch, &ActionSpec::sh("exit 7").salt("log-fail"), false).await;
    let refused = find_missing_result(&d.tcp_as(stranger.uid).await).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
    let (_, log) = d.stop();
    let lines: Vec<&str> = log.lines().collect();
    let find = |needle: &str| {
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .copied()
            .collect::<Vec<_>>()
    };
    let succeeded = find("action succeeded");
    assert_eq!(succeeded.len(), 1, "{log}");
    for field in [
        format!("user=uid {}", user.uid),
        "argv0=/bin/sh".into(),
        "exit_code=0".into(),
        "cached=false".into(),
        "wall_ms=".into(),
        "action=".into(),
    ] {
        assert!(
            succeeded[0].contains(&field),
            "{field} missing: {}",
            succeeded[0]
        );
    }
    let cached = find("action cached");
    assert_eq!(cached.len(), 1, "{log}");
    assert!(cached[0].contains("cached=true"), "{}", cached[0]);
    let failed = find("action failed");
    assert_eq!(failed.len(), 1, "{log}");
    assert!(failed[0].contains("exit_code=7"), "{}", failed[0]);
    let refusals = find("refused");
    assert!(
        refusals
            .iter()
            .any(|l| l.contains(&format!("uid {}", stranger.uid))
                && l.contains("FindMissingBlobs")
                && l.contains("allowed-users")),
        "{log}"
    );
}

async fn find_missing_result(ch: &tonic::transport::Channel) -> Result<(), tonic::Status> {
    reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(ch.clone())
        .find_missing_blobs(reapi::FindMissingBlobsRequest::default())
        .await
        .map(drop)
}

/// `log-level = "debug"` is the daemon's own debug output, not the HTTP/2
/// frames of the libraries below it.
#[tokio::test(flavor = "multi_thread")]
async fn debug_is_not_flooded_by_libraries() {
    let mut d = Daemon::start_with_env("log-level = \"debug\"", &[("RUST_LOG", "-")]);
    let ch = d.unix().await;
    for i in 0..5u64 {
        upload(&ch, &[data(i, 1000)]).await;
    }
    let (_, log) = d.stop();
    assert!(!log.contains("h2::"), "{log}");
    assert!(!log.to_lowercase().contains("frame"), "{log}");
    assert!(
        log.contains("DEBUG"),
        "the daemon's own debug lines are missing:\n{log}"
    );
}

/// `status` names, per running action, the user, the command's first
/// argument and its elapsed time, and shows hit rates per user.
#[tokio::test(flavor = "multi_thread")]
async fn status_shows_who_runs_what() {
    let user = User::create();
    let d = Daemon::start("");
    let ch = d.unix_as(user.uid).await;
    let token = format!("lre-status-{}", std::process::id());
    let spec = ActionSpec::sh(&format!("sh -c 'sleep 3' {token}")).salt(&token);
    let action = prepare(&ch, &spec).await;
    let running = tokio::spawn({
        let ch = ch.clone();
        async move { execute_ops(&ch, &action, true).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while host_processes_with(&token).is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = std::process::Command::new(BIN)
        .args(["status", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("EXECUTING"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("/bin/sh"), "{line}");
    assert!(line.contains(&user.name), "{line}");
    assert!(!line.contains(" 0s"), "no elapsed time: {line}");
    running.await.unwrap();
    let spec = ActionSpec::sh("true").salt("rates");
    run(&ch, &spec, false).await;
    run(&ch, &spec, false).await;
    let out = std::process::Command::new(BIN)
        .args(["status", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("uid {}: 1 of 2 lookups hit", user.uid)),
        "{text}"
    );
}
