#!/usr/bin/env bash
# build_by_hand.sh - builds the benchmark programs into bench/ with plain gcc, once the library is built (ossl_mem/.libs/libossl_mem.a).
set -eu -o pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
lib=ossl_mem/.libs/libossl_mem.a
if [[ ! -f $lib ]]; then
    echo "build_by_hand.sh: $lib is missing; build the library first:" >&2
    echo "  (test -f configure || autoreconf -fi) && (test -f Makefile || ./configure) && make -j2" >&2
    exit 1
fi

CC=${CC:-gcc}
CFLAGS=${CFLAGS:--O2}
flags=(-std=gnu11 $CFLAGS -Wall -Wextra -Wshadow -D_GNU_SOURCE -I"$top")
run() { echo "+ $*"; "$@"; }

run "$CC" "${flags[@]}" -o bench/handshake_bench bench/handshake_bench.c common/omt.c "$lib" -lssl -lcrypto -lpthread
run "$CC" "${flags[@]}" -o bench/replay_record bench/replay_record.c common/omt.c -lssl -lcrypto -lpthread
run "$CC" "${flags[@]}" -DREPLAY_GLIBC -o bench/replay_glibc bench/replay.c -lcrypto
run "$CC" "${flags[@]}" -DREPLAY_JEMALLOC -o bench/replay_jemalloc bench/replay.c -lcrypto -ljemalloc
run "$CC" "${flags[@]}" -DREPLAY_MIMALLOC -o bench/replay_mimalloc bench/replay.c -lcrypto -lmimalloc
run "$CC" "${flags[@]}" -DREPLAY_OSSL_MEM -o bench/replay_ossl_mem bench/replay.c "$lib" -lssl -lcrypto -lpthread
echo "built: bench/handshake_bench bench/replay_record bench/replay_glibc bench/replay_jemalloc bench/replay_mimalloc bench/replay_ossl_mem"
