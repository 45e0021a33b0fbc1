// Full: the unbounded MSRNN, the reference every bounded policy is compared with.
#pragma once

#include "msrnn/policy_options.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

/// Full: never evicts; the cache grows as tokens arrive (an ordinary KV cache).
///
/// With `Full`, the capacity of the cache config is only the number of slots reserved up front;
/// the cache doubles its storage when it runs out, so a step that grows it allocates. Every
/// bounded policy with C >= the sequence length gives exactly Full's outputs. Cost: none beyond
/// attention. See policy.hpp for the policy interface.
struct Full {
  static constexpr const char* kName = "full";
  static constexpr const char* kOptions = "";
  static constexpr bool kEvicts = false;
  static constexpr bool kNeedsProbabilities = false;

  static Full from_options(const PolicyOptions& /*options*/) { return {}; }
  void prepare(Index /*capacity*/) {}
  bool per_head() const noexcept { return false; }
  bool protects(Index /*position*/, Index /*newest*/) const noexcept { return true; }
  float priority(float /*score*/, Index /*position*/, Index /*newest*/) const noexcept {
    return 0.0f;
  }
};

}  // namespace msrnn
