#!/usr/bin/env bash
# Sets up, builds (Release, -march=native) and runs the benchmark programs, writing their CSV
# files to build/bench/results/ (see bench/README.md for what each measures).
#
#   scripts/bench.sh            # bench_attention (3 repetitions, interleaved), bench_decoder,
#                               # bench_throughput, bench_engine, bench_gguf, trace_cost.sh
#                               # (the analyses: bench/analysis/run.sh)
#   scripts/bench.sh --smoke    # each benchmark once with a tiny time budget (CI)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
smoke=0
case "${1:-}" in
  --smoke) smoke=1 ;;
  "") ;;
  *) echo "error: unknown argument '$1' (use --smoke or nothing)" >&2; exit 2 ;;
esac

"$root/scripts/setup.sh"
build="$root/build/bench"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMSRNN_NATIVE=ON \
  -DMSRNN_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" \
  --target bench_attention bench_decoder bench_throughput bench_engine bench_soak bench_gguf msrnn-perplexity \
  msrnn-generate
results="$build/results"
mkdir -p "$results"

if [ "$smoke" = 1 ]; then
  # Every program runs end to end and writes its CSV; the figures mean nothing.
  "$build/bench/bench_attention" --benchmark_filter='/C:256/' --benchmark_min_time=0.001 \
    --csv "$results/attention_smoke.csv"
  policies=$("$build/examples/msrnn-perplexity" --help | sed -n 's/.*comma-separated: \([a-z0-9_,]*\).*/\1/p' | tr ',' '\n' | wc -l)
  test "$(wc -l < "$results/attention_smoke.csv")" -eq $((1 + 2 * policies * 2 * 5))  # 2 shapes, 2 thread counts, 4 precisions + in_cache
  "$build/bench/bench_decoder" --positions 64,128 --tokens 2 --csv "$results/decoder_smoke.csv"
  test "$(wc -l < "$results/decoder_smoke.csv")" -eq $((1 + policies * 2))  # 2 positions
  "$build/bench/bench_throughput" --model stories260K --tokens 256 --fractions 8 --steps 1 \
    --budget 16M --csv "$results/throughput_smoke.csv"
  test "$(wc -l < "$results/throughput_smoke.csv")" -eq $((3 * policies))  # full: 2 rows, others 3
  "$build/bench/bench_engine" --repeats 1 --rounds 1
  "$build/bench/bench_soak" --policy tova --capacity 64 --tokens 20000
  "$build/bench/bench_gguf" --dim 96 --layers 2 --rounds 1 --tokens 2 --csv "$results/gguf_smoke.csv"
  test "$(wc -l < "$results/gguf_smoke.csv")" -eq 5  # checkpoint and 3 GGUF types
  "$root/bench/trace_cost.sh" --smoke --bin "$build/examples"
  "$root/bench/analysis/run.sh" --smoke --bin "$build/examples" --out "$results/analysis_smoke"
  for figure in retention_tova lifetime_by_class ages lengths stream_stories260K_on_TinyStories; do
    test -s "$results/analysis_smoke/$figure.png"
  done
  "$root/bench/quality_sweep" --chunks 1 --out "$results/quality_smoke" \
    "$root/../shared/texts/TinyStories-valid.head30k.txt"
  exit 0
fi

"$build/bench/bench_attention" --benchmark_repetitions=3 \
  --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true \
  --csv "$results/attention.csv"
"$build/bench/bench_decoder" --csv "$results/decoder.csv"
"$build/bench/bench_throughput" --csv "$results/throughput.csv"
"$build/bench/bench_engine"
"$build/bench/bench_gguf" --csv "$results/gguf.csv"
"$root/bench/trace_cost.sh" --bin "$build/examples"
echo "CSV files in $results; the quality sweep is bench/quality_sweep (see bench/README.md)"
