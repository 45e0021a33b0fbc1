// bench_decoder: per-token time of the example engine as the sequence grows, Full against every
// bounded policy, on a randomly initialised Llama model of stories110M's shape (no file needed),
// and the memory table: KV bytes per sequence at each capacity against Full at 4k tokens.
//
//   bench_decoder [--positions 1024,4096,16384] [--capacity 512] [--tokens 16] [--csv FILE]
//                 [--budget-gib 8] [--threads 1] [--policy full,window,tova]
//
// Reaching position P by decoding P tokens would take ~45 ms a token here (the 440 MB of weights
// are read once per token), about 12 minutes per policy for 16k. So the state at position P is
// restored with `append`, as a saved session would be: Full gets P states, a bounded policy the
// newest min(C, P), all at their original positions, keys and values random (a step's cost does
// not depend on their values). Then --tokens real decode steps of the whole engine are timed, one
// token at a time (embedding, 12 layers of projections, attention through the cache, classifier);
// ms_per_token is their median.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "cli.hpp"
#include "csv.hpp"
#include "median.hpp"
#include "model.hpp"
#include "shapes.hpp"

namespace {

using namespace engine;

const char* const kUsage = R"(usage: bench_decoder [options]
Per-token time of the example engine at growing positions, per policy, on a random model of
stories110M's shape (dim 768, hidden 2048, 12 layers, 12 heads, vocab 32000; seed 110).
  --positions LIST   positions to measure at (default 1024,4096,16384)
  --capacity N       multi-state size of the bounded policies (default 512)
  --policy LIST      comma-separated: {policies} (default all)
  --tokens N         decode steps timed at each position (default 16; the median is reported)
  --threads N        threads sharing a layer's KV heads in the cache (default 1)
  --budget-gib X     memory budget of the table of sequences that fit (default 8)
  --csv FILE         write model,policy,capacity,position,ms_per_token,kv_bytes
  --help             this text
)";

// Bytes of keys and values a cache of the model's shape allocates for `slots` states per layer and
// KV head (the library's formula).
double kv_bytes(const LlamaConfig& c, Index slots, msrnn::KvType type = msrnn::KvType::f32) {
  CacheSettings settings;
  settings.kv_type = type;
  return static_cast<double>(msrnn::kv_state_bytes(cache_config(c, settings), slots));
}

// Restores `model`'s cache to the state after `position` tokens: its newest `kept` states.
void restore_state(LlamaModel& model, Index position, Index kept, std::mt19937& rng) {
  const LlamaConfig& c = model.config();
  std::normal_distribution<float> normal(0.0f, 1.0f);
  RowMatrix k(kept, c.kv_dim()), v(kept, c.kv_dim());  // (kept, n_kv_heads * head_dim)
  std::vector<Index> positions(static_cast<std::size_t>(kept));
  for (Index i = 0; i < kept; ++i) positions[static_cast<std::size_t>(i)] = position - kept + i;
  model.reset();
  for (Index l = 0; l < c.n_layers; ++l) {
    for (Index i = 0; i < k.size(); ++i) k.data()[i] = normal(rng);
    for (Index i = 0; i < v.size(); ++i) v.data()[i] = normal(rng);
    model.cache().append(l, k, v, positions, position);
  }
}

struct Row {
  std::string policy;
  Index capacity;  // C; for full, the states it holds when the timing starts (= position)
  Index position;
  double ms_per_token;
  double kv_bytes;
};

