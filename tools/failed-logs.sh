#!/bin/bash
# failed-logs.sh DIR [LINES] - for each test under DIR that failed (its .trs says FAIL or ERROR): its
# log's name, its FAIL lines and, with LINES > 0, the last LINES lines of the log.
dir=${1:-.} lines=${2:-0}
for trs in $(grep -lE "^:test-result: (FAIL|ERROR)" $(find "$dir" -name "*.trs" 2>/dev/null) /dev/null); do
    echo "=== ${trs%.trs}.log"
    grep -E "^FAIL" "${trs%.trs}.log" | head -20
    [ "$lines" -gt 0 ] && tail -n "$lines" "${trs%.trs}.log"
done
exit 0
