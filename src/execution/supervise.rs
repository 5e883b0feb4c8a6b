//! Supervising one sandboxed run: the helper started with the command's
//! output in memory files (streamed live to its submitter), watched until
//! it ends, times out, is cancelled or writes too much; then the cgroup's
//! accounting read and the cgroup removed.

use std::time::Duration;

use super::action_dir::{ActionDir, Streams};
use super::disk_limit::DiskLimit;
use super::error::Error;
use super::outputs::OutputError;
use super::run::Run;
use crate::cgroup::ActionCgroup;
use crate::proto::nativelink_lre::v1::ResourceUsage;
use crate::sandbox;

/// Which way an execution ended.
pub enum End {
    Finished(sandbox::Report),
    TimedOut(sandbox::Report),
    Cancelled,
    /// Killed for writing this many bytes, more than the cap.
    ExecRootFull(u64),
}

/// How long a run may go on, and how much it may write.
pub struct Bounds<'a> {
    pub timeout: Duration,
    pub limit: &'a DiskLimit,
    /// Between SIGTERM and the kill.
    pub kill_grace: Duration,
}

/// Runs `spec` to its end (see [`run_sandbox`]), with stdout and stderr
/// saved in `dir` afterwards, and the cgroup's accounting (the cgroup is
/// removed). The usage's timings are the caller's to fill in.
pub async fn supervise(
    run: &Run,
    spec: &sandbox::Spec,
    dir: &ActionDir,
    cg: Option<ActionCgroup>,
    bounds: Bounds<'_>,
) -> Result<(End, ResourceUsage), Error> {
    let internal = Error::Streams;
    let streams = Streams::new().map_err(internal)?;
    let live = LiveLogGuard::start(run, &streams).map_err(internal)?;
    let ended = run_sandbox(
        run,
        spec,
        &streams,
        cg.as_ref(),
        bounds.timeout,
        bounds.limit,
        bounds.kill_grace,
    )
    .await;
    drop(live);
    let end = match ended {
        Ok(end) => end,
        Err(e) => {
            // Dropping the cgroup kills and removes it, which waits for
            // the kernel: not on an async thread.
            tokio::task::block_in_place(|| drop(cg));
            return Err(e);
        }
    };
    // Whatever the command wrote, also after a timeout. A copy of up to
    // max-file-size per stream: off the async threads.
    tokio::task::block_in_place(|| streams.save(&dir.path)).map_err(|(path, source)| {
        Error::Outputs(OutputError::Io {
            op: "save the command's output to",
            path,
            source,
        })
    })?;
    let teardown_start = sandbox::monotonic_ns();
    let mut usage = match cg {
        Some(cg) => {
            // stats() reads files and remove() may wait for the kernel
            // to reap: both block.
            let stats = tokio::task::block_in_place(|| {
                let stats = cg.stats();
                if let Err(e) = cg.remove() {
                    tracing::warn!("cannot remove the action cgroup: {e}");
                }
                stats
            });
            ResourceUsage {
                cpu_usage_usec: stats.usage_usec,
                cpu_user_usec: stats.user_usec,
                cpu_system_usec: stats.system_usec,
                memory_peak_bytes: stats.memory_peak,
                oom_kills: stats.oom_kills,
                pids_max_events: stats.pids_max_events,
                source: "cgroup".into(),
                ..Default::default()
            }
        }
        None => ResourceUsage {
            source: "none".into(),
            ..Default::default()
        },
    };
    usage.teardown_usec = sandbox::monotonic_ns().saturating_sub(teardown_start) / 1000;
    Ok((end, usage))
}

impl End {
    /// The helper's report of a run that ended or timed out (and whether
    /// it timed out); the other ends, and a sandbox that could not be set
    /// up, are errors.
    pub fn into_report(self, limit: &DiskLimit) -> Result<(sandbox::Report, bool), Error> {
        match self {
            End::Cancelled => Err(Error::Cancelled),
            End::ExecRootFull(written) => Err(Error::ExecRootFull {
                written,
                cap: limit.cap(),
            }),
            End::Finished(sandbox::Report {
                outcome: sandbox::Outcome::SetupFailed(msg),
                ..
            }) => Err(Error::Sandbox(msg)),
            End::Finished(r) => Ok((r, false)),
            End::TimedOut(r) => Ok((r, true)),
        }
    }
}

