#!/bin/sh
# ft_docs.sh - the README documents every option the library knows (OSSL_MEM_OPTIONS=help is the source).
set -u
demo="${top_builddir:-.}/examples/ossl-mem-demo"
readme="${top_srcdir:-.}/README.md"
[ -x "$demo" ] || { echo "FAIL: $demo not built"; exit 1; }
pass=0 fail=0
words=$(OSSL_MEM_OPTIONS=help "$demo" --handshakes 1 2>&1 >/dev/null |
        sed -n 's/^  \(\[no-\]\)\{0,1\}\([a-z-]*\).*/\2/p')
[ -n "$words" ] || { echo "FAIL: no option table printed"; exit 1; }
for w in $words; do
    if grep -q "^| \`$w" "$readme"; then pass=$((pass + 1)); else
        echo "FAIL: option '$w' is not in README's option table"; fail=$((fail + 1)); fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
