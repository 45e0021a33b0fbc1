// Window: a sliding window over the most recent tokens.
#pragma once

#include "msrnn/policy_options.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

/// Window: evicts the oldest kept position.
///
/// The plain sliding window of the MSRNN paper (Oren et al., 2024, sec. 3). Invariant: after a
/// step the cache holds exactly the last min(C, tokens) positions. Cost: O(C) per layer and step
/// to find the oldest; needs no attention probabilities.
/// See policy.hpp for the policy interface.
struct Window {
  static constexpr const char* kName = "window";
  static constexpr const char* kOptions = "";
  static constexpr bool kEvicts = true;
  static constexpr bool kNeedsProbabilities = false;

  static Window from_options(const PolicyOptions& /*options*/) { return {}; }
  void prepare(Index /*capacity*/) {}
  bool per_head() const noexcept { return false; }
  bool protects(Index /*position*/, Index /*newest*/) const noexcept { return false; }
  // Every state ties; the tie rule picks the oldest.
  float priority(float /*score*/, Index /*position*/, Index /*newest*/) const noexcept {
    return 0.0f;
  }
};

}  // namespace msrnn
