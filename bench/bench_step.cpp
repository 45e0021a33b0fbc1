// One decode step of one layer (insert + attention + policy bookkeeping + eviction) per policy,
// on a full cache: a first benchmark of the core (no bandwidth baseline, threads or CSV yet).
//
//   bench_step [--benchmark_filter=...] [--benchmark_min_time=...]
#include <benchmark/benchmark.h>

#include <msrnn/msrnn.hpp>
#include <random>

namespace {

using msrnn::Index;
using msrnn::RowMatrix;

RowMatrix random_matrix(Index rows, Index cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  RowMatrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

// A GQA layer: 32 query heads, 8 KV heads, head_dim 128 (Llama-3-8B's attention shape).
template <class Policy>
void BM_Step(benchmark::State& state) {
  const Index capacity = state.range(0);
  msrnn::CacheConfig config;
  config.n_q_heads = 32;
  config.n_kv_heads = 8;
  config.head_dim = 128;
  config.capacity = capacity;
  config.rope = msrnn::Rope(128);
  msrnn::MultiStateCache<Policy> cache(config);
  // Fill the cache with one chunk (matrix products), then step on a full cache.
  const RowMatrix prompt_q = random_matrix(capacity, 32 * 128, 1);
  const RowMatrix prompt_kv = random_matrix(capacity, 8 * 128, 2);
  RowMatrix prompt_out(capacity, 32 * 128);
  cache.step_chunk(0, prompt_q, prompt_kv, prompt_kv, prompt_out);

  const RowMatrix q = random_matrix(32, 128, 3);
  const RowMatrix kv = random_matrix(8, 128, 4);
  RowMatrix out(32, 128);
  for (auto _ : state) {
    cache.step(0, q, kv, kv, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["state_bytes"] = static_cast<double>(cache.state_bytes());
}

BENCHMARK_TEMPLATE(BM_Step, msrnn::Window)->Arg(256)->Arg(1024)->Arg(4096);
BENCHMARK_TEMPLATE(BM_Step, msrnn::WindowPlusI)->Arg(256)->Arg(1024)->Arg(4096);
BENCHMARK_TEMPLATE(BM_Step, msrnn::H2O)->Arg(256)->Arg(1024)->Arg(4096);
BENCHMARK_TEMPLATE(BM_Step, msrnn::TOVA)->Arg(256)->Arg(1024)->Arg(4096);

}  // namespace

BENCHMARK_MAIN();
