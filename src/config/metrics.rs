//! `[metrics]`: where the Prometheus endpoint listens.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[metrics]`: the optional Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Metrics {
    /// `HOST:PORT` on loopback, or `unix:/PATH`; empty: no endpoint.
    pub listen: String,
}

impl Metrics {
    /// The endpoint, if one is configured and valid.
    pub fn endpoint(&self) -> Result<Option<crate::metrics::Listen>, String> {
        let l = self.listen.trim();
        if l.is_empty() {
            return Ok(None);
        }
        if let Some(path) = l.strip_prefix("unix:") {
            let path = PathBuf::from(path.trim_start_matches("//"));
            if !path.is_absolute() {
                return Err(format!(
                    "{l:?}: the socket path must be absolute (unix:/PATH)"
                ));
            }
            return Ok(Some(crate::metrics::Listen::Unix(path)));
        }
        let addr: SocketAddr = l
            .parse()
            .map_err(|_| format!("{l:?} is neither HOST:PORT nor unix:/PATH"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{addr} is not a loopback address"));
        }
        Ok(Some(crate::metrics::Listen::Tcp(addr)))
    }
}
