#!/bin/bash
# Usage: summary_test.sh ACTUAL EXPECTED (runfiles-relative paths).
set -eu
actual="$1"
expected="$2"
if cmp -s "$actual" "$expected"; then
    echo "summary_test: $actual matches $expected"
    exit 0
fi
echo "summary_test: $actual differs from $expected" >&2
diff -u "$expected" "$actual" >&2 || true
exit 1
