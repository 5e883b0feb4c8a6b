#!/usr/bin/env bash
# Prints the path of a Debian bookworm (minbase + systemd) tree for
# tests/nspawn/run.sh, building it first if needed:
#
#   CACHE/bookworm-<key>.tar.gz   debootstrap --make-tarball: the .debs, so
#                                 that a rebuild needs no network
#   CACHE/bookworm-<key>/         the installed tree, booted with
#                                 --volatile=overlay so it stays pristine
#
# CACHE is $NATIVELINK_LRE_TEST_CACHE or /var/cache/nativelink-lre-tests.
# The mirror is the one this machine's apt uses for bookworm. Progress goes
# to stderr; only the path goes to stdout. The building itself is
# tests/lib/debootstrap.sh.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../lib/debootstrap.sh
. "$here/../lib/debootstrap.sh"

cache=$(lre_cache)
suite=bookworm
packages=systemd,systemd-sysv,dbus,iproute2,python3,procps
# Bump when the customisation below changes, to rebuild cached trees.
layout=1
key=$(lre_key "$suite" "$packages" "$layout")
tarball=$cache/$suite-$key.tar.gz
rootfs=$cache/$suite-$key

lre_exit_if_built "$rootfs" "$cache/.lock"

rm -rf "$rootfs.tmp"
lre_debootstrap_cached "$suite" "$packages" "$tarball" "$rootfs.tmp"

# Customisation for booting under systemd-nspawn with --console=pipe: a
# getty on a pipe only fails and leaves the system "degraded".
ln -sf /dev/null "$rootfs.tmp/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$rootfs.tmp/etc/systemd/system/getty.target"
echo lre-nspawn >"$rootfs.tmp/etc/hostname"
rm -f "$rootfs.tmp/var/cache/apt/archives/"*.deb

lre_publish "$rootfs.tmp" "$rootfs"
