// bench_throughput: the paper's Table 1 on this machine. Under one KV-memory budget, how many
// sequences of 4096 tokens fit with Full and with each bounded policy at 1/16, 1/8 and 1/4 of the
// cache, and how many tokens per second the engine decodes at that batch (weights read once per
// step for all of them, each sequence attending over its own cache), at batch 8 and at batch 1.
//
//   bench_throughput [--model random110m,stories260K,austen2.5M] [--tokens 4096] [--budget 2G]
//                    [--fractions 16,8,4] [--policy LIST] [--steps 6] [--threads 2] [--csv FILE]
//
// Decode time only: each sequence's state at position P = tokens - steps is restored with
// `append` (Full: P states, a bounded policy its newest C, keys and values random: a step's cost
// does not depend on them), then --steps decode steps of the whole batch are timed; tokens/s is
// batch / the median step time. Full reserves the whole sequence (tokens states), as a server
// must to admit it; a bounded cache holds C + 1 slots.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cli.hpp"
#include "csv.hpp"
#include "median.hpp"
#include "model.hpp"
#include "read_rate.hpp"
#include "shapes.hpp"

namespace {

using namespace engine;

const char* const kUsage = R"(usage: bench_throughput [options]
Sequences that fit a KV budget and tokens/s at that batch, Full against every bounded policy at
fractions of the sequence (the paper's Table 1).
  --model LIST       random110m (stories110M's shape, random weights), stories260K, austen2.5M
                     (checkpoints found as msrnn-generate finds them); default all three
  --tokens N         sequence length (default 4096)
  --fractions LIST   C = tokens / f for each f (default 16,8,4)
  --policy LIST      comma-separated: {policies} (default all)
  --budget BYTES     KV-memory budget (suffixes K, M, G; default 2G)
  --max-batch N      most sequences in a batch even if more fit (default 512)
  --steps N          decode steps timed per point (default 6; the median is used)
  --threads N        threads sharing the sequences' attention (default 2)
  --kv-type TYPE     f32, f16, bf16 or q8 (default f32)
  --csv FILE         write model,policy,capacity,kv_type,batch,tokens_per_s,kv_bytes_per_seq
  --help             this text
)";

struct Point {
  std::string model, policy;
  Index capacity = 0;  // C; Full: the tokens it reserves
  Index batch = 0;
  double tokens_per_s = 0;
  std::size_t kv_bytes_per_seq = 0;
};

// `size` sequences of `settings` whose states are restored at `position` (restore), stepped
// together by one forward pass a step.
class Batch {
 public:
  Batch(Transformer& model, const CacheSettings& settings, Index size, Index position,
        std::mt19937& rng)
      : model_(model), position_(position) {
    const LlamaConfig& c = model.config();
    const msrnn::CacheConfig config = cache_config(c, settings);
    const bool full = !msrnn::policy_evicts(settings.policy.name);
    const Index kept = full ? position : std::min(config.capacity, position);
    // One random state, appended to every sequence (the values do not change the cost).
    std::normal_distribution<float> normal(0.0f, 1.0f);
    k_ = RowMatrix(kept, c.kv_dim());  // (kept, n_kv_heads * head_dim)
    v_ = RowMatrix(kept, c.kv_dim());
    for (Index i = 0; i < k_.size(); ++i) k_.data()[i] = normal(rng);
    for (Index i = 0; i < v_.size(); ++i) v_.data()[i] = normal(rng);
    for (Index i = 0; i < kept; ++i) positions_.push_back(position - kept + i);
    for (Index b = 0; b < size; ++b) {
      caches_.push_back(
          std::make_unique<msrnn::AnyCache>(config, msrnn::make_policy(settings.policy)));
      pointers_.push_back(caches_.back().get());
    }
    tokens_.resize(static_cast<std::size_t>(size));
    restore();
  }
  Index size() const { return static_cast<Index>(caches_.size()); }
  std::size_t kv_bytes_per_sequence() const { return caches_.front()->state_bytes(); }

  // Every sequence back at `position` (Full must not outgrow the tokens it reserved).
  void restore() {
    for (auto& cache : caches_) {
      cache->reset();
      for (Index l = 0; l < cache->config().n_layers; ++l) {
        cache->append(l, k_, v_, positions_, position_);
      }
    }
    steps_ = 0;
  }
  // One decode step of every sequence; returns its seconds.
  double step() {
    const Index vocab = model_.config().vocab_size;
    for (std::size_t b = 0; b < tokens_.size(); ++b) {
      tokens_[b] = static_cast<int>((steps_ * 31 + static_cast<Index>(b)) % vocab);
    }
    ++steps_;
    model_.reserve(size());
    const auto start = std::chrono::steady_clock::now();
    const ConstRowMap logits = model_.forward_batch(tokens_, pointers_);
    const auto stop = std::chrono::steady_clock::now();
    if (!logits.allFinite()) cli::fail("non-finite logits");
    return std::chrono::duration<double>(stop - start).count();
  }

 private:
  Transformer& model_;
  Index position_;
  RowMatrix k_, v_;
  std::vector<Index> positions_;
  std::vector<std::unique_ptr<msrnn::AnyCache>> caches_;
  std::vector<msrnn::AnyCache*> pointers_;
  std::vector<int> tokens_;
  Index steps_ = 0;
};

// Tokens/s of each batch, measured side by side: `rounds` rounds of one step of each in turn
// (after one untimed round), each batch's rate its size over its median step.
std::vector<double> interleaved(const std::vector<Batch*>& batches, Index rounds) {
  std::vector<std::vector<double>> seconds(batches.size());
  for (Batch* batch : batches) batch->restore();
  for (Index r = 0; r <= rounds; ++r) {
    for (std::size_t i = 0; i < batches.size(); ++i) {
      const double t = batches[i]->step();
      if (r > 0) seconds[i].push_back(t);
    }
  }
  std::vector<double> rates;
  for (std::size_t i = 0; i < batches.size(); ++i) {
    rates.push_back(static_cast<double>(batches[i]->size()) / bench::median(seconds[i]));
  }
  return rates;
}

int run(int argc, char** argv) {
  std::vector<std::string> models = {"random110m", "stories260K", "austen2.5M"};
  std::vector<std::string> policies = cli::all_policies();
  std::vector<Index> fractions = {16, 8, 4};
  Index tokens = 4096, steps = 6, threads = 2, max_batch = 512;
  std::size_t budget = std::size_t{2} << 30;
  msrnn::KvType kv_type = msrnn::KvType::f32;
  std::string csv;
  cli::parse_flags(argc, argv, kUsage, [&](std::string_view flag, const std::string& value) {
    if (flag == "--model") {
      models = cli::parse_list(flag, value);
    } else if (flag == "--tokens") {
      tokens = cli::parse_int(flag, value, 16, 1 << 20);
    } else if (flag == "--fractions") {
      fractions.clear();
      for (const std::string& f : cli::parse_list(flag, value))
        fractions.push_back(cli::parse_int(flag, f, 1, 1 << 20));
    } else if (flag == "--policy") {
      policies.clear();
      for (const std::string& p : cli::parse_list(flag, value))
        policies.push_back(cli::parse_policy(p));
    } else if (flag == "--budget") {
      budget = cli::parse_bytes(flag, value);
    } else if (flag == "--max-batch") {
      max_batch = cli::parse_int(flag, value, 1, 1 << 16);
    } else if (flag == "--steps") {
      steps = cli::parse_int(flag, value, 1, 10000);
    } else if (flag == "--threads") {
      threads = cli::parse_int(flag, value, 1, 1024);
    } else if (flag == "--kv-type") {
      kv_type = cli::parse_kv_type(value);
    } else if (flag == "--csv") {
      csv = value;
    } else {
      return false;
    }
    return true;
  });
  if (steps >= tokens) cli::fail("--steps must be below --tokens");
  const Index position = tokens - steps - 1;

  std::vector<Point> points;
  std::mt19937 rng(7);
  for (const std::string& name : models) {
    LlamaWeights weights;
    if (name == "random110m") {
      weights = random_weights(bench::stories110m_shape(tokens + 1), 110);
    } else if (name == "stories260K" || name == "austen2.5M") {
      weights = cli::load_weights(cli::find_model_file(name + ".bin", "--model"));
      // Their contexts are 512 and 1024; a bounded cache runs past them, and Full's 4096 tokens
      // are what it would reserve for such a sequence (the cost of a step is what is measured).
      weights.config.seq_len = std::max<Index>(weights.config.seq_len, tokens + 1);
    } else {
      cli::fail("--model: unknown model '" + name +
                "' (expected random110m, stories260K or austen2.5M)");
    }
    Transformer model =
        cli::starting_threads(threads, [&] { return Transformer(weights, threads); });
    const double gbps = bench::read_gbps(weights.data.data(), weights.data.size());
    const double weight_bytes = static_cast<double>(weights.data.size() * sizeof(float));
    std::printf("\n%s (%s), %lld-token sequences, KV budget %.3g GiB, %s, %lld threads\n",
                name.c_str(), engine::detail::describe(weights.config).c_str(),
                static_cast<long long>(tokens), static_cast<double>(budget) / 1073741824.0,
                msrnn::to_string(kv_type), static_cast<long long>(threads));
    std::printf(
        "read baseline: %.1f GB/s over the %.0f MB of weights (a batch-1 step reads them "
        "all: at most %.1f steps/s)\n",
        gbps, weight_bytes / 1e6, gbps * 1e9 / weight_bytes);
    std::printf("%-10s %9s %12s %7s %12s %12s %12s %10s\n", "policy", "capacity", "KV MiB/seq",
                "batch", "tok/s", "tok/s b=8", "tok/s b=1", "vs full");
    std::printf(
        "(each row's batches stepped in turn with full's, %lld rounds: the ratio is side by "
        "side)\n",
        static_cast<long long>(steps));
    // Full at its largest batch, stepped beside every bounded configuration.
    auto settings_of = [&](const std::string& policy, Index capacity) {
      CacheSettings settings;
      settings.policy.name = policy;
      settings.capacity = capacity;
      settings.kv_type = kv_type;
      settings.max_tokens = tokens;  // Full reserves the whole sequence
      return settings;
    };
    auto batch_of = [&](const CacheSettings& settings) -> Index {
      const msrnn::CacheConfig config = cache_config(weights.config, settings);
      const std::size_t bytes =
          msrnn::AnyCache(config, msrnn::make_policy(settings.policy)).state_bytes();
      return std::min(static_cast<Index>(budget / bytes), max_batch);
    };
    const CacheSettings full_settings = settings_of(msrnn::Full::kName, tokens);
    const Index full_batch = batch_of(full_settings);
    if (full_batch < 1) cli::fail("--budget: not one full sequence fits");
    Batch full(model, full_settings, full_batch, position, rng);
    Batch full_one(model, full_settings, 1, position, rng);
    {
      const std::vector<double> rates = interleaved({&full, &full_one}, steps);
      std::printf("%-10s %9lld %12.1f %7lld %12.1f %12s %12.1f %10.2f\n", "full",
                  static_cast<long long>(tokens),
                  static_cast<double>(full.kv_bytes_per_sequence()) / 1048576.0,
                  static_cast<long long>(full_batch), rates[0], "-", rates[1], 1.0);
      points.push_back({name, "full", tokens, full_batch, rates[0], full.kv_bytes_per_sequence()});
      points.push_back({name, "full", tokens, 1, rates[1], full.kv_bytes_per_sequence()});
    }
    for (const std::string& policy : policies) {
      if (!msrnn::policy_evicts(policy)) continue;
      for (Index f : fractions) {
        const Index capacity = std::max<Index>(2, tokens / f);
        const CacheSettings settings = settings_of(policy, capacity);
        const Index size = batch_of(settings);
        if (size < 1) {
          std::printf("%-10s %9lld: one sequence is over the budget\n", policy.c_str(),
                      static_cast<long long>(capacity));
          continue;
        }
        Batch most(model, settings, size, position, rng);
        Batch eight(model, settings, std::min<Index>(8, size), position, rng);
        Batch one(model, settings, 1, position, rng);
        const std::vector<double> rates = interleaved({&most, &eight, &one, &full}, steps);
        std::printf("%-10s %9lld %12.1f %7lld %12.1f %12.1f %12.1f %10.2f\n", policy.c_str(),
                    static_cast<long long>(capacity),
                    static_cast<double>(most.kv_bytes_per_sequence()) / 1048576.0,
                    static_cast<long long>(size), rates[0], rates[1], rates[2],
                    rates[0] / rates[3]);
        std::fflush(stdout);
        const std::size_t bytes = most.kv_bytes_per_sequence();
        points.push_back({name, policy, capacity, size, rates[0], bytes});
        if (size > 8) points.push_back({name, policy, capacity, 8, rates[1], bytes});
        if (size > 1) points.push_back({name, policy, capacity, 1, rates[2], bytes});
      }
    }
  }

  if (!csv.empty()) {
    CsvWriter out(csv, {"model", "policy", "capacity", "kv_type", "batch", "tokens_per_s",
                        "kv_bytes_per_seq"});
    for (const Point& p : points) {
      out.row(p.model, p.policy, p.capacity, msrnn::to_string(kv_type), p.batch, p.tokens_per_s,
              static_cast<long long>(p.kv_bytes_per_seq));
    }
    out.commit();
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return engine::cli::guarded_main([&] { return run(argc, argv); });
}
