#!/bin/sh
# ft_exports.sh - fails if libossl_mem.so exports anything but ossl_mem_* and the interposed
# pthread lock functions (locks.c), or misses one of them.
set -u
lib="${top_builddir:-.}/ossl_mem/.libs/libossl_mem.so"
hdr="${top_srcdir:-.}/ossl_mem/ossl_mem.h"
[ -f "$lib" ] || { echo "FAIL: $lib not built"; exit 1; }
command -v nm >/dev/null || { echo "SKIP: nm not installed"; exit 77; }
pass=0 fail=0
lockfns="pthread_rwlock_init pthread_rwlock_rdlock pthread_rwlock_wrlock pthread_rwlock_tryrdlock
pthread_rwlock_trywrlock pthread_rwlock_timedrdlock pthread_rwlock_timedwrlock
pthread_rwlock_clockrdlock pthread_rwlock_clockwrlock pthread_rwlock_unlock pthread_rwlock_destroy
pthread_mutex_init pthread_mutex_lock pthread_mutex_trylock pthread_mutex_timedlock
pthread_mutex_clocklock"
extra=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBVWRi]$/ {print $3}' |
        grep -v -e '^ossl_mem_' $(for f in $lockfns; do printf -- "-e ^%s$ " "$f"; done) || true)
if [ -n "$extra" ]; then
    echo "FAIL: exported symbols outside ossl_mem_* and the lock interposition:"; echo "$extra"
    fail=$((fail + 1))
else
    echo "ok: only ossl_mem_* and the interposed pthread lock functions are exported"; pass=$((pass + 1))
fi
# the lock interposition (locks.c) must be in the shared library
for fn in $lockfns; do
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
