// msrnn-attention-layer: one attention layer of a Llama-style model, wrapped with msrnn the way an
// inference engine wraps each of its layers, run over a synthetic token stream with every policy.
//
// It prints, per policy, how close the bounded layer's outputs stay to the unbounded (Full) ones
// (mean cosine similarity over the stream), the state it keeps, and its speed.
//
//   msrnn-attention-layer [--capacity 64] [--tokens 2000] [--policy full,window,tova]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <msrnn/msrnn.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "flags.hpp"

namespace {

using msrnn::Index;
using msrnn::RowMatrix;
using msrnn::RowVector;

// ---------------------------------------------------------------------------------------------
// The layer: weights, and the one call site where the cache plugs in.

struct AttentionWeights {
  RowMatrix wq;  // (n_heads * head_dim, dim)
  RowMatrix wk;  // (n_kv_heads * head_dim, dim)
  RowMatrix wv;  // (n_kv_heads * head_dim, dim)
  RowMatrix wo;  // (dim, n_heads * head_dim)
};

struct AttentionScratch {
  RowVector q;      // (n_heads * head_dim)
  RowVector k;      // (n_kv_heads * head_dim)
  RowVector v;      // (n_kv_heads * head_dim)
  RowVector heads;  // (n_heads * head_dim) attention output of every head
};

// y = Wo · attention(Wq x, Wk x, Wv x) for one token of `layer`. The cache applies RoPE,
// attends over its multi-state and evicts.
void attention_forward(const AttentionWeights& w, msrnn::AnyCache& cache, Index layer,
                       const RowVector& x /* (dim) */, AttentionScratch& s,
                       RowVector& y /* (dim) */) {
  const msrnn::CacheConfig& c = cache.config();
  s.q.noalias() = x * w.wq.transpose();
  s.k.noalias() = x * w.wk.transpose();
  s.v.noalias() = x * w.wv.transpose();
  cache.step(layer, Eigen::Map<const RowMatrix>(s.q.data(), c.n_q_heads, c.head_dim),
             Eigen::Map<const RowMatrix>(s.k.data(), c.n_kv_heads, c.head_dim),
             Eigen::Map<const RowMatrix>(s.v.data(), c.n_kv_heads, c.head_dim),
             Eigen::Map<RowMatrix>(s.heads.data(), c.n_q_heads, c.head_dim));
  y.noalias() = s.heads * w.wo.transpose();
}

// ---------------------------------------------------------------------------------------------
// Command line.

struct Options {
  Index capacity = 64;
  Index tokens = 2000;
  std::vector<std::string> policies = engine::cli::all_policies();
};

const char* const kUsage =
    R"(usage: msrnn-attention-layer [--capacity N] [--tokens N] [--policy LIST]
  Runs one random Llama-style attention layer (8 heads, 2 KV heads, head_dim 64) over
  a synthetic stream and compares each policy's outputs with Full.
  --capacity N   multi-state size C of the bounded policies (default 64)
  --tokens N     length of the stream (default 2000)
  --policy LIST  comma-separated: {policies} (default all)
)";

Options parse(int argc, char** argv) {
  Options options;
  engine::cli::parse_flags(
      argc, argv, kUsage, [&](std::string_view flag, const std::string& value) {
        if (flag == "--capacity") {
          options.capacity = engine::cli::parse_int(flag, value, 0);  // msrnn explains 0
        } else if (flag == "--tokens") {
          options.tokens = engine::cli::parse_int(flag, value, 1);
        } else if (flag == "--policy") {
          options.policies.clear();
          for (const std::string& name : engine::cli::parse_list(flag, value)) {
            options.policies.push_back(engine::cli::parse_policy(name));
          }
        } else {
          return false;
        }
        return true;
      });
  return options;
}

}  // namespace

