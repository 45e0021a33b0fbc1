// libFuzzer target: MultiStateCache under a random configuration (bad ones must throw
// std::invalid_argument) and random inputs, fed through step and step_chunk in random pieces.
// Every storage precision and kernel variant. Invariants: never more than C states, kept
// positions distinct and in range, finite outputs (the values are in [-4, 4]: finite in every
// precision). The eviction events, replayed from empty, give the kept positions.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <msrnn/msrnn.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuzz_bytes.hpp"

using fuzz::Bytes;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using msrnn::Index;
  Bytes in{data, size};
  msrnn::CacheConfig config;
  config.n_layers = 1 + in.next() % 2;
  config.n_kv_heads = 1 + in.next() % 3;
  config.n_q_heads = config.n_kv_heads * (1 + in.next() % 3) + (in.next() % 8 == 0 ? 1 : 0);
  config.head_dim = 1 + in.next() % 8;
  config.capacity = in.next() % 10;  // 0 is invalid on purpose
  config.max_chunk = 1 + in.next() % 6;
  config.kv_type = static_cast<msrnn::KvType>(in.next() % 5);   // 4 is invalid on purpose
  config.kernels = static_cast<msrnn::Kernels>(in.next() % 4);  // one the CPU lacks: rejected
  const std::uint8_t rope = in.next() % 3;
  msrnn::PolicyOptions options;
  options.name = std::string(msrnn::kPolicyNames[in.next() % msrnn::kPolicyNames.size()]);
  options.sinks = in.next() % 6;
  options.recent = static_cast<Index>(in.next() % 7) - 1;
  options.normalize = in.next() % 2 == 1;
  options.granularity =
      in.next() % 2 ? msrnn::TovaGranularity::head : msrnn::TovaGranularity::layer;
  std::unique_ptr<msrnn::AnyCache> cache;
  try {
    if (rope > 0) {
      config.rope = msrnn::Rope(config.head_dim);
      config.positions = rope == 1 ? msrnn::PositionMode::absolute : msrnn::PositionMode::in_cache;
    }
    cache = std::make_unique<msrnn::AnyCache>(config, msrnn::make_policy(options));
  } catch (const std::invalid_argument&) {
    return 0;  // a bad configuration, rejected as it must be
  }
  const Index nq = config.n_q_heads * config.head_dim;
  const Index nkv = config.n_kv_heads * config.head_dim;
  const bool bounded = msrnn::policy_evicts(options.name);
  // The eviction events, replayed: every position a layer's head took in, less those evicted,
  // must be what it keeps.
  const auto heads = static_cast<std::size_t>(config.n_layers * config.n_kv_heads);
  std::vector<std::set<Index>> replay(heads);  // [layer * n_kv_heads + g]
  std::vector<Index> entered(heads, 0);        // positions below it have been inserted
  auto take_in = [&](Index layer, Index g, Index until) -> std::set<Index>& {
    const auto i = static_cast<std::size_t>(layer * config.n_kv_heads + g);
    for (; entered[i] < until; ++entered[i]) replay[i].insert(entered[i]);
    return replay[i];
  };
  cache->set_eviction_observer([&](const msrnn::Eviction& e) {
    if (e.position > e.step || e.step + 1 != cache->tokens_seen(e.layer)) __builtin_trap();
    // the tokens up to this one entered before it evicted
    if (take_in(e.layer, e.kv_head, e.step + 1).erase(e.position) != 1) __builtin_trap();
  });
  Index seen = 0;
  while (!in.empty() && seen < 200) {
    const Index t = 1 + in.next() % 5;
    const Index layer = in.next() % config.n_layers;
    msrnn::RowMatrix q(t, nq), k(t, nkv), v(t, nkv), out(t, nq);
    for (Index i = 0; i < q.size(); ++i) q.data()[i] = in.value();
    for (Index i = 0; i < k.size(); ++i) k.data()[i] = in.value();
    for (Index i = 0; i < v.size(); ++i) v.data()[i] = in.value();
    if (t == 1 && in.next() % 2 == 0) {
      msrnn::RowMatrix o(config.n_q_heads, config.head_dim);
      cache->step(
          layer, Eigen::Map<const msrnn::RowMatrix>(q.data(), config.n_q_heads, config.head_dim),
          Eigen::Map<const msrnn::RowMatrix>(k.data(), config.n_kv_heads, config.head_dim),
          Eigen::Map<const msrnn::RowMatrix>(v.data(), config.n_kv_heads, config.head_dim), o);
      if (!o.allFinite()) __builtin_trap();
    } else {
      cache->step_chunk(layer, q, k, v, out);
      if (!out.allFinite()) __builtin_trap();
    }
    seen += t;
    const Index held = cache->size(layer);
    if (bounded && held > config.capacity) __builtin_trap();
    for (Index g = 0; g < config.n_kv_heads; ++g) {
      const std::vector<Index> kept = cache->kept_positions(layer, g);
      if (static_cast<Index>(kept.size()) != held) __builtin_trap();
      const std::set<Index>& replayed = take_in(layer, g, cache->tokens_seen(layer));
      if (std::vector<Index>(replayed.begin(), replayed.end()) != kept) __builtin_trap();
      for (std::size_t i = 0; i < kept.size(); ++i) {
        if (kept[i] < 0 || kept[i] >= cache->tokens_seen(layer)) __builtin_trap();
        if (i > 0 && kept[i] <= kept[i - 1]) __builtin_trap();
      }
    }
  }
  return 0;
}
