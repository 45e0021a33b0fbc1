#include "msrnn/policies/tova_sinks.hpp"

#include <gtest/gtest.h>

#include <string>
#include <variant>
#include <vector>

#include "msrnn/cache.hpp"
#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::scalar_config;
using testing::step_scalar;

// Capacity 2, one sink, q = 1, scale 1. Logits (k) of positions 0, 1, 2: (-5, 3, 1). TOVA alone
// drops position 0, the least attended; with a sink it stays and position 2 (1 < 3) goes.
TEST(TovaSinks, TheSinkStaysWhereTovaWouldEvictIt) {
  MultiStateCache<TOVA> tova(scalar_config(1, 1, 2));
  MultiStateCache<TovaSinks> hybrid(scalar_config(1, 1, 2), TovaSinks(1));
  for (float k : {-5.0f, 3.0f, 1.0f}) {
    step_scalar(tova, 1.0f, {k});
    step_scalar(hybrid, 1.0f, {k});
  }
  EXPECT_EQ(tova.kept_positions(0, 0), (std::vector<Index>{1, 2}));
  EXPECT_EQ(hybrid.kept_positions(0, 0), (std::vector<Index>{0, 1}));
  // Logits (-5, 3, 4) for positions 0, 1, 3: among the unprotected, 1 (3 < 4) goes.
  step_scalar(hybrid, 1.0f, {4.0f});
  EXPECT_EQ(hybrid.kept_positions(0, 0), (std::vector<Index>{0, 3}));
}

TEST(TovaSinks, ZeroSinksIsTova) {
  MultiStateCache<TOVA> tova(scalar_config(2, 2, 3));
  MultiStateCache<TovaSinks> hybrid(scalar_config(2, 2, 3), TovaSinks(0));
  for (int t = 0; t < 12; ++t) {
    const float a = static_cast<float>((t * 7) % 5) - 2.0f;
    const float b = static_cast<float>((t * 3) % 4) - 1.5f;
    step_scalar(tova, 1.0f, {a, b});
    step_scalar(hybrid, 1.0f, {a, b});
    ASSERT_EQ(hybrid.kept_positions(0, 0), tova.kept_positions(0, 0)) << t;
    ASSERT_EQ(hybrid.kept_positions(0, 1), tova.kept_positions(0, 1)) << t;
  }
}

TEST(TovaSinks, OptionsComeFromTheRegistryAndAreChecked) {
  PolicyOptions options = testing::named("tova_sink");
  options.sinks = 3;
  options.granularity = TovaGranularity::head;
  const TovaSinks hybrid = std::get<TovaSinks>(make_policy(options));
  EXPECT_EQ(hybrid.sinks, 3);
  EXPECT_TRUE(hybrid.per_head());
  EXPECT_EQ(TovaSinks{}.sinks, PolicyOptions{}.sinks);
  TovaSinks policy(4);
  EXPECT_NE(testing::invalid_argument_message([&] { policy.prepare(4); }).find("sinks = 4"),
            std::string::npos);
  EXPECT_NO_THROW(policy.prepare(5));
  EXPECT_TRUE(policy.protects(3, 100));
  EXPECT_FALSE(policy.protects(4, 100));
}

}  // namespace
}  // namespace msrnn
