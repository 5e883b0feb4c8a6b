#!/bin/sh
# Runs inside the container (tests/nspawn/run.sh): starts the daemon's
# sandbox helper (`nativelink-lre __sandbox -` with the spec on stdin, what
# the daemon runs for every action) as the main process of two oneshot units and prints the
# outcome each one wrote, as "NAME OUTCOME-JSON":
#
#   lre-probe-plain     root, Delegate=yes and a state directory, nothing else
#   lre-probe-hardened  the shipped nativelink-lre.service with every setting
#                       kept except those that make it a notify daemon
#
# The command is `echo ok >probe.txt` in the exec root; the plain unit should
# give the outcome {"Exited":0}. If the hardening took something the sandbox needs (a
# capability, a system call, a writable cgroupfs, a namespace type), the
# hardened one fails at that step: e.g. ProtectHostname=yes gives
# {"SetupFailed":"sethostname: EPERM ..."}, RestrictNamespaces=yes fails the
# clone, PrivateUsers=yes the setgroups, ProtectControlGroups=yes the cgroup.
#
# The spec below mirrors `Spec` in src/sandbox/mod.rs; keep them in step.
set -eu

units=${1:-/usr/share/nativelink-lre/units}
uid=1879048192 # 0x70000000, the first uid of the default action range

probe() {
    name=$1
    state=/var/lib/$name
    rm -rf "$state"
    mkdir -p "$state/exec"
    chown "$uid:$uid" "$state/exec"
    cat >"$state/spec.json" <<EOF
{"args":["/bin/sh","-c","echo ok >probe.txt"],
 "env":[["PATH","/usr/bin:/bin"]],
 "working_dir":"",
 "exec_root":"$state/exec",
 "read_only_paths":["/usr","/bin","/lib","/lib64"],
 "tmp_size":1048576,
 "host_uid":$uid,"host_gid":$uid,
 "host_network":false,
 "nproc_limit":null,
 "cgroup_procs":"/sys/fs/cgroup/system.slice/$name.service/action-probe/cgroup.procs",
 "result_path":"$state/result.json"}
EOF
    : >"$state/result.json"
    systemctl reset-failed "$name.service" 2>/dev/null || true
    systemctl start "$name.service" || true
    # The helper reports {"outcome": ..., "exec_ns": ..., "exit_ns": ...};
    # only the outcome is compared.
    printf '%s %s\n' "$name" "$(python3 -c 'import json, sys
try:
    print(json.dumps(json.load(sys.stdin)["outcome"], separators=(",", ":")))
except Exception as e:
    print("unreadable:", e)' <"$state/result.json")"
}

prestart='ExecStartPre=/bin/mkdir -p /sys/fs/cgroup/system.slice/%n/action-probe'
start='ExecStart=/usr/bin/nativelink-lre __sandbox -'
stdin='StandardInput=file:/var/lib/%N/spec.json'

cat >/etc/systemd/system/lre-probe-plain.service <<EOF
[Service]
Type=oneshot
Delegate=yes
StateDirectory=%N
$prestart
$start
$stdin
EOF

# The shipped unit minus: its dependencies on the sockets, Type=notify and
# what goes with it (the watchdog, restarts), ExecStart and the state
# directory's name.
sed -e '/^\(Requires\|After\|Also\|WantedBy\|NotifyAccess\|WatchdogSec\|Restart\|RestartSec\)=/d' \
    -e 's/^Type=.*/Type=oneshot/' \
    -e "s|^ExecStart=.*|$prestart\n$start\n$stdin|" \
    -e 's/^StateDirectory=.*/StateDirectory=%N/' \
    "$units/nativelink-lre.service" >/etc/systemd/system/lre-probe-hardened.service

systemctl daemon-reload
probe lre-probe-plain
probe lre-probe-hardened
