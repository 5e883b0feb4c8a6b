#!/bin/bash
# A/B of two nativelink-lre binaries on /bin/true: both daemons run side by
# side (state under $AB_DIR, default /tmp/lre-ab) and the calls alternate
# between them, so both see the same background load. Prints the p50 of
# the in-daemon wall time (`run --json`'s wall_ms) for each.
#   A=path/to/old/nativelink-lre B=path/to/new/nativelink-lre N=40 benches/ab_true.sh
set -euo pipefail
: "${A:?A=old binary}" "${B:?B=new binary}"
N=${N:-40}
DIR=${AB_DIR:-/tmp/lre-ab}
rm -rf "$DIR"
pids=()
for w in A B; do
  mkdir -p "$DIR/$w"
  printf 'state-dir = "%s/%s/state"\n[listen]\nunix = "%s/%s/sock"\ntcp = []\n' "$DIR" $w "$DIR" $w > "$DIR/$w/config.toml"
  bin=${!w}
  "$bin" --config "$DIR/$w/config.toml" > "$DIR/$w/log" 2>&1 & pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$DIR"' EXIT
sleep 3
for i in $(seq "$N"); do
  for w in A B; do
    bin=${!w}
    "$bin" run --address "unix://$DIR/$w/sock" --json -- /bin/true |
      python3 -c "import json,sys; print('$w', json.load(sys.stdin)['wall_ms'])" >> "$DIR/walls"
  done
done
python3 - "$DIR/walls" <<'PY'
import statistics, sys
d = {}
for line in open(sys.argv[1]):
    w, t = line.split()
    d.setdefault(w, []).append(float(t))
for w, v in sorted(d.items()):
    print(f"{w}: /bin/true wall p50 {statistics.median(v):.1f} ms over {len(v)} calls")
PY
