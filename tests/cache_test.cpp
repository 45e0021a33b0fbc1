#include "msrnn/cache.hpp"

#include <gtest/gtest.h>

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::invalid_argument_message;
using testing::random_matrix;
using testing::small_config;

bool mentions(const std::string& message, const std::string& text) {
  return message.find(text) != std::string::npos;
}

// Feeds n random tokens (seeded by `seed`) through every layer; returns the last output.
template <class Cache>
RowMatrix feed(Cache& cache, Index n, std::uint32_t seed) {
  const CacheConfig& c = cache.config();
  RowMatrix out(c.n_q_heads, c.head_dim);
  for (Index t = 0; t < n; ++t) {
    for (Index l = 0; l < c.n_layers; ++l) {
      const auto s = seed + static_cast<std::uint32_t>(1000 * t + 10 * l);
      cache.step(l, random_matrix(c.n_q_heads, c.head_dim, s),
                 random_matrix(c.n_kv_heads, c.head_dim, s + 1),
                 random_matrix(c.n_kv_heads, c.head_dim, s + 2), out);
    }
  }
  return out;
}

TEST(CacheConfig, BadValuesThrowNamingTheParameterAndValue) {
  auto message = [](CacheConfig c, AnyPolicy p = Window{}) {
    return invalid_argument_message([&] { AnyCache cache(c, p); });
  };
  const CacheConfig good = small_config(4, 2, 8, 16);
  CacheConfig c = good;
  c.capacity = 0;
  EXPECT_TRUE(mentions(message(c), "capacity = 0")) << message(c);
  EXPECT_TRUE(mentions(message(c, Full{}), "capacity = 0"));
  c = good;
  c.n_q_heads = 6;
  c.n_kv_heads = 4;
  EXPECT_TRUE(mentions(message(c), "n_q_heads = 6")) << message(c);
  c = good;
  c.n_kv_heads = 0;
  EXPECT_TRUE(mentions(message(c), "n_kv_heads = 0"));
  c = good;
  c.n_layers = -1;
  EXPECT_TRUE(mentions(message(c), "n_layers = -1"));
  c = good;
  c.head_dim = 0;
  EXPECT_TRUE(mentions(message(c), "head_dim = 0"));
  EXPECT_TRUE(mentions(message(good, WindowPlusI{16}), "sinks = 16"));
  EXPECT_TRUE(mentions(message(good, WindowPlusI{20}), "smaller than capacity (16)"));
  EXPECT_TRUE(mentions(message(good, WindowPlusI{-2}), "sinks = -2"));
  EXPECT_TRUE(mentions(message(good, H2O{16}), "recent = 16"));
  EXPECT_TRUE(mentions(message(good, H2O{-3}), "recent = -3"));
  c = good;
  c.capacity = kUnbounded;
  EXPECT_TRUE(mentions(message(c, TOVA{}), "needs a finite capacity")) << message(c, TOVA{});
  EXPECT_EQ(message(c, Full{}), "");  // Full alone may be unbounded
  c = good;
  c.rope = Rope(4);
  EXPECT_TRUE(mentions(message(c), "rope.head_dim = 4"));
  c = good;
  c.positions = PositionMode::in_cache;
  EXPECT_TRUE(mentions(message(c), "positions = in_cache"));
  c = good;
  c.scale = -1.0f;
  EXPECT_TRUE(mentions(message(c), "scale = -1"));
  c = good;
  c.capacity = Index{1} << 60;
  EXPECT_TRUE(mentions(message(c), "2^62 bytes"));
  c = good;
  c.threads = 0;
  EXPECT_TRUE(mentions(message(c), "threads = 0"));
  EXPECT_EQ(message(good), "");
}

TEST(MultiStateCache, AppendToFullGrowsPastItsReservation) {
  MultiStateCache<Full> cache(small_config(4, 2, 8, 2));  // 2 slots reserved
  const RowMatrix kv = testing::random_matrix(5, 16, 4);
  cache.append(0, kv, kv);
  EXPECT_GE(cache.slots(), 5);
  EXPECT_EQ(cache.kept_positions(0, 1), (std::vector<Index>{0, 1, 2, 3, 4}));
  RowMatrix q = testing::random_matrix(4, 8, 5), out(4, 8);
  const Eigen::Map<const RowMatrix> k(kv.row(0).data(), 2, 8);  // token 0's key, (2, 8)
  cache.step(0, q, k, k, out);
  EXPECT_EQ(cache.size(0), 6);
  EXPECT_TRUE(out.allFinite());
}

