//! A real third-party upstream for the tests: BuildGrid from PyPI (see
//! tests/upstream/README.md), run through `tests/upstream/buildgrid.sh`,
//! and read back with its own client stubs through `bg_client.py`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::free_port;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/upstream")
        .join(name)
}

/// The BuildGrid venv's python (installed on first use; `.ci/run` installs
/// it ahead).
pub fn python() -> String {
    let out = Command::new(script("buildgrid.sh"))
        .arg("python")
        .output()
        .expect("run tests/upstream/buildgrid.sh");
    assert!(
        out.status.success(),
        "cannot install BuildGrid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// TLS material made by `certs.sh`.
pub fn certs(dir: &Path) -> PathBuf {
    let out = Command::new(script("certs.sh")).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_owned()
}

/// A running BuildGrid (cache-only: CAS, ByteStream, ActionCache) serving
/// the instances `""` and `"upstream"`. Stopped (by its PID, through
/// buildgrid.sh) when dropped.
pub struct BuildGrid {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// `certs.sh` directory when it serves TLS.
    pub tls: Option<PathBuf>,
    pub client_certs: bool,
    python: String,
}

impl BuildGrid {
    pub fn start() -> BuildGrid {
        Self::start_tls(None, false)
    }

    /// With `tls`, TLS only; with `client_certs` too, a client certificate
    /// signed by `tls/ca.pem` is required.
    pub fn start_tls(tls: Option<&Path>, client_certs: bool) -> BuildGrid {
        let mut bg = BuildGrid {
            port: free_port(),
            dir: tempfile::Builder::new()
                .prefix("lre-bgd")
                .tempdir()
                .unwrap(),
            tls: tls.map(Path::to_owned),
            client_certs,
            python: python(),
        };
        bg.launch();
        bg
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(script("buildgrid.sh"));
        cmd.arg("start")
            .arg(self.port.to_string())
            .arg(self.dir.path());
        if let Some(tls) = &self.tls {
            cmd.env("BUILDGRID_TLS_DIR", tls);
            if self.client_certs {
                cmd.env("BUILDGRID_TLS_CLIENT_CA", tls.join("ca.pem"));
            }
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "BuildGrid did not start:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it again on the same port after a kill (its in-memory cache
    /// starts empty).
    pub fn restart(&mut self) {
        self.launch();
    }

    /// SIGKILL: a crash.
    pub fn kill(&self) {
        let out = Command::new(script("buildgrid.sh"))
            .arg("kill")
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The address for our config: `grpc://` or `grpcs://`.
    pub fn endpoint(&self) -> String {
        match &self.tls {
            Some(_) => format!("grpcs://localhost:{}", self.port),
            None => format!("grpc://127.0.0.1:{}", self.port),
        }
    }

    /// Runs `bg_client.py` against this server with its own stubs.
    pub fn client(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.python);
        cmd.arg(script("bg_client.py"));
        let address = match &self.tls {
            Some(tls) => {
                cmd.arg("--tls-ca").arg(tls.join("ca.pem"));
                if self.client_certs {
                    cmd.arg("--tls-cert").arg(tls.join("client.pem"));
                    cmd.arg("--tls-key").arg(tls.join("client.key"));
                }
                format!("grpcs://127.0.0.1:{}", self.port)
            }
            None => format!("127.0.0.1:{}", self.port),
        };
        // bg_client.py SUBCOMMAND ADDRESS INSTANCE ...
        let (sub, rest) = args.split_first().expect("a subcommand");
        cmd.arg(sub).arg(address).args(rest);
        cmd.output().unwrap()
    }

    /// `client`, asserting success; its stdout.
    pub fn client_ok(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "bg_client.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Seeds an action result in BuildGrid (its own client): returns the
    /// action digest (`HASH/SIZE`) and the JSON describing its blobs.
    pub fn seed(&self, instance: &str, salt: &str, big: usize) -> (String, serde_json::Value) {
        let big = big.to_string();
        let out = self.client_ok(&["seed", instance, "--salt", salt, "--big", &big]);
        let mut lines = out.lines();
        let action = lines.next().unwrap().to_owned();
        let json = serde_json::from_str(lines.next().unwrap()).unwrap();
        (action, json)
    }

    /// BuildGrid's own GetActionResult: `None` for NOT_FOUND.
    pub fn get_action(&self, instance: &str, digest: &str) -> Option<serde_json::Value> {
        let out = self.client(&["get-action", instance, digest]);
        match out.status.code() {
            Some(0) => Some(serde_json::from_slice(&out.stdout).unwrap()),
            Some(2) => None,
            _ => panic!(
                "get-action {digest}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Reads a blob back with BuildGrid's ByteStream: `Some("SHA256 SIZE")`,
    /// `None` for NOT_FOUND.
    pub fn read(&self, instance: &str, digest: &str) -> Option<String> {
        let out = self.client(&["read", instance, digest]);
        match out.status.code() {
            Some(0) => Some(String::from_utf8(out.stdout).unwrap().trim().to_owned()),
            Some(2) => None,
            _ => panic!("read {digest}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }
}

impl Drop for BuildGrid {
    fn drop(&mut self) {
        let _ = Command::new(script("buildgrid.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// `HASH/SIZE` for a digest.
pub fn hs(d: &super::Digest) -> String {
    format!("{}/{}", d.hex(), d.size())
}

/// `HASH/SIZE` from a proto3-JSON digest (`size_bytes` is a string there).
pub fn hs_json(d: &serde_json::Value) -> String {
    let size = match &d["size_bytes"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => "0".into(),
    };
    format!("{}/{}", d["hash"].as_str().unwrap(), size)
}

/// Parses `HASH/SIZE`.
pub fn digest_of(hs: &str) -> super::Digest {
    let (hash, size) = hs.split_once('/').unwrap();
    let proto = super::reapi::Digest {
        hash: hash.to_owned(),
        size_bytes: size.parse().unwrap(),
    };
    super::Digest::from_proto(&proto).unwrap()
}

/// `tests/upstream/recorder.py`: a minimal REAPI server that logs every
/// call's metadata (and how many calls were in flight). Stopped by its PID
/// when dropped.
pub struct Recorder {
    pub port: u16,
    pub log: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Recorder {
    /// `delay`: how long each answer waits.
    pub fn start(delay: f64) -> Recorder {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls.jsonl");
        let mut child = Command::new(python())
            .arg(script("recorder.py"))
            .arg("--delay")
            .arg(delay.to_string())
            .arg("0")
            .arg(&log)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("recorder.py said {line:?}"));
        Recorder {
            port,
            log,
            child,
            _dir: dir,
        }
    }

    /// The calls logged so far.
    pub fn calls(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// An upstream whose GetCapabilities says it executes, whose CAS has every
/// blob, and whose Execute is not gRPC at all: HTTP 404 with a text body,
/// which is what NativeLink 1.6.6 answers for a service it does not have
/// (see tests/nativelink.rs for NativeLink itself). Served by tonic in
/// this process on a loopback port; stopped when dropped.
pub struct Http404Executor {
    pub port: u16,
    server: tokio::task::JoinHandle<()>,
}

impl Http404Executor {
    pub async fn start() -> Http404Executor {
        use reapi::{capabilities_server, content_addressable_storage_server};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(capabilities_server::CapabilitiesServer::new(Fake))
                .add_service(
                    content_addressable_storage_server::ContentAddressableStorageServer::new(Fake),
                )
                .add_service(NotFound)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Http404Executor { port, server }
    }
}

impl Drop for Http404Executor {
    fn drop(&mut self) {
        self.server.abort();
    }
}

use super::reapi;

#[derive(Clone)]
struct Fake;

#[tonic::async_trait]
impl reapi::capabilities_server::Capabilities for Fake {
    async fn get_capabilities(
        &self,
        _: tonic::Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<tonic::Response<reapi::ServerCapabilities>, tonic::Status> {
        Ok(tonic::Response::new(reapi::ServerCapabilities {
            cache_capabilities: Some(reapi::CacheCapabilities {
                max_batch_total_size_bytes: 4 << 20,
                ..Default::default()
            }),
            execution_capabilities: Some(reapi::ExecutionCapabilities {
                exec_enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl reapi::content_addressable_storage_server::ContentAddressableStorage for Fake {
    async fn find_missing_blobs(
        &self,
        _: tonic::Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<tonic::Response<reapi::FindMissingBlobsResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
    async fn batch_update_blobs(
        &self,
        _: tonic::Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<tonic::Response<reapi::BatchUpdateBlobsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn batch_read_blobs(
        &self,
        _: tonic::Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<tonic::Response<reapi::BatchReadBlobsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    type GetTreeStream = tokio_stream::Empty<Result<reapi::GetTreeResponse, tonic::Status>>;
    async fn get_tree(
        &self,
        _: tonic::Request<reapi::GetTreeRequest>,
    ) -> Result<tonic::Response<Self::GetTreeStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
}

/// The Execution service's path, answered with a plain HTTP 404.
#[derive(Clone)]
struct NotFound;

impl tonic::server::NamedService for NotFound {
    const NAME: &'static str = "build.bazel.remote.execution.v2.Execution";
}

impl tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for NotFound {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let body = tonic::body::Body::new(String::from("Not Found"));
        std::future::ready(Ok(tonic::codegen::http::Response::builder()
            .status(404)
            .header("content-type", "text/plain")
            .body(body)
            .unwrap()))
    }
}
