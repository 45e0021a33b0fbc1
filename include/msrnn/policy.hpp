// The policy contract (C++17 trait, C++20 concept) and the policy chosen at run time.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "msrnn/detail/check.hpp"
#include "msrnn/policies/full.hpp"
#include "msrnn/policies/h2o.hpp"
#include "msrnn/policies/tova.hpp"
#include "msrnn/policies/window.hpp"
#include "msrnn/policies/window_plus_i.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

namespace detail {

template <class P, class = void>
struct has_policy_members : std::false_type {};

template <class P>
struct has_policy_members<
    P, std::void_t<decltype(P::kName), decltype(P::kEvicts), decltype(P::kNeedsProbabilities),
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

}  // namespace detail

/// True when P has the members of a policy (documented on `Window`).
template <class P>
inline constexpr bool is_policy_v = detail::is_policy_impl<P>::value;

#if defined(__cpp_concepts) && __cpp_concepts >= 201907L
/// A KV eviction policy: what it protects plus how it scores the rest (see `Window`).
template <class P>
concept EvictionPolicy = is_policy_v<P>;
#endif

/// Every policy, chosen at run time. The cache dispatches on it once per step, not per slot.
using AnyPolicy = std::variant<Full, Window, WindowPlusI, H2O, TOVA>;

/// The policies by name, in the order of `AnyPolicy`.
enum class PolicyKind { full, window, sink, h2o, tova };

/// Options of every policy, for choosing one at run time (`make_policy`).
struct PolicyOptions {
  PolicyKind kind = PolicyKind::full;
  Index sinks = WindowPlusI{}.sinks;                     // WindowPlusI
  Index recent = H2O::kHalfCapacity;                     // H2O
  bool normalize = false;                                // H2O
  TovaGranularity granularity = TovaGranularity::layer;  // TOVA
};

/// The policy's name as the command-line tools spell it: full, window, sink, h2o, tova.
inline const char* policy_name(PolicyKind kind) noexcept {
  switch (kind) {
    case PolicyKind::full:
      return Full::kName;
    case PolicyKind::window:
      return Window::kName;
    case PolicyKind::sink:
      return WindowPlusI::kName;
    case PolicyKind::h2o:
      return H2O::kName;
    case PolicyKind::tova:
      return TOVA::kName;
  }
  return "?";
}

/// Parses a policy name (full, window, sink, h2o, tova; also window_plus_i). Throws
/// std::invalid_argument naming the text and the accepted names.
inline PolicyKind parse_policy_kind(std::string_view name) {
  if (name == "window_plus_i") return PolicyKind::sink;
  for (PolicyKind kind : {PolicyKind::full, PolicyKind::window, PolicyKind::sink, PolicyKind::h2o,
                          PolicyKind::tova}) {
    if (name == policy_name(kind)) return kind;
  }
  detail::throw_invalid("policy", std::string(name),
                        "unknown policy (expected full, window, sink, h2o or tova)");
}

/// Builds the policy that `options` describes.
inline AnyPolicy make_policy(const PolicyOptions& options) {
  switch (options.kind) {
    case PolicyKind::full:
      return Full{};
    case PolicyKind::window:
      return Window{};
    case PolicyKind::sink:
      return WindowPlusI{options.sinks};
    case PolicyKind::h2o:
      return H2O{options.recent, options.normalize};
    case PolicyKind::tova:
      return TOVA{options.granularity};
  }
  detail::throw_invalid("kind", static_cast<int>(options.kind), "not a PolicyKind");
}

/// The kind of the policy held by `policy`.
inline PolicyKind policy_kind(const AnyPolicy& policy) noexcept {
  return static_cast<PolicyKind>(policy.index());
}

}  // namespace msrnn
