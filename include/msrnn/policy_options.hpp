// The options of every policy, for choosing one at run time by name (`make_policy`).
#pragma once

#include <string>

#include "msrnn/types.hpp"

namespace msrnn {

/// Whether TOVA chooses one victim per layer (the paper) or one per KV head.
enum class TovaGranularity { layer, head };

/// Value of `PolicyOptions::recent` (and `H2O::recent`) that means "half the capacity".
inline constexpr Index kHalfCapacity = -1;

/// A policy by name with the options of every policy; each policy reads the ones it lists in its
/// `kOptions` (`policy_uses`) and ignores the rest.
///
///   msrnn::PolicyOptions options;
///   options.name = "h2o";
///   options.recent = 16;
///   msrnn::AnyCache cache(config, msrnn::make_policy(options));
struct PolicyOptions {
  /// The policy's `kName`; `kPolicyNames` lists every one.
  std::string name = "full";
  /// Leading positions that are never evicted ("sinks").
  Index sinks = 4;
  /// Newest states that are never evicted; kHalfCapacity is C / 2 ("recent").
  Index recent = kHalfCapacity;
  /// H2O: divide the accumulated attention by the steps a state was visible ("normalize").
  bool normalize = false;
  /// TOVA-like policies: one victim per layer or per KV head ("granularity").
  TovaGranularity granularity = TovaGranularity::layer;
};

}  // namespace msrnn
