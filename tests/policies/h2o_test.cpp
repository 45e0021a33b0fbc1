#include "msrnn/policies/h2o.hpp"

#include <gtest/gtest.h>

#include "msrnn/cache.hpp"
#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::scalar_config;
using testing::step_scalar;

// With q = 0 attention is uniform: each of the n states held at a step gets 1/n. Scores:
//   t=0: s0 = 1
//   t=1: s0 = 1.5,   s1 = .5
//   t=2: s0 = 1.833, s1 = .833, s2 = .333
//   t=3: s0 = 2.083, s1 = 1.083, s2 = .583, s3 = .25
//   t=4 (after evicting at t=3): +.25 each, s4 = .25
TEST(H2O, UniformAttentionHandComputedWithOneRecent) {
  MultiStateCache<H2O> cache(scalar_config(1, 1, 3), H2O{1});
  for (int t = 0; t < 4; ++t) step_scalar(cache, 0.0f, {1.0f});
  // 3 is protected; the lowest of {2.083, 1.083, .583} is position 2.
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{0, 1, 3}));
  step_scalar(cache, 0.0f, {1.0f});
  // s0 2.333, s1 1.333, s3 .5, s4 .25 (protected): position 3 goes.
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{0, 1, 4}));
}

TEST(H2O, UniformAttentionHandComputedWithTwoRecent) {
  MultiStateCache<H2O> cache(scalar_config(1, 1, 3), H2O{2});
  for (int t = 0; t < 4; ++t) step_scalar(cache, 0.0f, {1.0f});
  // 2 and 3 protected; of s0 2.083 and s1 1.083, position 1 goes.
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{0, 2, 3}));
  step_scalar(cache, 0.0f, {1.0f});
  // 3 and 4 protected; s0 2.333, s2 .833: position 2 goes.
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{0, 3, 4}));
}

// Two KV heads with one query head each, q = 1, scale 1, capacity 2, nothing protected.
//   head 0 keys (0, 5, 0): t=1 probs (.0067, .9933); t=2 probs (.0066, .9867, .0066)
//     scores (1.0133, 1.98, .0066): the new token (position 2) goes.
//   head 1 keys (0, -5, 0): t=1 probs (.9933, .0067); t=2 probs (.4983, .0034, .4983)
//     scores (2.49, .0101, .4983): position 1 goes.
TEST(H2O, EachKvHeadChoosesItsOwnVictim) {
  MultiStateCache<H2O> cache(scalar_config(2, 2, 2), H2O{0});
  step_scalar(cache, 1.0f, {0.0f, 0.0f});
  step_scalar(cache, 1.0f, {5.0f, -5.0f});
  step_scalar(cache, 1.0f, {0.0f, 0.0f});
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{0, 1}));
  EXPECT_EQ(cache.kept_positions(0, 1), (std::vector<Index>{0, 2}));
}

TEST(H2O, SumsTheQueryHeadsOfAKvHead) {
  // Two query heads share the KV head; observe adds both rows' probabilities.
  const H2O h2o{0};
  RowMatrix probs(2, 3);
  probs << 0.2f, 0.3f, 0.5f, 0.6f, 0.1f, 0.3f;
  RowVector scores = RowVector::Constant(3, 1.0f);
  h2o.observe(0, probs, 1, scores);
  EXPECT_TRUE(scores.isApprox((RowVector(3) << 1.8f, 1.4f, 1.8f).finished()));
}

TEST(H2O, TiesGoToTheOldestUnprotected) {
  const H2O h2o{1};
  const float score[] = {0.5f, 0.2f, 0.2f, 0.0f};
  const Index position[] = {5, 9, 7, 10};  // position 10 is protected (newest)
  EXPECT_EQ(detail::select_victim(h2o, score, position, 4, 10), 2);  // 7 is older than 9
}

TEST(H2O, NormalizeDividesByTheStepsAStateWasVisible) {
  H2O h2o{0, true};
  EXPECT_FLOAT_EQ(h2o.priority(2.0f, 6, 9), 0.5f);  // visible at steps 6, 7, 8, 9
  h2o.normalize = false;
  EXPECT_FLOAT_EQ(h2o.priority(2.0f, 6, 9), 2.0f);
  // Unnormalized, old position 0 outscores position 3; normalized, it does not.
  const float score[] = {2.0f, 1.0f};
  const Index position[] = {0, 3};
  EXPECT_EQ(detail::select_victim(H2O{0, false}, score, position, 2, 4), 1);
  EXPECT_EQ(detail::select_victim(H2O{0, true}, score, position, 2, 4), 0);
}

TEST(H2O, RecentDefaultsToHalfTheCapacity) {
  H2O h2o;
  h2o.prepare(9);
  EXPECT_EQ(h2o.recent, 4);
  EXPECT_TRUE(h2o.protects(17, 20));
  EXPECT_FALSE(h2o.protects(16, 20));
  H2O too_many{9};
  EXPECT_THROW(too_many.prepare(9), std::invalid_argument);
}

}  // namespace
}  // namespace msrnn
