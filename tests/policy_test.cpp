#include "msrnn/policy.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "msrnn/cache.hpp"
#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::invalid_argument_message;
using testing::random_matrix;
using testing::small_config;

static_assert(is_policy_v<Full> && is_policy_v<Window> && is_policy_v<WindowPlusI> &&
              is_policy_v<H2O> && is_policy_v<TOVA> && is_policy_v<TovaSinks>);
static_assert(!is_policy_v<int> && !is_policy_v<CacheConfig>);

// A policy that says it needs probabilities but cannot observe them is not a policy.
struct Blind : Window {
  static constexpr bool kNeedsProbabilities = true;
};
static_assert(!is_policy_v<Blind>);

#if defined(__cpp_concepts) && __cpp_concepts >= 201907L
static_assert(EvictionPolicy<TOVA> && !EvictionPolicy<Blind>);
#endif

// The names, the list and parsing come from AnyPolicy's alternatives, one name each.
TEST(Policy, NamesAreDerivedFromTheAlternatives) {
  ASSERT_EQ(kPolicyNames.size(), std::variant_size_v<AnyPolicy>);
  EXPECT_EQ(std::vector<std::string_view>(kPolicyNames.begin(), kPolicyNames.end()),
            (std::vector<std::string_view>{"full", "window", "sink", "h2o", "tova", "tova_sink"}));
  EXPECT_EQ(policy_list(), "full, window, sink, h2o, tova or tova_sink");
  for (std::size_t i = 0; i < kPolicyNames.size(); ++i) {
    const AnyPolicy policy = make_policy(testing::named(kPolicyNames[i]));
    EXPECT_EQ(policy.index(), i) << kPolicyNames[i];
    EXPECT_EQ(policy_name(policy), kPolicyNames[i]);
    for (std::size_t j = 0; j < i; ++j) EXPECT_NE(kPolicyNames[i], kPolicyNames[j]);
  }
  EXPECT_FALSE(policy_evicts("full"));
  for (std::string_view name : kPolicyNames) EXPECT_EQ(policy_evicts(name), name != "full");
}

TEST(Policy, UnknownNameThrowsNamingItAndEveryPolicy) {
  for (const char* name : {"lru", "window_plus_i", "", "TOVA"}) {
    const std::string message =
        invalid_argument_message([&] { make_policy(testing::named(name)); });
    EXPECT_NE(message.find(std::string("policy = ") + name + ":"), std::string::npos) << message;
    EXPECT_NE(message.find("expected full, window, sink, h2o, tova or tova_sink"),
              std::string::npos)
        << message;
    EXPECT_NE(invalid_argument_message([&] { policy_uses(name, "sinks"); }), "");
  }
}

// Each policy says which options it reads; the tools warn about the others.
TEST(Policy, EachPolicyListsTheOptionsItReads) {
  EXPECT_TRUE(policy_uses("sink", "sinks"));
  EXPECT_TRUE(policy_uses("tova_sink", "sinks"));
  EXPECT_TRUE(policy_uses("tova_sink", "granularity"));
  EXPECT_TRUE(policy_uses("h2o", "recent"));
  EXPECT_TRUE(policy_uses("h2o", "normalize"));
  EXPECT_TRUE(policy_uses("tova", "granularity"));
  EXPECT_FALSE(policy_uses("tova", "sinks"));
  EXPECT_FALSE(policy_uses("h2o", "sinks"));
  EXPECT_FALSE(policy_uses("window", "recent"));
  EXPECT_FALSE(policy_uses("full", "sinks"));
  EXPECT_FALSE(policy_uses("sink", "sink"));  // whole names only
}

TEST(Policy, MakePolicyCarriesTheOptions) {
  PolicyOptions options;
  options.name = "sink";
  options.sinks = 7;
  EXPECT_EQ(std::get<WindowPlusI>(make_policy(options)).sinks, 7);
  options.name = "h2o";
  options.recent = 3;
  options.normalize = true;
  const H2O h2o = std::get<H2O>(make_policy(options));
  EXPECT_EQ(h2o.recent, 3);
  EXPECT_TRUE(h2o.normalize);
  options.name = "tova";
  options.granularity = TovaGranularity::head;
  EXPECT_TRUE(std::get<TOVA>(make_policy(options)).per_head());
}

template <class P>
void expect_any_cache_equals_static(const AnyPolicy& any, const P& policy) {
  CacheConfig config = small_config(4, 2, 8, 5, 2);
  config.rope = Rope(8);
  AnyCache dynamic(config, any);
  MultiStateCache<P> fixed(config, policy);
  RowMatrix a(4, 8), b(4, 8);
  for (Index t = 0; t < 25; ++t) {
    for (Index l = 0; l < 2; ++l) {
      const auto s = static_cast<std::uint32_t>(t * 7 + l);
      const RowMatrix q = random_matrix(4, 8, s);
      const RowMatrix k = random_matrix(2, 8, s + 100);
      const RowMatrix v = random_matrix(2, 8, s + 200);
      dynamic.step(l, q, k, v, a);
      fixed.step(l, q, k, v, b);
      ASSERT_TRUE(a == b) << P::kName << " token " << t;
    }
  }
  for (Index g = 0; g < 2; ++g) EXPECT_EQ(dynamic.kept_positions(1, g), fixed.kept_positions(1, g));
  EXPECT_EQ(dynamic.state_bytes(), fixed.state_bytes());
}