int run(int argc, char** argv) {
  const Options options = parse(argc, argv);
  const Index dim = 512, n_heads = 8, n_kv_heads = 2, head_dim = 64, vocab = 64;

  // Random weights and a stream drawn from a small vocabulary, so that tokens recur and
  // attention has something to find. Fixed seed: the output is the same on every run.
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](Index rows, Index cols, float scale) {
    RowMatrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = scale * normal(rng);
    return m;
  };
  const float init = 1.0f / std::sqrt(static_cast<float>(dim));
  AttentionWeights w{
      random(n_heads * head_dim, dim, init), random(n_kv_heads * head_dim, dim, init),
      random(n_kv_heads * head_dim, dim, init), random(dim, n_heads * head_dim, init)};
  const RowMatrix embedding = random(vocab, dim, 1.0f);  // (vocab, dim)
  std::vector<Index> stream(static_cast<std::size_t>(options.tokens));
  std::uniform_int_distribution<Index> pick(0, vocab - 1);
  for (Index& token : stream) token = pick(rng);

  msrnn::CacheConfig config;
  config.n_q_heads = n_heads;
  config.n_kv_heads = n_kv_heads;
  config.head_dim = head_dim;
  config.capacity = options.capacity;
  config.rope = msrnn::Rope(head_dim);

  // Every cache first, so that a bad option is reported before any work is done.
  std::vector<std::unique_ptr<msrnn::AnyCache>> caches;
  for (const std::string& name : options.policies) {
    msrnn::PolicyOptions policy;
    policy.name = name;
    try {
      caches.push_back(std::make_unique<msrnn::AnyCache>(config, msrnn::make_policy(policy)));
    } catch (const std::invalid_argument& e) {
      engine::cli::fail(e.what());
    }
  }

  // Outputs of Full, to compare the bounded policies with.
  RowMatrix full_out(options.tokens, dim);  // (tokens, dim)
  {
    msrnn::AnyCache full(config, msrnn::Full{});
    AttentionScratch s{RowVector(n_heads * head_dim), RowVector(n_kv_heads * head_dim),
                       RowVector(n_kv_heads * head_dim), RowVector(n_heads * head_dim)};
    RowVector y(dim);
    for (Index t = 0; t < options.tokens; ++t) {
      attention_forward(w, full, 0, embedding.row(stream[static_cast<std::size_t>(t)]), s, y);
      full_out.row(t) = y;
    }
  }

  std::printf(
      "one attention layer: dim %lld, %lld heads, %lld KV heads, head_dim %lld, %lld tokens\n",
      static_cast<long long>(dim), static_cast<long long>(n_heads),
      static_cast<long long>(n_kv_heads), static_cast<long long>(head_dim),
      static_cast<long long>(options.tokens));
  std::printf("%-7s %9s %12s %14s %10s  %s\n", "policy", "capacity", "state bytes", "cos vs full",
              "tokens/s", "kept positions (first 6)");
  for (std::size_t i = 0; i < caches.size(); ++i) {
    const std::string& name = options.policies[i];
    msrnn::AnyCache* cache = caches[i].get();
    AttentionScratch s{RowVector(n_heads * head_dim), RowVector(n_kv_heads * head_dim),
                       RowVector(n_kv_heads * head_dim), RowVector(n_heads * head_dim)};
    RowVector y(dim);
    double cosine = 0.0;
    const auto start = std::chrono::steady_clock::now();
    for (Index t = 0; t < options.tokens; ++t) {
      attention_forward(w, *cache, 0, embedding.row(stream[static_cast<std::size_t>(t)]), s, y);
      cosine += static_cast<double>(y.dot(full_out.row(t)) / (y.norm() * full_out.row(t).norm()));
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::string kept;
    const std::vector<Index> positions = cache->kept_positions(0, 0);
    for (std::size_t j = 0; j < positions.size() && j < 6; ++j) {
      kept += std::to_string(positions[j]) + " ";
    }
    if (positions.size() > 6) kept += "...";
    const std::string capacity =
        !msrnn::policy_evicts(name) ? "-" : std::to_string(options.capacity);
    std::printf("%-7s %9s %12zu %14.4f %10.0f  %s\n", name.c_str(), capacity.c_str(),
                cache->state_bytes(), cosine / static_cast<double>(options.tokens),
                static_cast<double>(options.tokens) / seconds, kept.c_str());
  }
  return 0;
}

int main(int argc, char** argv) {
  return engine::cli::guarded_main([&] { return run(argc, argv); });
}
