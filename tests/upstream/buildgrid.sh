#!/usr/bin/env bash
# A real third-party REAPI server for the upstream tests: BuildGrid (from
# PyPI, pinned in requirements.txt beside this script) run as a cache-only
# server (CAS + ByteStream + ActionCache + Capabilities, no execution, no
# database) on loopback.
#
#   buildgrid.sh install          create the venv once (cached), print its path
#   buildgrid.sh python           print the venv's python (installs if needed)
#   buildgrid.sh start PORT DIR   write DIR/bgd.yml, start bgd on 127.0.0.1:PORT,
#                                 PID in DIR/pid, log in DIR/bgd.log; waits
#                                 for GetCapabilities, then prints READY
#   buildgrid.sh stop DIR         SIGTERM by DIR/pid (SIGKILL after 10 s);
#                                 prints STOPPED; a no-op if already stopped
#   buildgrid.sh kill DIR         SIGKILL by DIR/pid at once (a crash); DIR
#                                 (disk CAS, config) stays for a restart
#
# Environment:
#   BUILDGRID_VENV      venv path (default /var/cache/nativelink-lre-tests/buildgrid-venv)
#   BUILDGRID_PYTHON    python 3.11 to build the venv with (default: Debian's
#                       /usr/bin/python3, else a pyenv 3.11; the pins are cp311)
#   BUILDGRID_STORAGE   disk (default: CAS under DIR/cas-*, survives a restart
#                       of bgd) or memory (an LRU of BUILDGRID_MEMORY_SIZE)
#   BUILDGRID_MEMORY_SIZE  default 512M
#   BUILDGRID_START_TIMEOUT  seconds to wait for READY (default 60)
#   BUILDGRID_TLS_DIR   serve TLS only (no plaintext port) with DIR/server.pem
#                       and DIR/server.key: a directory made by certs.sh. The
#                       readiness poll verifies the server with DIR/ca.pem.
#   BUILDGRID_TLS_CLIENT_CA  with BUILDGRID_TLS_DIR: require a client
#                       certificate signed by this PEM CA file (mutual TLS;
#                       a client without one, or with another CA's, is
#                       refused in the handshake). The readiness poll then
#                       presents BUILDGRID_TLS_DIR/client.pem + client.key.
#
# Clients reach a TLS server at grpcs://127.0.0.1:PORT (or localhost:PORT;
# the certs.sh server cert names both); bg_client.py: --tls-ca DIR/ca.pem
# [--tls-cert DIR/client.pem --tls-key DIR/client.key].
#
# Instances: "" (the empty name) and "upstream", each with its own CAS and
# its own action cache, so a request sent with the wrong instance name misses
# instead of finding the other instance's entries. Any other name gets
# INVALID_ARGUMENT ("Invalid instance name: [x]"). The action caches are
# in-memory LRUs (BuildGrid has no on-disk action cache short of S3/Redis/SQL):
# they are empty after a restart, while a disk CAS keeps its blobs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REQS="$HERE/requirements.txt"
VENV=${BUILDGRID_VENV:-/var/cache/nativelink-lre-tests/buildgrid-venv}

die() { echo "buildgrid.sh: $*" >&2; exit 1; }

reqs_stamp() { sha256sum "$REQS" | cut -d' ' -f1; }

venv_ok() {
    [[ -x "$VENV/bin/python" && -x "$VENV/bin/bgd" && -f "$VENV/.stamp" ]] &&
        [[ "$(cat "$VENV/.stamp")" == "$(reqs_stamp)" ]]
}

pick_python() {
    if [[ -n "${BUILDGRID_PYTHON:-}" ]]; then
        echo "$BUILDGRID_PYTHON"; return
    fi
    local cands=(/usr/bin/python3)
    local p
    for p in /root/.pyenv/versions/3.11*/bin/python3; do
        [[ -x "$p" ]] && cands+=("$p")
    done
    for p in "${cands[@]}"; do
        [[ -x "$p" ]] || continue
        if "$p" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$p"; return
        fi
    done
    # Debian's python3 without the venv module: bring it in.
    if [[ -x /usr/bin/python3 ]] && command -v apt-get >/dev/null; then
        echo "buildgrid.sh: installing python3-venv" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        if /usr/bin/python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))'; then
            echo /usr/bin/python3; return
        fi
    fi
    die "no python 3.11 with venv/ensurepip found (the pins are cp311 wheels; set BUILDGRID_PYTHON)"
}

cmd_install() {
    if venv_ok; then echo "$VENV"; return; fi
    mkdir -p "$(dirname "$VENV")"
    # One installer at a time; the others wait and reuse its venv. The lock
    # is held by a subshell so that no server started later inherits it.
    (
        flock 9
        if ! venv_ok; then build_venv; fi
    ) 9>"$VENV.lock"
    echo "$VENV"
}

