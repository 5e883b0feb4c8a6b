#!/usr/bin/env bash
# Builds and tests tests/bazel/workspace offline with Debian's Bazel 4.2.3,
# first locally, then again from a fresh --disk_cache after `bazel clean`, and
# checks that the second run was served 100% from the cache.
#
# Usage: tests/bazel/run_smoke.sh [SCRATCH_DIR]     (default /tmp/bazeltry)
# Needs: apt-get install -y bazel-bootstrap.  Writes only under SCRATCH_DIR.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
scratch=${1:-/tmp/bazeltry}
ws=$scratch/ws
root=$scratch/root
dc=$scratch/dc

rm -rf "$ws" "$dc"
mkdir -p "$scratch"
cp -a "$here/workspace" "$ws"   # never run Bazel inside the source tree
cd "$ws"

bazel=(bazel --batch --output_user_root="$root")
flags=(--nosandbox_debug --incompatible_strict_action_env --symlink_prefix=/
       --color=no --curses=no)
# Full cache hit: only "remote cache hit" (disk or remote cache) and
# "internal" entries, e.g. "INFO: 29 processes: 16 remote cache hit, 13 internal."
full_hit='^INFO: [0-9]+ process(es)?: [0-9]+ remote cache hit(, [0-9]+ internal)?\.$'

step() {  # step NAME bazel-args...
    local name=$1 log=$scratch/$1.log start end
    shift
    start=$(date +%s%N)
    if ! "${bazel[@]}" "$@" >"$log" 2>&1; then
        echo "FAILED: $name (log: $log)" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    end=$(date +%s%N)
    printf '%-16s %6d ms  %s\n' "$name" $(( (end - start) / 1000000 )) \
        "$(grep -E '^INFO: [0-9]+ process' "$log" || echo '(no process line)')"
}

"${bazel[@]}" clean >/dev/null 2>&1 || true
step build-local      build "${flags[@]}" //...
step test-local       test  "${flags[@]}" //...
"${bazel[@]}" clean >/dev/null 2>&1
step test-fill-cache  test  "${flags[@]}" --disk_cache="$dc" //...
"${bazel[@]}" clean >/dev/null 2>&1
step test-from-cache  test  "${flags[@]}" --disk_cache="$dc" //...

if ! grep -Eq "$full_hit" "$scratch/test-from-cache.log"; then
    echo "FAILED: rebuild after clean was not 100% cache hits" >&2
    exit 1
fi
grep -q 'Executed 0 out of 2 tests: 2 tests pass' "$scratch/test-from-cache.log"
echo "bazel smoke: OK (100% cache hits after clean)"
