#!/usr/bin/env python3
"""Helpers of benches/bazel.sh (plain Python 3, no packages):

    bazel_bench.py outputs OUTPUT_BASE            # {path: sha256} of bazel-bin files, JSON
    bazel_bench.py same REF.json OTHER.json... [--except PATH...]  # exit 1 unless all equal
    bazel_bench.py build LOG                      # elapsed, critical path, process summary
    bazel_bench.py profile PROFILE.json[.gz]      # where the time of one build went, JSON
    bazel_bench.py join GRPC.log TIMELINES.jsonl  # client calls next to server metadata, JSON
    bazel_bench.py table RESULTS.jsonl            # the markdown table of docs/PERFORMANCE.md

The `profile` breakdown reads Bazel's --profile JSON (trace events). For a
remote build Bazel 4.2.3 writes, per action, its own phases (upload
inputs, execute remotely, download outputs) and the server's
ExecutedActionMetadata (queue, fetch = input fetch, execute, upload =
output upload) as events; they are summed per name over all actions, and
the critical path's components are listed. Nothing is asserted on timings.
"""

import gzip
import hashlib
import json
import os
import re
import statistics
import sys


def outputs(base):
    """SHA-256 of every regular file under bazel-out/*/bin (runfiles trees,
    manifests and test logs left out), by path below bazel-out."""
    out = os.path.join(base, "execroot", "lre_bazel_smoke", "bazel-out")
    files = {}
    for top, dirs, names in os.walk(out):
        dirs[:] = [d for d in dirs if not d.endswith(".runfiles") and d not in ("testlogs", "_tmp")]
        rel = os.path.relpath(top, out)
        if "bin" not in rel.split(os.sep):
            continue
        for n in names:
            p = os.path.join(top, n)
            if n.endswith("_manifest") or not os.path.isfile(p) or os.path.islink(p):
                continue
            with open(p, "rb") as f:
                files[os.path.join(rel, n)] = hashlib.sha256(f.read()).hexdigest()
    return files


def same(ref_path, others, ignore=()):
    ref = json.load(open(ref_path))
    bad = 0
    if len(ref) < 7:
        print(f"only {len(ref)} outputs in {ref_path}", file=sys.stderr)
        bad = 1
    for o in others:
        got = json.load(open(o))
        diff = sorted(k for k in set(ref) | set(got) if ref.get(k) != got.get(k) and k not in ignore)
        if diff:
            bad = 1
            print(f"outputs differ between {ref_path} and {o}: {diff}", file=sys.stderr)
    return bad


def build(log):
    text = open(log, errors="replace").read()
    m = re.search(r"Elapsed time: ([0-9.]+)s, Critical Path: ([0-9.]+)s", text)
    summary = next(
        (l for l in text.splitlines() if re.match(r"^INFO: \d+ process(es)?(: .*)?\.$", l)), ""
    )
    kinds = {}
    body = summary.split(": ", 2)[2].rstrip(".") if summary.count(": ") >= 2 else ""
    for part in filter(None, body.split(", ")):
        n, kind = part.split(" ", 1)
        kinds[kind] = int(n)
    return {
        "elapsed_s": float(m.group(1)) if m else None,
        "critical_path_s": float(m.group(2)) if m else None,
        "summary": summary,
        "kinds": kinds,
    }


KEY_EVENTS = (
    "remote action execution", "remote output download", "Remote execution upload time",
    "remote action cache check", "local action execution", "MerkleTree.build(ActionInput)",
    "subprocess.run", "sandbox.createFileSystem", "sandbox.delete",
)