build_venv() {
    local py
    py=$(pick_python)
    # Built in place; the stamp, written last, marks it complete, so a venv
    # left half-made by an interrupted install is rebuilt next time.
    rm -rf "$VENV"
    echo "buildgrid.sh: creating $VENV with $py ($("$py" --version 2>&1))" >&2
    "$py" -m venv "$VENV"
    # Every pin is a wheel with its hash: nothing is built, nothing unpinned
    # comes in. The venv's own pip (23.x on Debian 12) is new enough.
    "$VENV/bin/pip" install --quiet --no-deps --require-hashes --only-binary :all: \
        --no-cache-dir -r "$REQS" >&2
    "$VENV/bin/python" -c 'import buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2_grpc, buildgrid._protos.google.bytestream.bytestream_pb2_grpc' \
        || die "the installed buildgrid lacks its generated stubs"
    "$VENV/bin/bgd" --help >/dev/null || die "bgd does not run from $VENV"
    reqs_stamp >"$VENV/.stamp"
}

write_config() { # DIR PORT
    local dir=$1 port=$2 storage=${BUILDGRID_STORAGE:-disk}
    local s_default s_upstream
    case "$storage" in
    disk)
        mkdir -p "$dir/cas-default" "$dir/cas-upstream"
        s_default="!disk-storage &default-cas
    path: $dir/cas-default"
        s_upstream="!disk-storage &upstream-cas
    path: $dir/cas-upstream"
        ;;
    memory)
        s_default="!lru-storage &default-cas
    size: ${BUILDGRID_MEMORY_SIZE:-512M}"
        s_upstream="!lru-storage &upstream-cas
    size: ${BUILDGRID_MEMORY_SIZE:-512M}"
        ;;
    *) die "BUILDGRID_STORAGE must be disk or memory, not $storage" ;;
    esac
    # TLS: insecure-mode must be false, or bgd ignores the credentials and
    # serves plaintext. tls-client-certs (the CA file to check client certs
    # against) turns on require_client_auth; without it no client cert is
    # asked for at all.
    local channel="    insecure-mode: true"
    if [[ -n "${BUILDGRID_TLS_DIR:-}" ]]; then
        channel="    insecure-mode: false
    credentials:
      tls-server-key: \"$BUILDGRID_TLS_DIR/server.key\"
      tls-server-cert: \"$BUILDGRID_TLS_DIR/server.pem\""
        if [[ -n "${BUILDGRID_TLS_CLIENT_CA:-}" ]]; then
            channel+="
      tls-client-certs: \"$BUILDGRID_TLS_CLIENT_CA\""
        fi
    fi
    cat >"$dir/bgd.yml" <<EOF
# Written by tests/upstream/buildgrid.sh: a cache-only BuildGrid.
description: nativelink-lre upstream test server
server:
  - !channel
    address: "127.0.0.1:$port"
$channel
# gRPC worker threads (BuildGrid's minimum is 5); a 2-core machine.
thread-pool-size: 8
# grpcio turns SO_REUSEPORT on by default: a second server could then bind
# the same port silently. Off, a taken port fails the start.
grpc-server-options:
  grpc.so_reuseport: 0
storages:
  - $s_default
  - $s_upstream
caches:
  - !lru-action-cache &default-ac
    storage: *default-cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: true
  - !lru-action-cache &upstream-ac
    storage: *upstream-cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: true
instances:
  - name: ""
    description: the empty instance name
    services:
      - !action-cache
        cache: *default-ac
      - !cas
        storage: *default-cas
      - !bytestream
        storage: *default-cas
  - name: upstream
    description: a named instance, separate CAS and action cache
    services:
      - !action-cache
        cache: *upstream-ac
      - !cas
        storage: *upstream-cas
      - !bytestream
        storage: *upstream-cas
EOF
}

