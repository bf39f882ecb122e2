#!/bin/bash
# demo.sh - the main job: installs what is missing, builds, and runs ossl-mem-stress for 20 s:
# 4 pre-forked workers on one SSL_CTX in ossl_mem's shared arena, mutual certificate verification
# over loopback TCP, a context reload every 5 s and a worker SIGKILLed and replaced once in every
# 8 s (two or three kills, each at a random instant of its interval: mid-handshake, inside
# OpenSSL, unannounced; a lock of the shared context it held is recovered by the next locker), then
# the report, and the plot in stress.svg if gnuplot is there.
# Loopback TCP rather than BIO pairs: separate client processes, real sockets and a shared
# listening socket are what a pre-fork server sees, and the client processes (forked by the
# master after the context was registered) take part in the context's lifetime rules too.
# Extra arguments go to ossl-mem-stress (try --help), e.g. "--mode glibc" for the same run on
# plain OpenSSL.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build.sh
make -s stress/ossl-mem-stress
exec stress/ossl-mem-stress --workers 4 --seconds 20 --verify mutual --mode shared \
    --transport socket --reload-every 5 --kill-every 8 --kill-at anywhere --plot stress.svg "$@"