def profile(path):
    """Bazel's phases (analysis; execution = "Build artifacts" to "Complete
    build"), the critical path, the sums of the spawn-level events, and
    each action's own time, from one --profile JSON."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    marks, sums, crit, actions = {}, {}, [], {}
    for e in events:
        cat, name = e.get("cat", ""), e.get("name", "")
        if cat == "build phase marker":
            marks[name] = e.get("ts", 0) / 1e6
        if e.get("ph") != "X":
            continue
        dur = e.get("dur", 0) / 1000.0
        if cat == "critical path component":
            if dur >= 1:
                crit.append([name, round(dur, 1)])
        elif cat == "action processing":
            actions[name] = round(actions.get(name, 0) + dur, 1)
        elif cat in KEY_EVENTS or name in KEY_EVENTS:
            key = f"{cat}: {name}"
            n, t = sums.get(key, (0, 0.0))
            sums[key] = (n + 1, t + dur)

    def span(a, b):
        return round(marks[b] - marks[a], 3) if a in marks and b in marks else None

    return {
        "analysis_s": span("Load and analyze dependencies", "Prepare for build"),
        "exec_phase_s": span("Build artifacts", "Complete build"),
        "critical_path": crit,
        "sums_ms": {k: {"n": n, "total_ms": round(t, 1)} for k, (n, t) in sorted(sums.items())},
        "actions_ms": dict(sorted(actions.items())),
    }


def _varint(b, i):
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def _fields(b):
    i, out = 0, {}
    while i < len(b):
        k, i = _varint(b, i)
        f, t = k >> 3, k & 7
        if t == 0:
            v, i = _varint(b, i)
        elif t == 2:
            n, i = _varint(b, i)
            v, i = b[i : i + n], i + n
        elif t == 1:
            v, i = b[i : i + 8], i + 8
        elif t == 5:
            v, i = b[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {t}")
        out.setdefault(f, v)
    return out


def grpc_log(path):
    """Bazel's --experimental_remote_grpc_log (length-delimited LogEntry:
    1 RequestMetadata (2 action_id), 3 method_name, 5 start_time, 6
    end_time; Bazel's timestamps have millisecond resolution): each call
    as (method, action_id, start_s, ms)."""
    b, i, calls = open(path, "rb").read(), 0, []
    while i < len(b):
        n, i = _varint(b, i)
        e, i = _fields(b[i : i + n]), i + n

        def ts(v):
            t = _fields(v)
            return t.get(1, 0) + t.get(2, 0) / 1e9

        md = _fields(e.get(1, b""))
        aid = md.get(2, b"")
        calls.append((e[3].decode().rsplit("/", 1)[-1], aid.decode() if isinstance(aid, bytes) else "",
                      ts(e[5]), (ts(e[6]) - ts(e[5])) * 1000.0))
    return calls


def join(grpc_path, timelines_path):
    """One remote build's client calls (Bazel's gRPC log) next to the
    server's metadata of the same actions: sums over all actions."""
    calls = grpc_log(grpc_path)
    per = {}
    for m, _, _, ms in calls:
        n, t = per.get(m, (0, 0.0))
        per[m] = (n + 1, t + ms)
    server = {}
    execute = {a[:12]: ms for m, a, _, ms in calls if m == "Execute"}
    gap = []
    for line in open(timelines_path):
        r = json.loads(line)
        if r.get("action") == "ALL":
            server = {k: v for k, v in r.items() if k.endswith("_ms")}
        elif r.get("total_ms") is not None and r["digest"] in execute:
            gap.append(execute[r["digest"]] - r["total_ms"])
    return {
        "client_calls": {m: {"n": n, "total_ms": round(t, 1)} for m, (n, t) in sorted(per.items())},
        "server_ms": server,
        "execute_minus_server_ms": round(sum(gap), 1) if gap else None,
    }


