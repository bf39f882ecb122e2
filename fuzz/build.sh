#!/bin/bash
# build.sh - builds fuzz/fuzz_ops (libFuzzer, ASan, UBSan) with clang, the library's sources
# compiled in. Usage: fuzz/build.sh [OUTPUT]   (default: fuzz/fuzz_ops next to this script)
# Exits 77 with the reason when clang or its fuzzer runtime is missing.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$src/fuzz/fuzz_ops}
cc=${FUZZ_CC:-clang}
command -v "$cc" >/dev/null || { echo "SKIP: $cc is not installed (tools/setup.sh installs clang)"; exit 77; }
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }\n' >"$probe/p.c"
"$cc" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2>"$probe/err" || {
    echo "SKIP: $cc cannot link -fsanitize=fuzzer (install libclang-rt-14-dev): $(head -1 "$probe/err")"
    exit 77
}
# -DPIC: locks.c then defines pthread_rwlock_init and pthread_mutex_init in the executable,
# which exports them to libcrypto (it calls them) as libossl_mem.so would: shared scopes work
# with OpenSSL's locks in the arena made process-shared, as in a server.
core=(init options router pool large tc site fault report check arena shared locks debug)
files=()
for f in "${core[@]}"; do files+=("$src/ossl_mem/$f.c"); done
"$cc" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -fno-omit-frame-pointer -DPIC -fsanitize-coverage-ignorelist="$src/fuzz/coverage_ignore.txt" -I"$src" -I"$src/ossl_mem" -D_GNU_SOURCE \
    "$src/fuzz/fuzz_ops.c" "${files[@]}" -o "$out" -lssl -lcrypto -lpthread -ldl
echo "built $out"
