// The one place where a victim is chosen: the lowest-priority unprotected state, ties to the
// oldest; a priority that is not finite is the lowest of all.
#pragma once

#include <cmath>
#include <limits>

#include "msrnn/types.hpp"

namespace msrnn::detail {

/// Returns the slot in [0, live) whose state the policy evicts: among the states it does not
/// protect, the one with the lowest priority; on equal priority, the one with the oldest
/// position. A priority that is not finite (NaN, +inf or -inf) ranks below every finite one, and
/// among those the oldest goes first: one NaN or inf key makes the probabilities of its whole
/// KV head NaN, and NaN, which loses every comparison, would otherwise make one slot the victim
/// of every step (each new token evicted at once, the poisoned state never). Protection comes
/// first: a protected state stays whatever its priority. A policy that protects every state
/// breaks its contract (the built-in ones rule it out in `prepare`); the oldest state goes then,
/// so the cache stays bounded and in bounds. O(live), allocates nothing.
///
///   score    (live)  the policy's score per slot (the per-layer sum for a per-layer policy)
///   position (live)  original position per slot
template <class P>
Index select_victim(const P& policy, const float* score, const Index* position, Index live,
                    Index newest) noexcept {
  // Every non-finite priority becomes -inf: below every finite one, equal to the others, so the
  // tie rule picks the oldest of them.
  constexpr float kBelowAll = -std::numeric_limits<float>::infinity();
  Index victim = -1;
  Index oldest = 0;
  float lowest = 0.0f;
  for (Index slot = 0; slot < live; ++slot) {
    const Index p = position[slot];
    if (p < position[oldest]) oldest = slot;
    if (policy.protects(p, newest)) continue;
    float value = policy.priority(score[slot], p, newest);
    if (!std::isfinite(value)) value = kBelowAll;
    if (victim < 0 || value < lowest || (value == lowest && p < position[victim])) {
      victim = slot;
      lowest = value;
    }
  }
  return victim >= 0 ? victim : oldest;
}

}  // namespace msrnn::detail
