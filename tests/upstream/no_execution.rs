//! Upstreams that do not execute (cache-only servers, a wrong instance name,
//! an Execute that is not gRPC) or cannot be reached: routed actions run
//! here where they can, or fail with UNAVAILABLE naming the upstream.

use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_upstream_falls_back_to_local_execution_or_says_unavailable() {
    let dead = format!("grpc://127.0.0.1:{}", free_port());
    let a = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"{dead}\"\nremote-execution = true\nconnect-timeout = \"1s\"\nretry-min = \"1m\"\nretry-max = \"1m\"\n"
    ));
    let ch = a.unix().await;
    let spec = runs_here_although_routed(&ch, "fallback").await;
    let st = client::status(&ch).await.unwrap();
    let up = st.upstream.unwrap();
    assert_eq!(
        (up.state.as_str(), up.remote_fallbacks),
        ("down", 1),
        "{up:?}"
    );
    // The same through the command line, as JSON.
    let out = std::process::Command::new(BIN)
        .args(["status", "--json", "--address"])
        .arg(format!("unix:{}", a.socket.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["upstream"]["endpoint"], dead.as_str());
    assert_eq!(json["upstream"]["state"], "down");
    assert_eq!(json["upstream"]["remote_fallbacks"], 1);
    assert!(
        json["upstream"]["error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{json}"
    );

    // Nothing local can run this one: UNAVAILABLE, naming the upstream.
    let mut pool = forwardable("unsatisfiable");
    pool.platform = vec![("pool".into(), "big".into())];
    let r = run(&ch, &pool, false).await;
    assert_eq!(status_code(&r), Code::Unavailable, "{r:?}");
    let msg = &r.status.as_ref().unwrap().message;
    assert!(msg.contains(&format!("upstream {dead}")), "{msg}");

    // Without local fallback, lre-remote=true fails the same way.
    let strict = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"{dead}\"\nremote-execution = true\nlocal-fallback = false\nconnect-timeout = \"1s\"\n"
    ));
    let sch = strict.unix().await;
    let r = run(&sch, &spec, false).await;
    assert_eq!(status_code(&r), Code::Unavailable, "{r:?}");
    assert_eq!(client::status(&sch).await.unwrap().actions_executed, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_only_buildgrid_and_a_wrong_instance_name_are_known_not_to_execute() {
    // BuildGrid's GetCapabilities has an execution block with exec_enabled
    // false; for an instance it lacks it answers INVALID_ARGUMENT. Either
    // way the daemon knows before an Execute: the action runs here, and no
    // input is uploaded for an Execute that would not come.
    let bg = BuildGrid::start();
    for (instance, salt, why) in [
        ("upstream", "cache-only", "exec_enabled = false"),
        (
            "nosuch",
            "wrong-instance",
            "GetCapabilities for instance \"nosuch\" fails",
        ),
    ] {
        let mut d = Daemon::start(&format!(
            "\n[upstream]\nendpoint = \"{}\"\ninstance-name = \"{instance}\"\nremote-execution = true\n",
            bg.endpoint()
        ));
        let ch = d.unix().await;
        let spec = runs_here_although_routed(&ch, salt).await;
        let up = upstream_status(&ch).await;
        assert_eq!(
            (up.remote_executions, up.remote_fallbacks),
            (0, 1),
            "{instance}: {up:?}"
        );
        let (action, _) = encode(&spec);
        assert!(
            bg.read("upstream", &hs(&action)).is_none(),
            "{instance}: the inputs were uploaded"
        );
        drop(ch);
        let (_, log) = d.stop();
        assert!(
            log.contains("does not execute actions") && log.contains(why),
            "{instance}: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_only_cluster_is_known_from_its_capabilities_and_an_overflow_still_runs_here() {
    // A second nativelink-lre without execution, and no local fallback.
    let cluster = Daemon::start("\n[execution]\nenabled = false\n");
    let a = Daemon::start(&format!(
        "\n[execution]\nmax-concurrent-actions = 1\n[upstream]\nendpoint = \"unix:{}\"\nremote-execution = true\nremote-queue-length = 1\nlocal-fallback = false\n",
        cluster.socket.display()
    ));
    let ch = a.unix().await;

    // lre-remote=true, and a platform only an upstream could have:
    // UNAVAILABLE, saying why, with nothing uploaded.
    let mut asked = forwardable("no-exec-asked");
    asked.platform = vec![("lre-remote".into(), "true".into())];
    let mut pool = forwardable("no-exec-pool");
    pool.platform = vec![("pool".into(), "big".into())];
    let cch = cluster.unix().await;
    for spec in [&asked, &pool] {
        let r = run(&ch, spec, false).await;
        assert_eq!(status_code(&r), Code::Unavailable, "{r:?}");
        let msg = &r.status.as_ref().unwrap().message;
        assert!(
            msg.contains("does not execute actions") && msg.contains("exec_enabled = false"),
            "{msg}"
        );
        let (action, _) = encode(spec);
        assert_eq!(find_missing(&cch, &[action]).await, vec![action]);
    }

    // Sent away only because the queue is long: it runs here, always.
    let mut sleepers = Vec::new();
    for i in 0..3 {
        let ch = ch.clone();
        sleepers.push(tokio::spawn(async move {
            let spec = ActionSpec::sh("sleep 2; echo queued").salt(&format!("no-exec-{i}"));
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
    let r = run(
        &ch,
        &ActionSpec::sh("echo overflow").salt("no-exec-x"),
        false,
    )
    .await;
    assert_eq!(status_code(&r), Code::Ok, "{:?}", r.status);
    for s in sleepers {
        let r = s.await.unwrap();
        assert_eq!(status_code(&r), Code::Ok, "{:?}", r.status);
    }
    let st = client::status(&ch).await.unwrap();
    let up = st.upstream.unwrap();
    assert_eq!(st.actions_executed, 4);
    assert_eq!(
        (up.remote_executions, up.remote_fallbacks),
        (0, 1),
        "{up:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_execute_answered_with_http_404_means_no_execution_and_the_action_runs_here() {
    // GetCapabilities says it executes, Execute is a plain HTTP 404.
    let fake = Http404Executor::start().await;
    let mut d = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"grpc://127.0.0.1:{}\"\nremote-execution = true\n",
        fake.port
    ));
    let ch = d.unix().await;
    runs_here_although_routed(&ch, "http-404").await;
    // Known now: the next is not sent there at all.
    runs_here_although_routed(&ch, "http-404-again").await;
    let up = upstream_status(&ch).await;
    assert_eq!(
        (up.state.as_str(), up.remote_executions, up.remote_fallbacks),
        ("up", 1, 2),
        "{up:?}"
    );
    drop(ch);
    let (_, log) = d.stop();
    assert!(
        log.contains("does not execute actions (its Execute answers UNIMPLEMENTED: not a gRPC answer: HTTP 404"),
        "{log}"
    );
    assert!(!log.contains("compression flag"), "{log}");
}
