// WindowPlusI: a sliding window that keeps the first tokens (attention sinks, StreamingLLM).
#pragma once

#include <string>

#include "msrnn/detail/check.hpp"
#include "msrnn/policy_options.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

/// WindowPlusI: the first `sinks` positions are never evicted; otherwise the oldest goes.
///
/// The "window + i" policy of the MSRNN paper, i.e. StreamingLLM's attention sinks (Xiao et al.,
/// 2023). Invariant: positions 0..sinks-1 stay for the whole sequence, the rest of the cache is
/// the most recent C - sinks positions. A sink whose key or value is NaN or inf stays too, and the
/// outputs of its KV head stay non-finite until `reset`. Requires sinks < C. Cost: O(C) per layer
/// and step; needs no attention probabilities. See policy.hpp for the policy interface.
struct WindowPlusI {
  static constexpr const char* kName = "sink";
  static constexpr const char* kOptions = "sinks";
  static constexpr bool kEvicts = true;
  static constexpr bool kNeedsProbabilities = false;

  /// Number of leading positions that are never evicted (the paper's i).
  Index sinks = 4;

  static WindowPlusI from_options(const PolicyOptions& options) { return {options.sinks}; }
  void prepare(Index capacity) {
    detail::require(sinks >= 0, "sinks", sinks, "must be >= 0");
    detail::require(sinks < capacity, "sinks", sinks,
                    "must be smaller than capacity (" + std::to_string(capacity) + ")");
  }
  bool per_head() const noexcept { return false; }
  bool protects(Index position, Index /*newest*/) const noexcept { return position < sinks; }
  float priority(float /*score*/, Index /*position*/, Index /*newest*/) const noexcept {
    return 0.0f;
  }
};

}  // namespace msrnn
