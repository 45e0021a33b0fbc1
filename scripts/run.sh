#!/usr/bin/env bash
# Sets up, builds (Release) and runs the main example: one attention layer wrapped with msrnn,
# every policy compared with Full. Arguments go to the example (see --help).
#
#   scripts/run.sh [--capacity 64] [--tokens 2000] [--policy full,window,sink,h2o,tova]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build="$root/build/release"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMSRNN_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target msrnn-attention-layer
"$build/examples/msrnn-attention-layer" "$@"
