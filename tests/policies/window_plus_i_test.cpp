#include "msrnn/policies/window_plus_i.hpp"

#include <gtest/gtest.h>

#include "msrnn/cache.hpp"
#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::scalar_config;
using testing::step_scalar;

TEST(WindowPlusI, KeepsTheSinksAndTheMostRecent) {
  MultiStateCache<WindowPlusI> cache(scalar_config(1, 1, 4), WindowPlusI{2});
  for (int t = 0; t < 8; ++t) step_scalar(cache, 1.0f, {0.0f});
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{0, 1, 6, 7}));
}

TEST(WindowPlusI, DefaultsToFourSinks) {
  EXPECT_EQ(WindowPlusI{}.sinks, 4);
  MultiStateCache<WindowPlusI> cache(scalar_config(2, 1, 6));
  for (int t = 0; t < 20; ++t) step_scalar(cache, 1.0f, {static_cast<float>(t)});
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{0, 1, 2, 3, 18, 19}));
}

TEST(WindowPlusI, ZeroSinksIsWindow) {
  MultiStateCache<WindowPlusI> sinks(scalar_config(1, 1, 3), WindowPlusI{0});
  MultiStateCache<Window> window(scalar_config(1, 1, 3));
  for (int t = 0; t < 7; ++t) {
    step_scalar(sinks, 1.0f, {0.0f});
    step_scalar(window, 1.0f, {0.0f});
  }
  EXPECT_EQ(sinks.kept_positions(0, 0), window.kept_positions(0, 0));
}

TEST(WindowPlusI, SinksMustBeFewerThanTheCapacity) {
  WindowPlusI policy{4};
  EXPECT_THROW(policy.prepare(4), std::invalid_argument);
  EXPECT_NO_THROW(policy.prepare(5));
  EXPECT_TRUE(policy.protects(3, 100));
  EXPECT_FALSE(policy.protects(4, 100));
}

}  // namespace
}  // namespace msrnn
