// bench_attention: one decode step of one attention layer per policy (insert + attention + policy
// bookkeeping + eviction), against a streaming read of the same key/value bytes.
//
//   bench_attention [--csv FILE] [Google Benchmark flags, e.g. --benchmark_filter=gqa
//                    --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true]
//
// Shapes: a Llama-2-7B layer (32 query heads, 32 KV heads, head_dim 128) and a GQA layer (32
// query heads, 8 KV heads); capacities 256, 1024, 4096, 16384; 1 and 2 threads. Every step runs
// on a full cache (C states, so C + 1 are attended), its keys and values stored in each KvType
// (f32, f16, bf16, q8: step/<shape>/<policy>/<kv_type>/...). The baseline `read/<shape>/<kv_type>`
// streams as many bytes as that step's stored keys and values (KeyStore::bytes + ValueStore::bytes
// per KV head, scales included), so read_bw_fraction = baseline time / step time is the share of
// the machine's read bandwidth a step reaches on the bytes it actually reads. Every policy's
// benchmark also steps a Window cache of the same shape, alternating with it step by step, so that
// overhead_vs_window compares steps taken side by side (the machine's noise hits both alike; Window
// against Window shows what is left of it). With in_cache positions
// (step/<shape>/<policy>/in_cache/f32/...), the partner is the same policy with absolute positions:
// vs_absolute is what keeping keys at their rank costs. The CSV has one row per (shape, policy,
// positions, kv_type, capacity, threads), medians when repetitions are asked for.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <msrnn/fork_join.hpp>
#include <msrnn/msrnn.hpp>
#include <random>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "csv.hpp"

