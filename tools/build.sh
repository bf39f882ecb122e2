#!/bin/bash
# build.sh - configures (once) and builds ossl_mem in the source tree; extra arguments go to configure.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt Makefile.in ]; then
    autoreconf -fi >/dev/null 2>&1
fi
if [ ! -f Makefile ] || [ configure -nt config.status ] || [ $# -gt 0 ]; then
    ./configure -q "$@"
fi
make -s -j"$(nproc)"
