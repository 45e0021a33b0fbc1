#include "msrnn/policies/tova.hpp"

#include <gtest/gtest.h>

#include "msrnn/cache.hpp"
#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::scalar_config;
using testing::step_scalar;

TEST(TOVA, EvictsTheLeastAttendedIncludingTheNewToken) {
  MultiStateCache<TOVA> cache(scalar_config(1, 1, 2));
  step_scalar(cache, 1.0f, {0.0f});
  step_scalar(cache, 1.0f, {3.0f});
  step_scalar(cache, 1.0f, {-2.0f});  // logits (0, 3, -2): the new token is the least attended
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{0, 1}));
  step_scalar(cache, 1.0f, {1.0f});  // logits (0, 3, 1): position 0 goes
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{1, 3}));
}

TEST(TOVA, TiesGoToTheOldest) {
  MultiStateCache<TOVA> cache(scalar_config(1, 1, 2));
  for (int t = 0; t < 3; ++t) step_scalar(cache, 1.0f, {1.0f});
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{1, 2}));
}

// Two KV heads, one query head each, q = 1, scale 1, capacity 2, three tokens.
//   head 0 keys (0, 1, 2): probs (.0900, .2447, .6652)
//   head 1 keys (3, 0, 0): probs (.9094, .0453, .0453)
//   layer mean (.4997, .1450, .3553): position 1 goes from both heads.
//   per head: head 0 drops position 0; head 1 ties positions 1 and 2 and drops the older, 1.
TEST(TOVA, AveragesOverEveryQueryHeadOfTheLayer) {
  MultiStateCache<TOVA> cache(scalar_config(2, 2, 2));
  step_scalar(cache, 1.0f, {0.0f, 3.0f});
  step_scalar(cache, 1.0f, {1.0f, 0.0f});
  step_scalar(cache, 1.0f, {2.0f, 0.0f});
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{0, 2}));
  EXPECT_EQ(cache.kept_positions(0, 1), (std::vector<Index>{0, 2}));
}

TEST(TOVA, HeadGranularityLetsEachKvHeadChoose) {
  MultiStateCache<TOVA> cache(scalar_config(2, 2, 2), TOVA{TovaGranularity::head});
  step_scalar(cache, 1.0f, {0.0f, 3.0f});
  step_scalar(cache, 1.0f, {1.0f, 0.0f});
  step_scalar(cache, 1.0f, {2.0f, 0.0f});
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{1, 2}));
  EXPECT_EQ(cache.kept_positions(0, 1), (std::vector<Index>{0, 2}));
}

TEST(TOVA, ScoresComeFromTheNewestQueryOnly) {
  // A chunk of two tokens with two query heads each: rows are token-major.
  const TOVA tova;
  RowMatrix probs(4, 2);
  probs << 1.0f, 0.0f,  // token 0, head 0
      1.0f, 0.0f,       // token 0, head 1
      0.25f, 0.75f,     // token 1, head 0
      0.5f, 0.5f;       // token 1, head 1
  RowVector scores = RowVector::Constant(2, 9.0f);
  tova.observe(0, probs, 2, scores);
  EXPECT_FLOAT_EQ(scores(0), 0.75f);
  EXPECT_FLOAT_EQ(scores(1), 1.25f);
}

}  // namespace
}  // namespace msrnn
