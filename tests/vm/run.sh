#!/usr/bin/env bash
# The VM test tier: boots Debian bookworm (its cloud kernel, systemd as PID 1)
# in qemu with software emulation (TCG, no KVM), installs the units of
# packaging/systemd with this build's daemon and a configuration with
# per-action cgroup limits, and checks in the guest (tests/vm/guest.py):
#
#   1. socket activation; the service's cgroup is really delegated, with the
#      memory, pids and cpu controllers (require-controllers = true, and the
#      STATUS line says "limits: memory, pids, cpu");
#   2. actions through `nativelink-lre run --json`: a memory hog is
#      OOM-killed at memory.max, a small allocation works, a fork bomb stops
#      at pids.max and the daemon keeps answering, cpu.max throttles a busy
#      loop, and cgroup.kill leaves no escaped process or action cgroup;
#   3. stopping the units leaves no nativelink-lre process.
#
# Unlike tests/nspawn, the guest has its own kernel and a real cgroup v2
# hierarchy with controllers, so the limits are enforced for real.
#
# Usage: tests/vm/run.sh [BINARY]   (default target/release/nativelink-lre
# or $NATIVELINK_LRE_BIN). Needs root (debootstrap). The first run downloads
# Debian packages (a bookworm tree with linux-image-cloud-amd64, see
# rootfs.sh, and qemu-system-x86, unpacked but not installed, see qemu.sh)
# into /var/cache/nativelink-lre-tests; later runs are offline.
# $NATIVELINK_LRE_VM_TIMEOUT (default 300) bounds the VM's run, in seconds.
# Prints PASS/FAIL lines and exits non-zero if anything failed or the guest
# gave no complete result.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${1:-${NATIVELINK_LRE_BIN:-$repo/target/release/nativelink-lre}}
units=${NATIVELINK_LRE_UNITS:-$repo/packaging/systemd}
vm_timeout=${NATIVELINK_LRE_VM_TIMEOUT:-300}

start=$(date +%s.%N)
since() { echo "$1" | awk -v now="$(date +%s.%N)" '{ printf "%.1f", now - $1 }'; }

if [ "$(id -u)" != 0 ]; then
    echo "tests/vm/run.sh: must run as root" >&2
    exit 2
fi
if [ ! -x "$bin" ]; then
    echo "tests/vm/run.sh: no daemon binary at $bin (cargo build --release?)" >&2
    exit 2
fi
bin=$(readlink -f "$bin")
for u in nativelink-lre.service nativelink-lre.socket nativelink-lre-tcp.socket; do
    if [ ! -f "$units/$u" ]; then
        echo "tests/vm/run.sh: no $units/$u" >&2
        exit 2
    fi
done

