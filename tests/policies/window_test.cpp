#include "msrnn/policies/window.hpp"

#include <gtest/gtest.h>

#include "msrnn/cache.hpp"
#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::scalar_config;
using testing::step_scalar;

TEST(Window, KeepsTheLastCPositions) {
  MultiStateCache<Window> cache(scalar_config(1, 1, 3));
  const std::size_t bytes = cache.state_bytes();
  // Attention would favour position 0 (key 9): Window ignores attention.
  const std::vector<float> keys = {9, 0, 0, 0, 0, 0};
  for (float k : keys) step_scalar(cache, 1.0f, {k});
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{3, 4, 5}));
  EXPECT_EQ(cache.state_bytes(), bytes);  // storage never grows
}

TEST(Window, CapacityOneKeepsOnlyTheNewest) {
  MultiStateCache<Window> cache(scalar_config(2, 2, 1));
  for (int t = 0; t < 5; ++t) step_scalar(cache, 1.0f, {1.0f, 2.0f});
  EXPECT_EQ(cache.kept_positions(0, 0), std::vector<Index>{4});
  EXPECT_EQ(cache.kept_positions(0, 1), std::vector<Index>{4});
}

TEST(Window, ChoosesTheOldestAmongEqualPriorities) {
  const Window window;
  const float score[] = {0.5f, 0.1f, 0.9f};
  const Index position[] = {7, 3, 5};  // slots are not in position order after evictions
  EXPECT_EQ(detail::select_victim(window, score, position, 3, 7), 1);
}

}  // namespace
}  // namespace msrnn
