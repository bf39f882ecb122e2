#!/bin/bash
# demo.sh - the main job: installs what is missing, builds, and runs the handshake demo with its report.
# Extra arguments go to the demo (try --help); OSSL_MEM_OPTIONS is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build.sh
make -s examples/ossl-mem-demo
exec examples/ossl-mem-demo "$@"
