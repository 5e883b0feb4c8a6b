//! A cluster that dies or freezes while it runs a forwarded action.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_killed_mid_execution_hands_the_action_back_to_local_execution() {
    let mut cluster = Daemon::start("");
    let a = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"unix:{}\"\nremote-execution = true\n",
        cluster.socket.display()
    ));
    let ach = a.unix().await;
    let cch = cluster.unix().await;
    let mut spec = ActionSpec::sh("sleep 3; echo finished").salt("cluster-dies");
    spec.platform = vec![("lre-remote".into(), "true".into())];
    let running = {
        let ach = ach.clone();
        let spec = spec.clone();
        tokio::spawn(async move { run(&ach, &spec, false).await })
    };
    assert!(
        eventually(Duration::from_secs(20), async || client::status(&cch)
            .await
            .unwrap()
            .running_count
            == 1)
        .await,
        "the action never ran on the cluster"
    );
    drop(cch);
    cluster.kill9();
    let r = running.await.unwrap();
    assert_eq!(status_code(&r), Code::Ok, "{:?}", r.status);
    assert_eq!(stdout_of(&ach, &r).await, "finished\n");
    let st = client::status(&ach).await.unwrap();
    assert_eq!(st.actions_executed, 1, "it did not run locally");
    let up = st.upstream.unwrap();
    assert_eq!(
        (up.remote_executions, up.remote_fallbacks),
        (1, 1),
        "{up:?}"
    );
}

/// Thaws a SIGSTOPped process when dropped, whatever the test did.
struct Frozen(Pid);

impl Frozen {
    fn freeze(pid: u32) -> Frozen {
        let pid = Pid::from_raw(pid as i32);
        kill(pid, Signal::SIGSTOP).unwrap();
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_cluster_is_given_up_after_the_actions_timeout_and_the_action_runs_here() {
    // The action may run 5 s, the upstream answers a call within 2 s: once
    // the cluster says EXECUTING, the result is due 7 s later, long before
    // HTTP/2 keepalive (30 s + 10 s) would notice.
    let cluster = Daemon::start("");
    let a = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"unix:{}\"\nremote-execution = true\ntimeout = \"2s\"\n",
        cluster.socket.display()
    ));
    let ach = a.unix().await;
    let cch = cluster.unix().await;
    let mut spec = ActionSpec::sh("sleep 3; echo finished").salt("cluster-freezes");
    spec.platform = vec![("lre-remote".into(), "true".into())];
    spec.timeout = Some(Duration::from_secs(5));
    let running = {
        let ach = ach.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            let r = run(&ach, &spec, false).await;
            (r, Instant::now())
        })
    };
    assert!(
        eventually(Duration::from_secs(20), async || client::status(&cch)
            .await
            .unwrap()
            .running_count
            == 1)
        .await,
        "the action never ran on the cluster"
    );
    drop(cch);
    let frozen_at = Instant::now();
    let frozen = Frozen::freeze(cluster.pid());
    let (r, done_at) = running.await.unwrap();
    eprintln!(
        "frozen cluster: the action ran here and answered {:.1}s after the freeze",
        (done_at - frozen_at).as_secs_f64()
    );
    assert_eq!(status_code(&r), Code::Ok, "{:?}", r.status);
    assert_eq!(stdout_of(&ach, &r).await, "finished\n");
    let st = client::status(&ach).await.unwrap();
    assert_eq!(st.actions_executed, 1, "it did not run here");
    let up = st.upstream.unwrap();
    assert_eq!(
        (up.state.as_str(), up.remote_executions, up.remote_fallbacks),
        ("down", 1, 1),
        "{up:?}"
    );
    // Given up by the bound, not by keepalive or a broken connection.
    assert!(up.error.contains("no result 7s after"), "{up:?}");
    drop(frozen);
}
