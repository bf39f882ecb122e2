#!/bin/bash
# sanitize.sh - builds the committed tree with ./configure --enable-sanitizers (ASan and UBSan) in a
# scratch directory and runs the whole suite there (make check); exit status 0 only if all pass.
# Usage: tools/sanitize.sh [DIR]   (default: a new directory under /tmp, removed on success)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$(mktemp -d /tmp/ossl_mem-san.XXXXXX)}
mkdir -p "$dir"
# the committed files only: a configured source tree cannot host an out-of-tree build
git -C "$src" ls-files -z | (cd "$src" && xargs -0 cp --parents -t "$dir")
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
    for log in $(grep -lE "^(FAIL|ERROR)" $(find . -name "*.trs")); do tail -40 "${log%.trs}.log"; done
    echo "sanitizer build: failures (logs in $dir)"
fi
exit $status
