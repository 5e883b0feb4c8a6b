#!/usr/bin/env bash
# Issue 17, the execution peers: tests/bazel/workspace `//...` built cold by
# Bazel 4.2.3 in five ways, in ONE run, in alternating rounds, and
# Execute `/bin/true` (no cache) against every executing server:
#
#   benches/bazel.sh [RESULTS_DIR]          # ROUNDS=3 by default; QUICK=1: one round
#   NATIVELINK_BIN=/var/tmp/nl-bin/nativelink benches/bazel.sh
#
# The builds:
#   bazel-local          --spawn_strategy=local (no sandbox)
#   bazel-linux-sandbox  --spawn_strategy=linux-sandbox
#   ours                 every action remote on our daemon: the release binary
#                        ($LRE_BENCH_DAEMON, default target/release/nativelink-lre,
#                        built if missing), run as root (full sandbox), state
#                        directory on ext4 under /var/tmp, loopback TCP
#   nativelink-stock     every action remote on NativeLink 1.6.6's executing
#   nativelink-nodelay   configuration (shared/peers/nativelink, `nl_up.sh start
#                        exec`), stock and with NL_NODELAY=1; only when
#                        NATIVELINK_BIN is set, otherwise SKIPPED (loudly)
# Remote builds use --remote_executor, --spawn_strategy=remote,
# --noremote_local_fallback and --noremote_accept_cached (so every action
# runs; Execute carries skip_cache_lookup). No disk cache anywhere.
#
# Each way has its own workspace copy and output root, and one Bazel
# server kept alive across rounds. The server's start (`bazel info`) is
# timed on its own and not counted. One untimed warm-up build per way
# (external repositories, the C toolchain's autoconfiguration, JIT; it
# also leaves the inputs in the remote CAS, as a user's second build
# would), then ROUNDS rounds: in each, every way, in an order that rotates
# from round to round, runs `bazel clean` (untimed) and `bazel build
# //...` (timed: the client's wall time). Each build must succeed with its
# actions run the way it names, and the outputs of every way must be
# identical (the workspace is deterministic). Each build's --profile is
# summarised (bazel_bench.py profile: execution phase, critical path,
# spawn events); after each remote build, the server's
# ExecutedActionMetadata of its actions (bazel_timelines.py) is put next to
# Bazel's own gRPC log of the build (--experimental_remote_grpc_log).
#
# RESULTS_DIR (default a new /tmp/lre-bazel-results.*) keeps results.jsonl,
# the table (table.md), the build logs and the profiles. Everything else
# (workspace copies, output roots, state directories) is under a
# /var/tmp/lre-bazel.* directory that is removed at the end; the Bazel
# servers and daemons this script started are stopped by pid.
# Nothing is asserted on timings.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in the tree
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
rounds=${ROUNDS:-3}
[ "${QUICK:-0}" = 1 ] && rounds=1
res=${1:-$(mktemp -d /tmp/lre-bazel-results.XXXXXX)}
mkdir -p "$res"
work=$(mktemp -d /var/tmp/lre-bazel.XXXXXX)
chmod 755 "$work"
out=$res/results.jsonl
: >"$out"
nl_up=${NL_UP:-/work/shared/peers/nativelink/nl_up.sh}
bazel=${BAZEL:-bazel}
pids=()
configs=(bazel-local bazel-linux-sandbox ours)
nl_dirs=()

startup() { # CONFIG: Bazel's startup options for that way's server
    echo --nohome_rc "--output_user_root=$work/root-$1" --max_idle_secs=1800
}
bz() { # CONFIG ARGS...: run Bazel in that way's workspace copy
    local c=$1
    shift
    # shellcheck disable=SC2046
    (cd "$work/ws-$c" && "$bazel" $(startup "$c") "$@")
}
cleanup() {
    set +e
    for c in "${configs[@]}"; do
        [ -d "$work/ws-$c" ] && bz "$c" shutdown >/dev/null 2>&1
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    for d in "${nl_dirs[@]}"; do NL_BIN=$NATIVELINK_BIN "$nl_up" stop "$d" >/dev/null 2>&1; done
    rm -rf "$work"
    echo "results in $res" >&2
}
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
now() { date +%s%N; }
secs() { python3 -c "print(round(($2 - $1) / 1e9, 3))"; }
echo "load: $(uptime)" >&2
echo "{\"kind\": \"machine\", \"date\": \"$(date -u +%FT%TZ)\", \"uptime\": \"$(uptime)\", \"nproc\": $(nproc)}" >>"$out"