# Is PID a live bgd (guards against a stale pid file naming a reused PID)?
is_bgd() {
    local pid=$1
    [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' </proc/"$pid"/cmdline | grep -q 'bgd server start'
}

cmd_start() {
    [[ $# -eq 2 ]] || die "usage: buildgrid.sh start PORT DIR"
    local port=$1 dir=$2
    [[ "$port" =~ ^[0-9]+$ ]] || die "bad port $port"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ -f "$dir/pid" ]] && is_bgd "$(cat "$dir/pid")"; then
        die "a bgd already runs from $dir (pid $(cat "$dir/pid"))"
    fi
    cmd_install >/dev/null
    local py="$VENV/bin/python"
    # Refuse a port someone already answers on: READY must mean *our* bgd.
    if "$py" -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(0 if s.connect_ex(('127.0.0.1', $port)) else 1)"; then :; else
        die "127.0.0.1:$port is already in use"
    fi
    # The readiness poll's client: plaintext, TLS, or TLS with a client cert.
    local target="127.0.0.1:$port" poll=()
    if [[ -n "${BUILDGRID_TLS_DIR:-}" ]]; then
        [[ -d "$BUILDGRID_TLS_DIR" ]] || die "BUILDGRID_TLS_DIR $BUILDGRID_TLS_DIR is not a directory"
        BUILDGRID_TLS_DIR=$(cd "$BUILDGRID_TLS_DIR" && pwd)
        local f
        for f in server.pem server.key ca.pem; do
            [[ -r "$BUILDGRID_TLS_DIR/$f" ]] || die "no $BUILDGRID_TLS_DIR/$f (make the directory with certs.sh)"
        done
        target="grpcs://127.0.0.1:$port"
        poll=(--tls-ca "$BUILDGRID_TLS_DIR/ca.pem")
        if [[ -n "${BUILDGRID_TLS_CLIENT_CA:-}" ]]; then
            [[ -r "$BUILDGRID_TLS_CLIENT_CA" ]] || die "cannot read BUILDGRID_TLS_CLIENT_CA $BUILDGRID_TLS_CLIENT_CA"
            BUILDGRID_TLS_CLIENT_CA=$(cd "$(dirname "$BUILDGRID_TLS_CLIENT_CA")" && pwd)/$(basename "$BUILDGRID_TLS_CLIENT_CA")
            for f in client.pem client.key; do
                [[ -r "$BUILDGRID_TLS_DIR/$f" ]] || die "no $BUILDGRID_TLS_DIR/$f for the readiness poll"
            done
            poll+=(--tls-cert "$BUILDGRID_TLS_DIR/client.pem" --tls-key "$BUILDGRID_TLS_DIR/client.key")
        fi
    elif [[ -n "${BUILDGRID_TLS_CLIENT_CA:-}" ]]; then
        die "BUILDGRID_TLS_CLIENT_CA needs BUILDGRID_TLS_DIR"
    fi
    write_config "$dir" "$port"
    # (No `bgd server lint`: it costs as much as a start-up, ~5 s, and start
    # validates the same schema, failing into the log shown below.)
    local t0=$SECONDS
    # setsid: its own session, so a terminal's ^C or the caller's process
    # group signals don't reach it; only stop/kill (by PID) do.
    setsid "$VENV/bin/bgd" server start "$dir/bgd.yml" </dev/null >"$dir/bgd.log" 2>&1 &
    local pid=$!
    echo "$pid" >"$dir/pid"
    local timeout=${BUILDGRID_START_TIMEOUT:-60}
    local deadline=$((SECONDS + timeout))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$dir/bgd.log" >&2
            rm -f "$dir/pid"
            die "bgd exited during start-up (log: $dir/bgd.log)"
        fi
        if "$py" "$HERE/bg_client.py" --timeout 2 "${poll[@]}" wait-ready "$target" "" 1 2>/dev/null &&
            "$py" "$HERE/bg_client.py" --timeout 2 "${poll[@]}" wait-ready "$target" upstream 1 2>/dev/null; then
            break
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$dir/bgd.log" >&2
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$dir/pid"
            die "bgd did not answer GetCapabilities within ${timeout}s"
        fi
        sleep 0.2
    done
    echo "buildgrid.sh: bgd pid $pid on $target ready in $((SECONDS - t0))s" >&2
    echo READY
}

stop_with() { # SIGNAL DIR
    local sig=$1 dir=$2
    if [[ ! -f "$dir/pid" ]]; then
        # Already stopped (or killed): cleanup paths may call this twice.
        echo "buildgrid.sh: no $dir/pid, nothing to stop" >&2
        echo STOPPED
        return 0
    fi
    local pid
    pid=$(cat "$dir/pid")
    if ! is_bgd "$pid"; then
        rm -f "$dir/pid"
        echo "buildgrid.sh: pid $pid is not running (already stopped)" >&2
        return 0
    fi
    kill "-$sig" "$pid"
    for _ in $(seq 1 100); do
        is_bgd "$pid" || break
        # A zombie child of this shell counts as gone.
        [[ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" == Z ]] && break
        sleep 0.1
    done
    if is_bgd "$pid" && [[ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" != Z ]]; then
        echo "buildgrid.sh: pid $pid ignored SIG$sig for 10 s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid"
    echo STOPPED
}

case "${1:-}" in
install) shift; cmd_install "$@" ;;
python) cmd_install >/dev/null; echo "$VENV/bin/python" ;;
start) shift; cmd_start "$@" ;;
stop) [[ $# -eq 2 ]] || die "usage: buildgrid.sh stop DIR"; stop_with TERM "$2" ;;
kill) [[ $# -eq 2 ]] || die "usage: buildgrid.sh kill DIR"; stop_with KILL "$2" ;;
*) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2 ;;
esac
