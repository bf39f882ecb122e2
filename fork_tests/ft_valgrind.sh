#!/bin/bash
# ft_valgrind.sh - the unit tests again, under valgrind's memcheck: no invalid access, no use of
# uninitialised values, no definite leak. Skipped (77) without valgrind (tools/setup.sh installs it).
set -u
top_builddir=${top_builddir:-.}
command -v valgrind >/dev/null || { echo "SKIP: valgrind is not installed"; exit 77; }
unit="$top_builddir/tests/unit_tests"
[ -x "$unit" ] || { echo "FAIL: $unit not built"; exit 1; }
if grep -q __asan_init "$unit"; then
    echo "SKIP: built with --enable-sanitizers: ASan and valgrind do not run together"
    exit 77
fi
log=$(mktemp /tmp/ft_valgrind.XXXXXX)
trap 'rm -f "$log"' EXIT
timeout 900 valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    "$unit" >"$log" 2>&1
status=$?
grep -E "ERROR SUMMARY|definitely lost|Run Summary" -A3 "$log" | grep -v "^--$" | head -12
if [ $status = 0 ] && grep -q "ERROR SUMMARY: 0 errors" "$log"; then
    echo "1 passed, 0 failed"
    exit 0
fi
echo "FAIL: exit status $status"
grep -E "^==[0-9]+== " "$log" | head -60
echo "0 passed, 1 failed"
exit 1
