//! Connecting to the upstream: the endpoint, TLS (with the certificate and
//! key files parsed up front), and the request headers, some of them
//! secrets read from files. [`Settings::load`] is what `check-config` and
//! the daemon's start-up run.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Uri};
use tonic::{Request, Status};

use super::Error;
use crate::config::{self, Endpoint};

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

/// The channel every client is built on.
pub type Ch = InterceptedService<Channel, Headers>;

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
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
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
            channel,
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
