#!/usr/bin/env python3
"""Helpers of benches/bazel.sh (plain Python 3, no packages):

    bazel_bench.py outputs OUTPUT_BASE            # {path: sha256} of bazel-bin files, JSON
    bazel_bench.py same REF.json OTHER.json... [--except PATH...]  # exit 1 unless all equal
    bazel_bench.py build LOG                      # elapsed, critical path, process summary
    bazel_bench.py profile PROFILE.json[.gz]      # where the time of one build went, JSON
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
    ex = [r for r in rows if r.get("figure") == "execute_true"]
    if ex:
        ours = next((r["p50_ms"] for r in ex if r["server"] == "ours"), None)
        print()
        print("| Execute `/bin/true`, no cache (p50 / p99) | ms | this ÷ ours |")
        print("|---|---|---|")
        for r in ex:
            ratio = f"{r['p50_ms'] / ours:.2f}×" if ours else "–"
            print(f"| {r['server']} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {ratio} |")


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
    elif cmd == "table":
        table(args[0])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
