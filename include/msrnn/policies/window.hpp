// Window: a sliding window over the most recent tokens.
#pragma once

#include "msrnn/types.hpp"

namespace msrnn {

/// Window: evicts the oldest kept position.
///
/// The plain sliding window of the MSRNN paper (Oren et al., 2024, sec. 3). Invariant: after a
/// step the cache holds exactly the last min(C, tokens) positions. Cost: O(C) per layer and step
/// to find the oldest; needs no attention probabilities.
///
/// This class also documents the interface every policy has (see `policy.hpp` for the trait):
///   kName                 name used by the command-line tools and messages
///   kEvicts               false only for `Full`: a policy that never evicts
///   kNeedsProbabilities   the cache passes the attention probabilities to `observe` (and keeps
///                         scores) only for policies that need them
///   prepare(capacity)     checks the options against the capacity C and resolves defaults; throws
///                         std::invalid_argument naming the option
///   per_head()            true: every KV head chooses its own victim; false: one victim per layer,
///                         the same slot in every KV head
///   observe(kv_head, probs, n_queries, scores)    only when kNeedsProbabilities: after the new
///                         queries attended, updates the scores of KV head `kv_head`'s slots;
///                         probs (n_queries * group, live) holds, token-major, the probabilities
///                         of the query heads of that KV head; scores (live) lives with the slots
///                         and is reset to 0 when a slot receives a new token
///   protects(position, newest)   the state at `position` may not be evicted now; with C + 1
///                         states held, at least one must be unprotected (else the oldest goes)
///   priority(score, position, newest)   the victim is the unprotected state with the lowest
///                         priority, ties to the oldest position; for a per-layer policy `score`
///                         is the sum of the per-KV-head scores. A priority that is not finite
///                         (NaN, +inf, -inf) ranks below every finite one, ties among them to the
///                         oldest (see detail::select_victim)
/// Non-finite keys and values: a NaN key (or an inf one whose product with a query is NaN or
/// +inf; a -inf product only gives it probability 0) makes the attention probabilities of that
/// query NaN for every state of the KV head (the softmax sums them), so the outputs are NaN while
/// it is kept, and so are the scores of the states kept beside it (H2O accumulates them, TOVA sees
/// them at each such step). By the rule above those states go first, oldest first: under H2O and
/// TOVA the poisoned state leaves once the states older than it have, at most C steps after it
/// came, and the kept set moves on. A non-finite value leaves the probabilities, and so every
/// choice, unchanged; only the outputs of its head are non-finite while it is kept. Protection
/// still comes first: a poisoned sink (WindowPlusI) stays for the whole sequence, and with it the
/// non-finite outputs of its head, until `reset`; Full never evicts anything.
///
/// A policy never touches key/value storage: it only scores and protects. `observe`, `protects`
/// and `priority` are const and must stay safe to call at the same time from several threads: with
/// CacheConfig::threads > 1 the cache calls them for different KV heads in parallel.
struct Window {
  static constexpr const char* kName = "window";
  static constexpr bool kEvicts = true;
  static constexpr bool kNeedsProbabilities = false;

  void prepare(Index /*capacity*/) {}
  bool per_head() const noexcept { return false; }
  bool protects(Index /*position*/, Index /*newest*/) const noexcept { return false; }
  // Every state ties; the tie rule picks the oldest.
  float priority(float /*score*/, Index /*position*/, Index /*newest*/) const noexcept {
    return 0.0f;
  }
};

}  // namespace msrnn
