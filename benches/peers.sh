#!/usr/bin/env bash
# The cache figures of issue 17 for our daemon and its peers, in one run,
# with one client (benches/peers.py), all over loopback TCP:
#
#   benches/peers.sh [OUT.jsonl]
#
# - ours: the release daemon ($LRE_BENCH_DAEMON, default target/release/
#   nativelink-lre; built if missing), state on tmpfs (/dev/shm), TCP only;
# - NativeLink 1.6.6 (shared/peers/nativelink, cache-only config: memory CAS
#   and AC), stock and with NL_NODELAY=1 (TCP_NODELAY shim), when
#   NATIVELINK_BIN is set (e.g. /var/tmp/nl-bin/nativelink);
# - BuildGrid 0.4.4 (tests/upstream/buildgrid.sh, memory storage), when its
#   venv is installed (buildgrid.sh install; .ci/run does it).
# Every peer it cannot run is named on stderr as SKIPPED, loudly.
# Each server gets the same client run (peers.py --rounds $ROUNDS, default
# 3); the JSON lines go to OUT.jsonl (default peers.jsonl in a temporary
# directory) and a table with the ratios to each peer is printed.
# Nothing is asserted on timings.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=$(mktemp -d /dev/shm/lre-peers.XXXXXX)
out=${1:-$work/peers.jsonl}
rounds=${ROUNDS:-3}
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "${NATIVELINK_BIN:-}" ] && NL_BIN=$NATIVELINK_BIN "$nl_up" stop "$work/nl" >/dev/null 2>&1 || true
    "$repo/tests/upstream/buildgrid.sh" stop "$work/bg" >/dev/null 2>&1 || true
    rm -rf "$work/state" "$work/nl" "$work/bg" "$work/lre.sock" "$work/lre.toml"
    # Keep the figures when they were written inside the scratch directory.
    case "$out" in "$work"/*) echo "figures kept in $out" >&2 ;; *) rm -rf "$work" ;; esac
}
trap cleanup EXIT
: >"$out"
nl_up=${NL_UP:-/work/shared/peers/nativelink/nl_up.sh}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# The client runs in BuildGrid's venv (grpcio + BuildGrid's REAPI stubs).
py=$("$repo/tests/upstream/buildgrid.sh" python)

client() { # NAME ADDRESS [--execute]
    echo "measuring $1 at $2" >&2
    "$py" "$here/peers.py" "$1" "$2" --rounds "$rounds" "${@:3}" | tee -a "$out"
}

# --- ours
bin=${LRE_BENCH_DAEMON:-$repo/target/release/nativelink-lre}
if [ ! -x "$bin" ]; then
    (cd "$repo" && CARGO_INCREMENTAL=0 cargo build --release -j2 --bin nativelink-lre >&2)
fi
port=$(free_port)
mkdir -p "$work/state"
cat >"$work/lre.toml" <<EOF
state-dir = "$work/state"
[listen]
unix = "$work/lre.sock"
tcp = ["127.0.0.1:$port"]
EOF
RUST_LOG=warn "$bin" --config "$work/lre.toml" 2>"$work/lre.log" &
pids+=($!)
for _ in $(seq 100); do
    python3 -c "import socket;socket.create_connection(('127.0.0.1',$port),1).close()" 2>/dev/null && break
    sleep 0.1
done
sleep 1 # the store index is built in the background
client ours "127.0.0.1:$port" --execute

# --- NativeLink, stock and with TCP_NODELAY
if [ -n "${NATIVELINK_BIN:-}" ] && [ -x "$NATIVELINK_BIN" ]; then
    for nodelay in 0 1; do
        nport=$(free_port)
        NL_BIN=$NATIVELINK_BIN NL_NODELAY=$nodelay "$nl_up" start cas "$work/nl" "$nport" "$(free_port)" >&2
        name=nativelink-stock
        [ "$nodelay" = 1 ] && name=nativelink-nodelay
        client "$name" "127.0.0.1:$nport"
        NL_BIN=$NATIVELINK_BIN "$nl_up" stop "$work/nl" >&2
    done
else
    echo "SKIPPED: NativeLink (set NATIVELINK_BIN=/var/tmp/nl-bin/nativelink to measure it)" >&2
fi

# --- BuildGrid
if [ -x "${BUILDGRID_VENV:-/var/cache/nativelink-lre-tests/buildgrid-venv}/bin/bgd" ]; then
    bport=$(free_port)
    BUILDGRID_STORAGE=memory "$repo/tests/upstream/buildgrid.sh" start "$bport" "$work/bg" >&2
    client buildgrid "127.0.0.1:$bport"
    "$repo/tests/upstream/buildgrid.sh" stop "$work/bg" >&2
else
    echo "SKIPPED: BuildGrid (no venv; run tests/upstream/buildgrid.sh install)" >&2
fi

# --- the table: p50 of each figure, and ours against each peer
python3 - "$out" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
servers = list(dict.fromkeys(r["server"] for r in rows))
figs = list(dict.fromkeys(r["figure"] for r in rows))
p = {(r["server"], r["figure"]): r["p50_ms"] for r in rows}
print("| figure (p50, ms) | " + " | ".join(servers) + " |")
print("|---" * (len(servers) + 1) + "|")
for f in figs:
    cells = []
    for s in servers:
        v = p.get((s, f))
        if v is None:
            cells.append("–")
        elif s == "ours":
            cells.append(f"{v:.3f}")
        else:
            ours = p.get(("ours", f))
            cells.append(f"{v:.3f} ({v / ours:.1f}× ours)" if ours else f"{v:.3f}")
    print(f"| {f} | " + " | ".join(cells) + " |")
EOF
