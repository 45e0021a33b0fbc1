// Helpers shared by the tests: seeded random data and small configurations.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <string_view>

#include "msrnn/cache.hpp"

namespace msrnn::testing {

// (rows, cols) of standard normal floats from a fixed seed.
inline RowMatrix random_matrix(Index rows, Index cols, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  RowMatrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

inline CacheConfig small_config(Index n_q_heads, Index n_kv_heads, Index head_dim, Index capacity,
                                Index n_layers = 1) {
  CacheConfig config;
  config.n_layers = n_layers;
  config.n_q_heads = n_q_heads;
  config.n_kv_heads = n_kv_heads;
  config.head_dim = head_dim;
  config.capacity = capacity;
  return config;
}

// The default options of the policy `name`.
inline PolicyOptions named(std::string_view name) {
  PolicyOptions options;
  options.name = std::string(name);
  return options;
}

// A cache of `config` with the default options of the policy `name`.
inline AnyCache any_cache(const CacheConfig& config, std::string_view name) {
  return AnyCache(config, make_policy(named(name)));
}

// The message of the std::invalid_argument that `f` throws, or "" if it throws none.
template <class F>
std::string invalid_argument_message(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

// Feeds one layer-0 token whose heads have 1-dimensional queries and keys: every query head
// gets `q`, KV head g gets key keys[g]; values are the keys. With scale 1, a state's logit is
// q * key, so probabilities can be worked out by hand.
template <class Cache>
void step_scalar(Cache& cache, float q, const std::vector<float>& keys) {
  const CacheConfig& c = cache.config();
  RowMatrix qm = RowMatrix::Constant(c.n_q_heads, 1, q);
  RowMatrix k(c.n_kv_heads, 1);
  for (Index g = 0; g < c.n_kv_heads; ++g) k(g, 0) = keys[static_cast<std::size_t>(g)];
  RowMatrix out(c.n_q_heads, 1);
  cache.step(0, qm, k, k, out);
}

inline CacheConfig scalar_config(Index n_q_heads, Index n_kv_heads, Index capacity) {
  CacheConfig config = small_config(n_q_heads, n_kv_heads, 1, capacity);
  config.scale = 1.0f;
  return config;
}

}  // namespace msrnn::testing
