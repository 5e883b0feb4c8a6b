#!/usr/bin/env bash
# Prints the path of a qemu-system-x86_64 for tests/vm/run.sh, and on a
# second line the directory to pass as LD_LIBRARY_PATH (empty for a qemu
# installed on this machine). Nothing is installed: the Debian packages
# that qemu-system-x86 needs beyond what this machine has are fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` into
#
#   CACHE/qemu-<version>/   (CACHE as in rootfs.sh)
#
# so later runs are offline. The firmware directories for qemu's -L are
# CACHE/qemu-<version>/usr/share/{seabios,qemu}. Progress goes to stderr.
set -euo pipefail

cache=${NATIVELINK_LRE_TEST_CACHE:-/var/cache/nativelink-lre-tests}
log() { echo "vm qemu: $*" >&2; }

if [ -z "${NATIVELINK_LRE_VM_EXTRACTED_QEMU:-}" ] && command -v qemu-system-x86_64 >/dev/null &&
    [ -f /usr/share/seabios/bios-256k.bin ]; then
    command -v qemu-system-x86_64
    echo
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.qemu-lock"
flock 9

# Any complete extraction will do when apt's lists are gone (offline).
version=$(apt-cache policy qemu-system-x86 2>/dev/null | awk '/Candidate:/ { print $2 }')
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    for d in "$cache"/qemu-*/; do
        if [ -f "$d/.complete" ]; then
            version=${d%/}
            version=${version##*/qemu-}
            break
        fi
    done
fi
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    log "apt knows no qemu-system-x86: apt-get update"
    apt-get update -qq >&2 || true
    version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')
fi
dir=$cache/qemu-${version//[^A-Za-z0-9.+~-]/_}

if [ ! -f "$dir/.complete" ]; then
    # What installing it would add to this machine: exactly the packages
    # whose files we need. (Simulated, nothing is installed.)
    pkgs=$(apt-get -s install --no-install-recommends qemu-system-x86 2>/dev/null |
        awk '$1 == "Inst" { print $2 }' | grep -vx 'libc6\|libc-bin\|libgcc-s1\|libstdc++6' || true)
    if [ -z "$pkgs" ]; then
        echo "vm qemu: apt-get -s install qemu-system-x86 lists nothing to fetch" >&2
        exit 1
    fi
    log "downloading $(echo "$pkgs" | wc -l) packages ($(echo "$pkgs" | tr '\n' ' '))"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp/debs"
    # _apt must be able to write here, or apt warns about an unsandboxed
    # download.
    chmod 0777 "$dir.tmp/debs"
    # shellcheck disable=SC2086 # one package per word
    (cd "$dir.tmp/debs" && apt-get download -q $pkgs >&2) || {
        log "apt-get download failed; retrying after apt-get update"
        apt-get update -qq >&2 || true
        # shellcheck disable=SC2086
        (cd "$dir.tmp/debs" && apt-get download -q $pkgs >&2)
    }
    for deb in "$dir.tmp"/debs/*.deb; do
        dpkg-deb -x "$deb" "$dir.tmp"
    done
    rm -rf "$dir.tmp/debs"
    test -x "$dir.tmp/usr/bin/qemu-system-x86_64"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    touch "$dir/.complete"
fi
echo "$dir/usr/bin/qemu-system-x86_64"
# (Some bookworm libraries, libnl-3 for one, still live in /lib.)
echo "$dir/usr/lib/x86_64-linux-gnu:$dir/lib/x86_64-linux-gnu"
