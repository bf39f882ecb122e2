#!/bin/bash
# sanitize.sh - builds a copy of the source tree (its tracked files) with --enable-sanitizers (ASan,
# UBSan) in a scratch directory and runs the whole suite there (make check); exit 0 only if all pass.
# Usage: tools/sanitize.sh [DIR]   (default: a new directory under /tmp, removed on success)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$(mktemp -d /tmp/ossl_mem-san.XXXXXX)}
mkdir -p "$dir"
# a copy rather than an out-of-tree build: the source tree is usually configured in place (CI
# builds there first), and automake then refuses a VPATH build. In a git checkout the tracked
# files are copied; in an unpacked tarball everything, then cleaned.
if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$src" ls-files -z | (cd "$src" && xargs -0 cp --parents -t "$dir")
else
    cp -a "$src/." "$dir"
    [ ! -f "$dir/Makefile" ] || make -s -C "$dir" distclean >/dev/null 2>&1 || true
fi
cd "$dir"
autoreconf -fi >/dev/null 2>&1
./configure -q --enable-sanitizers
make -s -j"$(nproc)" >/dev/null
status=0
FUZZ_SECONDS=${FUZZ_SECONDS:-10} make -j"$(nproc)" check >check.out 2>&1 || status=$?
grep -E "^(PASS|FAIL|SKIP|ERROR|XPASS|XFAIL):" check.out
if [ $status = 0 ]; then
    echo "sanitizer build: every test passed"
    [ $# -ge 1 ] || rm -rf "$dir"
else
    "$src/tools/failed-logs.sh" . 40
    echo "sanitizer build: failures (logs in $dir)"
fi
exit $status
