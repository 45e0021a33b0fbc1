#!/usr/bin/env bash
# Sets up, builds (Release) and runs the example decoder: stories260K (from ../shared/models, see
# the README) generating text with its KV cache bounded by TOVA.
#
#   scripts/run.sh                      # greedy text, TOVA with 64 states, 600 tokens
#   scripts/run.sh generate ARGS...     # msrnn-generate with your flags (see --help)
#   scripts/run.sh perplexity ARGS...   # msrnn-perplexity (see --help)
#   scripts/run.sh attention-layer ...  # one attention layer, every policy against Full
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build="$root/build/release"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMSRNN_NATIVE=ON -DMSRNN_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target msrnn-generate msrnn-perplexity msrnn-attention-layer

tool=${1:-}
case "$tool" in
  generate|perplexity|attention-layer) shift; exec "$build/examples/msrnn-$tool" "$@" ;;
  "") exec "$build/examples/msrnn-generate" --policy tova --capacity 64 --steps 600 --temperature 0 ;;
  *) exec "$build/examples/msrnn-generate" "$@" ;;
esac
