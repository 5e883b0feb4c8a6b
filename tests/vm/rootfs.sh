#!/usr/bin/env bash
# Prints the path of a bootable Debian bookworm tree for tests/vm/run.sh
# (systemd as PID 1, the cloud kernel and its initrd in /boot), building it
# first if needed:
#
#   CACHE/vm-bookworm-debs-<key>.tar.gz
#                                    debootstrap --make-tarball: the .debs, so
#                                    that a rebuild needs no network
#   CACHE/vm-bookworm-<key>/         the installed tree; run.sh copies it
#                                    (hard links) into a stage and never
#                                    writes into it
#
# CACHE is $NATIVELINK_LRE_TEST_CACHE or /var/cache/nativelink-lre-tests (the
# same cache as tests/nspawn, with its own files). The mirror is the one
# this machine's apt uses for bookworm. Progress goes to stderr; only the
# path goes to stdout.
set -euo pipefail

cache=${NATIVELINK_LRE_TEST_CACHE:-/var/cache/nativelink-lre-tests}
suite=bookworm
packages=systemd,systemd-sysv,dbus,linux-image-cloud-amd64,procps,python3
# Bump when the customisation below changes, to rebuild cached trees.
layout=2
# The downloaded packages depend on the package list only; the tree on the
# customisation too.
debs_key=$(printf '%s\n' "$suite" "$packages" | sha256sum | cut -c1-12)
key=$(printf '%s\n' "$suite" "$packages" "$layout" | sha256sum | cut -c1-12)
tarball=$cache/vm-$suite-debs-$debs_key.tar.gz
rootfs=$cache/vm-$suite-$key

log() { echo "vm rootfs: $*" >&2; }

if [ -f "$rootfs/.complete" ]; then
    echo "$rootfs"
    exit 0
fi
mkdir -p "$cache"
# One builder at a time; whoever waited finds the tree built.
exec 9>"$cache/.vm-lock"
flock 9
if [ -f "$rootfs/.complete" ]; then
    echo "$rootfs"
    exit 0
fi

# The first bookworm mirror in apt's sources, deb822 (*.sources) or one-line
# (*.list) format.
mirror_from_apt() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") &&
                    enabled != "no" && uris != "") { split(uris, u, " "); print u[1]; found = 1; exit }
                types = suites = uris = enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
            /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
            /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
            /^Enabled:/ { sub(/^Enabled:[ \t]*/, ""); enabled = $0 }
            END { if (!found) flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }
        ' "$f"
    done
}

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
fi
mirror=$(mirror_from_apt | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}

if [ ! -f "$tarball" ]; then
    log "downloading $suite ($packages) from $mirror into $tarball"
    work=$(mktemp -d "$cache/vm-download.XXXXXX")
    debootstrap --variant=minbase --include="$packages" \
        --make-tarball="$work/debs.tar.gz" "$suite" "$work/root" "$mirror" >&2
    mv "$work/debs.tar.gz" "$tarball"
    rm -rf "$work"
fi

log "installing $suite from $tarball (offline)"
r=$rootfs.tmp
rm -rf "$r"
# Before debootstrap, so that its dpkg runs see them:
# - no fsync per unpacked file (a throwaway tree; twice as fast here);
# - an initrd with just what finds the root disk (qemu's virtio-blk), not
#   MODULES=most: quicker to build, and to unpack on every emulated boot.
#   udev in the initrd loads the modules by their modalias.
mkdir -p "$r/etc/dpkg/dpkg.cfg.d" "$r/etc/initramfs-tools/conf.d" "$r/etc/initramfs-tools/hooks"
echo force-unsafe-io >"$r/etc/dpkg/dpkg.cfg.d/lre-vm-unsafe-io"
echo MODULES=list >"$r/etc/initramfs-tools/conf.d/lre-vm.conf"
cat >"$r/etc/initramfs-tools/hooks/lre-vm" <<'HOOK'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
manual_add_modules virtio_pci virtio_blk
HOOK
chmod 0755 "$r/etc/initramfs-tools/hooks/lre-vm"
debootstrap --variant=minbase --include="$packages" \
    --unpack-tarball="$tarball" "$suite" "$r" "$mirror" >&2
rm -f "$r/etc/dpkg/dpkg.cfg.d/lre-vm-unsafe-io"
# The kernel and initrd that qemu boots directly (-kernel/-initrd).
ls "$r"/boot/vmlinuz-* "$r"/boot/initrd.img-* >/dev/null
# serial-getty@ttyS0 swallows the console output (NOTES); no other getty
# is wanted on a machine nobody logs into.
ln -sf /dev/null "$r/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$r/etc/systemd/system/getty.target"
# Timers that only cost time in a VM that lives for a minute.
for u in apt-daily.timer apt-daily-upgrade.timer fstrim.timer e2scrub_all.timer; do
    ln -sf /dev/null "$r/etc/systemd/system/$u"
done
echo lre-vm >"$r/etc/hostname"
echo "/dev/vda / ext4 rw,noatime 0 1" >"$r/etc/fstab"
# Less for mkfs.ext4 -d to copy on every run.
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* \
    "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/locale/* "$r"/usr/share/info/*

rm -rf "$rootfs"
mv "$r" "$rootfs"
touch "$rootfs/.complete"
echo "$rootfs"
