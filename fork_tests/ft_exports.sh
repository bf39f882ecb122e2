#!/bin/sh
# ft_exports.sh - fails if libossl_mem.so exports anything but ossl_mem_* and the two interposed
# pthread init functions, or misses one of them.
set -u
lib="${top_builddir:-.}/ossl_mem/.libs/libossl_mem.so"
hdr="${top_srcdir:-.}/ossl_mem/ossl_mem.h"
[ -f "$lib" ] || { echo "FAIL: $lib not built"; exit 1; }
command -v nm >/dev/null || { echo "SKIP: nm not installed"; exit 77; }
pass=0 fail=0
extra=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBVWRi]$/ {print $3}' |
        grep -v -e '^ossl_mem_' -e '^pthread_rwlock_init$' -e '^pthread_mutex_init$' || true)
if [ -n "$extra" ]; then
    echo "FAIL: exported symbols outside ossl_mem_* and the lock interposition:"; echo "$extra"
    fail=$((fail + 1))
else
    echo "ok: only ossl_mem_* and pthread_{rwlock,mutex}_init are exported"; pass=$((pass + 1))
fi
# the lock interposition (DESIGN.md O5) must be in the shared library
for fn in pthread_rwlock_init pthread_mutex_init; do
    if nm -D --defined-only "$lib" | awk '{print $3}' | grep -qx "$fn"; then
        pass=$((pass + 1))
    else
        echo "FAIL: $fn is not defined by the library: OpenSSL's shared locks would be private"
        fail=$((fail + 1))
    fi
done
for fn in $(sed -n 's/^OSSL_MEM_API [^(]*[ *]\(ossl_mem_[a-z_]*\)(.*/\1/p' "$hdr"); do
    if nm -D --defined-only "$lib" | awk '{print $3}' | grep -qx "$fn"; then
        pass=$((pass + 1))
    else
        echo "FAIL: public function $fn is not exported"; fail=$((fail + 1))
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
