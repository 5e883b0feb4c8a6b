//! Connecting to the upstream: the endpoint, TLS (with the certificate and
//! key files parsed up front), and the request headers, some of them
//! secrets read from files. [`Settings::load`] is what `check-config` and
//! the daemon's start-up run.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Uri};
use tonic::{Code, Request, Status};
use tower::ServiceExt;
use tower::util::MapResponse;

use super::Error;
use crate::config::{self, Endpoint};

/// HTTP/2 keepalive: a PING after this long without a frame from the
/// upstream while a call is open, and the connection (with every call on
/// it) fails when the PING is not answered within [`KEEPALIVE_TIMEOUT`].
/// It catches a dead or frozen upstream under a stream that may rightly
/// stay silent, e.g. an Execute whose action is still queued there (a
/// running one is bounded by its own timeout as well, see
/// `execute::Deadline`). Not shorter, and not while idle: gRPC-core
/// (BuildGrid) and grpc-go (Buildbarn) servers count a PING less than 5
/// minutes after the last one on a connection they send nothing on as a
/// strike, and one on a connection without calls as a strike as well, and
/// answer the third strike with GOAWAY `too_many_pings`, which breaks the
/// calls on it (a broken Execute stream is reattached by WaitExecution).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds the configured headers to every upstream call.
#[derive(Clone)]
pub struct Headers(Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>);

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        for (name, value) in self.0.iter() {
            req.metadata_mut().insert(name.clone(), value.clone());
        }
        Ok(req)
    }
}

/// What the channel does to every answer: [`grpc_or_status`].
type Answers = fn(http::Response<Body>) -> http::Response<Body>;

/// The channel every client is built on.
pub type Ch = InterceptedService<MapResponse<Channel, Answers>, Headers>;

/// An answer that is not gRPC (no `grpc-status`, and not HTTP 200 with a
/// gRPC content type) becomes a trailers-only gRPC answer with a status
/// that says so, before tonic reads its body: tonic would otherwise parse
/// an error page as messages ("invalid compression flag: 78" for the "N"
/// of NativeLink's "Not Found") and report INTERNAL. The code follows
/// gRPC's HTTP mapping where it means something for us: 401
/// UNAUTHENTICATED, 403 PERMISSION_DENIED, 429/502/503/504 UNAVAILABLE (a
/// proxy whose backend is away); anything else (404 most of all: the server
/// has no such service) is UNIMPLEMENTED.
pub(super) fn grpc_or_status(response: http::Response<Body>) -> http::Response<Body> {
    let headers = response.headers();
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if headers.contains_key("grpc-status")
        || (response.status() == http::StatusCode::OK
            && content_type.starts_with("application/grpc"))
    {
        return response;
    }
    let code = match response.status().as_u16() {
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unimplemented,
    };
    let message = format!(
        "not a gRPC answer: HTTP {} (content-type {})",
        response.status(),
        if content_type.is_empty() {
            "none"
        } else {
            content_type
        }
    );
    Status::new(code, message).into_http()
}

/// The configuration with the files it names read: what the daemon needs to
/// connect. [`Settings::load`] is also what `check-config` runs.
pub struct Settings {
    pub endpoint: Endpoint,
    pub(super) config: config::Upstream,
    tls: Option<ClientTlsConfig>,
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
}

