#!/bin/sh
# ft_exports.sh - fails if libossl_mem.so exports anything but ossl_mem_*, or misses a public function.
set -u
lib="${top_builddir:-.}/ossl_mem/.libs/libossl_mem.so"
hdr="${top_srcdir:-.}/ossl_mem/ossl_mem.h"
[ -f "$lib" ] || { echo "FAIL: $lib not built"; exit 1; }
command -v nm >/dev/null || { echo "SKIP: nm not installed"; exit 77; }
pass=0 fail=0
extra=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBVWRi]$/ {print $3}' | grep -v '^ossl_mem_' || true)
if [ -n "$extra" ]; then
    echo "FAIL: exported symbols outside ossl_mem_*:"; echo "$extra"; fail=$((fail + 1))
else
    echo "ok: only ossl_mem_* symbols are exported"; pass=$((pass + 1))
fi
for fn in $(sed -n 's/^OSSL_MEM_API [^(]*[ *]\(ossl_mem_[a-z_]*\)(.*/\1/p' "$hdr"); do
    if nm -D --defined-only "$lib" | awk '{print $3}' | grep -qx "$fn"; then
        pass=$((pass + 1))
    else
        echo "FAIL: public function $fn is not exported"; fail=$((fail + 1))
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
