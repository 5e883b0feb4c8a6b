//! Building an action's result: the ActionResult from its collected
//! outputs, with the timeline of its execution and its resource usage, and
//! the message its ExecuteResponse carries.

use std::time::SystemTime;

use super::outputs::Outputs;
use crate::digest::Digest;
use crate::proto::any;
use crate::proto::nativelink_lre::v1::ResourceUsage;
use crate::proto::reapi;

/// When each step of an execution began and ended
/// (`ExecutedActionMetadata`'s timestamps).
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub queued: SystemTime,
    pub worker_start: SystemTime,
    pub input_fetch_start: SystemTime,
    pub input_fetch_done: SystemTime,
    pub execution_start: SystemTime,
    pub execution_done: SystemTime,
    pub upload_start: SystemTime,
    pub upload_done: SystemTime,
}

impl Timeline {
    /// A timeline whose every step is `queued` until it is set.
    pub fn starting(queued: SystemTime) -> Timeline {
        Timeline {
            queued,
            worker_start: queued,
            input_fetch_start: queued,
            input_fetch_done: queued,
            execution_start: queued,
            execution_done: queued,
            upload_start: queued,
            upload_done: queued,
        }
    }
}

/// What one run produced, taken into the store.
pub struct Produced {
    pub outputs: Outputs,
    pub stdout: Digest,
    pub stderr: Digest,
    pub exit_code: i32,
}

/// The ActionResult of a run on `worker`. Clients before REAPI 2.1 read
/// the per-kind symlink fields, later ones `output_symlinks`;
/// `outputs::collect` fills the ones that match how the Command declared
/// its outputs.
pub fn action_result(
    produced: Produced,
    worker: &str,
    timeline: &Timeline,
    usage: &ResourceUsage,
) -> reapi::ActionResult {
    let outs = produced.outputs;
    let t = timeline;
    #[allow(deprecated)]
    reapi::ActionResult {
        output_files: outs.files,
        output_directories: outs.directories,
        output_symlinks: outs.symlinks,
        output_file_symlinks: outs.file_symlinks,
        output_directory_symlinks: outs.directory_symlinks,
        exit_code: produced.exit_code,
        stdout_digest: Some(produced.stdout.to_proto()),
        stderr_digest: Some(produced.stderr.to_proto()),
        execution_metadata: Some(reapi::ExecutedActionMetadata {
            worker: worker.to_owned(),
            queued_timestamp: Some(t.queued.into()),
            worker_start_timestamp: Some(t.worker_start.into()),
            input_fetch_start_timestamp: Some(t.input_fetch_start.into()),
            input_fetch_completed_timestamp: Some(t.input_fetch_done.into()),
            execution_start_timestamp: Some(t.execution_start.into()),
            execution_completed_timestamp: Some(t.execution_done.into()),
            output_upload_start_timestamp: Some(t.upload_start.into()),
            output_upload_completed_timestamp: Some(t.upload_done.into()),
            worker_completed_timestamp: Some(SystemTime::now().into()),
            auxiliary_metadata: vec![any("nativelink_lre.v1.ResourceUsage", usage)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ExecuteResponse message of a run: why a command killed by SIGXFSZ
/// died (it wrote past `max_file_size`), then the warnings about limits
/// this host could not enforce, one per line.
pub fn message(exit_code: i32, max_file_size: u64, warnings: &[String]) -> String {
    let killed = (exit_code == 128 + libc::SIGXFSZ).then(|| {
        format!(
            "the command was killed by SIGXFSZ: a file it wrote reached sandbox.max-file-size ({max_file_size} bytes)"
        )
    });
    killed
        .into_iter()
        .chain(warnings.iter().cloned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_timeline_and_usage_reach_the_metadata() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut t = Timeline::starting(t0);
        t.execution_start = t0 + Duration::from_secs(2);
        t.execution_done = t0 + Duration::from_secs(5);
        let produced = Produced {
            outputs: Outputs::default(),
            stdout: Digest::of_bytes(b"out"),
            stderr: Digest::of_bytes(b""),
            exit_code: 3,
        };
        let usage = ResourceUsage {
            source: "cgroup".into(),
            ..Default::default()
        };
        let r = action_result(produced, "w@h", &t, &usage);
        assert_eq!(r.exit_code, 3);
        assert_eq!(r.stdout_digest, Some(Digest::of_bytes(b"out").to_proto()));
        let m = r.execution_metadata.unwrap();
        assert_eq!(m.worker, "w@h");
        let secs = |ts: Option<prost_types::Timestamp>| ts.unwrap().seconds;
        assert_eq!(secs(m.queued_timestamp), 1000);
        assert_eq!(secs(m.execution_start_timestamp), 1002);
        assert_eq!(secs(m.execution_completed_timestamp), 1005);
        assert_eq!(m.auxiliary_metadata.len(), 1);
    }

    #[test]
    fn the_message_names_sigxfsz_and_the_warnings() {
        assert_eq!(message(0, 10, &[]), "");
        let w = vec!["lre-memory-max is not enforced here".to_owned()];
        assert_eq!(message(1, 10, &w), w[0]);
        let m = message(128 + libc::SIGXFSZ, 10, &w);
        assert!(m.starts_with("the command was killed by SIGXFSZ"), "{m}");
        assert!(m.contains("sandbox.max-file-size (10 bytes)") && m.ends_with(&w[0]));
    }
}
