# shellcheck shell=bash
# Shared by tests/nspawn/rootfs.sh and tests/vm/rootfs.sh, which source it:
# building a debootstrapped Debian tree once, into a cache, with the .debs
# kept in a --make-tarball so that a rebuild needs no network.
#
# The caller sets `set -euo pipefail` and, optionally, LRE_LOG_PREFIX (the
# word before the colon in progress lines, on stderr). A caller's script
# looks like:
#
#   cache=$(lre_cache)
#   key=$(lre_key "$suite" "$packages" "$layout")
#   rootfs=$cache/NAME-$key
#   lre_exit_if_built "$rootfs" "$cache/.LOCK"   # prints + exits if built
#   rm -rf "$rootfs.tmp"                          # (+ pre-seeded files)
#   lre_debootstrap_cached "$suite" "$packages" "$cache/DEBS.tar.gz" "$rootfs.tmp"
#   ...customisation of "$rootfs.tmp"...
#   lre_publish "$rootfs.tmp" "$rootfs"           # prints the path

lre_log() { echo "${LRE_LOG_PREFIX:-rootfs}: $*" >&2; }

# The cache: $NATIVELINK_LRE_TEST_CACHE or /var/cache/nativelink-lre-tests.
lre_cache() { echo "${NATIVELINK_LRE_TEST_CACHE:-/var/cache/nativelink-lre-tests}"; }

# lre_key WORD...: 12 hex digits naming a cache entry built from the WORDs
# (one per line into sha256sum). Changing how a key is computed renames the
# entries, i.e. throws the existing caches away.
lre_key() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }

# lre_exit_if_built ROOTFS LOCKFILE: if ROOTFS is complete, prints it and
# exits the script. Otherwise takes LOCKFILE (on fd 9, held until the script
# exits) so that there is one builder at a time, and checks again: whoever
# waited finds the tree built.
lre_exit_if_built() {
    local rootfs=$1 lock=$2
    if [ -f "$rootfs/.complete" ]; then
        echo "$rootfs"
        exit 0
    fi
    mkdir -p "$(dirname "$lock")"
    exec 9>"$lock"
    flock 9
    if [ -f "$rootfs/.complete" ]; then
        echo "$rootfs"
        exit 0
    fi
}

# The mirrors for SUITE in this machine's apt sources, deb822 (*.sources)
# then one-line (*.list) format, one a line.
lre_mirrors_from_apt() {
    local suite=$1 f
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

# lre_mirror SUITE: the first of lre_mirrors_from_apt, else deb.debian.org.
lre_mirror() {
    local mirror
    mirror=$(lre_mirrors_from_apt "$1" | head -n1)
    echo "${mirror:-http://deb.debian.org/debian}"
}

# lre_debootstrap_cached SUITE PACKAGES TARBALL TARGET: installs SUITE
# (--variant=minbase, plus PACKAGES, comma-separated) into TARGET from
# TARBALL, offline. If TARBALL does not exist yet, first downloads the .debs
# into it (debootstrap --make-tarball, from lre_mirror). TARGET may already
# hold files the caller wants dpkg to see (e.g. /etc/dpkg/dpkg.cfg.d).
# Installs debootstrap itself if missing.
lre_debootstrap_cached() {
    local suite=$1 packages=$2 tarball=$3 target=$4 mirror work
    if ! command -v debootstrap >/dev/null; then
        lre_log "installing debootstrap"
        apt-get update -qq >&2 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
    fi
    mirror=$(lre_mirror "$suite")

    if [ ! -f "$tarball" ]; then
        lre_log "downloading $suite ($packages) from $mirror into $tarball"
        work=$(mktemp -d "${tarball%.tar.gz}.download.XXXXXX")
        debootstrap --variant=minbase --include="$packages" \
            --make-tarball="$work/debs.tar.gz" "$suite" "$work/root" "$mirror" >&2
        mv "$work/debs.tar.gz" "$tarball"
        rm -rf "$work"
    fi

    lre_log "installing $suite from $tarball (offline)"
    debootstrap --variant=minbase --include="$packages" \
        --unpack-tarball="$tarball" "$suite" "$target" "$mirror" >&2
}

# lre_publish TMP ROOTFS: moves the finished tree TMP to ROOTFS, marks it
# complete (what lre_exit_if_built looks for) and prints its path.
lre_publish() {
    local tmp=$1 rootfs=$2
    rm -rf "$rootfs"
    mv "$tmp" "$rootfs"
    touch "$rootfs/.complete"
    echo "$rootfs"
}