namespace {

using msrnn::Index;
using msrnn::RowMatrix;

struct Shape {
  const char* name;
  Index n_q, n_kv, d;
};
const Shape kShapes[] = {{"llama2-7b", 32, 32, 128}, {"gqa", 32, 8, 128}};
const Index kCapacities[] = {256, 1024, 4096, 16384};
const Index kThreads[] = {1, 2};

// What a benchmark measured, by name (filled at registration, read by the CSV writer).
struct Case {
  std::string shape, policy, positions, kv_type;
  Index capacity, threads;
  double bytes;  // K/V bytes one step reads: n_kv * (C + 1) slots of keys and values, as stored
};
const msrnn::KvType kKvTypes[] = {msrnn::KvType::f32, msrnn::KvType::f16, msrnn::KvType::bf16,
                                  msrnn::KvType::q8};
std::map<std::string, Case>& cases() {
  static std::map<std::string, Case> all;
  return all;
}

// Seeded normal floats (rows, cols), made once per size and shared by the benchmarks.
const RowMatrix& random_matrix(Index rows, Index cols, unsigned seed) {
  static std::map<std::tuple<Index, Index, unsigned>, RowMatrix> made;
  auto key = std::make_tuple(rows, cols, seed);
  auto it = made.find(key);
  if (it != made.end()) return it->second;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  RowMatrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return made.emplace(key, std::move(m)).first->second;
}

msrnn::CacheConfig layer_config(const Shape& s, Index capacity, Index threads,
                                msrnn::PositionMode positions = msrnn::PositionMode::absolute,
                                msrnn::KvType type = msrnn::KvType::f32) {
  msrnn::CacheConfig config;
  config.kv_type = type;
  config.positions = positions;
  config.n_q_heads = s.n_q;
  config.n_kv_heads = s.n_kv;
  config.head_dim = s.d;
  config.capacity = capacity;
  config.rope = msrnn::Rope(s.d);
  config.threads = threads;
  return config;
}

// The key and value bytes a step of one layer reads: C + 1 slots (the library's formula; with
// in_cache positions the unrotated keys are kept too, but a step reads only the rotated ones).
double kv_bytes(const Shape& s, Index capacity, msrnn::KvType type) {
  const msrnn::CacheConfig config =
      layer_config(s, capacity, 1, msrnn::PositionMode::absolute, type);
  return static_cast<double>(msrnn::kv_state_bytes(config, capacity + 1));
}

// One decode step on a cache holding C states, timed alone (manual time), and in alternation
// a step of its partner for the ratio: a Window cache (absolute positions) or the same policy with
// absolute positions (in_cache). The states are appended (keys and values from random
// data: the cost of a step does not depend on their values), then every step inserts one and a
// bounded policy evicts one. Full cannot evict, so it is refilled to C states (untimed) every C/16
// steps: it holds between C and C + C/16 + 1 states, ~3% above C on average.
template <class Policy, class Partner>
void step_benchmark(benchmark::State& state, Shape s, Index capacity, Index threads,
                    msrnn::PositionMode positions, msrnn::KvType type) {
  using Clock = std::chrono::steady_clock;
  constexpr bool kFull = !Policy::kEvicts;
  const Index refill_every = std::max<Index>(1, capacity / 16);
  const Index reserved = kFull ? capacity + refill_every + 1 : capacity;
  msrnn::MultiStateCache<Policy> cache(layer_config(s, reserved, threads, positions, type));
  // (the same policy as partner holds as many states; Window holds C)
  constexpr bool kSame = std::is_same_v<Policy, Partner>;
  msrnn::MultiStateCache<Partner> window(
      layer_config(s, kSame ? reserved : capacity, threads, msrnn::PositionMode::absolute, type));
  const RowMatrix& prompt_k = random_matrix(capacity, s.n_kv * s.d, 1);
  const RowMatrix& prompt_v = random_matrix(capacity, s.n_kv * s.d, 2);
  auto fill = [&] {
    cache.reset();
    cache.append(0, prompt_k, prompt_v);
    window.reset();
    window.append(0, prompt_k, prompt_v);
  };
  fill();
  const RowMatrix& q = random_matrix(64, s.n_q * s.d, 3);
  const RowMatrix& kv = random_matrix(64, 2 * s.n_kv * s.d, 4);
  RowMatrix out(s.n_q, s.d);
  auto step = [&](auto& c, Index row) {
    const Clock::time_point start = Clock::now();
    c.step(0, Eigen::Map<const RowMatrix>(q.row(row).data(), s.n_q, s.d),
           Eigen::Map<const RowMatrix>(kv.row(row).data(), s.n_kv, s.d),
           Eigen::Map<const RowMatrix>(kv.row(row).data() + s.n_kv * s.d, s.n_kv, s.d), out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    return std::chrono::duration<double>(Clock::now() - start).count();
  };
  double policy_seconds = 0, window_seconds = 0;
  Index i = 0;
  for (auto _ : state) {
    if (kFull && i > 0 && i % refill_every == 0) fill();
    const Index row = i % 64;
    double mine = 0;
    if (i++ % 2 == 0) {  // alternate which goes first
      mine = step(cache, row);
      window_seconds += step(window, row);
    } else {
      window_seconds += step(window, row);
      mine = step(cache, row);
    }
    policy_seconds += mine;
    state.SetIterationTime(mine);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kv_bytes(s, capacity, type)));
  state.counters["vs_partner"] = policy_seconds / window_seconds;
}

// The streaming-read baseline: per KV head, a buffer of as many bytes as its stored keys and
// values (C + 1 slots of `type`), summed as 64-bit words (a sum that costs far less than the
// read), heads split over the threads as a step splits them.
void read_benchmark(benchmark::State& state, Shape s, Index capacity, Index threads,
                    msrnn::KvType type) {
  const std::size_t words =
      static_cast<std::size_t>(kv_bytes(s, capacity, type)) / 8 / static_cast<std::size_t>(s.n_kv);
  std::vector<std::vector<std::uint64_t>> buffers;  // [n_kv]: (words)
  for (Index g = 0; g < s.n_kv; ++g) buffers.emplace_back(words, static_cast<std::uint64_t>(g));
  msrnn::ForkJoin workers(std::min(threads, s.n_kv));
  std::vector<std::uint64_t> sums(static_cast<std::size_t>(s.n_kv));
  auto head_sum = [&](Index g, Index) noexcept {
    const std::vector<std::uint64_t>& b = buffers[static_cast<std::size_t>(g)];
    std::uint64_t sum[4] = {0, 0, 0, 0};
    std::size_t i = 0;
    for (; i + 4 <= b.size(); i += 4) {
      for (std::size_t j = 0; j < 4; ++j) sum[j] += b[i + j];
    }
    for (; i < b.size(); ++i) sum[0] += b[i];
    sums[static_cast<std::size_t>(g)] = sum[0] + sum[1] + sum[2] + sum[3];
  };
  for (auto _ : state) {
    workers.run(s.n_kv, head_sum);
    benchmark::DoNotOptimize(sums.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kv_bytes(s, capacity, type)));
}

std::string read_name(const std::string& shape, const std::string& type, Index capacity,
                      Index threads) {
  return "read/" + shape + "/" + type + "/C:" + std::to_string(capacity) +
         "/threads:" + std::to_string(threads);
}

template <class Policy>
void register_step(const Shape& s, Index capacity, Index threads, msrnn::PositionMode positions,
                   msrnn::KvType type) {
  const bool in_cache = positions == msrnn::PositionMode::in_cache;
  const std::string name = std::string("step/") + s.name + "/" + Policy::kName +
                           (in_cache ? "/in_cache/" : "/") + msrnn::to_string(type) +
                           "/C:" + std::to_string(capacity) + "/threads:" + std::to_string(threads);
  cases()[name] = {s.name,   Policy::kName, msrnn::to_string(positions), msrnn::to_string(type),
                   capacity, threads,       kv_bytes(s, capacity, type)};
  auto* run = in_cache ? step_benchmark<Policy, Policy> : step_benchmark<Policy, msrnn::Window>;
  benchmark::RegisterBenchmark(name.c_str(), run, s, capacity, threads, positions, type)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

// One step benchmark per policy of the library (every alternative of AnyPolicy).
template <class... Policy>
void register_steps(const Shape& s, Index capacity, Index threads, msrnn::PositionMode positions,
                    msrnn::KvType type, std::variant<Policy...>*) {
  (register_step<Policy>(s, capacity, threads, positions, type), ...);
}

void register_all() {
  // Side by side: for each shape, capacity and thread count, the baseline and then the policies.
  for (const Shape& s : kShapes) {
    for (Index capacity : kCapacities) {
      for (Index threads : kThreads) {
        // Per precision, the read of its bytes and every policy's step; in_cache in f32 only.
        for (msrnn::KvType type : kKvTypes) {
          const std::string name = read_name(s.name, msrnn::to_string(type), capacity, threads);
          cases()[name] = {s.name,
                           "read",
                           "",
                           msrnn::to_string(type),
                           capacity,
                           threads,
                           kv_bytes(s, capacity, type)};
          benchmark::RegisterBenchmark(name.c_str(), read_benchmark, s, capacity, threads, type)
              ->UseRealTime()
              ->Unit(benchmark::kMicrosecond);
          register_steps(s, capacity, threads, msrnn::PositionMode::absolute, type,
                         static_cast<msrnn::AnyPolicy*>(nullptr));
        }
        register_steps(s, capacity, threads, msrnn::PositionMode::in_cache, msrnn::KvType::f32,
                       static_cast<msrnn::AnyPolicy*>(nullptr));
      }
    }
  }
}

// Console output as usual, plus what the CSV needs of every benchmark: the median aggregate
// when there are repetitions, else the single run.
struct Measured {
  double ns = 0;          // per step
  double vs_partner = 0;  // step benchmarks: its time over the alternating partner's steps' time
};

class CollectingReporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, Measured> results;

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      const bool median = run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      const bool single = run.run_type != Run::RT_Aggregate && run.repetitions <= 1;
      if (!median && !single) continue;
      Measured m;
      m.ns = run.GetAdjustedRealTime() * 1e3;  // the unit is microseconds
      const auto ratio = run.counters.find("vs_partner");
      if (ratio != run.counters.end()) m.vs_partner = ratio->second.value;
      results[run.run_name.function_name] = m;
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

void write_csv(const std::string& path, const std::map<std::string, Measured>& results) {
  engine::CsvWriter out(
      path, {"shape", "policy", "positions", "kv_type", "capacity", "threads", "ns_per_step",
             "gbytes_per_s", "read_bw_fraction", "overhead_vs_window", "in_cache_vs_absolute"});
  for (const auto& [name, c] : cases()) {
    if (c.policy == "read" || results.count(name) == 0) continue;
    const Measured& m = results.at(name);
    const auto read = results.find(read_name(c.shape, c.kv_type, c.capacity, c.threads));
    const std::string fraction =
        read != results.end() ? std::to_string(read->second.ns / m.ns) : std::string();
    const bool in_cache = c.positions == "in_cache";
    const std::string ratio = std::to_string(m.vs_partner);
    out.row(c.shape, c.policy, c.positions, c.kv_type, c.capacity, c.threads, m.ns, c.bytes / m.ns,
            fraction, in_cache ? std::string() : ratio, in_cache ? ratio : std::string());
  }
  out.commit();
}

}  // namespace

int main(int argc, char** argv) {
  std::string csv;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--csv") == 0) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "error: --csv needs a file name\n");
        return 2;
      }
      csv = argv[++i];
      if (csv.empty()) {
        std::fprintf(stderr, "error: --csv: empty file name\n");
        return 2;
      }
    } else if (std::strncmp(argv[i], "--csv=", 6) == 0) {
      csv = argv[i] + 6;
      if (csv.empty()) {
        std::fprintf(stderr, "error: --csv: empty file name\n");
        return 2;
      }
    } else {
      args.push_back(argv[i]);
    }
  }
  int count = static_cast<int>(args.size());
  benchmark::Initialize(&count, args.data());
  if (benchmark::ReportUnrecognizedArguments(count, args.data())) return 2;
  register_all();
  CollectingReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  if (!csv.empty()) {
    try {
      write_csv(csv, reporter.results);
    } catch (const engine::FileError& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 2;
    }
  }
  return 0;
}