TEST(MultiStateCache, AppendRejectsWhatDoesNotFitOrGoesBackwards) {
  MultiStateCache<Window> cache(small_config(4, 2, 8, 4));
  const RowMatrix kv = testing::random_matrix(5, 16, 3);
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.append(0, kv, kv); }),
                       "k.rows() = 5: must fit in the free capacity (4 of 4)"));
  EXPECT_TRUE(mentions(invalid_argument_message([&] {
                         cache.append(0, kv.topRows(2), kv.topRows(2), {3, 3});
                       }),
                       "positions = 3: must be ascending"));
  EXPECT_TRUE(mentions(
      invalid_argument_message([&] { cache.append(0, kv.topRows(2), kv.topRows(2), {1}); }),
      "positions.size() = 1"));
  EXPECT_TRUE(
      mentions(invalid_argument_message([&] { cache.append(0, kv, kv.leftCols(8)); }), "v = 5x8"));
  EXPECT_EQ(cache.size(0), 0);  // a rejected call changes nothing
  cache.append(0, kv.topRows(2), kv.topRows(2), {10, 40});
  EXPECT_EQ(cache.kept_positions(0, 1), (std::vector<Index>{10, 40}));
  EXPECT_EQ(cache.tokens_seen(0), 41);
  EXPECT_TRUE(mentions(
      invalid_argument_message([&] { cache.append(0, kv.topRows(1), kv.topRows(1), {40}); }),
      "at least tokens_seen (41)"));
  EXPECT_TRUE(mentions(
      invalid_argument_message([&] { cache.append(0, kv.topRows(1), kv.topRows(1), {50}, 50); }),
      "seen = 50: must be at least the last position + 1 (51)"));
  cache.append(0, kv.topRows(2), kv.topRows(2), {}, 45);  // the newest 2 were dropped
  EXPECT_EQ(cache.kept_positions(0, 0), (std::vector<Index>{10, 40, 41, 42}));
  EXPECT_EQ(cache.tokens_seen(0), 45);
  EXPECT_TRUE(
      mentions(invalid_argument_message([&] { cache.append(0, kv.topRows(1), kv.topRows(1)); }),
               "(0 of 4)"));
}

TEST(MultiStateCache, WrongShapesAndLayersThrowNamingTheArgument) {
  MultiStateCache<Window> cache(small_config(4, 2, 8, 16, 2));
  RowMatrix q(4, 8), kv(2, 8), out(4, 8);
  RowMatrix wrong_q(3, 8), wrong_kv(2, 6), wrong_out(4, 7);
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.step(0, wrong_q, kv, kv, out); }),
                       "q = 3x8: expected shape 4x8"));
  EXPECT_TRUE(
      mentions(invalid_argument_message([&] { cache.step(0, q, wrong_kv, kv, out); }), "k = 2x6"));
  EXPECT_TRUE(
      mentions(invalid_argument_message([&] { cache.step(0, q, kv, wrong_kv, out); }), "v = 2x6"));
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.step(0, q, kv, kv, wrong_out); }),
                       "out = 4x7"));
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.step(2, q, kv, kv, out); }),
                       "layer = 2: must be in [0, 2)"));
  EXPECT_TRUE(
      mentions(invalid_argument_message([&] { cache.step(-1, q, kv, kv, out); }), "layer = -1"));
  RowMatrix chunk_q(3, 32), chunk_kv(2, 16), chunk_out(3, 32);
  EXPECT_TRUE(mentions(invalid_argument_message(
                           [&] { cache.step_chunk(0, chunk_q, chunk_kv, chunk_kv, chunk_out); }),
                       "k = 2x16: expected shape 3x16"));
  EXPECT_TRUE(
      mentions(invalid_argument_message([&] { cache.kept_positions(0, 2); }), "kv_head = 2"));
  // A rejected call changes nothing.
  EXPECT_EQ(cache.size(0), 0);
  EXPECT_EQ(cache.tokens_seen(0), 0);
}

