//! Socket activation through the real `systemd-socket-activate`: a unix
//! socket and a TCP socket passed with names, READY=1 on a NOTIFY_SOCKET we
//! bind, and the idle exit.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reapi::capabilities_client::CapabilitiesClient;

fn recv_until(sock: &UnixDatagram, what: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == what);
            seen.push(msg);
            if hit {
                return seen;
            }
        }
    }
    panic!("no {what:?} within {timeout:?}; saw {seen:?}");
}

/// Waits until systemd-socket-activate has created its listening socket.
fn wait_for_socket(socket: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate did not create {socket:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn capabilities_ok(ch: tonic::transport::Channel) {
    CapabilitiesClient::new(ch)
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .expect("GetCapabilities through the activated socket");
}

#[tokio::test(flavor = "multi_thread")]
async fn activated_by_first_connection_serves_both_sockets_and_exits_when_idle() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-socket-activate is missing: install the systemd package (.ci/run does)");
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("lre.sock");
    let port = free_port();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let config = dir.path().join("config.toml");
    // The [listen] addresses must be ignored: the sockets come from systemd.
    std::fs::write(
        &config,
        format!(
            "state-dir = {:?}\nidle-timeout = \"2s\"\n[listen]\nunix = {:?}\ntcp = [\"127.0.0.1:1\"]\n",
            dir.path().join("state"),
            dir.path().join("unused.sock"),
        ),
    )
    .unwrap();
    let mut activator = Command::new("systemd-socket-activate")
        .arg(format!("--listen={}", socket.display()))
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--fdname=unix:tcp")
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg("--setenv=RUST_LOG=info")
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&socket);
    // Nothing has started the daemon yet, so nothing has notified.
    notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    assert!(
        notify.recv(&mut buf).is_err(),
        "the daemon started before any connection"
    );
    notify.set_nonblocking(false).unwrap();

    {
        // The first connection starts it; both sockets serve.
        capabilities_ok(unix_channel(&socket, None).await).await;
        let seen = recv_until(&notify, "READY=1", Duration::from_secs(20));
        assert!(
            seen.iter()
                .any(|m| m.contains("unix:") && m.contains("(unix)") && m.contains("(tcp)")),
            "STATUS should name both activated sockets by their fd names: {seen:?}"
        );
        capabilities_ok(tcp_channel(format!("127.0.0.1:{port}").parse().unwrap(), None).await)
            .await;
        // The config's own addresses were not bound.
        assert!(!dir.path().join("unused.sock").exists());
    }
    // With every connection closed, the daemon says STOPPING=1 and exits 0.
    let started_idle = Instant::now();
    let seen = recv_until(&notify, "STOPPING=1", Duration::from_secs(20));
    assert!(seen.iter().any(|m| m.contains("idle")), "{seen:?}");
    let status = wait_timeout(&mut activator, Duration::from_secs(20))
        .expect("daemon did not exit after STOPPING=1");
    assert!(status.success(), "idle exit status {status}");
    assert!(
        started_idle.elapsed() >= Duration::from_millis(1500),
        "exited before the 2 s idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn open_connection_keeps_it_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("lre.sock");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state-dir = {:?}\nidle-timeout = \"1s\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let mut activator = Command::new("systemd-socket-activate")
        .arg(format!("--listen={}", socket.display()))
        .arg("--fdname=unix")
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&socket);
    let ch = unix_channel(&socket, None).await;
    capabilities_ok(ch.clone()).await;
    recv_until(&notify, "READY=1", Duration::from_secs(20));
    // Three idle timeouts pass with the connection open: still serving.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        activator.try_wait().unwrap().is_none(),
        "exited with a client connected"
    );
    capabilities_ok(ch.clone()).await;
    drop(ch);
    let status = wait_timeout(&mut activator, Duration::from_secs(20))
        .expect("no idle exit after the client left");
    assert!(status.success());
}
