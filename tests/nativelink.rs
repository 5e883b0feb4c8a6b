//! The NativeLink tier: our daemon in front of NativeLink 1.6.6, the system
//! the project is named after, as an executing cluster (and as a cache-only
//! server). It runs only when `NATIVELINK_BIN` names a `nativelink` binary
//! built with the shared recipe (`../shared/peers/nativelink/build.sh`: tag
//! v1.6.6, its one git dependency replaced); CI does not have one, and each
//! test then says loudly that it was skipped.
//!
//! The configurations are in tests/upstream/nativelink/: `exec.json5` (a
//! scheduler and one local worker that runs commands unsandboxed on the
//! host), `cas.json5` (cache only: Execute is HTTP 404), and
//! `exec-without-service.json5` (GetCapabilities says it executes, Execute
//! is HTTP 404). Each test starts its own NativeLink on free loopback ports
//! with its state in a temporary directory, and stops it by its PID.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::exec::*;
use common::*;
use nativelink_lre::client;
use nativelink_lre::proto::google::longrunning::{
    CancelOperationRequest, operations_client::OperationsClient,
};
use reapi::action_cache_client::ActionCacheClient;
use reapi::execution_stage::Value as Stage;
use tonic::Code;
use tonic::transport::Channel;

/// The binary, or `None` after saying loudly that `test` is skipped.
fn nativelink_bin(test: &str) -> Option<PathBuf> {
    match std::env::var_os("NATIVELINK_BIN") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "NATIVELINK_BIN={} is not a file", p.display());
            Some(p)
        }
        _ => {
            eprintln!();
            eprintln!("=====================================================================");
            eprintln!("NOT RUN: {test}");
            eprintln!("  the NativeLink tier needs NATIVELINK_BIN=/path/to/nativelink (1.6.6,");
            eprintln!("  built with ../shared/peers/nativelink/build.sh); it was skipped");
            eprintln!("=====================================================================");
            println!("NOT RUN: NATIVELINK_BIN is not set");
            None
        }
    }
}