impl Settings {
    /// Reads the CA, certificate, key and header files. `None` when no
    /// upstream is configured.
    pub fn load(config: &config::Upstream) -> Result<Option<Settings>, Error> {
        let Some(endpoint) = config.endpoint() else {
            return Ok(None);
        };
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| Error::File {
                key,
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        let pem = |key: &'static str, path: &Path| -> Result<Vec<u8>, Error> {
            let data = read(key, path)?;
            if !data.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(Error::File {
                    key,
                    path: path.to_owned(),
                    reason: "not a PEM file (no -----BEGIN line)".into(),
                });
            }
            Ok(data)
        };
        let tls = match &endpoint {
            Endpoint::Grpcs(_) => {
                let mut tls =
                    ClientTlsConfig::new().domain_name(endpoint.host().unwrap_or_default());
                tls = match &config.tls_ca_file {
                    Some(path) => {
                        let data = pem("tls-ca-file", path)?;
                        check_certificates("tls-ca-file", path, &data)?;
                        tls.ca_certificate(Certificate::from_pem(data))
                    }
                    None => tls.with_native_roots(),
                };
                if let (Some(cert), Some(key)) = (&config.tls_client_cert, &config.tls_client_key) {
                    let cert_data = pem("tls-client-cert", cert)?;
                    check_certificates("tls-client-cert", cert, &cert_data)?;
                    let key_data = pem("tls-client-key", key)?;
                    check_private_key(key, &key_data)?;
                    tls = tls.identity(Identity::from_pem(cert_data, key_data));
                }
                Some(tls)
            }
            _ => None,
        };
        let mut headers = Vec::new();
        let key = |name: &str, which: &'static str| {
            AsciiMetadataKey::from_bytes(name.as_bytes()).map_err(|e| Error::Setup {
                endpoint: endpoint.to_string(),
                reason: format!("{which}: {name:?}: {e}"),
            })
        };
        for (name, value) in &config.headers {
            let mut v = AsciiMetadataValue::try_from(value.as_str()).map_err(|_| Error::Setup {
                endpoint: endpoint.to_string(),
                reason: format!("headers: the value of {name:?} is not a valid header value"),
            })?;
            v.set_sensitive(true);
            headers.push((key(name, "headers")?, v));
        }
        for (name, path) in &config.header_files {
            let data = read("header-files", path)?;
            let text = String::from_utf8(data).map_err(|_| Error::File {
                key: "header-files",
                path: path.clone(),
                reason: format!("the value for {name:?} is not text"),
            })?;
            let text = text.trim_end_matches(['\n', '\r']);
            // The message must never quote the secret.
            let mut v = AsciiMetadataValue::try_from(text).map_err(|_| Error::File {
                key: "header-files",
                path: path.clone(),
                reason: format!(
                    "the value for {name:?} is not a valid header value (printable ASCII on one line)"
                ),
            })?;
            if text.is_empty() {
                return Err(Error::File {
                    key: "header-files",
                    path: path.clone(),
                    reason: format!("the value for {name:?} is empty"),
                });
            }
            v.set_sensitive(true);
            headers.push((key(name, "header-files")?, v));
        }
        let settings = Settings {
            endpoint,
            config: config.clone(),
            tls,
            headers,
        };
        // Building the endpoint parses the certificates and the key.
        settings.endpoint()?;
        Ok(Some(settings))
    }

    fn endpoint(&self) -> Result<tonic::transport::Endpoint, Error> {
        let setup = |reason: String| Error::Setup {
            endpoint: self.endpoint.to_string(),
            reason,
        };
        let uri = match &self.endpoint {
            Endpoint::Grpc(hp) => format!("http://{hp}"),
            Endpoint::Grpcs(hp) => format!("https://{hp}"),
            // Any authority will do on a unix socket.
            Endpoint::Unix(_) => "http://localhost".to_owned(),
        };
        let mut ep = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| setup(e.to_string()))?
            .connect_timeout(self.config.connect_timeout.0)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(false)
            .user_agent(format!("nativelink-lre/{}", env!("CARGO_PKG_VERSION")))
            .map_err(|e| setup(e.to_string()))?;
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| setup(format!("TLS: {}", crate::client::source_chain(&e))))?;
        }
        Ok(ep)
    }

    /// A lazily connecting channel: start-up never waits for the upstream.
    pub(super) fn channel(&self) -> Result<Ch, Error> {
        let ep = self.endpoint()?;
        let channel = match &self.endpoint {
            Endpoint::Unix(path) => {
                let path = path.clone();
                ep.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(TokioIo::new)
                    }
                }))
            }
            _ => ep.connect_lazy(),
        };
        Ok(InterceptedService::new(
            channel.map_response(grpc_or_status as Answers),
            Headers(Arc::new(self.headers.clone())),
        ))
    }
}

/// Every PEM certificate in `data` parses as X.509; there is at least one.
/// (A CA certificate that does not parse would otherwise be skipped,
/// leaving no roots and every handshake failing.)
fn check_certificates(key: &'static str, path: &Path, data: &[u8]) -> Result<(), Error> {
    use rustls_pki_types::pem::PemObject;
    let bad = |reason: String| Error::File {
        key,
        path: path.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(data) {
        n += 1;
        let cert = cert.map_err(|e| bad(format!("certificate {n}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("certificate {n} does not parse: {e}")))?;
    }
    if n == 0 {
        return Err(bad("no CERTIFICATE in the file".into()));
    }
    Ok(())
}

fn check_private_key(path: &Path, data: &[u8]) -> Result<(), Error> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(data)
        .map(drop)
        .map_err(|e| Error::File {
            key: "tls-client-key",
            path: path.to_owned(),
            reason: format!("no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, content_type: Option<&str>) -> http::Response<Body> {
        let mut r = http::Response::builder().status(status);
        if let Some(ct) = content_type {
            r = r.header(http::header::CONTENT_TYPE, ct);
        }
        grpc_or_status(r.body(Body::empty()).unwrap())
    }

    fn code(r: &http::Response<Body>) -> Option<Code> {
        Status::from_header_map(r.headers()).map(|s| s.code())
    }

    #[test]
    fn answers_that_are_not_grpc_become_statuses_that_say_so() {
        // NativeLink without an Execution service: HTTP 404, text.
        let r = answer(404, Some("text/plain"));
        assert_eq!(code(&r), Some(Code::Unimplemented));
        let s = Status::from_header_map(r.headers()).unwrap();
        assert!(s.message().contains("HTTP 404"), "{}", s.message());
        assert_eq!(code(&answer(503, None)), Some(Code::Unavailable));
        assert_eq!(code(&answer(401, None)), Some(Code::Unauthenticated));
        assert_eq!(
            code(&answer(200, Some("text/html"))),
            Some(Code::Unimplemented)
        );
        // gRPC answers pass unchanged: a stream, and a trailers-only error.
        assert_eq!(code(&answer(200, Some("application/grpc"))), None);
        let trailers_only = grpc_or_status(Status::not_found("x").into_http());
        assert_eq!(code(&trailers_only), Some(Code::NotFound));
    }
}