# The gRPC clients run in BuildGrid's venv (grpcio + BuildGrid's REAPI stubs).
py=$("$repo/tests/upstream/buildgrid.sh" python)

# --- ours: release binary, root, state on ext4 under /var/tmp, TCP
bin=${LRE_BENCH_DAEMON:-$repo/target/release/nativelink-lre}
if [ ! -x "$bin" ]; then
    (cd "$repo" && CARGO_INCREMENTAL=0 cargo build --release -j2 --bin nativelink-lre >&2)
fi
port=$(free_port)
mkdir -p "$work/lre/state"
cat >"$work/lre/config.toml" <<EOF
state-dir = "$work/lre/state"
[listen]
unix = "$work/lre/sock"
tcp = ["127.0.0.1:$port"]
EOF
RUST_LOG=${RUST_LOG:-info} "$bin" --config "$work/lre/config.toml" 2>"$res/lre.log" &
pids+=($!)
for _ in $(seq 100); do
    python3 -c "import socket;socket.create_connection(('127.0.0.1',$port),1).close()" 2>/dev/null && break
    sleep 0.1
done
declare -A addr=([ours]="127.0.0.1:$port")

# --- NativeLink's executing configuration, stock and with TCP_NODELAY
if [ -n "${NATIVELINK_BIN:-}" ] && [ -x "$NATIVELINK_BIN" ]; then
    for nodelay in 0 1; do
        name=nativelink-stock
        [ "$nodelay" = 1 ] && name=nativelink-nodelay
        nport=$(free_port)
        nl_dirs+=("$work/$name")
        NL_BIN=$NATIVELINK_BIN NL_NODELAY=$nodelay "$nl_up" start exec "$work/$name" "$nport" "$(free_port)" >&2
        addr[$name]="127.0.0.1:$nport"
        configs+=("$name")
    done
else
    echo "SKIPPED: NativeLink's executing configuration (set NATIVELINK_BIN=/var/tmp/nl-bin/nativelink to measure it)" >&2
    echo '{"kind": "skipped", "what": "nativelink (NATIVELINK_BIN not set)"}' >>"$out"
fi

flags_of() { # CONFIG: the build flags of that way
    echo --nosandbox_debug --incompatible_strict_action_env --symlink_prefix=/ \
        --color=no --curses=no --noshow_progress
    case $1 in
    bazel-local) echo --spawn_strategy=local ;;
    bazel-linux-sandbox) echo --spawn_strategy=linux-sandbox ;;
    *) echo "--remote_executor=grpc://${addr[$1]}" --spawn_strategy=remote \
        --noremote_local_fallback --noremote_accept_cached ;;
    esac
}
runner_of() { # CONFIG: the runner name in Bazel's process summary
    case $1 in bazel-local) echo local ;; bazel-linux-sandbox) echo linux-sandbox ;; *) echo remote ;; esac
}
build() { # CONFIG ROUND: one build, checked; appends its JSON line
    local c=$1 r=$2 log=$res/build-$1-$2.log t0 t1
    # shellcheck disable=SC2046
    t0=$(now)
    local extra=()
    [ -n "${addr[$c]:-}" ] && extra=("--experimental_remote_grpc_log=$res/grpc-$c-$r.log")
    if ! bz "$c" build $(flags_of "$c") "--profile=$res/profile-$c-$r.json" "${extra[@]}" //... >"$log" 2>&1; then
        echo "FAILED: $c round $r (see $log)" >&2
        tail -20 "$log" >&2
        exit 1
    fi
    t1=$(now)
    local info prof
    info=$(python3 "$here/bazel_bench.py" build "$log")
    python3 "$here/bazel_bench.py" profile "$res/profile-$c-$r.json" >"$res/breakdown-$c-$r.json"
    prof=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({k: d[k] for k in ('analysis_s', 'exec_phase_s')}))" "$res/breakdown-$c-$r.json")
    if [ -n "${addr[$c]:-}" ]; then
        # This build's actions as the server saw them, next to Bazel's calls.
        "$py" "$here/bazel_timelines.py" "$work/lre/state" "$c=${addr[$c]}" >"$res/timelines-$c-$r.jsonl"
        prof=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); d.update(json.loads(sys.argv[2])); print(json.dumps(d))" \
            "$prof" "$(python3 "$here/bazel_bench.py" join "$res/grpc-$c-$r.log" "$res/timelines-$c-$r.jsonl")")
    fi
    # Every action ran the way this configuration names, and some did.
    python3 - "$info" "$(runner_of "$c")" "$c" <<'EOF'
