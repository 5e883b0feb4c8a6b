#!/bin/sh
# Installs nativelink-lre from a `cargo build --release` tree, as a
# distribution package would: the binary stripped of its debug info (kept
# beside it in a separate file that debuggers find through a debuglink), the
# systemd units, the man pages and the bash, zsh and fish completions.
#
#   packaging/install.sh                 # as root, into /usr and /etc
#   DESTDIR=/tmp/pkg packaging/install.sh
#
# Environment (all optional):
#   BINARY   the program to install (target/release/nativelink-lre)
#   DESTDIR  a staging root, for building a package
#   PREFIX   /usr; the units' ExecStart= is rewritten when it is not
#   UNITDIR  /etc/systemd/system (a package uses $PREFIX/lib/systemd/system)
#   DEBUG=no do not keep the debug info at all
#
# tests/packaging.rs runs this script into a scratch DESTDIR.
set -eu
cd "$(dirname "$0")/.."

BINARY=${BINARY:-target/release/nativelink-lre}
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr}
UNITDIR=${UNITDIR:-/etc/systemd/system}
DEBUG=${DEBUG:-yes}

if [ ! -x "$BINARY" ]; then
    echo "install.sh: $BINARY is not there; run \`cargo build --release\` first" >&2
    exit 1
fi
for tool in objcopy strip; do
    command -v "$tool" >/dev/null || {
        echo "install.sh: $tool is missing (Debian: apt-get install binutils)" >&2
        exit 1
    }
done

bin="$DESTDIR$PREFIX/bin/nativelink-lre"
install -d "$DESTDIR$PREFIX/bin"
tmp=$(mktemp "${TMPDIR:-/tmp}/nativelink-lre.XXXXXX")
trap 'rm -f "$tmp" "$tmp.debug"' EXIT
cp "$BINARY" "$tmp"
if [ "$DEBUG" = yes ]; then
    # The debug file goes where gdb looks for it: /usr/lib/debug + the
    # binary's own path.
    debugdir="$DESTDIR$PREFIX/lib/debug$PREFIX/bin"
    objcopy --only-keep-debug "$tmp" "$tmp.debug"
    install -d "$debugdir"
    install -m 0644 "$tmp.debug" "$debugdir/nativelink-lre.debug"
    strip --strip-debug "$tmp"
    objcopy --add-gnu-debuglink="$debugdir/nativelink-lre.debug" "$tmp"
else
    strip --strip-debug "$tmp"
fi
install -m 0755 "$tmp" "$bin"

# Man pages.
for page in man/*.[0-9]; do
    section=${page##*.}
    install -D -m 0644 "$page" "$DESTDIR$PREFIX/share/man/man$section/$(basename "$page")"
done

# Completions, from the program itself (clap_complete).
install -d "$DESTDIR$PREFIX/share/bash-completion/completions" \
    "$DESTDIR$PREFIX/share/zsh/vendor-completions" \
    "$DESTDIR$PREFIX/share/fish/vendor_completions.d"
"$BINARY" completions bash >"$DESTDIR$PREFIX/share/bash-completion/completions/nativelink-lre"
"$BINARY" completions zsh >"$DESTDIR$PREFIX/share/zsh/vendor-completions/_nativelink-lre"
"$BINARY" completions fish >"$DESTDIR$PREFIX/share/fish/vendor_completions.d/nativelink-lre.fish"

# systemd units, pointing at the installed binary.
install -d "$DESTDIR$UNITDIR"
for unit in packaging/systemd/*.socket packaging/systemd/*.service; do
    install -m 0644 "$unit" "$DESTDIR$UNITDIR/$(basename "$unit")"
done
if [ "$PREFIX" != /usr ]; then
    sed -i -E "s#^(ExecStart=[-@:+!]*)/usr/bin/nativelink-lre( |\$)#\1$PREFIX/bin/nativelink-lre\2#" \
        "$DESTDIR$UNITDIR/nativelink-lre.service"
fi

echo "installed $PREFIX/bin/nativelink-lre ($(wc -c <"$bin") bytes), its man pages, completions and units${DESTDIR:+ under $DESTDIR}"
