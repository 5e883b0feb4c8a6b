#!/usr/bin/env bash
# Self-check of the upstream test harness: bg_client.py against BuildGrid
# (both instances) and against our own daemon, plus what a client sees when
# BuildGrid is killed; BuildGrid over TLS and mutual TLS with certs.sh's
# certificates; recorder.py's log of request metadata. Bounded: a few
# servers, a few dozen small RPCs, one 64 MiB upload; about 30 s once the
# venv exists.
#
#   tests/upstream/selfcheck.sh        (from anywhere; needs root for our daemon)
#
# Prints `N passed, N failed` at the end and exits non-zero on a failure.
#
# `cond && ok ... || bad ...` is intended below: ok never fails.
# shellcheck disable=SC2015
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
check_err() { # like check, and shows the last line of stderr on success
    local what=$1 want=$2; shift 2
    local err rc
    err=$("$@" 2>&1 >/dev/null); rc=$?
    if [[ $rc == "$want" ]]; then ok "$what (rc $rc): $(tail -n 1 <<<"$err")"; else bad "$what: rc $rc, want $want: $err"; fi
}
secs() { echo "$(( ($(date +%s%N) - $1) / 1000000 )) ms"; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
field() { "$PY" -c 'import json,sys; d=json.loads(sys.stdin.read()); print(eval("d" + sys.argv[1]))' "$1"; }

WORK=$(mktemp -d /tmp/upstream-selfcheck.XXXXXX)
LRE_PID='' REC_PID=''
cleanup() {
    "$BGSH" stop "$WORK/bg" >/dev/null 2>&1
    "$BGSH" stop "$WORK/bgtls" >/dev/null 2>&1
    if [[ -n "$REC_PID" ]]; then kill "$REC_PID" 2>/dev/null; wait "$REC_PID" 2>/dev/null; fi
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

# --- BuildGrid over TLS and mutual TLS ---------------------------------------
CERTS=$WORK/certs
if "$HERE/certs.sh" "$CERTS" >/dev/null; then ok "certs.sh made a CA, server, client and other CA"; else bad "certs.sh"; fi
keys=$(head -qn 1 "$CERTS"/*.key | sort -u)
[[ "$keys" == "-----BEGIN PRIVATE KEY-----" ]] && ok "certs.sh: every key is PKCS#8" || bad "certs.sh keys: $keys"
sanok=$(openssl x509 -in "$CERTS/server.pem" -noout -ext subjectAltName,extendedKeyUsage,basicConstraints 2>&1 | tr -s ' \n' ' ')
[[ "$sanok" == *"DNS:localhost, IP Address:127.0.0.1"* && "$sanok" == *"TLS Web Server Authentication"* && "$sanok" == *"CA:FALSE"* ]] &&
    ok "certs.sh: server.pem has the SAN, serverAuth, CA:FALSE" || bad "server.pem extensions: $sanok"
TLSPORT=$(free_port)
TA=grpcs://127.0.0.1:$TLSPORT
MTLS=(--tls-ca "$CERTS/ca.pem" --tls-cert "$CERTS/client.pem" --tls-key "$CERTS/client.key")
t0=$(date +%s%N)
if [[ "$(BUILDGRID_TLS_DIR=$CERTS BUILDGRID_TLS_CLIENT_CA=$CERTS/ca.pem "$BGSH" start "$TLSPORT" "$WORK/bgtls" 2>/dev/null)" == READY ]]; then
    ok "BuildGrid with mutual TLS started on $TA in $(secs "$t0")"
    check "mTLS: capabilities with CA + client cert" 0 client "${MTLS[@]}" capabilities "$TA" ""
    check "mTLS: grpcs://localhost:PORT" 0 client "${MTLS[@]}" capabilities "grpcs://localhost:$TLSPORT" upstream
    check_err "mTLS: no client cert is refused" 3 client --tls-ca "$CERTS/ca.pem" capabilities "$TA" ""
    check_err "mTLS: a client cert of another CA is refused" 3 client --tls-ca "$CERTS/ca.pem" \
        --tls-cert "$CERTS/other-client.pem" --tls-key "$CERTS/other-client.key" capabilities "$TA" ""
    check_err "mTLS: trusting the wrong CA, the client refuses" 3 client --tls-ca "$CERTS/other-ca.pem" \
        --tls-cert "$CERTS/client.pem" --tls-key "$CERTS/client.key" capabilities "$TA" ""
    check_err "mTLS: a plaintext client is refused" 3 client capabilities "127.0.0.1:$TLSPORT" ""
    seed=$(client "${MTLS[@]}" seed --salt sc-tls "$TA" upstream) || bad "seed over mTLS"
    act=$(head -1 <<<"$seed")
    out=$(sed -n 2p <<<"$seed" | field '["outputs"]["out.txt"]')
    check "mTLS: get-action of the seeded action" 0 client "${MTLS[@]}" get-action "$TA" upstream "$act"
    check "mTLS: read (ByteStream)" 0 client "${MTLS[@]}" read "$TA" upstream "$out"
    check "mTLS: read (BatchReadBlobs)" 0 client "${MTLS[@]}" read --batch "$TA" upstream "$out"
    "$BGSH" stop "$WORK/bgtls" >/dev/null 2>&1 || bad "stop the mTLS BuildGrid"
else
    bad "BuildGrid with mutual TLS did not start: $(tail -n 5 "$WORK/bgtls/bgd.log" 2>/dev/null)"
fi
if [[ "$(BUILDGRID_TLS_DIR=$CERTS "$BGSH" start "$TLSPORT" "$WORK/bgtls" 2>/dev/null)" == READY ]]; then
    ok "BuildGrid with TLS (no client certs) started"
    check "TLS: capabilities with the CA, no client cert" 0 client --tls-ca "$CERTS/ca.pem" capabilities "$TA" upstream
    check_err "TLS: trusting the wrong CA, the client refuses" 3 client --tls-ca "$CERTS/other-ca.pem" capabilities "$TA" ""
    check_err "TLS: a plaintext client is refused" 3 client capabilities "127.0.0.1:$TLSPORT" ""
    "$BGSH" stop "$WORK/bgtls" >/dev/null 2>&1 || bad "stop the TLS BuildGrid"
else
    bad "BuildGrid with TLS did not start: $(tail -n 5 "$WORK/bgtls/bgd.log" 2>/dev/null)"
fi

# --- recorder.py ----------------------------------------------------------
start_recorder() { # NAME ARGS... : runs recorder.py ARGS 0 WORK/NAME.log; sets REC_PID, REC_PORT
    local name=$1; shift
    "$PY" "$HERE/recorder.py" "$@" 0 "$WORK/$name.log" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    REC_PID=$!
    REC_PORT=
    local _ word
    for _ in $(seq 1 100); do
        if read -r word REC_PORT <"$WORK/$name.out" 2>/dev/null && [[ "$word" == READY ]]; then return 0; fi
        kill -0 "$REC_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill "$REC_PID" 2>/dev/null; wait "$REC_PID" 2>/dev/null; REC_PID=''
    return 1
}
stop_recorder() { # DESCRIPTION: SIGTERM; it must exit 0, within 5 s
    local rc t0
    t0=$(date +%s%N)
    kill "$REC_PID"; wait "$REC_PID"; rc=$?; REC_PID=''
    if [[ $rc == 0 && $(( ($(date +%s%N) - t0) / 1000000 )) -lt 5000 ]]; then
        ok "$1 (exit 0 in $(secs "$t0"))"
    else
        bad "$1: exit $rc after $(secs "$t0")"
    fi
}
logcheck() { # LOGFILE PYTHON-EXPR over `lines` (the parsed JSON lines)
    "$PY" -c 'import json,sys; lines=[json.loads(l) for l in open(sys.argv[1])]; ok=eval("(" + sys.argv[2] + ")"); print(lines if not ok else ""); sys.exit(0 if ok else 1)' "$1" "$2"
}
if start_recorder rec; then
    ok "recorder.py started on 127.0.0.1:$REC_PORT"
    R=127.0.0.1:$REC_PORT
    H=(--header "authorization=Bearer selfcheck-token" --header "X-Extra=one")
    check "recorder: capabilities" 0 client "${H[@]}" capabilities "$R" upstream
    check "recorder: get-action is NOT_FOUND" 2 client "${H[@]}" get-action "$R" upstream "$(printf 'a%.0s' {1..64})/5"
    missing=$(client find-missing "$R" "" "$(printf 'a%.0s' {1..64})/5" "$(printf 'b%.0s' {1..64})/7" | wc -l)
    [[ "$missing" == 2 ]] && ok "recorder: find-missing says all are missing" || bad "recorder find-missing: $missing"
    check "recorder: BatchReadBlobs is NOT_FOUND" 2 client read --batch "$R" "" "$(printf 'a%.0s' {1..64})/5"
    check "recorder: ByteStream is UNIMPLEMENTED" 1 client read "$R" "" "$(printf 'a%.0s' {1..64})/5"
    check_err "recorder: a TLS client to a plaintext server" 3 client --tls-ca "$CERTS/ca.pem" capabilities "grpcs://$R" ""
    check "recorder: the log has one line per call, with the headers" 0 logcheck "$WORK/rec.log" '
        len(lines) == 5
        and [l["method"].rsplit("/", 1)[1] for l in lines] == ["GetCapabilities", "GetActionResult", "FindMissingBlobs", "BatchReadBlobs", "Read"]
        and all(l["metadata"]["authorization"] == "Bearer selfcheck-token" and l["metadata"]["x-extra"] == "one" for l in lines[:2])
        and all("authorization" not in l["metadata"] for l in lines[2:])
        and [l["instance_name"] for l in lines] == ["upstream", "upstream", "", "", None]
        and lines[1]["method"] == "/build.bazel.remote.execution.v2.ActionCache/GetActionResult"
        and lines[1]["request"]["action_digest"]["size_bytes"] == "5"'
    stop_recorder "recorder: SIGTERM stops it"
else
    bad "recorder.py did not start: $(cat "$WORK/rec.err")"
fi
if start_recorder rectls --tls-dir "$CERTS" --tls-client-ca "$CERTS/ca.pem"; then
    R=grpcs://localhost:$REC_PORT
    check "recorder over mTLS: get-action is NOT_FOUND" 2 client "${MTLS[@]}" --header "authorization=Bearer tls-token" get-action "$R" "" "$(printf 'a%.0s' {1..64})/5"
    check_err "recorder over mTLS: no client cert is refused" 3 client --tls-ca "$CERTS/ca.pem" get-action "$R" "" "$(printf 'a%.0s' {1..64})/5"
    check "recorder over mTLS: logged the header, not the refused call" 0 logcheck "$WORK/rectls.log" '
        len(lines) == 1 and lines[0]["metadata"]["authorization"] == "Bearer tls-token"'
    stop_recorder "recorder over mTLS: SIGTERM stops it"
else
    bad "recorder.py --tls-dir did not start: $(cat "$WORK/rectls.err")"
fi

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
