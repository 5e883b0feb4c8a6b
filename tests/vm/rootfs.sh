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
# path goes to stdout. The building itself is tests/lib/debootstrap.sh.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../lib/debootstrap.sh
. "$here/../lib/debootstrap.sh"
LRE_LOG_PREFIX="vm rootfs"

cache=$(lre_cache)
suite=bookworm
packages=systemd,systemd-sysv,dbus,linux-image-cloud-amd64,procps,python3
# Bump when the customisation below changes, to rebuild cached trees.
layout=2
# The downloaded packages depend on the package list only; the tree on the
# customisation too.
debs_key=$(lre_key "$suite" "$packages")
key=$(lre_key "$suite" "$packages" "$layout")
tarball=$cache/vm-$suite-debs-$debs_key.tar.gz
rootfs=$cache/vm-$suite-$key

lre_exit_if_built "$rootfs" "$cache/.vm-lock"

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
lre_debootstrap_cached "$suite" "$packages" "$tarball" "$r"
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

lre_publish "$r" "$rootfs"
