//! `nativelink-lre status` as a person reads it.

use crate::proto::nativelink_lre::v1 as admin;

/// A check's report as a person reads it.
pub fn format_check(r: &admin::ActionCheck) -> String {
    let mut out = match r.outcome.as_str() {
        "same" => format!("same       {}\n", r.action_digest),
        "different" => format!("DIFFERENT  {}\n", r.action_digest),
        _ => format!("unchecked  {}: {}\n", r.action_digest, r.error),
    };
    for d in &r.differences {
        let side = |v: &str| {
            if v.is_empty() {
                "(absent)".to_owned()
            } else {
                v.to_owned()
            }
        };
        out += &format!(
            "  {}: cached {}, new run {}\n",
            d.path,
            side(&d.cached),
            side(&d.rerun)
        );
    }
    if !r.differences.is_empty() {
        out += "  (both are in this daemon's CAS as blobs/HASH/SIZE, kept for at least a minute)\n";
    }
    out
}

fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// `status` as a person reads it.
fn format_upstream(u: &admin::UpstreamStatus) -> String {
    let on = |b: bool| if b { "on" } else { "off" };
    let mut out = format!(
        "upstream: {}{} is {}",
        u.endpoint,
        if u.instance_name.is_empty() {
            String::new()
        } else {
            format!(" (instance {:?})", u.instance_name)
        },
        u.state
    );
    if u.state == "down" {
        out += &format!(
            " for {}s: {}; next retry in {}s",
            u.down_seconds, u.error, u.next_retry_seconds
        );
    }
    out += &format!(
        "\n  read-through {}, write-back {}, remote execution {}\n",
        on(u.read_through),
        on(u.write_back),
        on(u.remote_execution)
    );
    out += &format!(
        "  action cache: {} hits, {} misses; fetched {} blobs ({}), {} rejected\n",
        u.action_cache_hits,
        u.action_cache_misses,
        u.blobs_fetched,
        gib(u.bytes_fetched),
        u.blobs_rejected
    );
    if u.write_back {
        out += &format!(
            "  write-back: {} pushed ({} blobs), {} queued, {} dropped, {} failed\n",
            u.pushes_done, u.blobs_pushed, u.pushes_queued, u.pushes_dropped, u.pushes_failed
        );
    }
    if u.remote_execution {
        out += &format!(
            "  remote execution: {} sent, {} ran locally instead\n",
            u.remote_executions, u.remote_fallbacks
        );
    }
    if !u.last_error.is_empty() {
        out += &format!(
            "  last error: {} ({} failed calls)\n",
            u.last_error, u.calls_failed
        );
    }
    out
}

pub fn format_status(s: &admin::StatusResponse) -> String {
    let mut out = String::new();
    let lookups = s.action_cache_hits + s.action_cache_misses;
    let rate = if lookups == 0 {
        "no lookups yet".to_owned()
    } else {
        format!(
            "{:.1}% ({} of {} lookups)",
            100.0 * s.action_cache_hits as f64 / lookups as f64,
            s.action_cache_hits,
            lookups
        )
    };
    out += &format!("nativelink-lre {}, up {}s\n", s.version, s.uptime_seconds);
    out += &format!("state directory: {}\n", s.state_dir);
    out += &format!(
        "store: {}{} of {}\n",
        gib(s.store_bytes),
        if s.store_bytes_exact {
            ""
        } else {
            " (still counting)"
        },
        gib(s.store_limit_bytes)
    );
    out += &format!("action cache hit rate: {rate}\n");
    for u in &s.lookups_by_user {
        let who = u.uid.map_or("anonymous".to_owned(), |u| format!("uid {u}"));
        let total = u.hits + u.misses;
        let pct = if total == 0 {
            0.0
        } else {
            100.0 * u.hits as f64 / total as f64
        };
        out += &format!("  {who}: {} of {} lookups hit ({pct:.0}%)\n", u.hits, total);
    }
    if s.store_per_user_max > 0 {
        out += &format!("store share per user: {} bytes\n", s.store_per_user_max);
    }
    for u in &s.store_by_user {
        out += &format!("  uid {}: {} bytes\n", u.uid, u.bytes);
    }
    out += &format!("connections: {}\n", s.connections);
    out += &format!(
        "unfinished uploads: {} in progress, {} waiting to be resumed ({})\n",
        s.uploads_in_progress,
        s.uploads_waiting,
        gib(s.upload_bytes)
    );
    if let Some(u) = &s.upstream {
        out += &format_upstream(u);
    }
    if !s.execution_enabled {
        out += "execution: disabled\n";
        return out;
    }
    out += &format!(
        "execution: {} executed, {} answered from the cache; {} of {} slots running, {} waiting\n",
        s.actions_executed,
        s.execute_cache_hits,
        s.running_count,
        s.max_concurrent_actions,
        s.queued_count
    );
    if s.only_own {
        out += "  (only your own operations are listed: you are not in trusted-users)\n";
    }
    for r in &s.running {
        let who = match (r.uids.first(), r.user.as_str()) {
            (Some(u), _) if *u < 0 => "anonymous".to_owned(),
            (Some(u), "") => format!("uid {u}"),
            (Some(u), name) => format!("{name} (uid {u})"),
            (None, _) => "?".to_owned(),
        };
        let what = if r.argv0.is_empty() {
            "?"
        } else {
            r.argv0.as_str()
        };
        out += &format!(
            "  {} {what} for {who}, {}s: {} ({})\n",
            r.stage, r.elapsed_seconds, r.action_digest, r.operation
        );
    }
    for q in &s.queued {
        let who = q.uid.map_or("anonymous".to_owned(), |u| format!("uid {u}"));
        out += &format!("  queued: {} for {who}\n", q.count);
    }
    out += &format!("namespaces: {}\n", s.namespaces.join(", "));
    if !s.toolchain_identity.is_empty() {
        out += &format!(
            "toolchain: lre-toolchain={}{} ({} items; status --json lists them)\n",
            s.toolchain_identity,
            if s.require_toolchain {
                ", required of every action"
            } else {
                ""
            },
            s.toolchain_items.len()
        );
        out += &format!("read-only paths: {}\n", s.read_only_paths.join(" "));
    }
    out += &format!(
        "determinism checks: {} run, {} gave a different result{}\n",
        s.determinism_checks,
        s.determinism_mismatches,
        if s.repeat > 0 {
            format!("; one in {} executed actions is run again", s.repeat)
        } else {
            String::new()
        }
    );
    out += &format!(
        "identity: {}\n",
        if s.per_action_uids {
            "each action runs as its own host uid"
        } else {
            "every action runs as the daemon's uid"
        }
    );
    let active = if s.cgroup_controllers.is_empty() {
        "none".to_owned()
    } else {
        s.cgroup_controllers.join(", ")
    };
    if !s.sandbox_error.is_empty() {
        out += &format!("sandbox: NOT WORKING, actions fail: {}\n", s.sandbox_error);
    }
    for p in &s.sandbox_protections {
        let state = if p.in_force {
            "in force"
        } else {
            "NOT in force"
        };
        out += &format!("sandbox {}: {state} ({})\n", p.name, p.detail);
    }
    out += &format!("cgroup limits: {active}");
    if !s.cgroup_missing.is_empty() {
        out += &format!(" (unavailable: {})", s.cgroup_missing.join(", "));
    }
    if !s.cgroup_base.is_empty() {
        out += &format!(" under {}", s.cgroup_base);
    }
    out.push('\n');
    out
}
