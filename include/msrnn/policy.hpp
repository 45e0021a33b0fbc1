// The policy contract (C++17 trait, C++20 concept), every policy, and choosing one at run time:
// names, the list of all policies and parsing are derived from AnyPolicy's alternatives.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "msrnn/byte_io.hpp"  // printable
#include "msrnn/detail/check.hpp"
#include "msrnn/policies/full.hpp"
#include "msrnn/policies/h2o.hpp"
#include "msrnn/policies/tova.hpp"
#include "msrnn/policies/tova_sinks.hpp"
#include "msrnn/policies/window.hpp"
#include "msrnn/policies/window_plus_i.hpp"
#include "msrnn/policy_options.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

/// Every policy, chosen at run time. The cache dispatches on it once per step, not per slot.
///
/// Adding a policy: write its header in policies/ (the members below, a doc comment with its
/// paper, parameters, invariants and cost), add it here; its name, options, parsing and place
/// in every tool follow from its members.
using AnyPolicy = std::variant<Full, Window, WindowPlusI, H2O, TOVA, TovaSinks>;

// The interface every policy has (checked by `is_policy_v` and the C++20 concept
// `EvictionPolicy`):
//   kName                 the policy's one name: the command-line tools', messages', CSV files'
//                         and `PolicyOptions::name`; unique among AnyPolicy's alternatives
//   kOptions              the PolicyOptions fields it reads, comma-separated ("sinks", "recent,
//                         normalize", "" for none): `policy_uses` and the tools' warnings
//   from_options(options) static: the policy with the options of `options` (make_policy)
//   kEvicts               false only for `Full`: a policy that never evicts
//   kNeedsProbabilities   the cache passes the attention probabilities to `observe` (and keeps
//                         scores) only for policies that need them
//   prepare(capacity)     checks the options against the capacity C and resolves defaults; throws
//                         std::invalid_argument naming the option
//   per_head()            true: every KV head chooses its own victim; false: one victim per layer,
//                         the same slot in every KV head
//   observe(kv_head, probs, n_queries, scores)    only when kNeedsProbabilities: after the new
//                         queries attended, updates the scores of KV head `kv_head`'s slots;
//                         probs (n_queries * group, live) holds, token-major, the probabilities
//                         of the query heads of that KV head; scores (live) lives with the slots
//                         and is reset to 0 when a slot receives a new token
//   protects(position, newest)   the state at `position` may not be evicted now; with C + 1
//                         states held, at least one must be unprotected (else the oldest goes)
//   priority(score, position, newest)   the victim is the unprotected state with the lowest
//                         priority, ties to the oldest position; for a per-layer policy `score`
//                         is the sum of the per-KV-head scores. A priority that is not finite
//                         (NaN, +inf, -inf) ranks below every finite one, ties among them to the
//                         oldest (see detail::select_victim)
// Non-finite keys and values: a NaN key (or an inf one whose product with a query is NaN or
// +inf; a -inf product only gives it probability 0) makes the attention probabilities of that
// query NaN for every state of the KV head (the softmax sums them), so the outputs are NaN while
// it is kept, and so are the scores of the states kept beside it (H2O accumulates them, TOVA sees
// them at each such step). By the rule above those states go first, oldest first: under H2O and
// TOVA the poisoned state leaves once the states older than it have, at most C steps after it
// came, and the kept set moves on. A non-finite value leaves the probabilities, and so every
// choice, unchanged; only the outputs of its head are non-finite while it is kept. Protection
// still comes first: a poisoned sink (WindowPlusI) stays for the whole sequence, and with it the
// non-finite outputs of its head, until `reset`; Full never evicts anything.
//
// A policy never touches key/value storage: it only scores and protects. `observe`, `protects`
// and `priority` are const and must stay safe to call at the same time from several threads: with
// CacheConfig::threads > 1 the cache calls them for different KV heads in parallel.

