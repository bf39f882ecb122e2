#!/bin/bash
# demo.sh - the main job: installs what is missing, builds, and runs ossl-mem-stress for 20 s:
# 4 pre-forked workers on one SSL_CTX in ossl_mem's shared arena, mutual certificate verification
# over loopback TCP, a context reload every 5 s and one worker killed and replaced, then the
# report, and the plot in stress.svg. Extra arguments go to ossl-mem-stress (try --help), e.g.
# "--mode glibc" for the same run on plain OpenSSL.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build.sh
make -s stress/ossl-mem-stress
exec stress/ossl-mem-stress --workers 4 --seconds 20 --reload-every 5 --kill-every 12 \
    --transport socket --plot stress.svg "$@"
