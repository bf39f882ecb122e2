#!/bin/bash
# ft_fuzz.sh - builds the libFuzzer target (fuzz/fuzz_ops.c, ASan and UBSan) and runs it for about
# a minute: 40 s with the default options and 20 s with fill,canary,poison,quarantine=0.
# Any crash or model mismatch fails. FUZZ_SECONDS scales the run. Skipped (77) without clang's
# fuzzer runtime (tools/setup.sh installs clang and libclang-rt-14-dev).
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
secs=${FUZZ_SECONDS:-60}
dir=$(mktemp -d /tmp/ft_fuzz.XXXXXX)
trap 'rm -rf "$dir"' EXIT
"$top_srcdir/fuzz/build.sh" "$dir/fuzz_ops" >"$dir/build.log" 2>&1
rc=$?
[ $rc = 77 ] && { cat "$dir/build.log"; exit 77; }
[ $rc = 0 ] || { echo "FAIL: the fuzz target does not build"; cat "$dir/build.log"; exit 1; }
pass=0 fail=0
run() { # name seconds options
    mkdir -p "$dir/corpus.$1" "$dir/art.$1"
    cp "$top_srcdir"/fuzz/corpus/* "$dir/corpus.$1/"
    # libFuzzer's own exit status for a crash is 77, which automake would read as a skip:
    # -error_exitcode=1 makes it a plain failure
    (cd "$dir" && FUZZ_OSSL_MEM_OPTIONS="$3" timeout $(($2 + 120)) ./fuzz_ops \
        -max_total_time="$2" -timeout=10 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
        -error_exitcode=1 -artifact_prefix="$dir/art.$1/" "corpus.$1" >"$dir/$1.log" 2>&1)
    local status=$?
    local done_line runs
    done_line=$(grep -E "^#[0-9]+[[:space:]]+DONE" "$dir/$1.log" | tail -1)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/$1.log")
    if grep -q "shared scopes refused" "$dir/$1.log"; then
        echo "FAIL: $1: shared scopes were refused (fuzz/build.sh builds with -DPIC for the lock"
        echo "      interposition): the shared operations were not fuzzed"
        grep "fuzz_ops:" "$dir/$1.log"
        fail=$((fail + 1))
    elif [ $status = 0 ] && [ -n "$done_line" ]; then
        # the DONE line carries libFuzzer's final figures: cov (edges), ft (features), exec/s
        echo "ok: $1 (${3:-defaults}): ${runs:-?} runs; $done_line"
        pass=$((pass + 1))
    else
        echo "FAIL: $1 (${3:-defaults}): exit status $status"
        grep -E "mismatch|ERROR|SUMMARY|Test unit written|==[0-9]+==" "$dir/$1.log" | head -20
        tail -30 "$dir/$1.log"
        # keep the crashing input, so that it can be replayed: fuzz_ops FILE
        for a in "$dir/art.$1/"*; do
            [ -f "$a" ] || continue
            cp "$a" "$top_builddir/" && echo "input kept: $top_builddir/$(basename "$a")" \
                "(replay: fuzz/build.sh && FUZZ_OSSL_MEM_OPTIONS='$3' fuzz/fuzz_ops FILE;" \
                "alone it may pass: the allocator's caches and mmap addresses carry over" \
                "from the inputs before it, so the message above is the evidence)"
        done
        fail=$((fail + 1))
    fi
}
# at least 1 s each: -max_total_time=0 would mean no limit
run defaults $((secs * 2 / 3 > 0 ? secs * 2 / 3 : 1)) ""
run debugging $((secs / 3 > 0 ? secs / 3 : 1)) "fill,canary,poison,quarantine=0"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
