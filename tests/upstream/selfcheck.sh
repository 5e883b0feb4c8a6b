#!/usr/bin/env bash
# Self-check of the upstream test harness: bg_client.py against BuildGrid
# (both instances) and against our own daemon, plus what a client sees when
# BuildGrid is killed. Bounded: two servers, a few dozen small RPCs, one
# 64 MiB upload; about 30 s once the venv exists.
#
#   tests/upstream/selfcheck.sh        (from anywhere; needs root for our daemon)
#
# Prints `N passed, N failed` at the end and exits non-zero on a failure.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BGSH="$HERE/buildgrid.sh"
CLIENT="$HERE/bg_client.py"

pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
check() { # DESCRIPTION WANT_RC CMD...
    local what=$1 want=$2; shift 2
    local out rc
    out=$("$@" 2>&1); rc=$?
    if [[ $rc == "$want" ]]; then ok "$what (rc $rc)"; else bad "$what: rc $rc, want $want: $out"; fi
}
secs() { echo "$(( ($(date +%s%N) - $1) / 1000000 )) ms"; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
field() { "$PY" -c 'import json,sys; d=json.loads(sys.stdin.read()); print(eval("d" + sys.argv[1]))' "$1"; }

WORK=$(mktemp -d /tmp/upstream-selfcheck.XXXXXX)
LRE_PID=
cleanup() {
    "$BGSH" stop "$WORK/bg" >/dev/null 2>&1
    if [[ -n "$LRE_PID" ]]; then kill "$LRE_PID" 2>/dev/null; wait "$LRE_PID" 2>/dev/null; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

t0=$(date +%s%N)
PY=$("$BGSH" python) || { echo "FAIL install"; exit 1; }
echo "venv ready in $(secs "$t0"): $PY"
client() { "$PY" "$CLIENT" "$@"; }

# --- BuildGrid ------------------------------------------------------------
BGPORT=$(free_port)
BG=127.0.0.1:$BGPORT
t0=$(date +%s%N)
if [[ "$("$BGSH" start "$BGPORT" "$WORK/bg" 2>/dev/null)" == READY ]]; then
    ok "BuildGrid started on $BG in $(secs "$t0")"
else
    bad "BuildGrid did not start"; echo "0 passed, 1 failed"; exit 1
fi

for inst in "" upstream; do
    seed=$(client seed --salt "sc-$inst" "$BG" "$inst") || bad "seed '$inst'"
    act=$(head -1 <<<"$seed")
    out=$(sed -n 2p <<<"$seed" | field '["outputs"]["out.txt"]')
    so=$(sed -n 2p <<<"$seed" | field '["stdout"]')
    check "BuildGrid '$inst': get-action" 0 client get-action "$BG" "$inst" "$act"
    got=$(client get-action "$BG" "$inst" "$act" | field '["output_files"][0]["digest"]["hash"]')
    [[ "$got" == "${out%/*}" ]] && ok "BuildGrid '$inst': result names out.txt" || bad "result out.txt $got != $out"
    check "BuildGrid '$inst': read (ByteStream)" 0 client read "$BG" "$inst" "$out"
    check "BuildGrid '$inst': read (BatchReadBlobs)" 0 client read --batch "$BG" "$inst" "$so"
    missing=$(client find-missing "$BG" "$inst" "$out" "$so" "$act")
    [[ -z "$missing" ]] && ok "BuildGrid '$inst': find-missing finds all" || bad "find-missing: $missing"
done
other=$(client seed --salt only-empty "$BG" "" | head -1)
check "BuildGrid: instances are separate (NOT_FOUND)" 2 client get-action "$BG" upstream "$other"
check "BuildGrid: unknown instance is INVALID_ARGUMENT" 1 client get-action "$BG" nope "$other"
check "BuildGrid: missing blob is NOT_FOUND" 2 client read "$BG" "" "$(printf 'e%.0s' {1..64})/3"

# Kill mid-upload, then restart on the same port and DIR.
head -c $((64 << 20)) /dev/urandom >"$WORK/big"
client put "$BG" upstream "$WORK/big" >/dev/null 2>"$WORK/put.err" &
put_pid=$!
sleep 0.4
"$BGSH" kill "$WORK/bg" >/dev/null 2>&1
wait "$put_pid"; rc=$?
[[ $rc == 3 || $rc == 0 ]] && ok "SIGKILL during a 64 MiB put: rc $rc (3 = UNAVAILABLE) $(cat "$WORK/put.err")" || bad "put after kill rc $rc"
check "BuildGrid down: UNAVAILABLE" 3 client get-action "$BG" upstream "$act"
t0=$(date +%s%N)
[[ "$("$BGSH" start "$BGPORT" "$WORK/bg" 2>/dev/null)" == READY ]] && ok "restart in $(secs "$t0")" || bad "restart"
check "after restart: action cache is empty" 2 client get-action "$BG" upstream "$act"
missing=$(client find-missing "$BG" upstream "$out")
[[ -z "$missing" ]] && ok "after restart: disk CAS kept its blobs" || bad "CAS lost $missing"
t0=$(date +%s%N)
"$BGSH" stop "$WORK/bg" >/dev/null 2>&1 && ok "stop in $(secs "$t0")" || bad "stop"
check "stop twice is fine" 0 "$BGSH" stop "$WORK/bg"

# --- our daemon -------------------------------------------------------------
LRE="$ROOT/target/release/nativelink-lre"
if [[ ! -x "$LRE" ]]; then (cd "$ROOT" && cargo build --release) || bad "cargo build --release"; fi
LPORT=$(free_port)
L=127.0.0.1:$LPORT
mkdir -p "$WORK/lre"
cat >"$WORK/lre/config.toml" <<EOF
state-dir = "$WORK/lre/state"
[listen]
unix = "$WORK/lre/sock"
tcp = ["$L"]
EOF
"$LRE" --config "$WORK/lre/config.toml" >"$WORK/lre/log" 2>&1 &
LRE_PID=$!
check "nativelink-lre answers GetCapabilities" 0 client wait-ready "$L" "" 30
seed=$(client seed --salt sc-lre "$L" "") || bad "seed ours"
act=$(head -1 <<<"$seed")
out=$(sed -n 2p <<<"$seed" | field '["outputs"]["out.txt"]')
check "ours: get-action (root is trusted: shared cache)" 0 client get-action "$L" "" "$act"
check "ours: get-action over the unix socket" 0 client get-action "unix:$WORK/lre/sock" "" "$act"
check "ours: read (ByteStream)" 0 client read "$L" "" "$out"
check "ours: read (BatchReadBlobs)" 0 client read --batch "$L" "" "$out"
check "ours: missing action is NOT_FOUND" 2 client get-action "$L" "" "$(printf 'f%.0s' {1..64})/9"
check "ours: 5 MiB output by ByteStream" 0 client seed --salt big --big $((5 << 20)) "$L" ""
kill "$LRE_PID"; wait "$LRE_PID" 2>/dev/null; LRE_PID=

echo "$pass passed, $fail failed"
[[ $fail == 0 ]]
