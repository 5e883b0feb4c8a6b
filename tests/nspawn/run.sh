#!/usr/bin/env bash
# shellcheck disable=SC2015 # `test && pass || fail`: pass always succeeds
# The real-systemd test tier: boots Debian bookworm with systemd as PID 1 in
# systemd-nspawn and checks the shipped units in packaging/systemd/ with the
# real daemon:
#
#   - socket activation on the first connection (unix and TCP), Type=notify
#     READY and STATUS, both sockets passed with their names;
#   - idle exit after idle-timeout while the sockets stay, and reactivation;
#   - the hardening is in force (bounding set, no_new_privs, seccomp, no
#     extra mounts over /proc) and takes nothing the action sandbox needs:
#     the sandbox helper runs the same under the unit's settings as without;
#   - stopping the units leaves no daemon, helper or action process, even one
#     in a delegated sub-cgroup; Restart=on-failure after a crash.
#
# Usage: tests/nspawn/run.sh [BINARY]   (default target/release/nativelink-lre
# or $NATIVELINK_LRE_BIN). Needs root. Installs systemd-container and
# debootstrap if missing; the first run downloads Debian packages (see
# rootfs.sh), later runs are offline. Prints PASS/FAIL lines and exits
# non-zero if anything failed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${1:-${NATIVELINK_LRE_BIN:-$repo/target/release/nativelink-lre}}
units=${NATIVELINK_LRE_UNITS:-$repo/packaging/systemd}
idle=5 # idle-timeout given to the daemon, in seconds
path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

start=$(date +%s.%N)
passes=0
fails=0
pass() { echo "PASS: $*"; passes=$((passes + 1)); }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
note() { echo "NOTE: $*"; }
since() { echo "$1" | awk -v now="$(date +%s.%N)" '{ printf "%.1f", now - $1 }'; }

if [ "$(id -u)" != 0 ]; then
    echo "tests/nspawn/run.sh: must run as root" >&2
    exit 2
fi
if [ ! -x "$bin" ]; then
    echo "tests/nspawn/run.sh: no daemon binary at $bin (cargo build --release?)" >&2
    exit 2
fi
bin=$(readlink -f "$bin")
if ! command -v systemd-nspawn >/dev/null; then
    echo "installing systemd-container" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd-container >&2
fi

t=$(date +%s.%N)
rootfs=$("$here/rootfs.sh") || { echo "FAIL: building the Debian tree"; exit 1; }
echo "TIME: rootfs ready in $(since "$t")s ($rootfs)"

tmp=$(mktemp -d /tmp/nativelink-lre-nspawn.XXXXXX)

# --- Our own cgroups --------------------------------------------------------
# Without systemd on the host, nspawn creates its payload/ and supervisor/
# cgroups below the one it runs in, so run it in a cgroup of our own. On
# these hybrid machines that is one in the v2 hierarchy and one in the
# name=systemd v1 hierarchy.
cgname=nativelink-lre-nspawn-$$
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    cgroots=(/sys/fs/cgroup)
    v2root=/sys/fs/cgroup
else
    cgroots=(/sys/fs/cgroup/unified)
    [ -d /sys/fs/cgroup/systemd ] && cgroots+=(/sys/fs/cgroup/systemd)
    v2root=/sys/fs/cgroup/unified
fi
for root in "${cgroots[@]}"; do
    if ! mkdir "$root/$cgname" || ! echo $$ >"$root/$cgname/cgroup.procs"; then
        echo "FAIL: cannot move the test into $root/$cgname"
        exit 1
    fi
done
payload=$v2root/$cgname/payload

nspawn_pid=
init=
cexec() { nsenter -t "$init" -a env -i PATH="$path" "$@"; }

