#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for SECONDS (default 60).
# A crash, a leak or a failed invariant stops that fuzzer with its input saved under
# build/fuzz/findings, and this script exits non-zero.
#
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
"$root/scripts/setup.sh"
build="$root/build/fuzz"
cmake -S "$root" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMSRNN_BUILD_FUZZ=ON -DMSRNN_BUILD_TESTS=OFF -DMSRNN_BUILD_EXAMPLES=OFF \
  -DMSRNN_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j "$(nproc)"
mkdir -p "$build/findings"
models="${MSRNN_MODEL_DIR:-$root/../shared/models}"
status=0
for target in checkpoint tokenizer encode cache_step state session gguf; do
  corpus="$build/corpus/$target"
  mkdir -p "$corpus"
  # Seeds: the real files, where the target reads such files.
  case "$target" in
    tokenizer) [[ -f $models/tok512.bin ]] && { printf '\x05' | cat - "$models/tok512.bin" > "$corpus/seed_tok512"; } ;;
    encode) printf 'Once upon a time, there was a little girl named Lily.\n' > "$corpus/seed_text" ;;
    gguf) python3 "$root/fuzz/gguf_seed.py" "$corpus/seed_tiny_llama.gguf" ;;
  esac
  # A GGUF file with its 259 byte-fallback pieces takes ~9 KB (the seed); the others fit in 4 KB.
  max_len=4096
  [[ $target == gguf ]] && max_len=16384
  echo "== fuzz_$target for ${seconds}s"
  if ! "$build/fuzz/fuzz_$target" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len="$max_len" \
      -artifact_prefix="$build/findings/$target-" -print_final_stats=1 "$corpus" \
      > "$build/fuzz_$target.log" 2>&1; then
    echo "fuzz_$target FOUND A PROBLEM:"; tail -40 "$build/fuzz_$target.log"; status=1
  else
    grep -E "stat::number_of_executed_units|Done " "$build/fuzz_$target.log" | tail -2
  fi
done
exit $status
