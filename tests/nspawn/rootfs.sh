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
# to stderr; only the path goes to stdout.
set -euo pipefail

cache=${NATIVELINK_LRE_TEST_CACHE:-/var/cache/nativelink-lre-tests}
suite=bookworm
packages=systemd,systemd-sysv,dbus,iproute2,python3,procps
# Bump when the customisation below changes, to rebuild cached trees.
layout=1
key=$(printf '%s\n' "$suite" "$packages" "$layout" | sha256sum | cut -c1-12)
tarball=$cache/$suite-$key.tar.gz
rootfs=$cache/$suite-$key

log() { echo "rootfs: $*" >&2; }

if [ -f "$rootfs/.complete" ]; then
    echo "$rootfs"
    exit 0
fi
mkdir -p "$cache"
# One builder at a time; whoever waited finds the tree built.
exec 9>"$cache/.lock"
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
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
fi
mirror=$(mirror_from_apt | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}

if [ ! -f "$tarball" ]; then
    log "downloading $suite ($packages) from $mirror into $tarball"
    work=$(mktemp -d "$cache/download.XXXXXX")
    debootstrap --variant=minbase --include="$packages" \
        --make-tarball="$work/debs.tar.gz" "$suite" "$work/root" "$mirror" >&2
    mv "$work/debs.tar.gz" "$tarball"
    rm -rf "$work"
fi

log "installing $suite from $tarball (offline)"
rm -rf "$rootfs.tmp"
debootstrap --variant=minbase --include="$packages" \
    --unpack-tarball="$tarball" "$suite" "$rootfs.tmp" "$mirror" >&2

# Customisation for booting under systemd-nspawn with --console=pipe: a
# getty on a pipe only fails and leaves the system "degraded".
ln -sf /dev/null "$rootfs.tmp/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$rootfs.tmp/etc/systemd/system/getty.target"
echo lre-nspawn >"$rootfs.tmp/etc/hostname"
rm -f "$rootfs.tmp/var/cache/apt/archives/"*.deb

rm -rf "$rootfs"
mv "$rootfs.tmp" "$rootfs"
touch "$rootfs/.complete"
echo "$rootfs"