cleanup() {
    local t _
    t=$(date +%s.%N)
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # SIGRTMIN+4 asks systemd for poweroff.target, bus or no bus.
        [ -n "$init" ] && kill -s RTMIN+4 "$init" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$nspawn_pid" 2>/dev/null; then
            note "container did not power off in 20 s; killing systemd-nspawn. Its console:"
            tail -n 20 "$tmp/console.log"
            cexec ps -eo pid,stat,args 2>/dev/null
            kill -TERM "$nspawn_pid" 2>/dev/null
            sleep 2
            kill -KILL "$nspawn_pid" 2>/dev/null
        fi
        wait "$nspawn_pid" 2>/dev/null
        echo "TIME: poweroff took $(since "$t")s"
    fi
    for root in "${cgroots[@]}"; do
        echo $$ >"$root/cgroup.procs" 2>/dev/null
    done
    # Anything the container left behind (only if it was killed).
    [ -f "$v2root/$cgname/cgroup.kill" ] && echo 1 >"$v2root/$cgname/cgroup.kill" 2>/dev/null
    for root in "${cgroots[@]}"; do
        for _ in $(seq 20); do
            [ -d "$root/$cgname" ] || break
            find "$root/$cgname" -depth -type d -exec rmdir {} + 2>/dev/null
            [ -d "$root/$cgname" ] && sleep 0.1
        done
        [ -d "$root/$cgname" ] && echo "WARNING: could not remove $root/$cgname" >&2
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- Boot --------------------------------------------------------------------
t=$(date +%s.%N)
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -q -D "$rootfs" \
    --volatile=overlay --boot --register=no --keep-unit --console=pipe \
    --private-network --machine="lre-nspawn-$$" \
    --bind-ro="$bin:/usr/bin/nativelink-lre" \
    --bind-ro="$units:/usr/share/nativelink-lre/units" \
    --bind-ro="$here:/usr/share/nativelink-lre/tests" \
    >"$tmp/console.log" 2>&1 </dev/null &
nspawn_pid=$!
for _ in $(seq 300); do
    init=$(head -n1 "$payload/init.scope/cgroup.procs" 2>/dev/null)
    [ -n "$init" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$init" ]; then
    fail "the container did not start"
    tail -n 30 "$tmp/console.log"
    exit 1
fi
# Until PID 1 has its bus up, systemctl cannot even ask.
for _ in $(seq 120); do
    state=$(timeout 120 nsenter -t "$init" -a env -i PATH="$path" systemctl is-system-running --wait 2>&1)
    case $state in *"Failed to connect to bus"*) sleep 0.1 ;; *) break ;; esac
done
case $state in
running) pass "container booted: system $state in $(since "$t")s" ;;
degraded)
    pass "container booted: system $state in $(since "$t")s"
    cexec systemctl --failed --no-legend
    ;;
*)
    fail "container did not boot: is-system-running said '$state'"
    tail -n 30 "$tmp/console.log"
    exit 1
    ;;
esac
checks=$(date +%s.%N)

# --- Installing the units -----------------------------------------------------
verify=$(cexec systemd-analyze verify --man=no /usr/share/nativelink-lre/units/nativelink-lre.service \
    /usr/share/nativelink-lre/units/nativelink-lre.socket \
    /usr/share/nativelink-lre/units/nativelink-lre-tcp.socket 2>&1)
if [ -z "$verify" ]; then
    pass "systemd-analyze verify of the shipped units, unmodified, is silent"
else
    fail "systemd-analyze verify of the shipped units: $verify"
fi

cexec sh -eu -c "
    cp /usr/share/nativelink-lre/units/nativelink-lre.service \
       /usr/share/nativelink-lre/units/nativelink-lre.socket \
       /usr/share/nativelink-lre/units/nativelink-lre-tcp.socket /etc/systemd/system/
    mkdir -p /etc/nativelink-lre /etc/systemd/system/nativelink-lre.service.d
    echo 'idle-timeout = \"${idle}s\"' >/etc/nativelink-lre/config.toml
    printf '[Service]\nExecStart=\nExecStart=/usr/bin/nativelink-lre --config /etc/nativelink-lre/config.toml\n' \
        >/etc/systemd/system/nativelink-lre.service.d/test.conf
    nativelink-lre check-config /etc/nativelink-lre/config.toml >/dev/null
    systemctl daemon-reload
    systemctl enable --quiet nativelink-lre.service
    systemctl start nativelink-lre.socket nativelink-lre-tcp.socket
