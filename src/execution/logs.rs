//! The output of a running action, streamed while it runs.
//!
//! While an action's command runs, its run holds a [`LiveLog`]: the two
//! memory files its standard output and error go to. An operation whose owner
//! submitted that run names them in its `ExecuteOperationMetadata`
//! (`stdout_stream_name`, `stderr_stream_name`, as REAPI provides for), as
//! `OPERATION/stdout` and `OPERATION/stderr`; a ByteStream Read of such a
//! name by the operation's owner follows the file as it grows and ends once
//! the command has ended and everything is sent. Followers of another
//! user's run are never given the names: what they may see of a run is
//! decided when it ends (see `Executor::finish`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::proto::bytestream;

/// Bytes per ReadResponse.
const CHUNK: usize = 64 << 10;
/// How often a reader at the end of the file looks again.
const POLL: Duration = Duration::from_millis(50);

/// Which of the two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Stdout,
    Stderr,
}

impl Which {
    fn as_str(self) -> &'static str {
        match self {
            Which::Stdout => "stdout",
            Which::Stderr => "stderr",
        }
    }
}

/// The output files of one running command.
pub struct LiveLog {
    stdout: File,
    stderr: File,
    done: AtomicBool,
    changed: Notify,
}

impl LiveLog {
    /// Descriptors of the command's stdout and stderr. They share their
    /// offsets with the command's own: they are only ever read with
    /// positioned reads, which leave the offset alone.
    pub fn new(stdout: File, stderr: File) -> Arc<LiveLog> {
        Arc::new(LiveLog {
            stdout,
            stderr,
            done: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    /// The command has ended: readers send what is left and stop.
    pub fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn file(&self, which: Which) -> &File {
        match which {
            Which::Stdout => &self.stdout,
            Which::Stderr => &self.stderr,
        }
    }
}

/// The stream name of an operation's output.
pub fn stream_name(operation: &str, which: Which) -> String {
    format!("{operation}/{}", which.as_str())
}

/// The operation and stream of a stream name, if it is one.
pub fn parse_name(name: &str) -> Option<(&str, Which)> {
    let (op, which) = name.rsplit_once('/')?;
    let which = match which {
        "stdout" => Which::Stdout,
        "stderr" => Which::Stderr,
        _ => return None,
    };
    op.starts_with("operations/").then_some((op, which))
}

/// Streams `which` of `log` from `offset`, `limit` bytes at most (0: no
/// limit), as it grows, until the command has ended and all of it is sent.
pub fn follow(
    log: Arc<LiveLog>,
    which: Which,
    offset: u64,
    limit: u64,
) -> ReceiverStream<Result<bytestream::ReadResponse, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut at = offset;
        let end = (limit > 0).then(|| offset.saturating_add(limit));
        loop {
            // Whether the command had ended before this read: if it had and
            // the read finds nothing, nothing more will come.
            let ended = log.done.load(Ordering::SeqCst);
            let chunk = read_at(log.file(which), at, end).map_err(|e| {
                Status::internal(format!("reading the action's {}: {e}", which.as_str()))
            });
            match chunk {
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Ok(data) if !data.is_empty() => {
                    at += data.len() as u64;
                    let msg = bytestream::ReadResponse { data: data.into() };
                    if tx.send(Ok(msg)).await.is_err() {
                        return; // the client went away
                    }
                    if end.is_some_and(|e| at >= e) {
                        return;
                    }
                }
                Ok(_) if ended => return,
                Ok(_) => {
                    let _ = tokio::time::timeout(POLL, log.changed.notified()).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Up to [`CHUNK`] bytes of `f` from `at`, not past `end`.
fn read_at(f: &File, at: u64, end: Option<u64>) -> std::io::Result<Vec<u8>> {
    let want = end.map_or(CHUNK as u64, |e| e.saturating_sub(at).min(CHUNK as u64));
    let mut buf = vec![0u8; want as usize];
    let n = f.read_at(&mut buf, at)?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[test]
    fn names_round_trip() {
        let name = stream_name("operations/abc", Which::Stderr);
        assert_eq!(parse_name(&name), Some(("operations/abc", Which::Stderr)));
        assert_eq!(parse_name("blobs/abc/3"), None);
        assert_eq!(parse_name("operations/abc/stdin"), None);
    }

    #[tokio::test]
    async fn a_reader_follows_the_file_until_the_command_ends() {
        use std::io::Write;
        let out = tempfile::tempfile().unwrap();
        let err = tempfile::tempfile().unwrap();
        let mut writer = out.try_clone().unwrap();
        let log = LiveLog::new(out, err);
        let mut stream = follow(Arc::clone(&log), Which::Stdout, 0, 0);
        // Nothing yet, then written in two goes, then the end.
        tokio::time::sleep(Duration::from_millis(80)).await;
        writer.write_all(b"one\n").unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(&first.data[..], b"one\n");
        // The reader did not move the writer's (shared) offset.
        writer.write_all(b"two\n").unwrap();
        log.finish();
        let mut rest = Vec::new();
        while let Some(m) = stream.next().await {
            rest.extend_from_slice(&m.unwrap().data);
        }
        assert_eq!(rest, b"two\n");
    }
}