import json, sys
info, runner, c = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
other = {k: n for k, n in info["kinds"].items() if k not in (runner, "internal")}
if info["kinds"].get(runner, 0) == 0 or other:
    sys.exit(f"FAILED: {c}: not every action ran as {runner}: {info['summary']!r}")
EOF
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); d.update(json.loads(sys.argv[5])); d.update(kind='build', config=sys.argv[2], round=int(sys.argv[3]), wall_s=float(sys.argv[4])); print(json.dumps(d))" \
        "$info" "$c" "$r" "$(secs "$t0" "$t1")" "$prof" | tee -a "$out" >&2
}

# --- workspace copies and Bazel servers (the start timed on its own)
for c in "${configs[@]}"; do
    cp -a "$repo/tests/bazel/workspace" "$work/ws-$c"
    t0=$(now)
    bz "$c" info release >"$res/info-$c.log" 2>&1
    t1=$(now)
    echo "{\"kind\": \"server_start\", \"config\": \"$c\", \"wall_s\": $(secs "$t0" "$t1")}" | tee -a "$out" >&2
done

# --- the warm-up build of each way, untimed (round 0), then the rounds
for c in "${configs[@]}"; do build "$c" 0; done
n=${#configs[@]}
for r in $(seq "$rounds"); do
    for i in $(seq 0 $((n - 1))); do
        c=${configs[$(((i + r) % n))]}
        bz "$c" clean >/dev/null 2>&1
        build "$c" "$r"
    done
done

# --- the outputs of every way are the same. One exception: gen/inputs.tar
# records its inputs' modes, and those differ by design between a local
# spawn (the checkout's 0644 sources) and a remote one (REAPI inputs are
# materialised read-only, 0444/0555), so it is compared within the local
# ways and within the remote ways only.
for c in "${configs[@]}"; do
    base=$(bz "$c" info output_base 2>/dev/null)
    python3 "$here/bazel_bench.py" outputs "$base" >"$res/outputs-$c.json"
done
python3 "$here/bazel_bench.py" same "$res/outputs-bazel-local.json" "$res/outputs-bazel-linux-sandbox.json"
remote=()
for c in "${configs[@]:3}"; do remote+=("$res/outputs-$c.json"); done
python3 "$here/bazel_bench.py" same "$res/outputs-ours.json" "${remote[@]}"
python3 "$here/bazel_bench.py" same "$res/outputs-bazel-local.json" "$res/outputs-ours.json" --except k8-fastbuild/bin/gen/inputs.tar
echo "outputs identical across: ${configs[*]} ($(python3 -c "import json,sys;print(len(json.load(open(sys.argv[1]))))" "$res/outputs-bazel-local.json") files; gen/inputs.tar within local and within remote ways)" >&2

targets=()
for c in "${configs[@]}"; do
    [ -n "${addr[$c]:-}" ] && targets+=("$c=${addr[$c]}")
done

# --- Execute /bin/true, no cache, on every executing server, same client
"$py" "$here/exec_true.py" --heavy "${targets[@]}" | tee -a "$out" >&2

echo "load: $(uptime)" >&2
python3 "$here/bazel_bench.py" table "$out" | tee "$res/table.md"