" >"$tmp/install.log" 2>&1 || { fail "installing the units:"; cat "$tmp/install.log"; }

is_active() { cexec systemctl is-active "$@" | tr '\n' ' ' | sed 's/ $//'; }
show() { cexec systemctl show -p "$1" --value nativelink-lre.service; }

[ "$(cexec systemctl is-enabled nativelink-lre.socket nativelink-lre-tcp.socket | tr '\n' ' ')" = "enabled enabled " ] &&
    pass "enabling the service enables both sockets (Also=, WantedBy=sockets.target)" ||
    fail "enabling: $(cexec systemctl is-enabled nativelink-lre.socket nativelink-lre-tcp.socket | tr '\n' ' ')"
s=$(is_active nativelink-lre.socket nativelink-lre-tcp.socket)
[ "$s" = "active active" ] && pass "both sockets listening" || fail "sockets: $s"
s=$(is_active nativelink-lre.service)
[ "$s" = inactive ] && pass "service not started before the first connection" || fail "service before any connection: $s"
s=$(cexec stat -c %a /run/nativelink-lre/socket)
[ "$s" = 666 ] && pass "unix socket has mode 0666" || fail "unix socket mode: $s"

# --- Activation ---------------------------------------------------------------
probe() { cexec python3 /usr/share/nativelink-lre/tests/grpc_probe.py "$@"; }
# Waits until the background probe writing $1 has had its answer.
wait_answered() {
    local _
    for _ in $(seq 200); do
        grep -q answered "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    grep -q answered "$1" 2>/dev/null
}

t=$(date +%s.%N)
hold=$((idle + 4))
probe /run/nativelink-lre/socket "$hold" >"$tmp/probe1" 2>&1 &
probe1=$!
if wait_answered "$tmp/probe1" "$probe1"; then
    answered=$(date +%s.%N)
    pass "first connection on the unix socket starts the service; GetCapabilities answered after $(since "$t")s"
else
    fail "no gRPC answer on the unix socket: $(cat "$tmp/probe1")"
fi
# The answer can come a moment before systemd has read READY=1.
wait_active() {
    local _
    for _ in $(seq 50); do
        s=$(is_active nativelink-lre.service)
        [ "$s" = active ] && return 0
        sleep 0.1
    done
    return 1
}
wait_active && pass "service active (Type=notify: READY=1 received)" || fail "service after the first connection: $s"
status=$(show StatusText)
case $status in
*"Serving on "*"unix:/run/nativelink-lre/socket (unix)"*"tcp:127.0.0.1:50051 (tcp)"* | \
    *"Serving on "*"tcp:127.0.0.1:50051 (tcp)"*"unix:/run/nativelink-lre/socket (unix)"*)
    pass "STATUS= names both passed sockets: $status" ;;
*) fail "StatusText: '$status'" ;;
esac