void print_memory_table(const LlamaConfig& c, Index capacity, double budget_gib) {
  const LlamaConfig llama7b = [] {
    LlamaConfig m;
    m.dim = 4096;
    m.n_layers = 32;
    m.n_heads = 32;
    m.n_kv_heads = 32;
    return m;
  }();
  const double budget = budget_gib * 1024.0 * 1024.0 * 1024.0;
  std::printf(
      "\nKV bytes per sequence in each storage precision (a bounded cache allocates C + 1 slots, "
      "in blocks of 16), and Llama-2-7B sequences that fit %.3g GiB:\n\n",
      budget_gib);
  std::printf(
      "| multi-state size | stories110M shape f32 | f16, bf16 | q8 | vs full@4k | Llama-2-7B shape "
      "f32 | f16, bf16 | q8 | fit f32 | fit f16 | fit q8 |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<Index> sizes = {64, 128, 256, 512, 1024, 2048};
  if (std::find(sizes.begin(), sizes.end(), capacity) == sizes.end()) sizes.push_back(capacity);
  std::sort(sizes.begin(), sizes.end());
  using msrnn::KvType;
  const double full_small = kv_bytes(c, 4096);
  auto line = [&](const std::string& name, Index slots) {
    const double mib = 1048576.0;
    const double small = kv_bytes(c, slots), big = kv_bytes(llama7b, slots);
    const double big16 = kv_bytes(llama7b, slots, KvType::f16);
    const double big8 = kv_bytes(llama7b, slots, KvType::q8);
    std::printf(
        "| %s | %.1f MiB | %.1f MiB | %.1f MiB | %.3f | %.0f MiB | %.0f MiB | %.0f MiB | %.0f | "
        "%.0f | %.0f |\n",
        name.c_str(), small / mib, kv_bytes(c, slots, KvType::f16) / mib,
        kv_bytes(c, slots, KvType::q8) / mib, small / full_small, big / mib, big16 / mib,
        big8 / mib, std::floor(budget / big), std::floor(budget / big16),
        std::floor(budget / big8));
  };
  for (Index size : sizes) line(std::to_string(size), size + 1);
  line("full, 4096 tokens", 4096);
}

int run(int argc, char** argv) {
  std::vector<Index> positions = {1024, 4096, 16384};
  std::vector<std::string> policies = cli::all_policies();
  Index capacity = 512, tokens = 16, threads = 1;
  double budget_gib = 8.0;
  std::string csv;
  cli::parse_flags(argc, argv, kUsage, [&](std::string_view flag, const std::string& value) {
    if (flag == "--positions") {
      positions.clear();
      for (const std::string& p : cli::parse_list(flag, value)) {
        positions.push_back(cli::parse_int(flag, p, 1, 1 << 20));
      }
      std::sort(positions.begin(), positions.end());
    } else if (flag == "--capacity") {
      capacity = cli::parse_int(flag, value, 1, 1 << 20);
    } else if (flag == "--policy") {
      policies.clear();
      for (const std::string& p : cli::parse_list(flag, value))
        policies.push_back(cli::parse_policy(p));
    } else if (flag == "--tokens") {
      tokens = cli::parse_int(flag, value, 1, 100000);
    } else if (flag == "--threads") {
      threads = cli::parse_int(flag, value, 1, 1024);
    } else if (flag == "--budget-gib") {
      budget_gib = cli::parse_real(flag, value, 1e-6, 1e9);
    } else if (flag == "--csv") {
      csv = value;
    } else {
      return false;
    }
    return true;
  });

  const Index longest = positions.back() + tokens + 1;
  const LlamaConfig shape = bench::stories110m_shape(longest);
  std::printf("random stories110M-shaped model (%s), %lld timed tokens per point, %lld thread(s)\n",
              detail::describe(shape).c_str(), static_cast<long long>(tokens),
              static_cast<long long>(threads));
  const LlamaWeights weights = random_weights(shape, 110);
  std::printf("%-8s %9s %9s %14s %14s\n", "policy", "capacity", "position", "ms/token", "kv bytes");

  std::vector<Row> rows;
  std::mt19937 rng(7);
  for (const std::string& policy : policies) {
    const bool full = !msrnn::policy_evicts(policy);
    if (!full && capacity < 2) cli::fail("--capacity: the bounded policies need at least 2");
    for (Index position : positions) {
      CacheSettings settings;
      settings.policy.name = policy;
      settings.threads = threads;
      // Full reserves exactly what it will hold; a bounded policy holds C.
      settings.capacity = full ? position + tokens + 1 : capacity;
      LlamaModel model =
          cli::starting_threads(threads, [&] { return LlamaModel(weights, settings); });
      restore_state(model, position, full ? position : std::min(capacity, position), rng);
      model.forward(1);  // one untimed step: first touches of the scratch
      std::vector<double> ms;
      for (Index t = 0; t < tokens; ++t) {
        const auto start = std::chrono::steady_clock::now();
        const RowVector& logits = model.forward(static_cast<int>(t % shape.vocab_size));
        const auto stop = std::chrono::steady_clock::now();
        if (!logits.allFinite())
          cli::fail("non-finite logits at position " + std::to_string(position));
        ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
      }
      Row row{policy, full ? position : capacity, position, bench::median(ms),
              static_cast<double>(model.cache().state_bytes())};
      std::printf("%-8s %9lld %9lld %14.2f %14.0f\n", row.policy.c_str(),
                  static_cast<long long>(row.capacity), static_cast<long long>(position),
                  row.ms_per_token, row.kv_bytes);
      std::fflush(stdout);
      rows.push_back(row);
    }
  }

  // Growth: per-token time at the longest position over the shortest, per policy.
  std::printf("\nper-token time at %lld over %lld:\n", static_cast<long long>(positions.back()),
              static_cast<long long>(positions.front()));
  for (const std::string& name : policies) {
    double first = 0, last = 0;
    for (const Row& r : rows) {
      if (r.policy != name) continue;
      if (r.position == positions.front()) first = r.ms_per_token;
      if (r.position == positions.back()) last = r.ms_per_token;
    }
    std::printf("  %-8s %.3fx\n", name.c_str(), last / first);
  }
  print_memory_table(shape, capacity, budget_gib);

  if (!csv.empty()) {
    CsvWriter out(csv, {"model", "policy", "capacity", "position", "ms_per_token", "kv_bytes"});
    for (const Row& r : rows) {
      out.row("stories110M-random", r.policy, r.capacity, r.position, r.ms_per_token,
              static_cast<long long>(r.kv_bytes));
    }
    out.commit();
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return engine::cli::guarded_main([&] { return run(argc, argv); });
}
