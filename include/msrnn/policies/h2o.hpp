// H2O: heavy hitters (accumulated attention) plus a window of recent states.
#pragma once

#include <string>

#include "msrnn/detail/check.hpp"
#include "msrnn/policy_options.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

/// H2O: per KV head, evicts the state that has received the least attention so far.
///
/// Heavy-Hitter Oracle (Zhang et al., 2023). Every state accumulates, at every step, the softmax
/// probability that each query head sharing its KV head gives it; the score lives with the
/// state's slot, starts at 0 when the token arrives, and leaves with it. The newest `recent`
/// positions are protected; among the others the lowest score is evicted, ties to the oldest.
/// With `normalize`, the score is divided by the number of steps the state has been visible
/// (t - position + 1), which removes the bias towards old states.
/// Invariant: the newest `recent` positions are always kept. Requires recent < C.
/// Cost: O(group * C) per KV head and step to accumulate, O(C) to choose. See policy.hpp for
/// the policy interface.
struct H2O {
  static constexpr const char* kName = "h2o";
  static constexpr const char* kOptions = "recent,normalize";
  static constexpr bool kEvicts = true;
  static constexpr bool kNeedsProbabilities = true;
  /// Value of `recent` that means "half the capacity".
  static constexpr Index kHalfCapacity = msrnn::kHalfCapacity;

  /// Number of newest positions that are protected; kHalfCapacity resolves to C / 2.
  Index recent = kHalfCapacity;
  /// Divide the accumulated score by the number of steps the state has been visible.
  bool normalize = false;

  static H2O from_options(const PolicyOptions& options) {
    return {options.recent, options.normalize};
  }
  void prepare(Index capacity) {
    detail::require(recent >= 0 || recent == kHalfCapacity, "recent", recent,
                    "must be >= 0 (or -1 for capacity / 2)");
    if (recent == kHalfCapacity) recent = capacity / 2;
    detail::require(recent < capacity, "recent", recent,
                    "must be smaller than capacity (" + std::to_string(capacity) + ")");
  }
  bool per_head() const noexcept { return true; }

  void observe(Index /*kv_head*/, const Eigen::Ref<const RowMatrix>& probs, Index /*n_queries*/,
               Eigen::Ref<RowVector> scores) const noexcept {
    scores.noalias() += probs.colwise().sum();
  }

  bool protects(Index position, Index newest) const noexcept { return position > newest - recent; }
  float priority(float score, Index position, Index newest) const noexcept {
    return normalize ? score / static_cast<float>(newest - position + 1) : score;
  }
};

}  // namespace msrnn
