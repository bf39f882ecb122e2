#!/bin/sh
# ft_docs.sh - the README and ossl_mem(3) document every option the library knows
# (OSSL_MEM_OPTIONS=help is the source), and the man pages render without a groff warning.
set -u
demo="${top_builddir:-.}/examples/ossl-mem-demo"
readme="${top_srcdir:-.}/README.md"
man3="${top_srcdir:-.}/man/ossl_mem.3"
[ -x "$demo" ] || { echo "FAIL: $demo not built"; exit 1; }
pass=0 fail=0
words=$(OSSL_MEM_OPTIONS=help "$demo" --handshakes 1 2>&1 >/dev/null |
        sed -n 's/^  \(\[no-\]\)\{0,1\}\([a-z-]*\).*/\2/p')
[ -n "$words" ] || { echo "FAIL: no option table printed"; exit 1; }
for w in $words; do
    if grep -q "^| \`$w" "$readme"; then pass=$((pass + 1)); else
        echo "FAIL: option '$w' is not in README's option table"; fail=$((fail + 1)); fi
    # in the man page the option is a .B/.BI/.BR line's first word, a - written \-
    if awk -v w="$w" '/^\.B/ { gsub(/\\-/, "-"); if (index($2, w) == 1 &&
            substr($2, length(w) + 1, 1) !~ /[a-z-]/) f = 1 } END { exit !f }' "$man3"; then
        pass=$((pass + 1)); else
        echo "FAIL: option '$w' is not in ossl_mem(3)"; fail=$((fail + 1)); fi
done
# ossl-mem-stress(1) documents every option of ossl-mem-stress --help
stress="${top_builddir:-.}/stress/ossl-mem-stress"
man1="${top_srcdir:-.}/man/ossl-mem-stress.1"
for w in $("$stress" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
    if grep -q -- "$(printf '%s' "$w" | sed 's/-/\\\\-/g')" "$man1"; then pass=$((pass + 1)); else
        echo "FAIL: ossl-mem-stress option '$w' is not in ossl-mem-stress(1)"; fail=$((fail + 1)); fi
done
if command -v groff >/dev/null; then
    for page in "${top_srcdir:-.}"/man/*.[0-9]; do
        warn=$(groff -ww -man -Tutf8 "$page" 2>&1 >/dev/null)
        if [ -z "$warn" ]; then pass=$((pass + 1)); else
            echo "FAIL: groff warns about $page: $warn"; fail=$((fail + 1)); fi
    done
else
    echo "FAIL: groff is not installed (tools/setup.sh installs groff-base)"; fail=$((fail + 1))
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
