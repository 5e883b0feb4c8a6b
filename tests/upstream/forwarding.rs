//! Forwarded executions: what the cluster answers reaches the client as the
//! cluster's answer, and what is cached of it.

use std::time::Duration;

use super::*;

/// Output digests, exit code and stdout of a result: what must match
/// between local and remote execution.
fn fingerprint(r: &reapi::ExecuteResponse) -> String {
    let result = r.result.as_ref().expect("a result");
    let mut parts: Vec<String> = result
        .output_files
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f.path,
                hs(&Digest::from_proto(f.digest.as_ref().unwrap()).unwrap())
            )
        })
        .collect();
    parts.extend(result.output_directories.iter().map(|d| {
        format!(
            "{}/ {}",
            d.path,
            hs(&Digest::from_proto(d.tree_digest.as_ref().unwrap()).unwrap())
        )
    }));
    parts.push(format!(
        "stdout {} exit {}",
        hs(&Digest::from_proto(result.stdout_digest.as_ref().unwrap()).unwrap()),
        result.exit_code
    ));
    parts.join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_executions_match_local_execution_digest_for_digest() {
    // The cluster: another nativelink-lre that offers a pool we do not.
    let cluster =
        Daemon::start("\n[execution]\nplatform = { OSFamily = \"Linux\", pool = \"big\" }\n");
    let a = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"unix:{}\"\nremote-execution = true\n",
        cluster.socket.display()
    ));
    let reference = Daemon::start("");
    let ach = a.unix().await;
    let cch = cluster.unix().await;

    // lre-remote=true: sent to the cluster.
    let mut spec = forwardable("forward");
    spec.platform = vec![("lre-remote".into(), "true".into())];
    let action = prepare(&ach, &spec).await;
    let ops = execute_ops(&ach, &action, false).await;
    let stages: Vec<i32> = ops
        .iter()
        .map(|op| {
            <reapi::ExecuteOperationMetadata as prost::Message>::decode(
                op.metadata.as_ref().unwrap().value.as_slice(),
            )
            .unwrap()
            .stage
        })
        .collect();
    let remote = response_of(ops.last().unwrap());
    assert_eq!(status_code(&remote), Code::Ok, "{:?}", remote.status);
    assert!(!remote.cached_result);
    assert!(
        stages.contains(&(reapi::execution_stage::Value::Executing as i32)),
        "the cluster's EXECUTING stage was not relayed: {stages:?}"
    );
    let cst = client::status(&cch).await.unwrap();
    let ast = client::status(&ach).await.unwrap();
    assert_eq!(cst.actions_executed, 1, "the cluster did not run it");
    assert_eq!(ast.actions_executed, 0, "it ran locally");
    assert_eq!(ast.upstream.as_ref().unwrap().remote_executions, 1);

    // The same action run by a plain local service gives the same digests.
    let rch = reference.unix().await;
    let local = run(&rch, &spec, false).await;
    assert_eq!(status_code(&local), Code::Ok);
    assert_eq!(fingerprint(&remote), fingerprint(&local));
    assert_eq!(
        stdout_of(&ach, &remote).await,
        stdout_of(&rch, &local).await
    );

    // The result is local now: cached, and its outputs readable without
    // the cluster.
    let again = response_of(execute_ops(&ach, &action, false).await.last().unwrap());
    assert!(again.cached_result);
    assert_eq!(
        output_file(&ach, &again, "out/copy.txt").await,
        b"forwarded input"
    );

    // A platform only the cluster offers: forwarded without being asked.
    let mut pool = forwardable("pool");
    pool.platform = vec![("pool".into(), "big".into())];
    let r = run(&ach, &pool, false).await;
    assert_eq!(status_code(&r), Code::Ok, "{:?}", r.status);
    assert_eq!(client::status(&cch).await.unwrap().actions_executed, 2);
    assert_eq!(client::status(&ach).await.unwrap().actions_executed, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_local_queue_sends_new_actions_to_the_cluster() {
    let cluster = Daemon::start("");
    let a = Daemon::start(&format!(
        "\n[execution]\nmax-concurrent-actions = 1\n[upstream]\nendpoint = \"unix:{}\"\nremote-execution = true\nremote-queue-length = 1\n",
        cluster.socket.display()
    ));
    let ch = a.unix().await;
    // One runs and two wait: the queue is longer than 1.
    let mut runs = Vec::new();
    for i in 0..3 {
        let ch = ch.clone();
        runs.push(tokio::spawn(async move {
            let spec = ActionSpec::sh("sleep 2; echo queued").salt(&format!("queue-{i}"));
            run(&ch, &spec, false).await
        }));
    }
    assert!(
        eventually(Duration::from_secs(20), async || {
            let s = client::status(&ch).await.unwrap();
            s.queued.iter().map(|q| q.count).sum::<u32>() >= 2
        })
        .await,
        "the local queue never filled"
    );
    let r = run(&ch, &ActionSpec::sh("echo overflow").salt("queue-x"), false).await;
    assert_eq!(status_code(&r), Code::Ok, "{:?}", r.status);
    for r in runs {
        let r = r.await.unwrap();
        assert_eq!(status_code(&r), Code::Ok, "{:?}", r.status);
    }
    let mine = client::status(&ch).await.unwrap();
    let theirs = client::status(&cluster.unix().await).await.unwrap();
    eprintln!(
        "local {} / cluster {}",
        mine.actions_executed, theirs.actions_executed
    );
    assert_eq!((mine.actions_executed, theirs.actions_executed), (3, 1));
    assert_eq!(
        mine.upstream.unwrap().remote_executions,
        theirs.actions_executed
    );
}

/// The `google.rpc.PreconditionFailure` violations in a status's details.
fn violations(s: &nativelink_lre::proto::google::rpc::Status) -> Vec<(String, String)> {
    use nativelink_lre::proto::google::rpc::PreconditionFailure;
    s.details
        .iter()
        .filter(|d| d.type_url.ends_with("google.rpc.PreconditionFailure"))
        .flat_map(|d| {
            <PreconditionFailure as prost::Message>::decode(d.value.as_slice())
                .unwrap()
                .violations
        })
        .map(|v| (v.r#type, v.description))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clusters_error_statuses_reach_the_client_unchanged_and_are_never_cached_or_run_here() {
    // The cluster refuses what this daemon allows: a timeout over a minute,
    // the host network. It offers a pool this daemon lacks.
    let cluster = Daemon::start(
        "\n[execution]\ndefault-timeout = \"1m\"\nmax-timeout = \"1m\"\nplatform = { OSFamily = \"Linux\", pool = \"big\" }\n",
    );
    let endpoint = format!("unix:{}", cluster.socket.display());
    let a = Daemon::start(&format!(
        "\n[sandbox]\nallow-host-network = true\n[upstream]\nendpoint = \"{endpoint}\"\nremote-execution = true\n"
    ));
    let ach = a.unix().await;
    let cch = cluster.unix().await;
    let remote = |salt: &str, extra: &[(&str, &str)]| {
        let mut spec = forwardable(salt);
        spec.platform = [("lre-remote", "true")]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        spec
    };
    let prefix = format!("upstream {endpoint}: ");

    // INVALID_ARGUMENT from the cluster, its message behind the endpoint.
    let mut long = remote("too-long", &[]);
    long.timeout = Some(Duration::from_secs(600));
    let r = run(&ach, &long, false).await;
    assert_eq!(status_code(&r), Code::InvalidArgument, "{r:?}");
    let s = r.status.as_ref().unwrap();
    assert!(
        s.message.starts_with(&prefix) && s.message.contains("max-timeout"),
        "{}",
        s.message
    );
    assert!(r.result.is_none());

    // FAILED_PRECONDITION with the cluster's PreconditionFailure kept.
    let host = remote("host-network", &[("lre-network", "host")]);
    let r = run(&ach, &host, false).await;
    assert_eq!(status_code(&r), Code::FailedPrecondition, "{r:?}");
    let v = violations(r.status.as_ref().unwrap());
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].0, "PLATFORM");
    assert!(v[0].1.contains("host network"), "{v:?}");

    // DEADLINE_EXCEEDED with the partial output, for an action only the
    // cluster can run: the output is readable here, the status is the
    // cluster's, and nothing is cached, so the next Execute runs it again.
    let mut slow = ActionSpec::sh("echo partial; sleep 30").salt("overran");
    slow.platform = vec![("pool".into(), "big".into())];
    slow.timeout = Some(Duration::from_secs(2));
    for round in 1..=2 {
        let r = run(&ach, &slow, false).await;
        assert_eq!(status_code(&r), Code::DeadlineExceeded, "{r:?}");
        assert!(r.status.as_ref().unwrap().message.starts_with(&prefix));
        assert!(!r.cached_result);
        assert_eq!(stdout_of(&ach, &r).await, "partial\n");
        assert_eq!(
            client::status(&cch).await.unwrap().actions_executed,
            round,
            "the cluster did not run it again"
        );
    }

    // None of them ran here, and none is in the action cache here.
    assert_eq!(client::status(&ach).await.unwrap().actions_executed, 0);
    for spec in [&long, &host, &slow] {
        let (action, _) = encode(spec);
        let e = get_action(&ach, &action).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    let up = upstream_status(&ach).await;
    assert_eq!(
        (up.state.as_str(), up.remote_fallbacks, up.calls_failed),
        ("up", 0, 0),
        "the cluster's answers counted as its failures: {up:?}"
    );
}

/// Stores `result` for `action` in a daemon's action cache (root is a
/// trusted writer: the shared view).
async fn update_action(ch: &Channel, action: &Digest, result: reapi::ActionResult) {
    ActionCacheClient::new(ch.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// An action result that no execution gives: exit code 42, a stdout of
/// its own (uploaded to `ch`).
async fn planted(ch: &Channel) -> reapi::ActionResult {
    let stdout = b"planted\n".to_vec();
    upload(ch, std::slice::from_ref(&stdout)).await;
    reapi::ActionResult {
        exit_code: 42,
        stdout_digest: Some(Digest::of_bytes(&stdout).to_proto()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_do_not_cache_action_is_never_looked_up_stored_or_read_through() {
    let mut cluster = Daemon::start("");
    let a = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"unix:{}\"\nremote-execution = true\n",
        cluster.socket.display()
    ));
    let ach = a.unix().await;
    let cch = cluster.unix().await;
    let executed = async |ch: &Channel| client::status(ch).await.unwrap().actions_executed;

    // Here: an entry for its digest is there, and Execute runs it anyway,
    // each time, and stores nothing.
    let mut here = ActionSpec::sh("echo fresh").salt("dnc-local");
    here.do_not_cache = true;
    let (action, blobs) = encode(&here);
    upload(&ach, &blobs).await;
    update_action(&ach, &action, planted(&ach).await).await;
    for n in 1..=2 {
        let r = run(&ach, &here, false).await;
        assert_eq!(status_code(&r), Code::Ok, "{r:?}");
        assert!(!r.cached_result, "a do_not_cache action was looked up");
        assert_eq!(stdout_of(&ach, &r).await, "fresh\n");
        assert_eq!(executed(&ach).await, n);
    }

    // Forwarded: the cluster holds an entry for its digest (as NativeLink
    // keeps do_not_cache results). It is neither read through nor used by
    // the cluster's Execute (skip_cache_lookup); each Execute runs it there.
    let mut away = ActionSpec::sh("echo away").salt("dnc-remote");
    away.do_not_cache = true;
    away.platform = vec![("lre-remote".into(), "true".into())];
    let (action, blobs) = encode(&away);
    upload(&cch, &blobs).await;
    update_action(&cch, &action, planted(&cch).await).await;
    for n in 1..=2 {
        let r = run(&ach, &away, false).await;
        assert_eq!(status_code(&r), Code::Ok, "{r:?}");
        assert!(!r.cached_result);
        assert_eq!(stdout_of(&ach, &r).await, "away\n");
        assert_eq!(executed(&cch).await, n, "the cluster did not run it");
    }
    assert_eq!(executed(&ach).await, 2, "it ran here");
    // GetActionResult here: the Action is known to be do_not_cache, so the
    // cluster's entry is not copied in, although the cluster has one.
    assert_eq!(get_action(&cch, &action).await.unwrap().exit_code, 42);
    let e = get_action(&ach, &action).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(upstream_status(&ach).await.action_cache_hits, 0);

    // Without the cluster it runs here, still not from any cache.
    drop(cch);
    cluster.kill9();
    let r = run(&ach, &away, false).await;
    assert_eq!(status_code(&r), Code::Ok, "{r:?}");
    assert!(!r.cached_result);
    assert_eq!(stdout_of(&ach, &r).await, "away\n");
    assert_eq!(executed(&ach).await, 3);
}