// The API contract (README, "API contract"): what never throws.
static_assert(noexcept(std::declval<AnyCache&>().reset()));
static_assert(noexcept(std::declval<const AnyCache&>().capacity()));
static_assert(noexcept(std::declval<const AnyCache&>().slots()));
static_assert(noexcept(std::declval<const AnyCache&>().state_bytes()));
static_assert(noexcept(std::declval<const AnyCache&>().config()));
static_assert(std::is_nothrow_move_constructible_v<AnyCache>);
static_assert(!std::is_copy_constructible_v<AnyCache>);  // copies are explicit: copy()

TEST(MultiStateCache, StepNeverThrowsWithValidArguments) {
  for (PolicyKind kind : {PolicyKind::full, PolicyKind::window, PolicyKind::sink, PolicyKind::h2o,
                          PolicyKind::tova}) {
    for (PositionMode mode : {PositionMode::absolute, PositionMode::in_cache}) {
      CacheConfig config = small_config(6, 3, 4, 5, 2);
      config.rope = Rope(4);
      config.positions = mode;
      AnyCache cache = testing::any_cache(config, kind);
      RowMatrix out(6, 4), chunk_out(7, 24);
      for (Index t = 0; t < 30; ++t) {
        const auto s = static_cast<std::uint32_t>(t);
        EXPECT_NO_THROW(cache.step(t % 2, random_matrix(6, 4, s), random_matrix(3, 4, s + 1),
                                   random_matrix(3, 4, s + 2), out));
      }
      EXPECT_NO_THROW(cache.step_chunk(1, random_matrix(7, 24, 1), random_matrix(7, 12, 2),
                                       random_matrix(7, 12, 3), chunk_out));
      EXPECT_TRUE(out.allFinite() && chunk_out.allFinite());
    }
  }
}

TEST(MultiStateCache, StateBytesCountKeysAndValuesOfEverySlot) {
  MultiStateCache<TOVA> cache(small_config(8, 4, 16, 100, 3));
  EXPECT_EQ(cache.slots(), 101);  // C + 1: the incoming token before its eviction
  EXPECT_EQ(cache.state_bytes(), std::size_t{3} * 4 * 101 * 16 * 2 * sizeof(float));
  EXPECT_EQ(cache.capacity(), 100);
}

TEST(MultiStateCache, FullGrowsPastItsReservationAndKeepsEverything) {
  MultiStateCache<Full> cache(small_config(2, 1, 4, 3));
  EXPECT_EQ(cache.capacity(), kUnbounded);
  const std::size_t before = cache.state_bytes();
  feed(cache, 50, 1);
  EXPECT_EQ(cache.size(0), 50);
  EXPECT_GE(cache.slots(), 50);
  EXPECT_GT(cache.state_bytes(), before);
  std::vector<Index> all(50);
  for (Index p = 0; p < 50; ++p) all[static_cast<std::size_t>(p)] = p;
  EXPECT_EQ(cache.kept_positions(0, 0), all);
}

TEST(MultiStateCache, LayersKeepTheirOwnStates) {
  MultiStateCache<TOVA> cache(small_config(2, 2, 4, 4, 2));
  RowMatrix out(2, 4);
  for (Index t = 0; t < 9; ++t) {
    const auto s = static_cast<std::uint32_t>(t);
    cache.step(0, random_matrix(2, 4, s), random_matrix(2, 4, s + 50), random_matrix(2, 4, s + 99),
               out);
  }
  cache.step(1, random_matrix(2, 4, 1), random_matrix(2, 4, 2), random_matrix(2, 4, 3), out);
  EXPECT_EQ(cache.size(0), 4);
  EXPECT_EQ(cache.tokens_seen(0), 9);
  EXPECT_EQ(cache.size(1), 1);
  EXPECT_EQ(cache.kept_positions(1, 0), std::vector<Index>{0});
}

TEST(MultiStateCache, ResetStartsANewSequence) {
  CacheConfig config = small_config(4, 2, 8, 5, 2);
  config.rope = Rope(8);
  config.positions = PositionMode::in_cache;
  MultiStateCache<H2O> used(config);
  feed(used, 17, 3);
  used.reset();
  EXPECT_EQ(used.size(1), 0);
  EXPECT_EQ(used.tokens_seen(1), 0);
  EXPECT_TRUE(used.kept_positions(1, 1).empty());
  MultiStateCache<H2O> fresh(config);
  EXPECT_TRUE(feed(used, 12, 9) == feed(fresh, 12, 9));
  EXPECT_EQ(used.kept_positions(1, 1), fresh.kept_positions(1, 1));
}

