#!/usr/bin/env bash
# The soak benchmark: 1,000,000 tokens of stories260K with every bounded policy at capacity 256,
# one process each. Builds in build/release. Arguments go to bench_soak (e.g. --tokens 100000).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build="$root/build/release"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMSRNN_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target bench_soak
for policy in window sink h2o tova; do
  "$build/bench/bench_soak" --policy "$policy" --capacity 256 "$@"
  echo
done