def table(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    builds = [r for r in rows if r.get("kind") == "build" and r.get("round", 1) > 0]
    starts = [r for r in rows if r.get("kind") == "server_start"]
    configs = list(dict.fromkeys(r["config"] for r in builds))
    med = {}
    for c in configs:
        walls = [r["wall_s"] for r in builds if r["config"] == c]
        el = [r["elapsed_s"] for r in builds if r["config"] == c and r.get("elapsed_s")]
        cp = [r["critical_path_s"] for r in builds if r["config"] == c and r.get("critical_path_s")]
        ex = [r["exec_phase_s"] for r in builds if r["config"] == c and r.get("exec_phase_s")]
        st = [r["wall_s"] for r in starts if r["config"] == c]
        med[c] = (statistics.median(walls), statistics.median(el) if el else None,
                  statistics.median(cp) if cp else None, st[0] if st else None, len(walls),
                  statistics.median(ex) if ex else None)
    ours = med.get("ours")
    print("| build of //... (cold, median of N) | wall | execution phase | critical path | Bazel elapsed | server start (not counted) | this ÷ ours, wall (execution phase) |")
    print("|---|---|---|---|---|---|---|")
    f = lambda v: f"{v:.2f} s" if v is not None else "–"
    for c in configs:
        w, el, cp, st, n, ex = med[c]
        ratio = "–"
        if ours and c != "ours":
            ratio = f"{w / ours[0]:.2f}×"
            if ex and ours[5]:
                ratio += f" ({ex / ours[5]:.2f}×)"
        print(f"| {c} (N={n}) | {f(w)} | {f(ex)} | {f(cp)} | {f(el)} | {f(st)} | {ratio} |")
    local = med.get("bazel-local")
    if ours and local:
        met = "met" if ours[0] < local[0] else "NOT met"
        print(f"\nTarget, ours faster than Bazel local: {met} (wall {ours[0]:.2f} s vs {local[0]:.2f} s"
              + (f"; execution phase {ours[5]:.2f} s vs {local[5]:.2f} s" if ours[5] and local[5] else "") + ")")
    remote = [c for c in configs if any("client_calls" in r for r in builds if r["config"] == c)]
    if remote:
        print()
        print("| where the time of the 15 remote actions went (sums over the actions, median of N builds, ms) | "
              + " | ".join(remote) + " |")
        print("|---" * (len(remote) + 1) + "|")

        def col(c, get):
            vals = [v for v in (get(r) for r in builds if r["config"] == c) if v is not None]
            return f"{statistics.median(vals):.0f}" if vals else "–"

        lines = [
            ("Bazel: FindMissingBlobs calls", lambda r: r["client_calls"].get("FindMissingBlobs", {}).get("total_ms", 0)),
            ("Bazel: ByteStream Write calls", lambda r: r["client_calls"].get("Write", {}).get("total_ms", 0)),
            ("Bazel: Execute calls", lambda r: r["client_calls"].get("Execute", {}).get("total_ms")),
            ("Bazel: ByteStream Read calls (outputs)", lambda r: r["client_calls"].get("Read", {}).get("total_ms", 0)),
            ("server: queued → worker_completed", lambda r: r["server_ms"].get("total_ms")),
            ("server: queue", lambda r: r["server_ms"].get("queue_ms")),
            ("server: worker start → input fetch", lambda r: r["server_ms"].get("prep_ms")),
            ("server: input fetch", lambda r: r["server_ms"].get("inputs_ms")),
            ("server: execution (sandbox and command)", lambda r: r["server_ms"].get("run_ms")),
            ("  of which spawn → exec (ours: ResourceUsage)", lambda r: r["server_ms"].get("spawn_ms")),
            ("  of which the command, exec → exit (ours)", lambda r: r["server_ms"].get("command_ms")),
            ("server: output upload", lambda r: r["server_ms"].get("outputs_ms")),
            ("Execute calls minus server time (RPC, stream, scheduling)", lambda r: r.get("execute_minus_server_ms")),
        ]
        for label, get in lines:
            print(f"| {label} | " + " | ".join(col(c, lambda r, g=get: g(r) if "client_calls" in r else None) for c in remote) + " |")

    ex = [r for r in rows if str(r.get("figure", "")).startswith("execute_")]
    if ex:
        names = {"execute_true": "Execute `/bin/true`, no cache",
                 "execute_exec200": "Execute `sh`: 200 × `/bin/true`",
                 "execute_gcc": "Execute `gcc -c` of an empty main"}
        print()
        print("| figure (p50, client wall / server execution; p99 wall) | server | ms | this ÷ ours (wall) |")
        print("|---|---|---|---|")
        for r in ex:
            ours = next((o["p50_ms"] for o in ex if o["server"] == "ours" and o["figure"] == r["figure"]), None)
            ratio = f"{r['p50_ms'] / ours:.2f}×" if ours else "–"
            run = f" / {r['run_p50_ms']:.2f}" if r.get("run_p50_ms") is not None else ""
            print(f"| {names.get(r['figure'], r['figure'])} | {r['server']} | {r['p50_ms']:.2f}{run}; p99 {r['p99_ms']:.2f} | {ratio} |")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "outputs":
        json.dump(outputs(args[0]), sys.stdout, indent=1, sort_keys=True)
    elif cmd == "same":
        ignore = args[args.index("--except") + 1:] if "--except" in args else []
        files = args[: args.index("--except")] if "--except" in args else args
        sys.exit(same(files[0], files[1:], ignore))
    elif cmd == "build":
        print(json.dumps(build(args[0])))
    elif cmd == "profile":
        print(json.dumps(profile(args[0])))
    elif cmd == "join":
        print(json.dumps(join(args[0], args[1])))
    elif cmd == "table":
        table(args[0])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
