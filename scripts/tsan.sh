#!/usr/bin/env bash
# Builds the core test program with ThreadSanitizer (clang) and runs the test that drives
# independent caches from several threads.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build="$root/build/tsan"
cmake -S "$root" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMSRNN_SANITIZE_THREAD=ON -DMSRNN_BUILD_EXAMPLES=OFF -DMSRNN_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target msrnn_tests
TSAN_OPTIONS=halt_on_error=1 "$build/tests/msrnn_tests" --gtest_filter='Threads.*:ForkJoin.*:*ThreadsGive*:*EvictionEvents*'
