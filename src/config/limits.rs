//! `[limits]`: what one client may hold of the daemon's shared resources
//! (connections, streams, unfinished uploads) and how long it may sit on
//! them without progress. The defaults leave a Bazel with the usual
//! `--remote_max_connections` and `--jobs` far from every limit while
//! keeping one careless or hostile user from starving the others.

use std::time::Duration;

use serde::Deserialize;

use super::{ByteSize, DurationValue};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Limits {
    /// Open connections one uid may have; more are closed at once.
    pub max_connections_per_user: usize,
    /// A connection that has not sent the HTTP/2 preface by then is closed.
    pub preface_timeout: DurationValue,
    /// HTTP/2 streams (calls) in progress on one connection.
    pub max_streams_per_connection: u32,
    /// Calls in progress for one uid over all its connections.
    pub max_streams_per_user: usize,
    /// A call whose client sends nothing it owes, or takes none of the
    /// data it is sent, for this long is ended.
    pub stream_idle_timeout: DurationValue,
    /// Unfinished uploads (in progress or waiting to be resumed), per uid
    /// and in total, by number and by bytes received.
    pub max_uploads_per_user: usize,
    pub max_upload_bytes_per_user: ByteSize,
    pub max_uploads: usize,
    pub max_upload_bytes: ByteSize,
    /// How long an interrupted upload waits to be resumed.
    pub upload_keep: DurationValue,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections_per_user: 512,
            preface_timeout: DurationValue(Duration::from_secs(5)),
            max_streams_per_connection: 128,
            max_streams_per_user: 1024,
            stream_idle_timeout: DurationValue(Duration::from_secs(60)),
            max_uploads_per_user: 256,
            max_upload_bytes_per_user: ByteSize(4 << 30),
            max_uploads: 4096,
            max_upload_bytes: ByteSize(8 << 30),
            upload_keep: DurationValue(Duration::from_secs(15 * 60)),
        }
    }
}

impl Limits {
    /// The offending key and why, for the first value that cannot work.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        for (key, n) in [
            ("max-connections-per-user", self.max_connections_per_user),
            (
                "max-streams-per-connection",
                self.max_streams_per_connection as usize,
            ),
            ("max-streams-per-user", self.max_streams_per_user),
            ("max-uploads-per-user", self.max_uploads_per_user),
            ("max-uploads", self.max_uploads),
        ] {
            if n == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        for (key, d) in [
            ("preface-timeout", self.preface_timeout),
            ("stream-idle-timeout", self.stream_idle_timeout),
            ("upload-keep", self.upload_keep),
        ] {
            if d.0.is_zero() {
                return Err((key, "must be longer than zero".into()));
            }
        }
        if self.max_upload_bytes_per_user.0 > self.max_upload_bytes.0 {
            return Err((
                "max-upload-bytes-per-user",
                "must not be more than max-upload-bytes".into(),
            ));
        }
        if self.max_uploads_per_user > self.max_uploads {
            return Err((
                "max-uploads-per-user",
                "must not be more than max-uploads".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::path::Path;

    #[test]
    fn limits_parse_and_are_checked() {
        let c = Config::parse(
            "[limits]\nmax-connections-per-user = 8\nstream-idle-timeout = \"2s\"\nmax-upload-bytes = \"1GiB\"\nmax-upload-bytes-per-user = \"512MiB\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.limits.max_connections_per_user, 8);
        assert_eq!(c.limits.stream_idle_timeout.0.as_secs(), 2);
        assert_eq!(c.limits.max_upload_bytes_per_user.0, 512 << 20);
        for (text, key) in [
            ("max-streams-per-user = 0", "max-streams-per-user"),
            ("preface-timeout = 0", "preface-timeout"),
            (
                "max-upload-bytes-per-user = \"9GiB\"",
                "max-upload-bytes-per-user",
            ),
        ] {
            let msg = Config::parse(&format!("[limits]\n{text}\n"), Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(key) && msg.contains("t.toml:2"),
                "{text}: {msg}"
            );
        }
    }
}
