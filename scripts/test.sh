#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (ctest): GoogleTest, the examples' checks and a
# consumer built against the installed package.
#
#   scripts/test.sh [--compiler g++|clang++] [--build-type TYPE] [--std 17|20] [--sanitize] [--werror]
#
# --sanitize builds with AddressSanitizer + UndefinedBehaviorSanitizer; --werror turns warnings
# of our own targets into errors. Each combination builds in its own folder under build/.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
compiler=g++
build_type=RelWithDebInfo
sanitize=OFF
werror=OFF
std=17
while (($#)); do
  case "$1" in
    --compiler) compiler=${2:?--compiler needs a value}; shift 2 ;;
    --build-type) build_type=${2:?--build-type needs a value}; shift 2 ;;
    --std) std=${2:?--std needs a value}; shift 2 ;;
    --sanitize) sanitize=ON; shift ;;
    --werror) werror=ON; shift ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "error: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

"$root/scripts/setup.sh"

name="$(basename "$compiler")-$build_type-c++$std"
[[ $sanitize == ON ]] && name+="-asan-ubsan"
build="$root/build/test-$name"
echo "== msrnn tests: $compiler, $build_type, C++$std, sanitizers $sanitize, warnings as errors $werror"
# Debug keeps asserts (Eigen's and ours) but optimises a little: unoptimised Eigen is ~50x slower.
cmake -S "$root" -B "$build" -DCMAKE_CXX_COMPILER="$compiler" -DCMAKE_BUILD_TYPE="$build_type" \
  -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" -DCMAKE_CXX_STANDARD="$std" -DMSRNN_WERROR="$werror" -DMSRNN_SANITIZE="$sanitize" >/dev/null
cmake --build "$build" -j "$(nproc)"
# Every public header compiles on its own.
cmake --build "$build" --target all_verify_interface_header_sets -j "$(nproc)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$build" --output-on-failure -j "$(nproc)"
