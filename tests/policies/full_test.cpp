#include "msrnn/policies/full.hpp"

#include <gtest/gtest.h>

#include "msrnn/cache.hpp"
#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::scalar_config;
using testing::step_scalar;

TEST(Full, NeverEvicts) {
  static_assert(!Full::kEvicts);
  MultiStateCache<Full> cache(scalar_config(1, 1, kUnbounded));
  for (int t = 0; t < 300; ++t) step_scalar(cache, 1.0f, {static_cast<float>(t % 7)});
  EXPECT_EQ(cache.size(0), 300);
  EXPECT_EQ(cache.kept_positions(0, 0).front(), 0);
  EXPECT_EQ(cache.kept_positions(0, 0).back(), 299);
}

TEST(Full, CapacityIsOnlyAReservation) {
  MultiStateCache<Full> cache(scalar_config(1, 1, 1000));
  EXPECT_EQ(cache.slots(), 1000);
  EXPECT_EQ(cache.capacity(), kUnbounded);
}

}  // namespace
}  // namespace msrnn
