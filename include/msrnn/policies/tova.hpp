// TOVA: Token Omission Via Attention, the policy of the MSRNN paper.
#pragma once

#include "msrnn/detail/check.hpp"
#include "msrnn/policy_options.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

/// TOVA: evicts the state to which the new query gives the least attention.
///
/// Oren et al., "Transformers are Multi-State RNNs" (2024). At every step, the new query's
/// softmax probabilities are averaged over all query heads of the layer, one score per state
/// (the kept ones and the new one); the lowest is evicted, ties to the oldest, from the same slot
/// in every KV head. The new token itself may be the one evicted. With granularity `head`, each
/// KV head chooses by the average over its own query heads. Scores depend only on the current
/// query, so nothing accumulates. Cost: O(n_q_heads * C) per layer and step to average, O(C) to
/// choose. Requires granularity to be layer or head. See policy.hpp for the policy interface.
struct TOVA {
  static constexpr const char* kName = "tova";
  static constexpr const char* kOptions = "granularity";
  static constexpr bool kEvicts = true;
  static constexpr bool kNeedsProbabilities = true;

  TovaGranularity granularity = TovaGranularity::layer;

  static TOVA from_options(const PolicyOptions& options) { return {options.granularity}; }
  // A granularity cast from an integer that is neither value would otherwise pass for `layer`.
  void prepare(Index /*capacity*/) {
    detail::require(granularity == TovaGranularity::layer || granularity == TovaGranularity::head,
                    "granularity", static_cast<int>(granularity),
                    "must be TovaGranularity::layer or TovaGranularity::head");
  }
  bool per_head() const noexcept { return granularity == TovaGranularity::head; }

  // Keeps the sum over this KV head's query heads of the newest query's probabilities. For a
  // per-layer choice the cache adds these rows over the KV heads: ordering by the sum over all
  // query heads is ordering by their average.
  void observe(Index /*kv_head*/, const Eigen::Ref<const RowMatrix>& probs, Index n_queries,
               Eigen::Ref<RowVector> scores) const noexcept {
    const Index group = probs.rows() / n_queries;
    scores.noalias() = probs.bottomRows(group).colwise().sum();
  }

  bool protects(Index /*position*/, Index /*newest*/) const noexcept { return false; }
  float priority(float score, Index /*position*/, Index /*newest*/) const noexcept { return score; }
};

}  // namespace msrnn