TEST(MultiStateCache, CopyIsIndependentAndGoesOnIdentically) {
  MultiStateCache<TOVA> original(small_config(4, 2, 8, 6));
  feed(original, 10, 4);
  MultiStateCache<TOVA> copy = original.copy();
  EXPECT_TRUE(feed(original, 7, 5) == feed(copy, 7, 5));
  EXPECT_EQ(original.kept_positions(0, 1), copy.kept_positions(0, 1));
  feed(copy, 3, 6);
  EXPECT_EQ(original.tokens_seen(0), 17);
  EXPECT_EQ(copy.tokens_seen(0), 20);
}

TEST(MultiStateCache, InCacheAndAbsolutePositionsAgreeWhileNothingIsEvicted) {
  // Without eviction a state's rank is its position, so both modes rotate alike.
  CacheConfig config = small_config(4, 2, 8, 40);
  config.rope = Rope(8);
  MultiStateCache<Window> absolute(config);
  config.positions = PositionMode::in_cache;
  MultiStateCache<Window> in_cache(config);
  for (std::uint32_t seed : {1u, 2u, 3u}) {  // 39 tokens in all: no eviction
    EXPECT_TRUE(feed(absolute, 13, seed) == feed(in_cache, 13, seed));
  }
  EXPECT_EQ(in_cache.size(0), 39);
}

TEST(MultiStateCache, InCachePositionsDifferFromAbsoluteOnceStatesAreEvicted) {
  // After evictions, in_cache rotates by rank (StreamingLLM) and absolute by original position.
  // A sink leaves a gap between itself and the window, which only absolute positions see (a
  // plain window has no gap, so both modes give it the same relative distances).
  CacheConfig config = small_config(2, 2, 8, 4);
  config.rope = Rope(8);
  MultiStateCache<WindowPlusI> absolute(config, WindowPlusI{1});
  config.positions = PositionMode::in_cache;
  MultiStateCache<WindowPlusI> in_cache(config, WindowPlusI{1});
  const RowMatrix a = feed(absolute, 12, 8);
  const RowMatrix b = feed(in_cache, 12, 8);
  EXPECT_EQ(absolute.kept_positions(0, 0), in_cache.kept_positions(0, 0));
  EXPECT_FALSE(a.isApprox(b, 1e-4f));
}

TEST(MultiStateCache, LongPromptsGoThroughSmallerChunksWithinTheScratchBudget) {
  // 8 query heads per KV head and 6000 tokens: 256-token pieces would need more than 32 MiB of
  // probabilities, so the cache takes smaller ones; the result must not change.
  const Index tokens = 6000;
  MultiStateCache<Full> chunked(small_config(8, 1, 2, 16));
  MultiStateCache<Full> stepped(small_config(8, 1, 2, 16));
  const RowMatrix q = random_matrix(tokens, 16, 1);
  const RowMatrix k = random_matrix(tokens, 2, 2);
  const RowMatrix v = random_matrix(tokens, 2, 3);
  RowMatrix out(tokens, 16);
  chunked.step_chunk(0, q, k, v, out);
  RowMatrix one(8, 2);
  for (Index t = 0; t < tokens; ++t) {
    stepped.step(0, Eigen::Map<const RowMatrix>(q.row(t).data(), 8, 2),
                 Eigen::Map<const RowMatrix>(k.row(t).data(), 1, 2),
                 Eigen::Map<const RowMatrix>(v.row(t).data(), 1, 2), one);
    if (t % 997 == 0 || t == tokens - 1) {
      ASSERT_TRUE(out.row(t).isApprox(Eigen::Map<const RowVector>(one.data(), 16), 1e-4f)) << t;
    }
  }
  EXPECT_EQ(chunked.size(0), tokens);
}

TEST(MultiStateCache, ScaleDefaultsToInverseSqrtHeadDim) {
  CacheConfig config = small_config(1, 1, 16, 8);
  MultiStateCache<Window> implicit(config);
  config.scale = 0.25f;
  MultiStateCache<Window> explicit_scale(config);
  config.scale = 1.0f;
  MultiStateCache<Window> unit(config);
  const RowMatrix a = feed(implicit, 6, 2);
  EXPECT_TRUE(a == feed(explicit_scale, 6, 2));
  EXPECT_FALSE(a.isApprox(feed(unit, 6, 2), 1e-4f));
}

}  // namespace
}  // namespace msrnn
