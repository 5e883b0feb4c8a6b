//! The daemon's first run and what it tells its users: a per-user daemon
//! whose TCP port is taken says how to fix it, `--listen` replaces the
//! configured addresses, limits the host cannot enforce are named in the
//! action's result (or refused), a client's cancel is not logged as a
//! failure, and a running action's output streams to its submitter alone
//! (issue 13, items 6, 7, 10 and 15).

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::exec::*;
use common::users::{User, UserDaemon};
use common::*;
use nativelink_lre::proto::google::longrunning::{
    CancelOperationRequest, operations_client::OperationsClient,
};

/// Issue 13.6: a port someone else holds is an error with the fix, not
/// "Address already in use"; `--listen` moves the daemon elsewhere.
#[test]
fn a_taken_port_names_the_fix_and_listen_moves_the_daemon() {
    let user = User::create();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (status, err) = UserDaemon::spawn_with_args(
        &user,
        None,
        true,
        &["--listen", "unix", "--listen", &format!("127.0.0.1:{port}")],
    )
    .expect_exit();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port}: another program already listens there"
        )),
        "{err}"
    );
    assert!(
        err.contains("--listen 127.0.0.1:PORT") && err.contains("--listen unix"),
        "{err}"
    );
    assert!(!err.contains("Address already in use"), "{err}");

    // The daemon serves its owner alone, so its owner asks.
    let status_of = |address: &str| -> serde_json::Value {
        let out = Command::new(BIN)
            .uid(user.uid)
            .gid(user.gid)
            .args(["status", "--json", "--address", address])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{address}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    // The unix socket alone: no TCP at all, the default per-user socket.
    let d = UserDaemon::start_with_args(&user, None, true, &["--listen", "unix"]);
    let v = status_of(&format!("unix://{}", d.socket.display()));
    let listeners = v["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{v}");
    assert_eq!(
        listeners[0]["address"],
        format!("unix:{}", d.socket.display())
    );
    assert_eq!(listeners[0]["unix_mode"], 0o600);
    drop(d);

    // A port of one's own, and another socket path.
    let free = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    let sock = dir.path().join("lre.sock");
    let d = UserDaemon::start_with_args(
        &user,
        None,
        true,
        &[
            "serve",
            "--listen",
            &format!("unix:{}", sock.display()),
            "--listen",
            &format!("127.0.0.1:{free}"),
        ],
    );
    for address in [
        format!("unix://{}", sock.display()),
        format!("grpc://127.0.0.1:{free}"),
    ] {
        let v = status_of(&address);
        let names: Vec<&str> = v["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["address"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                format!("unix:{}", sock.display()),
                format!("tcp:127.0.0.1:{free}")
            ]
        );
    }
    assert!(!d.socket.exists(), "the default socket was bound too");
    drop(d);
    drop(taken);

    // --listen belongs to serve alone.
    let out = Command::new(BIN)
        .args(["--listen", "unix", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["--listen", "0.0.0.0:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

/// What `status --json` says of a daemon.
fn status_json(d: &Daemon) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["status", "--json", "--address"])
        .arg(format!("unix://{}", d.socket.display()))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Issue 13.7: an action that asks for a limit the host cannot enforce is
/// told so in its result, or refused when the configuration says so. Which
/// limits are missing is read from the daemon itself, so the test holds on
/// a host with every controller too (where no warning may appear).
#[test]
fn unenforceable_limits_are_named_in_the_result_or_refused() {
    let d = Daemon::start("");
    let missing: Vec<String> = status_json(&d)["cgroup_missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    let run = |d: &Daemon, json: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--address"])
            .arg(format!("unix://{}", d.socket.display()))
            .args([
                "--property",
                "lre-memory-max=64MiB",
                "--property",
                "lre-cpu-max=1",
            ]);
        if json {
            cmd.arg("--json");
        }
        cmd.args(["sh", "-c", "echo ran"]).output().unwrap()
    };
    let out = run(&d, true);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 0, "{v}");
    let warnings: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    for (property, controller) in [("lre-memory-max=64MiB", "memory"), ("lre-cpu-max=1", "cpu")] {
        let named = warnings
            .iter()
            .any(|w| w.starts_with(&format!("{property} is not enforced on this host")));
        assert_eq!(
            named,
            missing.iter().any(|m| m == controller),
            "{property}: warnings {warnings:?}, missing controllers {missing:?}"
        );
    }
    assert_eq!(v["message"], warnings.join("\n"));
    let out = run(&d, false);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    let err = String::from_utf8_lossy(&out.stderr);
    for w in &warnings {
        assert!(
            err.contains(&format!("nativelink-lre run: warning: {w}")),
            "{err}"
        );
    }

    let strict = Daemon::start("\n[cgroup]\nunenforceable-limits = \"refuse\"\n");
    let out = run(&strict, false);
    if warnings.is_empty() {
        assert!(out.status.success());
    } else {
        assert_eq!(out.status.code(), Some(125));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is not enforced on this host")
                && err.contains("cgroup.unenforceable-limits = \"refuse\"")
                && err.contains("(FAILED_PRECONDITION)"),
            "{err}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "it ran anyway");
    }
}

