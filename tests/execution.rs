//! Hermetic execution end to end: the real daemon (as root) runs actions in
//! its sandbox; each escape and leak check is its own test.

mod common;

use std::time::Duration;

use common::exec::*;
use common::*;
use reapi::capabilities_client::CapabilitiesClient;
use tonic::Code;

fn status_code(r: &reapi::ExecuteResponse) -> i32 {
    r.status.as_ref().map_or(0, |s| s.code)
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_a_command_and_caches_the_result() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let caps = CapabilitiesClient::new(ch.clone())
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(caps.execution_capabilities.unwrap().exec_enabled);

    let spec = ActionSpec::sh("cat in.txt > out/copy.txt; echo to-stdout; echo to-stderr >&2")
        .file("in.txt", b"input data")
        .outputs(&["out/copy.txt"]);
    let action = prepare(&ch, &spec).await;
    let ops = execute_ops(&ch, &action, false).await;
    let stages: Vec<i32> = ops
        .iter()
        .map(|op| {
            let any = op.metadata.as_ref().unwrap();
            assert_eq!(
                any.type_url,
                "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata"
            );
            <reapi::ExecuteOperationMetadata as prost::Message>::decode(any.value.as_slice())
                .unwrap()
                .stage
        })
        .collect();
    assert_eq!(
        *stages.last().unwrap(),
        reapi::execution_stage::Value::Completed as i32
    );
    let r = response_of(ops.last().unwrap());
    assert_eq!(status_code(&r), 0, "{:?}", r.status);
    assert!(!r.cached_result);
    let result = r.result.as_ref().unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(output_file(&ch, &r, "out/copy.txt").await, b"input data");
    assert_eq!(stdout_of(&ch, &r).await, "to-stdout\n");
    assert_eq!(stderr_of(&ch, &r).await, "to-stderr\n");
    let meta = result.execution_metadata.as_ref().unwrap();
    assert!(meta.worker.starts_with("nativelink-lre@"));
    assert!(
        meta.execution_start_timestamp.is_some() && meta.execution_completed_timestamp.is_some()
    );
    assert_eq!(
        meta.auxiliary_metadata[0].type_url,
        "type.googleapis.com/nativelink_lre.v1.ResourceUsage"
    );

    // The same action again is a cache hit; skip_cache_lookup runs it again.
    let again = response_of(execute_ops(&ch, &action, false).await.last().unwrap());
    assert!(again.cached_result);
    let forced = response_of(execute_ops(&ch, &action, true).await.last().unwrap());
    assert!(!forced.cached_result);
    // Results are in the shared action cache, for every user.
    let other = d.unix_as(4101).await;
    let hit = response_of(execute_ops(&other, &action, false).await.last().unwrap());
    assert!(hit.cached_result);
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_not_cached_and_do_not_cache_is_honoured() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let failing = ActionSpec::sh("exit 3");
    let r = run(&ch, &failing, false).await;
    assert_eq!(r.result.as_ref().unwrap().exit_code, 3);
    assert!(!run(&ch, &failing, false).await.cached_result);
    let mut uncached = ActionSpec::sh("echo x");
    uncached.do_not_cache = true;
    assert!(!run(&ch, &uncached, false).await.cached_result);
    assert!(!run(&ch, &uncached, false).await.cached_result);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_inputs_are_listed_for_reupload() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let spec = ActionSpec::sh("cat a b")
        .file("a", b"present")
        .file("b", b"absent one")
        .file("c", b"absent two");
    let (action, blobs) = encode(&spec);
    // Upload everything but the contents of b and c.
    let keep: Vec<Vec<u8>> = blobs
        .into_iter()
        .filter(|b| b.as_slice() != b"absent one" && b.as_slice() != b"absent two")
        .collect();
    upload(&ch, &keep).await;
    let r = response_of(execute_ops(&ch, &action, false).await.last().unwrap());
    let status = r.status.unwrap();
    assert_eq!(status.code, Code::FailedPrecondition as i32, "{status:?}");
    let any = &status.details[0];
    assert_eq!(
        any.type_url,
        "type.googleapis.com/google.rpc.PreconditionFailure"
    );
    let pf = <nativelink_lre::proto::google::rpc::PreconditionFailure as prost::Message>::decode(
        any.value.as_slice(),
    )
    .unwrap();
    let mut subjects: Vec<String> = pf.violations.iter().map(|v| v.subject.clone()).collect();
    subjects.sort();
    let mut want: Vec<String> = [b"absent one".as_slice(), b"absent two"]
        .iter()
        .map(|b| {
            let d = Digest::of_bytes(b);
            format!("blobs/{}/{}", d.hex(), d.size())
        })
        .collect();
    want.sort();
    assert_eq!(subjects, want);
    assert!(pf.violations.iter().all(|v| v.r#type == "MISSING"));

    // A missing Action is reported the same way.
    let absent = Digest::of_bytes(b"no such action");
    let r = response_of(execute_ops(&ch, &absent, false).await.last().unwrap());
    assert_eq!(r.status.unwrap().code, Code::FailedPrecondition as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_trees_and_outputs_are_refused_by_path() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let mut escaping = ActionSpec::sh("true");
    escaping
        .symlinks
        .push(("dir/link".into(), "../../etc/passwd".into()));
    let r = run(&ch, &escaping, false).await;
    let s = r.status.unwrap();
    assert_eq!(s.code, Code::InvalidArgument as i32, "{s:?}");
    assert!(s.message.contains("dir/link"), "{}", s.message);

    let bad_output = ActionSpec::sh("true").outputs(&["../outside"]);
    let s = run(&ch, &bad_output, false).await.status.unwrap();
    assert_eq!(s.code, Code::InvalidArgument as i32, "{s:?}");
    assert!(s.message.contains("../outside"), "{}", s.message);

    let dotdot = ActionSpec::sh("true").file("a/../b", b"x");
    let s = run(&ch, &dotdot, false).await.status.unwrap();
    assert_eq!(s.code, Code::InvalidArgument as i32, "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_keeps_partial_output_and_reports_deadline_exceeded() {
    let d = Daemon::start("\n[execution]\nkill-grace = \"500ms\"\n");
    let ch = d.unix().await;
    let mut spec = ActionSpec::sh("echo started; echo partial > out.txt; sleep 100; echo never")
        .outputs(&["out.txt"]);
    spec.timeout = Some(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let r = run(&ch, &spec, false).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        status_code(&r),
        Code::DeadlineExceeded as i32,
        "{:?}",
        r.status
    );
    assert_eq!(stdout_of(&ch, &r).await, "started\n");
    assert_eq!(output_file(&ch, &r, "out.txt").await, b"partial\n");
    assert!(
        !run(&ch, &spec, false).await.cached_result,
        "a timed-out result was cached"
    );
    // A timeout over the maximum is refused.
    spec.timeout = Some(Duration::from_secs(24 * 3600));
    let s = run(&ch, &spec, false).await.status.unwrap();
    assert_eq!(s.code, Code::InvalidArgument as i32);
    assert!(s.message.contains("max-timeout"));
}

#[tokio::test(flavor = "multi_thread")]
async fn daemonized_grandchildren_are_killed_with_the_action() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let token = format!("lre-tree-kill-{}", std::process::id());
    // A setsid daemon and a plain background child, each a shell whose $0
    // is the token, outliving the action's main process by far.
    let spec = ActionSpec::sh(&format!(
        "setsid sh -c 'while :; do sleep 1; done' {token} </dev/null >/dev/null 2>&1 & \
         sh -c 'while :; do sleep 1; done' {token} & sleep 1; echo spawned"
    ));
    let running = tokio::spawn(async move { run(&ch, &spec, false).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while host_processes_with(&token).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the background processes never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = running.await.unwrap();
    assert_eq!(status_code(&r), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !host_processes_with(&token).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "processes outlived the action: {:?}",
            host_processes_with(&token)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_the_action() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let token = format!("lre-cancel-{}", std::process::id());
    let spec = ActionSpec::sh(&format!("sh -c 'while :; do sleep 1; done' {token}"));
    let action = prepare(&ch, &spec).await;
    let mut stream = reapi::execution_client::ExecutionClient::new(ch.clone())
        .execute(reapi::ExecuteRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    // Wait until it runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while host_processes_with(&token).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the action never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another uid cannot see it, let alone cancel it.
    let stranger =
        nativelink_lre::proto::google::longrunning::operations_client::OperationsClient::new(
            d.unix_as(4102).await,
        )
        .cancel_operation(
            nativelink_lre::proto::google::longrunning::CancelOperationRequest {
                name: first.name.clone(),
            },
        )
        .await;
    assert_eq!(stranger.unwrap_err().code(), Code::NotFound);
    nativelink_lre::proto::google::longrunning::operations_client::OperationsClient::new(
        ch.clone(),
    )
    .cancel_operation(
        nativelink_lre::proto::google::longrunning::CancelOperationRequest {
            name: first.name.clone(),
        },
    )
    .await
    .unwrap();
    let mut last = first;
    while let Some(op) = stream.message().await.unwrap() {
        last = op;
    }
    assert_eq!(status_code(&response_of(&last)), Code::Cancelled as i32);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !host_processes_with(&token).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "cancelled action still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // WaitExecution on the finished operation returns it at once.
    let mut waited = reapi::execution_client::ExecutionClient::new(ch.clone())
        .wait_execution(reapi::WaitExecutionRequest {
            name: last.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let op = waited.message().await.unwrap().unwrap();
    assert!(op.done);
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_properties_must_match() {
    let d = Daemon::start(
        "\n[execution]\nplatform = { OSFamily = \"Linux\", pool = [\"default\", \"big\"] }\n",
    );
    let ch = d.unix().await;
    let mut ok = ActionSpec::sh("true");
    ok.platform = vec![
        ("OSFamily".into(), "Linux".into()),
        ("pool".into(), "big".into()),
    ];
    assert_eq!(status_code(&run(&ch, &ok, false).await), 0);
    let mut wrong = ActionSpec::sh("true");
    wrong.platform = vec![("OSFamily".into(), "Windows".into())];
    let s = run(&ch, &wrong, false).await.status.unwrap();
    assert_eq!(s.code, Code::FailedPrecondition as i32);
    assert!(s.message.contains("OSFamily"), "{}", s.message);
    let mut unknown = ActionSpec::sh("true");
    unknown.platform = vec![("container-image".into(), "docker://x".into())];
    let s = run(&ch, &unknown, false).await.status.unwrap();
    assert!(s.message.contains("container-image"), "{}", s.message);
    let mut net = ActionSpec::sh("true");
    net.platform = vec![("lre-network".into(), "host".into())];
    let s = run(&ch, &net, false).await.status.unwrap();
    assert!(s.message.contains("allow-host-network"), "{}", s.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_and_symlink_outputs() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let spec = ActionSpec::sh(
        "mkdir -p out/sub && echo a > out/a.txt && printf '#!/bin/sh\\n' > out/sub/run && chmod +x out/sub/run \
         && ln -s a.txt out/link && ln -s out/a.txt top-link",
    )
    .outputs(&["out", "top-link"]);
    let r = run(&ch, &spec, false).await;
    assert_eq!(
        status_code(&r),
        0,
        "{:?} {}",
        r.status,
        stderr_of(&ch, &r).await
    );
    let result = r.result.unwrap();
    assert_eq!(result.output_symlinks.len(), 1);
    assert_eq!(result.output_symlinks[0].path, "top-link");
    assert_eq!(result.output_symlinks[0].target, "out/a.txt");
    let dir = &result.output_directories[0];
    assert_eq!(dir.path, "out");
    let tree = <reapi::Tree as prost::Message>::decode(
        read_blob(&ch, dir.tree_digest.as_ref().unwrap())
            .await
            .as_slice(),
    )
    .unwrap();
    let root = tree.root.unwrap();
    assert_eq!(root.files[0].name, "a.txt");
    assert_eq!(root.symlinks[0].name, "link");
    assert_eq!(tree.children.len(), 1);
    assert!(tree.children[0].files[0].is_executable);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_actions_finish_correctly() {
    let d = Daemon::start("\n[execution]\nmax-concurrent-actions = 4\n");
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let ch = if i % 2 == 0 {
            d.unix().await
        } else {
            d.tcp_as(4200 + i % 3).await
        };
        tasks.push(tokio::spawn(async move {
            // Every fifth action is the same, to exercise joining.
            let n = if i % 5 == 0 { 1000 } else { i };
            let spec = ActionSpec::sh(&format!("echo {n} > n.txt; seq 1 {n} | wc -l"))
                .file("input", format!("input {n}").as_bytes())
                .outputs(&["n.txt"]);
            let r = run(&ch, &spec, true).await;
            assert_eq!(status_code(&r), 0, "{:?}", r.status);
            assert_eq!(
                output_file(&ch, &r, "n.txt").await,
                format!("{n}\n").as_bytes()
            );
            assert_eq!(stdout_of(&ch, &r).await.trim(), n.to_string());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_is_exactly_the_commands() {
    let d = Daemon::start_with_env("", &[("LRE_DAEMON_SECRET", "hunter2")]);
    let ch = d.unix().await;
    let mut spec = ActionSpec::sh("env | sort; echo cwd=$(pwd)");
    spec.env.push(("ZED".into(), "last".into()));
    spec.working_dir = "sub".into();
    spec = spec.file("sub/keep", b"");
    let r = run(&ch, &spec, false).await;
    let out = stdout_of(&ch, &r).await;
    assert!(
        !out.contains("hunter2") && !out.contains("LRE_DAEMON_SECRET"),
        "{out}"
    );
    let vars: Vec<&str> = out.lines().filter(|l| !l.starts_with("cwd=")).collect();
    // sh adds PWD (and SHLVL, _ in some shells); nothing else may appear.
    let unexpected: Vec<&&str> = vars
        .iter()
        .filter(|l| {
            !l.starts_with("PATH=")
                && !l.starts_with("ZED=")
                && !l.starts_with("PWD=")
                && !l.starts_with("SHLVL=")
                && !l.starts_with("OLDPWD=")
                && !l.starts_with("_=")
        })
        .collect();
    assert!(unexpected.is_empty(), "{out}");
    assert!(out.contains("ZED=last"));
    assert!(out.contains("cwd=/exec/sub"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cannot_read_host_secrets_or_the_store() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    std::fs::write(d.dir.path().join("secret"), "top secret").unwrap();
    let state = d.state.display().to_string();
    let script = format!(
        "for p in /root /home /etc/shadow {state} {state}/cas /var/lib /run; do \
           if ls $p >/dev/null 2>&1 || cat $p >/dev/null 2>&1; then echo VISIBLE $p; fi; done; \
         cat {}/secret 2>/dev/null && echo READ-SECRET; echo done",
        d.dir.path().display()
    );
    let r = run(&ch, &ActionSpec::sh(&script), false).await;
    let out = stdout_of(&ch, &r).await;
    assert_eq!(out, "done\n", "the action could see host paths:\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cannot_reach_the_daemon_over_the_network() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let port = d.tcp.port();
    let script = format!(
        "if bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null; then echo CONNECTED; fi; \
         ls {} 2>/dev/null && echo SOCKET; cat /sys/class/net/*/operstate 2>/dev/null; ip -o link 2>/dev/null | cut -d: -f2; echo done",
        d.socket.display()
    );
    let r = run(&ch, &ActionSpec::sh(&script), false).await;
    let out = stdout_of(&ch, &r).await;
    assert!(
        !out.contains("CONNECTED") && !out.contains("SOCKET"),
        "{out}"
    );
    assert!(out.ends_with("done\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cannot_see_another_running_action() {
    let d = Daemon::start("\n[execution]\nmax-concurrent-actions = 2\n");
    let token = format!("lre-neighbour-{}", std::process::id());
    let ch = d.unix().await;
    let neighbour = ActionSpec::sh(&format!(
        "echo {token} > marker-{token}; sh -c 'while :; do sleep 1; done' {token}"
    ));
    let ch2 = ch.clone();
    let running = tokio::spawn(async move { run(&ch2, &neighbour, false).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while host_processes_with(&token).is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spy = ActionSpec::sh(&format!(
        "cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c {token}; \
         find / -xdev -name 'marker-*' 2>/dev/null | wc -l; ls /proc | grep -c '^[0-9]'"
    ));
    let r = run(&ch, &spy, false).await;
    let out = stdout_of(&ch, &r).await;
    let counts: Vec<&str> = out.lines().collect();
    // grep itself matches its own command line once.
    assert_eq!(counts[0], "1", "saw the neighbour's processes: {out}");
    assert_eq!(counts[1], "0", "saw the neighbour's files: {out}");
    let pids: u32 = counts[2].parse().unwrap();
    assert!(
        pids < 10,
        "sees {pids} processes: not a private pid namespace"
    );
    running.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn cannot_write_outside_exec_root_and_tmp() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let script = "for p in /x /usr/x /bin/x /etc/x /dev/x /proc/x /exec/ok /tmp/ok; do \
                    if touch $p 2>/dev/null; then echo WROTE $p; fi; done";
    let r = run(&ch, &ActionSpec::sh(script), false).await;
    assert_eq!(stdout_of(&ch, &r).await, "WROTE /exec/ok\nWROTE /tmp/ok\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn cannot_change_a_cas_blob_through_its_hard_link() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let original = b"pristine input".to_vec();
    let spec = ActionSpec::sh(
        "chmod u+w in.txt 2>/dev/null; echo evil >> in.txt 2>/dev/null; echo evil > in.txt 2>/dev/null; \
         ln -f in.txt /tmp/x 2>/dev/null; touch -d 2000-01-01 in.txt 2>/dev/null; \
         rm -f in.txt; echo replaced > in.txt; cat in.txt",
    )
    .file("in.txt", &original);
    let r = run(&ch, &spec, false).await;
    // As root the input is the daemon's: the action cannot change it, only
    // remove its own link and write a new file in its place.
    assert_eq!(stdout_of(&ch, &r).await, "replaced\n");
    let d_in = Digest::of_bytes(&original);
    assert_eq!(read_blob(&ch, &d_in.to_proto()).await, original);
    verify_store(&d.state);
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_bomb_fails_the_action_and_the_daemon_stays_responsive() {
    // Without the pids controller (as on these machines) the limit is
    // enforced per action uid with RLIMIT_NPROC.
    let d = Daemon::start("\n[cgroup]\npids-max = 64\n");
    let ch = d.unix().await;
    let mut spec = ActionSpec::sh("bomb() { bomb | bomb & }; bomb; sleep 2; echo survived");
    spec.timeout = Some(Duration::from_secs(20));
    let started = std::time::Instant::now();
    let r = run(&ch, &spec, false).await;
    let err = stderr_of(&ch, &r).await;
    assert!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "the fork bomb was not stopped by a process limit: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The daemon still answers promptly.
    let t = std::time::Instant::now();
    CapabilitiesClient::new(d.unix().await)
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_cgroup_controllers_are_reported_not_hidden() {
    let mut d = Daemon::start("\n[cgroup]\nmemory-max = \"256MiB\"\n");
    let ready = d.ready.join("\n");
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers"))
        .unwrap_or_default();
    let (_, log) = d.stop();
    if controllers.contains("memory") {
        eprintln!("this host has the memory controller; the VM tier checks enforcement");
        return;
    }
    eprintln!(
        "NOT RUN HERE: enforcement of memory.max (a memory hog killed) needs the cgroup v2 memory \
         controller, which this host lacks; the real-systemd VM tier runs it. Checking that the \
         daemon says so instead."
    );
    assert!(
        log.contains("memory") && log.contains("unavailable"),
        "{log}"
    );
    assert!(
        ready.contains("STATUS=") && ready.contains("limits: memory, pids, cpu unavailable"),
        "the STATUS line does not say which limits are missing: {ready}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_left_by_a_crashed_daemon_are_killed_at_start_up() {
    let mut d = Daemon::start("");
    let token = format!("lre-orphan-{}", std::process::id());
    let running = start_endless_action(&d, &token).await;
    d.kill9();
    running.abort();
    // The daemon is gone; its action is not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !host_processes_with(&token).is_empty(),
        "the action died with the daemon"
    );
    d.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !host_processes_with(&token).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted daemon left its predecessor's action running: {:?}",
            host_processes_with(&token)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_running_actions_and_removes_our_cgroups() {
    let mut d = Daemon::start("\n[execution]\nkill-grace = \"500ms\"\n");
    let token = format!("lre-sigterm-{}", std::process::id());
    let running = start_endless_action(&d, &token).await;
    let (status, log) = d.stop();
    running.abort();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("stopping 1 running actions"), "{log}");
    assert!(
        host_processes_with(&token).is_empty(),
        "an action outlived the daemon: {:?}",
        host_processes_with(&token)
    );
    // The daemon's cgroup subtree (named after its state directory) is gone.
    let key = Digest::of_bytes(d.state.as_os_str().as_encoded_bytes()).hex();
    for mount in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let base = std::path::Path::new(mount).join(format!("nativelink-lre-{}", &key[..12]));
        assert!(!base.exists(), "{} was left behind", base.display());
    }
}

/// Starts an action that runs until killed, its shell tagged with `token`,
/// and waits until it runs. The returned task holds the Execute call open.
async fn start_endless_action(d: &Daemon, token: &str) -> tokio::task::JoinHandle<()> {
    let ch = d.unix().await;
    let spec = ActionSpec::sh(&format!("sh -c 'while :; do sleep 1; done' {token}"));
    let action = prepare(&ch, &spec).await;
    let running = tokio::spawn(async move {
        let _ = reapi::execution_client::ExecutionClient::new(ch)
            .execute(reapi::ExecuteRequest {
                action_digest: Some(action.to_proto()),
                ..Default::default()
            })
            .await;
        std::future::pending::<()>().await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while host_processes_with(token).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the action never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}