/// A running NativeLink. Thawed, SIGTERMed and reaped when dropped.
struct NativeLink {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl NativeLink {
    /// Starts `nativelink tests/upstream/nativelink/CONFIG.json5`, or
    /// `None` (loudly) without `NATIVELINK_BIN`.
    fn start(test: &str, config: &str) -> Option<NativeLink> {
        let bin = nativelink_bin(test)?;
        let config = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/upstream/nativelink")
            .join(format!("{config}.json5"));
        let dir = tempfile::Builder::new().prefix("lre-nl").tempdir().unwrap();
        let (port, worker_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("nativelink.log")).unwrap();
        use std::os::unix::process::CommandExt;
        let child = Command::new(bin)
            .arg(&config)
            .env("NL_DIR", dir.path())
            .env("NL_PORT", port.to_string())
            .env("NL_WORKER_PORT", worker_port.to_string())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: a ^C of the test run does not reach it.
            .process_group(0)
            .spawn()
            .unwrap();
        let mut nl = NativeLink {
            child: Some(child),
            dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nl.child.as_mut().unwrap().try_wait() {
                panic!("nativelink exited with {status}:\n{}", nl.log());
            }
            assert!(
                Instant::now() < deadline,
                "nativelink did not listen on {port}:\n{}",
                nl.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The worker connects to the scheduler right after.
        std::thread::sleep(Duration::from_millis(500));
        Some(nl)
    }

    fn endpoint(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    async fn channel(&self) -> Channel {
        tcp_channel(format!("127.0.0.1:{}", self.port).parse().unwrap(), None).await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nativelink.log")).unwrap_or_default()
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for NativeLink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Our daemon with NativeLink as its executing upstream.
fn daemon_before(nl: &NativeLink, extra_upstream: &str, extra: &str) -> Daemon {
    Daemon::start(&format!(
        "\n{extra}\n[upstream]\nendpoint = \"{}\"\nremote-execution = true\n{extra_upstream}\n",
        nl.endpoint()
    ))
}

fn status_code(r: &reapi::ExecuteResponse) -> Code {
    Code::from(r.status.as_ref().map_or(0, |s| s.code))
}

async fn get_action(ch: &Channel, action: &Digest) -> Result<reapi::ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn upstream_status(
    ch: &Channel,
) -> nativelink_lre::proto::nativelink_lre::v1::UpstreamStatus {
    client::status(ch).await.unwrap().upstream.unwrap()
}

fn remote(mut spec: ActionSpec) -> ActionSpec {
    spec.platform.push(("lre-remote".into(), "true".into()));
    spec
}

fn with_inputs(salt: &str) -> ActionSpec {
    let mut spec = ActionSpec::sh(
        "mkdir -p out/dir; cat in.txt > out/copy.txt; echo nested > out/dir/f; echo ran",
    )
    .file("in.txt", b"forwarded input")
    .salt(salt);
    spec.output_files = vec!["out/copy.txt".into()];
    spec.output_dirs = vec!["out/dir".into()];
    spec
}

fn stage_of(op: &Operation) -> Option<Stage> {
    let meta = <reapi::ExecuteOperationMetadata as prost::Message>::decode(
        op.metadata.as_ref()?.value.as_slice(),
    )
    .ok()?;
    Stage::try_from(meta.stage).ok()
}

/// Starts an Execute and reads its stream until the stage is EXECUTING
/// (relayed from the upstream). Returns the operation's name and the
/// stream, to be read to its end.
async fn until_executing(ch: &Channel, spec: &ActionSpec) -> (String, tonic::Streaming<Operation>) {
    let action = prepare(ch, spec).await;
    let mut stream = reapi::execution_client::ExecutionClient::new(ch.clone())
        .execute(reapi::ExecuteRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let op = stream
            .message()
            .await
            .unwrap()
            .expect("the stream ended before EXECUTING");
        assert!(!op.done, "done before EXECUTING: {op:?}");
        if stage_of(&op) == Some(Stage::Executing) {
            return (op.name, stream);
        }
    }
}

async fn last_of(mut stream: tonic::Streaming<Operation>) -> Operation {
    let mut last = None;
    while let Some(op) = stream.message().await.unwrap() {
        last = Some(op);
    }
    last.expect("no final operation")
}

#[tokio::test(flavor = "multi_thread")]
async fn nativelink_runs_forwarded_actions_and_their_results_are_cached_here() {
    let Some(nl) = NativeLink::start("forwarding", "exec") else {
        return;
    };
    let a = daemon_before(&nl, "", "");
    let reference = Daemon::start("");
    let ach = a.unix().await;

    // lre-remote=true: inputs only we have go up, outputs come back.
    let spec = remote(with_inputs("nl-forward"));
    let action = prepare(&ach, &spec).await;
    let ops = execute_ops(&ach, &action, false).await;
    let stages: Vec<_> = ops.iter().filter_map(stage_of).collect();
    let r = response_of(ops.last().unwrap());
    assert_eq!(status_code(&r), Code::Ok, "{r:?}");
    assert!(stages.contains(&Stage::Executing), "{stages:?}");
    assert!(!r.cached_result);
    assert_eq!(
        output_file(&ach, &r, "out/copy.txt").await,
        b"forwarded input"
    );
    let result = r.result.as_ref().unwrap();
    assert_eq!(result.output_directories.len(), 1, "{result:?}");
    // The same files and stdout as our own sandbox makes of it.
    let local = run(&reference.unix().await, &spec, false).await;
    let files = |r: &reapi::ExecuteResponse| {
        let r = r.result.as_ref().unwrap();
        let mut f: Vec<_> = r
            .output_files
            .iter()
            .map(|f| (f.path.clone(), f.digest.clone()))
            .collect();
        f.push(("stdout".into(), r.stdout_digest.clone()));
        f
    };
    assert_eq!(files(&r), files(&local));
    let st = client::status(&ach).await.unwrap();
    assert_eq!(st.actions_executed, 0, "it ran here");
    assert_eq!(st.upstream.as_ref().unwrap().remote_executions, 1);

    // Cached here: a hit, whose outputs are readable here.
    let again = response_of(execute_ops(&ach, &action, false).await.last().unwrap());
    assert!(again.cached_result);
    assert_eq!(
        output_file(&ach, &again, "out/copy.txt").await,
        b"forwarded input"
    );

    // An exit code is the answer, not cached.
    let failing = remote(ActionSpec::sh("echo no >&2; exit 3").salt("nl-exit"));
    let r = run(&ach, &failing, false).await;
    assert_eq!(
        (status_code(&r), r.result.as_ref().unwrap().exit_code),
        (Code::Ok, 3)
    );
    assert_eq!(stderr_of(&ach, &r).await, "no\n");
    let (failing_action, _) = encode(&failing);
    assert_eq!(
        get_action(&ach, &failing_action).await.unwrap_err().code(),
        Code::NotFound
    );

    // A property this worker lacks: forwarded without being asked.
    let mut pool = with_inputs("nl-pool");
    pool.platform = vec![("pool".into(), "big".into())];
    let r = run(&ach, &pool, false).await;
    assert_eq!(status_code(&r), Code::Ok, "{r:?}");

    // Concurrency: eight at once, each with its own output.
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let ch = ach.clone();
            tokio::spawn(async move {
                let spec = remote(ActionSpec::sh(&format!("sleep 1; echo {i}")).salt("nl-many"));
                (i, run(&ch, &spec, false).await)
            })
        })
        .collect();
    for run in runs {
        let (i, r) = run.await.unwrap();
        assert_eq!(status_code(&r), Code::Ok, "{r:?}");
        assert_eq!(stdout_of(&ach, &r).await, format!("{i}\n"));
    }
    let st = client::status(&ach).await.unwrap();
    assert_eq!(st.actions_executed, 0, "something ran here");
    assert_eq!(st.upstream.unwrap().remote_executions, 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn nativelinks_error_status_reaches_the_client_and_nothing_runs_here() {
    let Some(nl) = NativeLink::start("error statuses", "exec") else {
        return;
    };
    let a = daemon_before(&nl, "", "");
    let ach = a.unix().await;
    let prefix = format!("upstream {}: ", nl.endpoint());
    let mut missing = ActionSpec::sh("unused").salt("nl-missing-binary");
    missing.args = vec!["/nonexistent/lre-no-such-binary".into()];
    let asked = remote(missing.clone());
    let mut pool = missing.clone().salt("nl-missing-binary-pool");
    pool.platform = vec![("pool".into(), "big".into())];
    for spec in [&asked, &pool] {
        let r = run(&ach, spec, false).await;
        let s = r.status.as_ref().expect("no status");
        eprintln!(
            "NativeLink, missing binary: {:?} {:?}",
            Code::from(s.code),
            s.message
        );
        // NativeLink's status (NOT_FOUND in 1.6.6), not ours.
        assert!(
            ![Code::Ok, Code::Unavailable].contains(&Code::from(s.code)),
            "{r:?}"
        );
        assert!(s.message.starts_with(&prefix), "{}", s.message);
        let (action, _) = encode(spec);
        assert_eq!(
            get_action(&ach, &action).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let st = client::status(&ach).await.unwrap();
    assert_eq!(st.actions_executed, 0, "it was run here");
    assert_eq!(st.upstream.unwrap().remote_fallbacks, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nativelink_that_does_not_execute_leaves_the_actions_here() {
    // Cache only: GetCapabilities says exec_enabled = false.
    let Some(cas) = NativeLink::start("no execution", "cas") else {
        return;
    };
    let mut a = daemon_before(&cas, "", "");
    let ach = a.unix().await;
    let spec = remote(with_inputs("nl-cas-only"));
    let r = run(&ach, &spec, false).await;
    assert_eq!(status_code(&r), Code::Ok, "{r:?}");
    let st = client::status(&ach).await.unwrap();
    let up = st.upstream.unwrap();
    assert_eq!(
        (
            st.actions_executed,
            up.remote_executions,
            up.remote_fallbacks
        ),
        (1, 0, 1)
    );
    drop(ach);
    let (_, log) = a.stop();
    assert!(log.contains("exec_enabled = false"), "{log}");

    // Without local fallback: lre-remote=true is UNAVAILABLE, saying why;
    // what the long queue sent away runs here all the same.
    let strict = daemon_before(
        &cas,
        "local-fallback = false\nremote-queue-length = 1",
        "[execution]\nmax-concurrent-actions = 1",
    );
    let sch = strict.unix().await;
    let r = run(&sch, &remote(with_inputs("nl-strict")), false).await;
    assert_eq!(status_code(&r), Code::Unavailable, "{r:?}");
    assert!(
        r.status
            .unwrap()
            .message
            .contains("does not execute actions")
    );
    let sleepers: Vec<_> = (0..3)
        .map(|i| {
            let ch = sch.clone();
            tokio::spawn(async move {
                let spec = ActionSpec::sh("sleep 2; echo q").salt(&format!("nl-queue-{i}"));
                run(&ch, &spec, false).await
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client::status(&sch)
        .await
        .unwrap()
        .queued
        .iter()
        .map(|q| q.count)
        .sum::<u32>()
        < 2
    {
        assert!(Instant::now() < deadline, "the local queue never filled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = run(
        &sch,
        &ActionSpec::sh("echo overflow").salt("nl-overflow"),
        false,
    )
    .await;
    assert_eq!(status_code(&r), Code::Ok, "{r:?}");
    for r in sleepers {
        let r = r.await.unwrap();
        assert_eq!(status_code(&r), Code::Ok, "{r:?}");
    }
    let st = client::status(&sch).await.unwrap();
    let up = st.upstream.unwrap();
    eprintln!(
        "queue overflow with a cache-only NativeLink and no local fallback: {} run here, of them {} routed there first",
        st.actions_executed, up.remote_fallbacks
    );
    assert_eq!(
        (
            st.actions_executed,
            up.remote_executions,
            up.remote_fallbacks
        ),
        (4, 0, 1)
    );

    // An executing NativeLink, but the wrong instance name: its
    // GetCapabilities has no execution for it.
    let Some(exec) = NativeLink::start("no execution", "exec") else {
        return;
    };
    let wrong = daemon_before(&exec, "instance-name = \"nosuch\"", "");
    let wch = wrong.unix().await;
    let r = run(&wch, &remote(with_inputs("nl-wrong-instance")), false).await;
    assert_eq!(status_code(&r), Code::Ok, "{r:?}");
    assert_eq!(client::status(&wch).await.unwrap().actions_executed, 1);

    // GetCapabilities says it executes; Execute is HTTP 404.
    let Some(liar) = NativeLink::start("no execution", "exec-without-service") else {
        return;
    };
    let mut d = daemon_before(&liar, "", "");
    let dch = d.unix().await;
    for salt in ["nl-404", "nl-404-again"] {
        let r = run(&dch, &remote(with_inputs(salt)), false).await;
        assert_eq!(status_code(&r), Code::Ok, "{r:?}");
    }
    let st = client::status(&dch).await.unwrap();
    let up = st.upstream.unwrap();
    assert_eq!(
        (
            st.actions_executed,
            up.remote_executions,
            up.remote_fallbacks
        ),
        (2, 1, 2)
    );
    drop(dch);
    let (_, log) = d.stop();
    assert!(log.contains("not a gRPC answer: HTTP 404"), "{log}");
    assert!(!log.contains("compression flag"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_do_not_cache_action_runs_every_time_even_though_nativelink_caches_it() {
    let Some(mut nl) = NativeLink::start("do_not_cache", "exec") else {
        return;
    };
    let a = daemon_before(&nl, "", "");
    let ach = a.unix().await;
    let mut spec = remote(ActionSpec::sh("date +%s%N").salt("nl-dnc"));
    spec.do_not_cache = true;
    let (action, _) = encode(&spec);
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let r = run(&ach, &spec, false).await;
        assert_eq!(status_code(&r), Code::Ok, "{r:?}");
        assert!(!r.cached_result);
        outputs.push(stdout_of(&ach, &r).await);
    }
    assert_ne!(outputs[0], outputs[1], "it did not run twice");
    let theirs = get_action(&nl.channel().await, &action).await;
    eprintln!(
        "NativeLink's own action cache for a do_not_cache action: {}",
        match &theirs {
            Ok(_) => "an entry (it caches them)".to_owned(),
            Err(e) => format!("{:?}", e.code()),
        }
    );
    assert_eq!(
        get_action(&ach, &action).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(upstream_status(&ach).await.action_cache_hits, 0);
    assert_eq!(client::status(&ach).await.unwrap().actions_executed, 0);

    // NativeLink stopped: it runs here, from no cache.
    nl.stop();
    let r = run(&ach, &spec, false).await;
    assert_eq!(status_code(&r), Code::Ok, "{r:?}");
    assert!(!r.cached_result);
    assert_eq!(client::status(&ach).await.unwrap().actions_executed, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_nativelink_is_given_up_after_the_actions_timeout() {
    let Some(nl) = NativeLink::start("SIGSTOP", "exec") else {
        return;
    };
    let mut a = daemon_before(&nl, "timeout = \"2s\"", "");
    let ach = a.unix().await;
    let mut spec = remote(ActionSpec::sh("sleep 3; echo finished").salt("nl-frozen"));
    spec.timeout = Some(Duration::from_secs(5));
    let (_, stream) = until_executing(&ach, &spec).await;
    let frozen_at = Instant::now();
    nl.signal(nix::sys::signal::Signal::SIGSTOP);
    let last = last_of(stream).await;
    let took = frozen_at.elapsed();
    nl.signal(nix::sys::signal::Signal::SIGCONT);
    eprintln!(
        "frozen NativeLink: answered {:.1}s after SIGSTOP",
        took.as_secs_f64()
    );
    let r = response_of(&last);
    assert_eq!(status_code(&r), Code::Ok, "{r:?}");
    assert_eq!(stdout_of(&ach, &r).await, "finished\n");
    let st = client::status(&ach).await.unwrap();
    let up = st.upstream.unwrap();
    assert_eq!((st.actions_executed, up.remote_fallbacks), (1, 1), "{up:?}");
    // Given up by the bound, not by keepalive or a broken connection.
    drop(ach);
    let (_, log) = a.stop();
    assert!(log.contains("no result 7s after"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_forwarded_actions_is_logged_once_as_unsupported_by_nativelink() {
    let Some(nl) = NativeLink::start("CancelOperation", "exec") else {
        return;
    };
    let mut a = daemon_before(&nl, "", "");
    let ach = a.unix().await;
    for i in 0..2 {
        let spec = remote(ActionSpec::sh("sleep 4").salt(&format!("nl-cancel-{i}")));
        let (name, stream) = until_executing(&ach, &spec).await;
        OperationsClient::new(ach.clone())
            .cancel_operation(CancelOperationRequest { name })
            .await
            .unwrap();
        let r = response_of(&last_of(stream).await);
        assert_eq!(status_code(&r), Code::Cancelled, "{r:?}");
    }
    // The background cancel calls have answered by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let up = upstream_status(&ach).await;
    assert_eq!(up.calls_failed, 0, "{up:?}");
    drop(ach);
    let (_, log) = a.stop();
    let lines = log
        .lines()
        .filter(|l| l.contains("does not implement CancelOperation"))
        .count();
    assert_eq!(lines, 1, "{log}");
}

/// Bazel 4.2.3 through the daemon, every action sent to NativeLink
/// (`lre-remote=true` as a default exec property), then a clean rebuild
/// served from our cache.
#[test]
fn bazel_through_the_daemon_with_every_action_run_by_nativelink() {
    let Some(nl) = NativeLink::start("Bazel", "exec") else {
        return;
    };
    let a = daemon_before(&nl, "", "");
    let tmp = tempfile::tempdir().unwrap();
    let workspace = tmp.path().join("ws");
    let status = Command::new("cp")
        .arg("-a")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bazel/workspace"))
        .arg(&workspace)
        .status()
        .unwrap();
    assert!(status.success());
    let bazel = |args: &[&str]| {
        let out = Command::new("bazel")
            .arg("--batch")
            .arg("--nohome_rc")
            .arg(format!(
                "--output_user_root={}",
                tmp.path().join("root").display()
            ))
            .args(args)
            .current_dir(&workspace)
            .output()
            .expect("bazel (Debian's bazel-bootstrap)");
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "bazel {args:?}:\n{text}");
        text
    };
    let executor = format!("--remote_executor=grpc://127.0.0.1:{}", a.tcp.port());
    let test = [
        "test",
        "--color=no",
        "--curses=no",
        "--noshow_progress",
        "--incompatible_strict_action_env",
        "--symlink_prefix=/",
        executor.as_str(),
        "--spawn_strategy=remote",
        "--noremote_local_fallback",
        "--remote_default_exec_properties=lre-remote=true",
        "//...",
    ];
    let summary = |log: &str| {
        log.lines()
            .find(|l| l.starts_with("INFO: ") && l.contains(" process") && l.contains(':'))
            .unwrap_or_else(|| panic!("no process summary in:\n{log}"))
            .to_owned()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = || rt.block_on(async { client::status(&a.unix().await).await.unwrap() });

    let first = bazel(&test);
    assert!(first.contains("2 tests pass"), "{first}");
    let line = summary(&first);
    eprintln!("Bazel through the daemon to NativeLink: {line}");
    let st = status();
    let up = st.upstream.as_ref().unwrap();
    eprintln!(
        "daemon: {} run here, {} run by NativeLink, {} fallbacks",
        st.actions_executed, up.remote_executions, up.remote_fallbacks
    );
    assert_eq!(st.actions_executed, 0, "an action ran here: {line}");
    assert_eq!(up.remote_fallbacks, 0);
    assert!(
        line.contains(&format!(" {} remote", up.remote_executions)),
        "{line}"
    );

    bazel(&["clean"]);
    let again = bazel(&test);
    let line = summary(&again);
    eprintln!("after clean: {line}");
    assert!(
        line.contains("remote cache hit")
            && !line.contains(" remote,")
            && !line.contains(" remote."),
        "{line}"
    );
    assert_eq!(status().actions_executed, 0);
}