/// Issue 13.15: a client that cancels its Execute (because the cache
/// answered first) is ordinary traffic: the log says the action was
/// cancelled, never that it failed; so does one nobody watches any more.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_is_not_logged_as_a_failure() {
    let mut d = Daemon::start("\n[execution]\nunwatched-timeout = \"1s\"\n");
    let ch = d.unix().await;
    let mut spec = ActionSpec::sh("sleep 30");
    spec.salt = "cancelled".into();
    let action = prepare(&ch, &spec).await;
    let mut stream = reapi::execution_client::ExecutionClient::new(ch.clone())
        .execute(reapi::ExecuteRequest {
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("an operation");
    OperationsClient::new(ch.clone())
        .cancel_operation(CancelOperationRequest {
            name: first.name.clone(),
        })
        .await
        .unwrap();
    let mut last = first;
    while let Some(op) = stream.message().await.unwrap() {
        last = op;
    }
    let code = response_of(&last).status.map_or(0, |s| s.code);
    assert_eq!(tonic::Code::from(code), tonic::Code::Cancelled);

    // A client that just goes away: cancelled once nobody watched it.
    let mut spec = ActionSpec::sh("sleep 30");
    spec.salt = "abandoned".into();
    let action = prepare(&ch, &spec).await;
    let mut stream = reapi::execution_client::ExecutionClient::new(ch.clone())
        .execute(reapi::ExecuteRequest {
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap();
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = nativelink_lre::client::status(&ch).await.unwrap();
        if s.running.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the abandoned action still runs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, log) = d.stop();
    assert!(log.contains("action cancelled by its client"), "{log}");
    assert!(
        log.contains("action cancelled because nobody watched it"),
        "{log}"
    );
    assert!(!log.contains("action not run"), "{log}");
    assert!(!log.contains("action failed"), "{log}");
}

/// The ByteStream names of a running action's output are its submitter's
/// alone: another user cannot read them, even knowing the names, and a
/// follower of the same run is not given them.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_actions_output_streams_to_its_submitter_alone() {
    use nativelink_lre::proto::bytestream::{ReadRequest, byte_stream_client::ByteStreamClient};
    use prost::Message;
    let d = Daemon::start("");
    let other = User::create();
    let ch = d.unix().await;
    let mut spec = ActionSpec::sh("echo secret-output; sleep 5");
    spec.salt = "streamed".into();
    let action = prepare(&ch, &spec).await;
    let execute = |ch: tonic::transport::Channel| async move {
        reapi::execution_client::ExecutionClient::new(ch)
            .execute(reapi::ExecuteRequest {
                action_digest: Some(action.to_proto()),
                skip_cache_lookup: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    };
    let names = |op: &Operation| {
        op.metadata
            .as_ref()
            .and_then(|m| reapi::ExecuteOperationMetadata::decode(m.value.as_slice()).ok())
            .map(|m| (m.stdout_stream_name, m.stderr_stream_name))
            .unwrap_or_default()
    };
    let mut mine = execute(ch.clone()).await;
    let (stdout_name, stderr_name) = loop {
        let op = mine
            .message()
            .await
            .unwrap()
            .expect("the run ended before it streamed");
        let (out, err) = names(&op);
        if !out.is_empty() {
            break (out, err);
        }
    };
    assert_eq!(
        stdout_name.strip_suffix("/stdout"),
        stderr_name.strip_suffix("/stderr")
    );
    let read = |ch: tonic::transport::Channel, name: String| async move {
        let mut s = ByteStreamClient::new(ch)
            .read(ReadRequest {
                resource_name: name,
                ..Default::default()
            })
            .await?
            .into_inner();
        let first = s.message().await?;
        Ok::<_, tonic::Status>(first.map(|m| m.data.to_vec()).unwrap_or_default())
    };
    // The submitter reads it while the action sleeps.
    assert_eq!(
        read(ch.clone(), stdout_name.clone()).await.unwrap(),
        b"secret-output\n"
    );
    // Another user, with the names in hand, gets NOT_FOUND on both
    // transports.
    for och in [d.unix_as(other.uid).await, d.tcp_as(other.uid).await] {
        let e = read(och.clone(), stdout_name.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        assert!(!e.message().contains("secret"), "{e:?}");
        // And following the same action gives them no stream names.
        let mut theirs = execute(och).await;
        let op = theirs.message().await.unwrap().unwrap();
        let stage = op
            .metadata
            .as_ref()
            .and_then(|m| reapi::ExecuteOperationMetadata::decode(m.value.as_slice()).ok())
            .map(|m| m.stage);
        assert_eq!(
            stage,
            Some(reapi::execution_stage::Value::Executing as i32),
            "the second user did not join the running action"
        );
        assert_eq!(names(&op), Default::default(), "{op:?}");
    }
    // Once the action has ended the names lead nowhere.
    while mine.message().await.unwrap().is_some() {}
    let e = read(ch.clone(), stdout_name).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}