namespace detail {

template <class P, class = void>
struct has_policy_members : std::false_type {};

template <class P>
struct has_policy_members<
    P, std::void_t<decltype(P::kName), decltype(P::kOptions), decltype(P::kEvicts),
                   decltype(P::kNeedsProbabilities),
                   decltype(P::from_options(std::declval<const PolicyOptions&>())),
                   decltype(std::declval<P&>().prepare(Index{})),
                   decltype(bool{std::declval<const P&>().per_head()}),
                   decltype(bool{std::declval<const P&>().protects(Index{}, Index{})}),
                   decltype(float{std::declval<const P&>().priority(0.0f, Index{}, Index{})})>>
    : std::true_type {};

template <class P, class = void>
struct has_observe : std::false_type {};

template <class P>
struct has_observe<P, std::void_t<decltype(std::declval<const P&>().observe(
                          Index{}, std::declval<const RowMatrix&>(), Index{},
                          std::declval<Eigen::Ref<RowVector>>()))>> : std::true_type {};

template <class P, bool = has_policy_members<P>::value>
struct is_policy_impl : std::false_type {};

template <class P>
struct is_policy_impl<P, true>
    : std::bool_constant<!P::kNeedsProbabilities || has_observe<P>::value> {};

template <std::size_t... I>
constexpr std::array<std::string_view, sizeof...(I)> policy_names(std::index_sequence<I...>) {
  return {std::string_view(std::variant_alternative_t<I, AnyPolicy>::kName)...};
}

// Calls f(P{}) with the alternative of AnyPolicy named `name`; false if none is.
template <class F, std::size_t I = 0>
bool with_policy_named(std::string_view name, F&& f) {
  if constexpr (I < std::variant_size_v<AnyPolicy>) {
    using P = std::variant_alternative_t<I, AnyPolicy>;
    if (name == P::kName) {
      f(static_cast<const P*>(nullptr));
      return true;
    }
    return with_policy_named<F, I + 1>(name, std::forward<F>(f));
  } else {
    return false;
  }
}

}  // namespace detail

/// True when P has the members of a policy (listed above).
template <class P>
inline constexpr bool is_policy_v = detail::is_policy_impl<P>::value;

#if defined(__cpp_concepts) && __cpp_concepts >= 201907L
/// A KV eviction policy: what it protects plus how it scores the rest (see the list above).
template <class P>
concept EvictionPolicy = is_policy_v<P>;
#endif

/// The names of every policy, in the order of AnyPolicy: full, window, sink, h2o, tova, ...
inline constexpr auto kPolicyNames =
    detail::policy_names(std::make_index_sequence<std::variant_size_v<AnyPolicy>>{});

/// Every policy's name in one phrase: "full, window, sink, h2o, tova or tova_sink".
inline std::string policy_list() {
  std::string list;
  for (std::size_t i = 0; i < kPolicyNames.size(); ++i) {
    if (i > 0) list += i + 1 == kPolicyNames.size() ? " or " : ", ";
    list += kPolicyNames[i];
  }
  return list;
}

/// The name of the policy `policy` holds.
inline const char* policy_name(const AnyPolicy& policy) noexcept {
  return std::visit([](const auto& p) { return std::decay_t<decltype(p)>::kName; }, policy);
}

/// Throws std::invalid_argument naming `name` and every policy unless it names one.
inline void require_policy_name(std::string_view name) {
  if (!detail::with_policy_named(name, [](const auto*) {})) {
    // (printable: the name may come from a file, a saved state's)
    detail::throw_invalid("policy", printable(name),
                          "unknown policy (expected " + policy_list() + ")");
  }
}

/// True when the policy `name` evicts (every policy but Full). Throws as require_policy_name.
inline bool policy_evicts(std::string_view name) {
  bool evicts = false;
  require_policy_name(name);
  detail::with_policy_named(
      name, [&](const auto* p) { evicts = std::remove_pointer_t<decltype(p)>::kEvicts; });
  return evicts;
}

/// True when the policy `name` reads the PolicyOptions field `option` ("sinks", "recent",
/// "normalize", "granularity"): it is in its kOptions. Throws as require_policy_name.
inline bool policy_uses(std::string_view name, std::string_view option) {
  bool uses = false;
  require_policy_name(name);
  detail::with_policy_named(name, [&](const auto* p) {
    std::string_view list = std::remove_pointer_t<decltype(p)>::kOptions;
    while (!list.empty()) {
      const std::size_t comma = list.find(',');
      if (list.substr(0, comma) == option) uses = true;
      list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    }
  });
  return uses;
}

/// The policy `options.name` names, with its options (its from_options). Throws
/// std::invalid_argument naming the name and every accepted one when it names none; the options
/// themselves are checked against the capacity by the cache (`prepare`).
inline AnyPolicy make_policy(const PolicyOptions& options) {
  AnyPolicy policy;
  require_policy_name(options.name);
  detail::with_policy_named(options.name, [&](const auto* p) {
    policy = std::remove_pointer_t<decltype(p)>::from_options(options);
  });
  return policy;
}

}  // namespace msrnn