TEST(AnyCache, EqualsTheStaticCacheOfEveryPolicy) {
  expect_any_cache_equals_static(Full{}, Full{});
  expect_any_cache_equals_static(Window{}, Window{});
  expect_any_cache_equals_static(WindowPlusI{2}, WindowPlusI{2});
  expect_any_cache_equals_static(H2O{}, H2O{});
  expect_any_cache_equals_static(TOVA{}, TOVA{});
}

TEST(AnyCache, ChecksThePolicyItHolds) {
  const std::string message =
      invalid_argument_message([] { AnyCache cache(small_config(2, 2, 4, 4), WindowPlusI{4}); });
  EXPECT_NE(message.find("sinks = 4"), std::string::npos) << message;
}

}  // namespace
}  // namespace msrnn

namespace msrnn {
namespace {

// Breaks the contract: protects every state. The cache must stay bounded and in bounds.
struct ProtectsEverything : Window {
  bool protects(Index /*position*/, Index /*newest*/) const noexcept { return true; }
};

TEST(Policy, APolicyThatProtectsEverythingLosesItsOldestState) {
  static_assert(is_policy_v<ProtectsEverything>);
  MultiStateCache<ProtectsEverything> cache(testing::small_config(2, 1, 4, 2));
  RowMatrix out(2, 4);
  for (Index t = 0; t < 5; ++t) {
    cache.step(0, testing::random_matrix(2, 4, 1), testing::random_matrix(1, 4, 2),
               testing::random_matrix(1, 4, 3), out);
  }
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{3, 4}));
}

}  // namespace
}  // namespace msrnn

namespace msrnn {
namespace {

TEST(TOVA, RejectsAGranularityThatIsNeitherLayerNorHead) {
  const auto bad = static_cast<TovaGranularity>(7);
  TOVA tova{bad};
  std::string message = invalid_argument_message([&] { tova.prepare(4); });
  EXPECT_NE(message.find("granularity = 7"), std::string::npos) << message;
  message = invalid_argument_message([&] { AnyCache cache(small_config(2, 2, 4, 4), TOVA{bad}); });
  EXPECT_NE(message.find("granularity = 7"), std::string::npos) << message;
  PolicyOptions options;
  options.name = "tova";
  options.granularity = bad;
  message = invalid_argument_message(
      [&] { AnyCache cache(small_config(2, 2, 4, 4), make_policy(options)); });
  EXPECT_NE(message.find("granularity = 7"), std::string::npos) << message;
  for (TovaGranularity good : {TovaGranularity::layer, TovaGranularity::head}) {
    EXPECT_EQ(invalid_argument_message([&] { TOVA{good}.prepare(4); }), "");
  }
}

// A policy whose priority is the score itself and which protects the first `sinks` positions.
struct ScoreIsPriority : Window {
  Index sinks = 0;
  bool protects(Index position, Index /*newest*/) const noexcept { return position < sinks; }
  float priority(float score, Index /*position*/, Index /*newest*/) const noexcept { return score; }
};

Index victim_of(const std::vector<float>& score, const std::vector<Index>& position,
                Index sinks = 0) {
  ScoreIsPriority policy;
  policy.sinks = sinks;
  return detail::select_victim(policy, score.data(), position.data(),
                               static_cast<Index>(score.size()), 100);
}

// The rule (select_victim.hpp): a priority that is not finite ranks below every finite one, ties
// among non-finite ones go to the oldest position, and protection comes first.
TEST(SelectVictim, ANonFinitePriorityRanksBelowEveryFiniteOne) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(victim_of({0.5f, 0.1f, 0.2f}, {0, 1, 2}), 1);  // finite: the lowest
  EXPECT_EQ(victim_of({0.5f, nan, 0.2f, 0.1f}, {0, 1, 2, 3}), 1);
  EXPECT_EQ(victim_of({nan, 0.1f}, {7, 2}), 0);  // a NaN in the first slot too
  EXPECT_EQ(victim_of({0.1f, 0.5f, nan}, {0, 1, 2}), 2);
  EXPECT_EQ(victim_of({0.5f, inf, 0.2f}, {0, 1, 2}), 1);  // +inf is not the highest
  EXPECT_EQ(victim_of({0.5f, -inf, 0.2f}, {0, 1, 2}), 1);
  // Among non-finite ones, the oldest, whatever their kind and slot order.
  EXPECT_EQ(victim_of({nan, inf, -inf, 0.1f}, {5, 3, 9, 1}), 1);
  EXPECT_EQ(victim_of({-inf, nan}, {4, 2}), 1);
  EXPECT_EQ(victim_of({nan, nan, nan}, {8, 6, 7}), 1);
  // Protected states stay protected, poisoned or not.
  EXPECT_EQ(victim_of({nan, inf, 0.3f, 0.1f}, {0, 1, 5, 6}, 4), 3);
  EXPECT_EQ(victim_of({nan, 0.3f, nan, 0.1f}, {0, 5, 6, 7}, 4), 2);
}

}  // namespace
}  // namespace msrnn