# --- The hardening, as the running daemon has it --------------------------------
main=$(show MainPID)
if [ -n "$main" ] && [ "$main" != 0 ]; then
    st=$(cexec cat "/proc/$main/status")
    # CAP_CHOWN(0) DAC_OVERRIDE(1) FOWNER(3) KILL(5) SETGID(6) SETUID(7)
    [ "$(echo "$st" | awk '/^CapBnd:/ { print $2 }')" = 00000000000000eb ] &&
        pass "bounding set is CHOWN DAC_OVERRIDE FOWNER KILL SETGID SETUID" ||
        fail "bounding set: $(echo "$st" | grep CapBnd)"
    [ "$(echo "$st" | awk '/^NoNewPrivs:/ { print $2 }')" = 1 ] && [ "$(echo "$st" | awk '/^Seccomp:/ { print $2 }')" = 2 ] &&
        pass "no_new_privs set and seccomp filters installed" ||
        fail "no_new_privs/seccomp: $(echo "$st" | grep -E 'NoNewPrivs|Seccomp:')"
    # A fresh /proc in an action's user namespace needs a fully visible
    # procfs; the unit must not add mounts over /proc.
    # shellcheck disable=SC2016
    procmounts() { cexec awk '$5 ~ "^/proc(/|$)" { print $5 }' "/proc/$1/mountinfo" | sort; }
    if [ "$(procmounts 1)" = "$(procmounts "$main")" ]; then
        pass "the service's /proc has no mounts beyond the container's own"
    else
        fail "the service adds mounts over /proc: $(diff <(procmounts 1) <(procmounts "$main") | tr '\n' ' ')"
    fi
    cg=$(cexec cat "/proc/$main/cgroup" | sed -n 's/^0:://p')
    unitcg=$(show ControlGroup)
    case $cg in
    "$unitcg") note "the daemon is in the unit's cgroup $cg (it has not moved into a supervisor leaf)" ;;
    "$unitcg"/*) pass "the daemon manages its delegated cgroup: it runs in $cg" ;;
    *) fail "the daemon is in cgroup $cg, not under the unit's $unitcg" ;;
    esac
else
    fail "no MainPID for the active service"
fi

# --- Staying up while connected, idle exit, reactivation --------------------------
# Look at idle-timeout + 1.5 s after the answer, while the client (holding
# its connection idle for idle-timeout + 4 s) is certainly still connected.
sleep "$(echo "${answered:-0}" | awk -v now="$(date +%s.%N)" -v at="$idle" '{ d = $1 + at + 1.5 - now; print (d > 0 ? d : 0) }')"
s=$(is_active nativelink-lre.service)
if ! kill -0 "$probe1" 2>/dev/null; then
    fail "the client was gone before idle-timeout + 1.5 s: $(cat "$tmp/probe1")"
elif [ "$s" = active ]; then
    pass "an open connection keeps the service up past idle-timeout ($(since "${answered:-0}")s)"
else
    fail "service with a connection open for $(since "${answered:-0}")s: $s"
fi
wait "$probe1"
t=$(date +%s.%N)
for _ in $(seq $(((idle + 10) * 5))); do
    s=$(is_active nativelink-lre.service)
    # "deactivating" is the moment between the daemon's STOPPING=1 and its
    # exit; wait through it to the state the stop ends in.
    case "$s" in active | deactivating) sleep 0.2 ;; *) break ;; esac
done
if [ "$s" = inactive ]; then
    pass "idle exit $(since "$t")s after the last connection closed (idle-timeout ${idle}s)"
else
    fail "service $s $(since "$t")s after the last connection closed"
fi
r=$(show Result)
[ "$r" = success ] && pass "idle exit is a clean stop (Result=success)" || fail "Result after idle exit: $r"
cexec journalctl -u nativelink-lre.service --no-pager -o cat | grep -q "Stopping: idle" &&
    pass "journal has the daemon's idle message" || fail "no idle message in the journal"
s=$(is_active nativelink-lre.socket nativelink-lre-tcp.socket)
[ "$s" = "active active" ] && pass "sockets still listening after the idle exit" || fail "sockets after idle exit: $s"

t=$(date +%s.%N)
if out=$(probe 127.0.0.1:50051 2>&1); then
    pass "a TCP connection starts it again; GetCapabilities answered after $(since "$t")s"
else
    fail "no gRPC answer on TCP after the idle exit: $out"
fi
wait_active && pass "service active again" || fail "service after the TCP connection: $s"

# --- The action sandbox under the unit's hardening --------------------------------
out=$(cexec sh /usr/share/nativelink-lre/tests/sandbox_probe.sh /usr/share/nativelink-lre/units 2>&1)
plain=$(echo "$out" | sed -n 's/^lre-probe-plain //p')
hardened=$(echo "$out" | sed -n 's/^lre-probe-hardened //p')
if [ -n "$plain" ] && [ "$plain" = "$hardened" ]; then
    pass "sandbox helper under the unit's hardening: $hardened, as without it"
else
    fail "sandbox helper: plain unit gave '$plain', hardened unit '$hardened' ($out)"
    cexec journalctl -u lre-probe-hardened.service --no-pager -o cat | tail -n 5
fi
# Equal failures would prove nothing: the plain unit must run the command.
# (If this fails, the sandbox itself or the spec that sandbox_probe.sh
# writes, which mirrors src/sandbox/mod.rs's Spec, is off.)
[ "$plain" = '{"Exited":0}' ] && pass "the sandbox ran the probe command under systemd" ||
    fail "the sandbox did not run the probe command even without hardening: $plain"

# --- Stopping --------------------------------------------------------------------
# A stand-in for an action: a process in a delegated sub-cgroup of the unit.
sleeper=$(cexec sh -c "
    leaf=/sys/fs/cgroup$(show ControlGroup)/lre-test-leaf
    mkdir \$leaf
    setsid sleep 600 </dev/null >/dev/null 2>&1 &
    echo \$! >\$leaf/cgroup.procs
    echo \$!" 2>&1)
case $sleeper in
'' | *[!0-9]*) fail "could not put a process into the unit's cgroup: $sleeper" ;;
esac
probe /run/nativelink-lre/socket 60 >"$tmp/probe2" 2>&1 &
probe2=$!
wait_answered "$tmp/probe2" "$probe2" || fail "no answer before the stop: $(cat "$tmp/probe2")"
t=$(date +%s.%N)
cexec systemctl stop nativelink-lre.service nativelink-lre.socket nativelink-lre-tcp.socket
took=$(since "$t")
s=$(is_active nativelink-lre.service nativelink-lre.socket nativelink-lre-tcp.socket)
[ "$s" = "inactive inactive inactive" ] && pass "stop with a client connected took ${took}s" || fail "after stop: $s"
r="$(show Result) $(show ExecMainStatus)"
[ "$r" = "success 0" ] && pass "the daemon exited 0 on SIGTERM" || fail "Result and status after SIGTERM: $r"
left=$(cexec ps -eo pid=,args= | awk '$2 ~ /nativelink-lre$/ || / __sandbox /')
[ -z "$left" ] && pass "no nativelink-lre or sandbox process left" || fail "left running: $left"
if [ -n "$sleeper" ] && cexec kill -0 "$sleeper" 2>/dev/null; then
    fail "a process in a delegated sub-cgroup survived the stop (KillMode)"
else
    pass "a process in a delegated sub-cgroup was killed with the service"
fi
wait "$probe2"
grep -q "GOAWAY\|closed the connection" "$tmp/probe2" &&
    pass "the connected client was sent GOAWAY or closed: $(tail -n1 "$tmp/probe2")" ||
    fail "the connected client saw no GOAWAY/close: $(cat "$tmp/probe2")"

# --- Restart=on-failure -----------------------------------------------------------
cexec systemctl start nativelink-lre.socket nativelink-lre-tcp.socket
probe 127.0.0.1:50051 >/dev/null 2>&1 || fail "no answer after restarting the sockets"
before=$(show MainPID)
cexec systemctl kill --kill-who=main --signal=SIGKILL nativelink-lre.service
for _ in $(seq 50); do
    now=$(show MainPID)
    [ "$now" != 0 ] && [ "$now" != "$before" ] && [ "$(is_active nativelink-lre.service)" = active ] && break
    sleep 0.2
done
n=$(show NRestarts)
[ "$n" = 1 ] && [ "$(is_active nativelink-lre.service)" = active ] &&
    pass "restarted after SIGKILL (Restart=on-failure)" ||
    fail "after SIGKILL: NRestarts=$n, $(is_active nativelink-lre.service)"

if ((fails)); then
    echo "--- journal of nativelink-lre.service"
    cexec journalctl -u nativelink-lre.service --no-pager -o short-monotonic | tail -n 40
fi
echo "TIME: checks took $(since "$checks")s"
echo "TIME: total $(since "$start")s before poweroff"
echo "nspawn tier: $passes passed, $fails failed"
((fails == 0))
