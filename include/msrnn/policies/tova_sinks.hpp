// TovaSinks: TOVA that never evicts the first tokens, a hybrid of TOVA and attention sinks.
#pragma once

#include <string>

#include "msrnn/detail/check.hpp"
#include "msrnn/policies/tova.hpp"
#include "msrnn/policy_options.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

/// TovaSinks: the first `sinks` positions are never evicted; among the rest, TOVA's victim (the
/// state the new query attends to least, averaged over the query heads; ties to the oldest).
///
/// TOVA scores by attention alone, so it already keeps a first token that draws attention (the
/// paper's analysis); StreamingLLM's sinks make that a guarantee. This is that hybrid: TOVA's
/// scores, WindowPlusI's protection. Invariant: positions 0..sinks-1 stay for the whole
/// sequence. Requires sinks < C. Cost: TOVA's, O(n_q_heads * C) per layer and step. See
/// policy.hpp for the policy interface.
struct TovaSinks : TOVA {
  static constexpr const char* kName = "tova_sink";
  static constexpr const char* kOptions = "sinks,granularity";

  /// Number of leading positions that are never evicted.
  Index sinks = 4;

  TovaSinks() = default;
  explicit TovaSinks(Index sinks_, TovaGranularity granularity_ = TovaGranularity::layer)
      : TOVA{granularity_}, sinks(sinks_) {}

  static TovaSinks from_options(const PolicyOptions& options) {
    return TovaSinks(options.sinks, options.granularity);
  }
  void prepare(Index capacity) {
    TOVA::prepare(capacity);
    detail::require(sinks >= 0, "sinks", sinks, "must be >= 0");
    detail::require(sinks < capacity, "sinks", sinks,
                    "must be smaller than capacity (" + std::to_string(capacity) + ")");
  }
  bool protects(Index position, Index /*newest*/) const noexcept { return position < sinks; }
};

}  // namespace msrnn