/// Fills in what the helper's report tells of a run: CPU times where no
/// cgroup counted them, and how long the sandbox took to start the
/// command (from `spawned_ns`) and the command ran.
pub fn account(usage: &mut ResourceUsage, report: &sandbox::Report, spawned_ns: u64) {
    if usage.source == "none" {
        usage.cpu_user_usec = report.cpu_user_usec;
        usage.cpu_system_usec = report.cpu_system_usec;
        usage.cpu_usage_usec = report.cpu_user_usec + report.cpu_system_usec;
        usage.source = "rusage".into();
    }
    usage.sandbox_setup_usec = report.exec_ns.saturating_sub(spawned_ns) / 1000;
    usage.command_usec = report.exit_ns.saturating_sub(report.exec_ns) / 1000;
}

/// Runs the sandbox to its end, a timeout, or a cancel. On timeout or
/// cancel: SIGTERM to everything, a grace period, then a kill of the
/// whole tree. Afterwards nothing of the action is left running.
async fn run_sandbox(
    run: &Run,
    spec: &sandbox::Spec,
    streams: &Streams,
    cg: Option<&ActionCgroup>,
    timeout: Duration,
    limit: &DiskLimit,
    kill_grace: Duration,
) -> Result<End, Error> {
    let (stdout, stderr) = streams.clones().map_err(Error::Streams)?;
    let mut running = sandbox::spawn(spec, stdout, stderr)
        .map_err(|e| Error::Sandbox(format!("cannot start the helper: {e}")))?;
    enum Why {
        Timeout,
        Cancel,
        ExecRootFull(u64),
    }
    let why = tokio::select! {
        outcome = running.wait() => {
            let outcome = outcome.map_err(|e| Error::Sandbox(e.to_string()))?;
            // Daemonized grandchildren outlive the command's init only
            // if they left its pid namespace; the cgroup catches them.
            if let Some(cg) = cg {
                let _ = tokio::task::block_in_place(|| cg.kill());
            }
            // An action that wrote too much and exited before the watch
            // below looked is caught here.
            let written = outcome.written_bytes;
            if let Some(written) = tokio::task::block_in_place(|| limit.exceeded_after(written)) {
                return Ok(End::ExecRootFull(written));
            }
            return Ok(End::Finished(outcome));
        }
        _ = tokio::time::sleep(timeout) => Why::Timeout,
        _ = run.cancelled() => Why::Cancel,
        written = watch_exec_root(limit) => Why::ExecRootFull(written),
    };
    match cg {
        Some(cg) => {
            // Walks cgroupfs: blocking, like the kills around it.
            let _ = tokio::task::block_in_place(|| cg.signal(nix::sys::signal::Signal::SIGTERM));
        }
        None => running.signal(nix::sys::signal::Signal::SIGTERM),
    }
    let outcome = match tokio::time::timeout(kill_grace, running.wait()).await {
        Ok(outcome) => outcome,
        Err(_) => {
            match cg {
                Some(cg) => {
                    let _ = tokio::task::block_in_place(|| cg.kill());
                }
                None => running.signal(nix::sys::signal::Signal::SIGKILL),
            }
            running.wait().await
        }
    }
    .map_err(|e| Error::Sandbox(e.to_string()))?;
    if let Some(cg) = cg {
        let _ = tokio::task::block_in_place(|| cg.kill());
    }
    Ok(match why {
        Why::Timeout => End::TimedOut(outcome),
        Why::Cancel => End::Cancelled,
        Why::ExecRootFull(written) => End::ExecRootFull(written),
    })
}

/// The run's live log while its command runs; ended however the sandbox
/// ends.
struct LiveLogGuard<'a>(&'a Run);

impl<'a> LiveLogGuard<'a> {
    fn start(run: &'a Run, streams: &Streams) -> std::io::Result<LiveLogGuard<'a>> {
        let (stdout, stderr) = streams.clones()?;
        run.set_live_log(Some(super::logs::LiveLog::new(stdout, stderr)));
        Ok(LiveLogGuard(run))
    }
}

impl Drop for LiveLogGuard<'_> {
    fn drop(&mut self) {
        self.0.set_live_log(None);
    }
}

/// Resolves with the bytes written once the action has written more into
/// its exec root than its cap allows; looks once a second.
async fn watch_exec_root(limit: &DiskLimit) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some(written) = tokio::task::block_in_place(|| limit.exceeded()) {
            return written;
        }
    }
}