tmp=$(mktemp -d /tmp/nativelink-lre-vm.XXXXXX)
qemu_pid=
cleanup() {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null
        sleep 1
        kill -KILL "$qemu_pid" 2>/dev/null
        wait "$qemu_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Debian tree and qemu (cached) ---------------------------------------------
# qemu's packages download while debootstrap works.
t=$(date +%s.%N)
"$here/qemu.sh" >"$tmp/qemu.out" 2>"$tmp/qemu.err" &
qemu_fetch=$!
if ! rootfs=$("$here/rootfs.sh"); then
    echo "FAIL: building the Debian tree (tests/vm/rootfs.sh)"
    exit 1
fi
echo "TIME: rootfs ready in $(since "$t")s ($rootfs)"
if ! wait "$qemu_fetch"; then
    cat "$tmp/qemu.err"
    echo "FAIL: fetching qemu (tests/vm/qemu.sh)"
    exit 1
fi
grep -v '^Get:\|^Fetched' "$tmp/qemu.err" >&2
qemu=$(sed -n 1p "$tmp/qemu.out")
qemu_libs=$(sed -n 2p "$tmp/qemu.out")
qemu_root=${qemu%/usr/bin/qemu-system-x86_64}
echo "TIME: rootfs and qemu ready in $(since "$t")s ($qemu)"
kernel=$(find "$rootfs/boot" -name 'vmlinuz-*' | sort -V | tail -n1)
initrd=$(find "$rootfs/boot" -name 'initrd.img-*' | sort -V | tail -n1)
if [ -z "$kernel" ] || [ -z "$initrd" ]; then
    echo "FAIL: no kernel or initrd in $rootfs/boot"
    exit 1
fi

# --- The image ------------------------------------------------------------------
# The stage is a hard-linked copy of the cached tree: only new files are
# added to it, none is written in place, so the cache stays pristine.
t=$(date +%s.%N)
stage=$tmp/stage
cp -al "$rootfs" "$stage" 2>/dev/null || { rm -rf "$stage"; cp -a "$rootfs" "$stage"; }
rm -f "$stage/.complete"
install -m 0755 "$bin" "$stage/usr/bin/nativelink-lre"
for u in nativelink-lre.service nativelink-lre.socket nativelink-lre-tcp.socket; do
    install -m 0644 "$units/$u" "$stage/etc/systemd/system/$u"
done
mkdir -p "$stage/etc/nativelink-lre" "$stage/etc/systemd/system/nativelink-lre.service.d" \
    "$stage/usr/local/lib/lre-vm" "$stage/etc/systemd/system/multi-user.target.wants"
cat >"$stage/etc/nativelink-lre/config.toml" <<'EOF'
# Written by tests/vm/run.sh: small per-action limits that the checks hit.
[cgroup]
memory-max = "64MiB"
swap-max = 0
pids-max = 64
cpu-max = 0.5
require-controllers = true
EOF
if ! out=$("$bin" check-config "$stage/etc/nativelink-lre/config.toml" 2>&1); then
    echo "FAIL: nativelink-lre check-config rejects the test configuration: $out"
    exit 1
fi
cat >"$stage/etc/systemd/system/nativelink-lre.service.d/vm-test.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/usr/bin/nativelink-lre --config /etc/nativelink-lre/config.toml
EOF
install -m 0755 "$here/guest.py" "$stage/usr/local/lib/lre-vm/guest.py"
cat >"$stage/etc/systemd/system/lre-vm-test.service" <<EOF
[Unit]
Description=nativelink-lre VM tier checks (tests/vm/guest.py)
After=nativelink-lre.socket nativelink-lre-tcp.socket systemd-udev-settle.service systemd-udev-trigger.service
# Whatever happens, the machine goes off and qemu exits.
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /usr/local/lib/lre-vm/guest.py
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=$((vm_timeout > 60 ? vm_timeout - 30 : 30))

[Install]
WantedBy=multi-user.target
EOF
ln -s /etc/systemd/system/lre-vm-test.service "$stage/etc/systemd/system/multi-user.target.wants/"
img=$tmp/disk.img
if ! out=$(mkfs.ext4 -q -F -L lre-vm -d "$stage" "$img" 2G 2>&1); then
    echo "FAIL: mkfs.ext4 -d: $out"
    exit 1
fi
rm -rf "$stage"
echo "TIME: image built in $(since "$t")s ($(du -m "$img" | cut -f1) MiB used of 2 GiB)"

# --- Boot ---------------------------------------------------------------------------
t=$(date +%s.%N)
results=$tmp/results.txt
console=$tmp/console.log
: >"$results"
LD_LIBRARY_PATH=$qemu_libs "$qemu" \
    -L "$qemu_root/usr/share/seabios" -L "$qemu_root/usr/share/qemu" \
    -machine q35 -accel tcg,thread=multi -cpu max -smp 2 -m 2048 \
    -nic none -no-reboot -display none -monitor none -serial "file:$console" \
    -kernel "$kernel" -initrd "$initrd" \
    -append "root=/dev/vda rw console=ttyS0 panic=-1 quiet" \
    -drive "file=$img,format=raw,if=virtio,cache=unsafe" \
    -device virtio-serial-pci \
    -chardev "file,id=res,path=$results" -device virtserialport,chardev=res,name=results \
    </dev/null >"$tmp/qemu.log" 2>&1 &
qemu_pid=$!
deadline=$(($(date +%s) + vm_timeout))
timed_out=
while kill -0 "$qemu_pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        timed_out=1
        kill -TERM "$qemu_pid" 2>/dev/null
        sleep 2
        kill -KILL "$qemu_pid" 2>/dev/null
        break
    fi
    sleep 0.5
done
wait "$qemu_pid" 2>/dev/null
qemu_status=$?
qemu_pid=
echo "TIME: VM ran $(since "$t")s (boot, checks, poweroff)"

# --- Results ------------------------------------------------------------------------
cat "$results"
passes=$(grep -c '^PASS' "$results")
fails=$(grep -c '^FAIL' "$results")
problem=
if [ -n "$timed_out" ]; then
    problem="the VM did not power off within ${vm_timeout}s (killed qemu)"
elif ! grep -q '^DONE' "$results"; then
    problem="the guest gave no complete result (qemu exited $qemu_status)"
elif ((passes == 0)); then
    problem="no check passed"
fi
if [ -n "$problem" ] || ((fails)); then
    [ -n "$problem" ] && echo "FAIL: $problem"
    echo "--- qemu's output"
    cat "$tmp/qemu.log"
    echo "--- the last of the guest's console"
    tail -n 60 "$console"
fi
echo "TIME: total $(since "$start")s"
[ -n "$problem" ] && fails=$((fails + 1))
echo "vm tier: $passes passed, $fails failed"
((fails == 0))
