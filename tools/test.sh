#!/bin/bash
# test.sh - installs what is missing, builds, and runs every test (make check); exit status 0 only if all pass.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build.sh
status=0
make -j"$(nproc)" check || status=$?
# CUnit's own summary and each fork test's closing line, so the counts are visible in the log.
grep -A4 "Run Summary" tests/unit_tests.log || true
for log in fork_tests/*.log common/*.log; do
    [ -f "$log" ] && printf '%-32s %s\n' "${log%.log}:" "$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)"
done
num() { sed -n "s/^# $1: *//p" test-suite.log; }
# a failing test's own FAIL lines, so a CI log shows what failed and not only which test
tools/failed-logs.sh .
echo "all tests: $(num PASS) passed, $(( $(num FAIL) + $(num ERROR) + $(num XPASS) )) failed, $(num SKIP) skipped"
exit $status
