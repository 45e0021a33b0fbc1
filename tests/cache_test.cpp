#include "msrnn/cache.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "msrnn/state_file.hpp"
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
  c.kv_type = static_cast<KvType>(9);
  EXPECT_TRUE(mentions(message(c), "kv_type = 9")) << message(c);
  c = good;
  c.kernels = static_cast<Kernels>(7);
  EXPECT_TRUE(mentions(message(c), "kernels = 7")) << message(c);
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

TEST(CacheConfig, APositionModeThatIsNeitherAbsoluteNorInCacheIsRejected) {
  CacheConfig c = small_config(4, 2, 8, 16);
  c.positions = static_cast<PositionMode>(5);
  for (bool rope : {false, true}) {
    if (rope) c.rope = Rope(8);
    const std::string message = invalid_argument_message([&] { AnyCache cache(c, Window{}); });
    EXPECT_TRUE(mentions(message, "positions = 5")) << message;
  }
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

// Positions are in [0, kMaxPosition): append rejects a position or a `seen` past the limit before
// any arithmetic on them can overflow, and changes nothing.
TEST(MultiStateCache, AppendRejectsPositionsAndSeenPastTheLimit) {
  constexpr Index kHuge = std::numeric_limits<Index>::max();
  MultiStateCache<H2O> cache(small_config(4, 2, 8, 4));
  const RowMatrix kv = random_matrix(2, 16, 3);
  const RowMatrix one = kv.topRows(1);
  auto append_message = [&](const std::vector<Index>& positions, std::optional<Index> seen) {
    return invalid_argument_message([&] {
      cache.append(0, kv.topRows(static_cast<Index>(positions.empty() ? 1 : positions.size())),
                   kv.topRows(static_cast<Index>(positions.empty() ? 1 : positions.size())),
                   positions, seen);
    });
  };
  const std::string limit = std::to_string(kMaxPosition);
  std::string m = append_message({kMaxPosition}, std::nullopt);
  EXPECT_TRUE(mentions(m, "positions = " + limit + ": must be below kMaxPosition")) << m;
  m = append_message({kHuge}, std::nullopt);
  EXPECT_TRUE(mentions(m, "positions = " + std::to_string(kHuge))) << m;
  m = append_message({0, kHuge}, std::nullopt);
  EXPECT_TRUE(mentions(m, "positions = " + std::to_string(kHuge))) << m;
  m = append_message({kMaxPosition - 1}, kMaxPosition + 1);
  EXPECT_TRUE(
      mentions(m, "seen = " + std::to_string(kMaxPosition + 1) + ": must be at most kMaxPosition"))
      << m;
  m = append_message({}, kHuge);
  EXPECT_TRUE(mentions(m, "seen = " + std::to_string(kHuge))) << m;
  EXPECT_EQ(cache.size(0), 0);  // a rejected call changes nothing
  EXPECT_EQ(cache.tokens_seen(0), 0);

  // Implied positions (empty `positions`) count from tokens_seen and must stay below it too.
  cache.append(0, one, one, {}, kMaxPosition);
  EXPECT_EQ(cache.tokens_seen(0), kMaxPosition);
  m = invalid_argument_message([&] { cache.append(0, one, one); });
  EXPECT_TRUE(mentions(m, "k.rows() = 1")) << m;
  EXPECT_TRUE(mentions(m, "below kMaxPosition")) << m;
  EXPECT_EQ(cache.size(0), 1);
}

// The last position below the limit is accepted and stepped to; the step that would pass it is
// refused (the message the state loader gives) and changes nothing, in the token and the chunk
// path, whatever the policy and position mode; what the cache holds at the limit saves and loads.
TEST(MultiStateCache, StepsReachTheLimitAndTheStepPastItIsRefused) {
  for (std::string_view kind : kPolicyNames) {
    for (int mode = 0; mode < 3; ++mode) {  // host positions, absolute, in_cache
      for (bool normalize : {false, true}) {
        SCOPED_TRACE(std::string(kind) + " mode " + std::to_string(mode) + " normalize " +
                     std::to_string(normalize));
        CacheConfig config = small_config(4, 2, 8, 3);
        if (mode > 0) config.rope = Rope(8);
        if (mode == 2) config.positions = PositionMode::in_cache;
        PolicyOptions options;
        options.name = std::string(kind);
        options.sinks = 1;
        options.normalize = normalize;
        AnyCache cache(config, make_policy(options));
        const RowMatrix kv = random_matrix(2, 16, 5);
        cache.append(0, kv, kv, {0, kMaxPosition - 5});
        EXPECT_EQ(cache.tokens_seen(0), kMaxPosition - 4);
        const RowMatrix out = feed(cache, 4, 6);
        EXPECT_TRUE(out.allFinite());
        EXPECT_EQ(cache.tokens_seen(0), kMaxPosition);
        EXPECT_EQ(cache.kept_positions(0, 1).back(), kMaxPosition - 1);
        const std::vector<Index> kept = cache.kept_positions(0, 0);
        RowMatrix q = random_matrix(4, 8, 1), k = random_matrix(2, 8, 2), step_out(4, 8);
        const std::string m = invalid_argument_message([&] { cache.step(0, q, k, k, step_out); });
        EXPECT_TRUE(mentions(m, "tokens_seen = " + std::to_string(kMaxPosition) +
                                    " + 1: must be at most kMaxPosition"))
            << m;
        EXPECT_EQ(cache.tokens_seen(0), kMaxPosition);  // nothing changed
        EXPECT_EQ(cache.kept_positions(0, 0), kept);
        const AnyCache loaded = load_state(save_state(cache));
        EXPECT_EQ(loaded.tokens_seen(0), kMaxPosition);
        EXPECT_EQ(loaded.kept_positions(0, 0), kept);

        // The chunk path: four tokens fit exactly, a fifth does not (refused before any).
        AnyCache restored(config, make_policy(options));
        restored.append(0, kv.topRows(1), kv.topRows(1), {kMaxPosition - 5}, kMaxPosition - 4);
        RowMatrix chunk_out(5, 32);
        const RowMatrix chunk_q = random_matrix(5, 32, 7), chunk_k = random_matrix(5, 16, 8);
        const std::string c = invalid_argument_message(
            [&] { restored.step_chunk(0, chunk_q, chunk_k, chunk_k, chunk_out); });
        EXPECT_TRUE(mentions(c, "must be at most kMaxPosition")) << c;
        EXPECT_EQ(restored.tokens_seen(0), kMaxPosition - 4);
        restored.step_chunk(0, chunk_q.topRows(4), chunk_k.topRows(4), chunk_k.topRows(4),
                            chunk_out.topRows(4));
        EXPECT_TRUE(chunk_out.topRows(4).allFinite());
        EXPECT_EQ(restored.tokens_seen(0), kMaxPosition);
      }
    }
  }
}

// A moved-from cache is an empty one: every call that needs a layer says it was moved from,
// the noexcept ones answer 0 or do nothing, a copy of it is moved-from too, and assigning a
// constructed cache makes it usable again.
template <class Cache>
void expect_moved_from(Cache& cache) {
  const std::string moved = "msrnn: cache = moved-from: assign a constructed cache";
  RowMatrix q(4, 8), kv(2, 8), out(4, 8), chunk_q(1, 32), chunk_kv(1, 16), chunk_out(1, 32);
  q.setOnes();
  kv.setOnes();
  chunk_q.setOnes();
  chunk_kv.setOnes();
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.size(0); }), moved));
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.tokens_seen(0); }), moved));
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.kept_positions(0, 0); }), moved));
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.step(0, q, kv, kv, out); }), moved));
  EXPECT_TRUE(mentions(invalid_argument_message(
                           [&] { cache.step_chunk(0, chunk_q, chunk_kv, chunk_kv, chunk_out); }),
                       moved));
  EXPECT_TRUE(
      mentions(invalid_argument_message([&] { cache.append(0, chunk_kv, chunk_kv); }), moved));
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.size(7); }), moved));
  cache.reset();
  EXPECT_EQ(cache.state_bytes(), 0u);
  EXPECT_EQ(cache.slots(), 0);
  EXPECT_EQ(cache.capacity(), 0);
  Cache copy = cache.copy();
  EXPECT_TRUE(mentions(invalid_argument_message([&] { copy.size(0); }), moved));
  EXPECT_TRUE(mentions(invalid_argument_message([&] { copy.step(0, q, kv, kv, out); }), moved));
  EXPECT_EQ(copy.slots(), 0);
}

template <class Cache>
void expect_moves_leave_an_empty_cache(Cache make_cache()) {
  // Move construction: the new cache goes on exactly as the old one would have.
  Cache a = make_cache();
  feed(a, 7, 1);
  Cache twin = a.copy();
  Cache b = std::move(a);
  expect_moved_from(a);
  EXPECT_TRUE(feed(b, 5, 2) == feed(twin, 5, 2));
  EXPECT_EQ(b.kept_positions(0, 1), twin.kept_positions(0, 1));
  a = make_cache();  // assigning a constructed cache revives it
  feed(a, 3, 3);
  EXPECT_EQ(a.size(0), 3);
  EXPECT_EQ(a.kept_positions(0, 0), (std::vector<Index>{0, 1, 2}));

  // Move assignment, into a cache that was in use.
  Cache c = make_cache();
  feed(c, 9, 4);
  c = std::move(b);
  expect_moved_from(b);
  EXPECT_TRUE(feed(c, 4, 5) == feed(twin, 4, 5));
  b = std::move(c);
  expect_moved_from(c);
  EXPECT_TRUE(feed(b, 2, 6) == feed(twin, 2, 6));
  // Moving a moved-from cache gives a moved-from cache; a self-move leaves one too.
  Cache d = std::move(c);
  expect_moved_from(d);
  Cache& alias = b;
  b = std::move(alias);
  expect_moved_from(b);
}

template <Index kThreads, class Policy>
MultiStateCache<Policy> make_test_cache() {
  CacheConfig config = small_config(4, 2, 8, 5);
  config.rope = Rope(8);
  config.positions = PositionMode::in_cache;
  config.threads = kThreads;
  Policy policy{};
  if constexpr (std::is_same_v<Policy, AnyPolicy>) policy = WindowPlusI{1};
  return MultiStateCache<Policy>(config, policy);
}

TEST(MultiStateCache, AMovedFromCacheIsEmptyAndSaysSo) {
  expect_moves_leave_an_empty_cache<AnyCache>(make_test_cache<1, AnyPolicy>);
  expect_moves_leave_an_empty_cache<AnyCache>(make_test_cache<2, AnyPolicy>);
  expect_moves_leave_an_empty_cache<MultiStateCache<TOVA>>(make_test_cache<1, TOVA>);
  expect_moves_leave_an_empty_cache<MultiStateCache<TOVA>>(make_test_cache<2, TOVA>);
  expect_moves_leave_an_empty_cache<MultiStateCache<H2O>>(make_test_cache<2, H2O>);
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

// step takes one token a row as well, the t = 1 case of step_chunk: the same memory as one head
// a row, so the same outputs and kept states, bit for bit.
template <class Cache>
void expect_token_rows_match_head_rows(Cache make_cache()) {
  Cache heads = make_cache();
  Cache rows = make_cache();
  const CacheConfig& c = heads.config();
  const Index nq = c.n_q_heads * c.head_dim;
  const Index nkv = c.n_kv_heads * c.head_dim;
  for (Index t = 0; t < 12; ++t) {  // past the capacity: evictions too
    for (Index l = 0; l < c.n_layers; ++l) {
      const auto s = static_cast<std::uint32_t>(100 * t + 10 * l);
      const RowMatrix q = random_matrix(1, nq, s);
      const RowMatrix k = random_matrix(1, nkv, s + 1);
      const RowMatrix v = random_matrix(1, nkv, s + 2);
      RowMatrix out_heads(c.n_q_heads, c.head_dim);
      RowMatrix out_rows(1, nq);
      heads.step(l, Eigen::Map<const RowMatrix>(q.data(), c.n_q_heads, c.head_dim),
                 Eigen::Map<const RowMatrix>(k.data(), c.n_kv_heads, c.head_dim),
                 Eigen::Map<const RowMatrix>(v.data(), c.n_kv_heads, c.head_dim), out_heads);
      rows.step(l, q, k, v, out_rows);
      ASSERT_TRUE(Eigen::Map<const RowMatrix>(out_rows.data(), c.n_q_heads, c.head_dim) ==
                  out_heads)
          << "token " << t << " layer " << l;
      // The layouts may be mixed, argument by argument.
      if (t == 11) {
        Cache mixed = heads.copy();
        Cache reference = heads.copy();
        RowMatrix out_mixed(c.n_q_heads, c.head_dim);
        mixed.step(l, q, Eigen::Map<const RowMatrix>(k.data(), c.n_kv_heads, c.head_dim), v,
                   out_mixed);
        reference.step(l, q, k, v, out_rows);
        EXPECT_TRUE(Eigen::Map<const RowMatrix>(out_rows.data(), c.n_q_heads, c.head_dim) ==
                    out_mixed);
      }
    }
  }
  for (Index l = 0; l < c.n_layers; ++l) {
    for (Index g = 0; g < c.n_kv_heads; ++g) {
      EXPECT_EQ(rows.kept_positions(l, g), heads.kept_positions(l, g));
    }
    EXPECT_EQ(rows.size(l), heads.size(l));
  }
}

template <class Policy>
MultiStateCache<Policy> make_layout_cache() {
  CacheConfig config = small_config(4, 2, 8, 5, 2);
  config.rope = Rope(8);
  config.positions = PositionMode::in_cache;
  Policy policy{};
  if constexpr (std::is_same_v<Policy, AnyPolicy>) policy = H2O{2};
  return MultiStateCache<Policy>(config, policy);
}

// initial_slots is the constructor's rule (the engine's budget and the loader's estimate use it).
TEST(MultiStateCache, InitialSlotsIsWhatTheConstructorAllocates) {
  for (std::string_view name : kPolicyNames) {
    for (Index capacity : {Index{5}, Index{7}, Index{300}, kUnbounded}) {  // above 4 sinks
      for (std::optional<Index> max_tokens : {std::optional<Index>{}, std::optional<Index>{1},
                                              std::optional<Index>{8}, std::optional<Index>{500}}) {
        if (policy_evicts(name) && capacity == kUnbounded) continue;  // rejected
        SCOPED_TRACE(std::string(name) + " C=" + std::to_string(capacity) +
                     " max_tokens=" + std::to_string(max_tokens.value_or(-1)));
        CacheConfig config = small_config(2, 1, 4, capacity, 1);
        config.max_tokens = max_tokens;
        const AnyCache cache(config, make_policy(testing::named(name)));
        EXPECT_EQ(cache.slots(), initial_slots(config, policy_evicts(name)));
      }
    }
  }
  CacheConfig config = small_config(2, 1, 4, 64, 1);
  EXPECT_EQ(initial_slots(config, true), 65);
  config.max_tokens = 9;
  EXPECT_EQ(initial_slots(config, true), 9);
  EXPECT_EQ(initial_slots(config, false), 9);
  config.capacity = kUnbounded;
  config.max_tokens.reset();
  EXPECT_EQ(initial_slots(config, false), 256);
  EXPECT_EQ(initial_slots(config, true), kUnbounded);  // no overflow on a config the cache rejects
}

// max_tokens: a bounded cache allocates what the sequence can hold, with the results of C + 1
// slots; past max_tokens it grows (up to C + 1) instead of failing; C still sets the options.
TEST(MultiStateCache, MaxTokensAllocatesOnlyWhatTheSequenceCanHold) {
  for (std::string_view name : kPolicyNames) {
    SCOPED_TRACE(std::string(name));
    CacheConfig config = small_config(4, 2, 8, 64, 2);
    config.rope = Rope(8);
    CacheConfig small = config;
    small.max_tokens = 10;
    AnyCache full_size(config, make_policy(testing::named(name)));
    AnyCache bounded(small, make_policy(testing::named(name)));
    if (policy_evicts(name)) {
      EXPECT_EQ(full_size.slots(), 65);
    }
    EXPECT_EQ(bounded.slots(), 10);
    EXPECT_EQ(bounded.state_bytes(), kv_state_bytes(small, 10));
    RowMatrix a(4, 8), b(4, 8);
    for (Index t = 0; t < 90; ++t) {  // past max_tokens, and past C for the bounded policies
      for (Index l = 0; l < 2; ++l) {
        const auto seed = static_cast<std::uint32_t>(t * 3 + l);
        const RowMatrix q = random_matrix(4, 8, seed);
        const RowMatrix k = random_matrix(2, 8, seed + 500);
        const RowMatrix v = random_matrix(2, 8, seed + 900);
        full_size.step(l, q, k, v, a);
        bounded.step(l, q, k, v, b);
        ASSERT_TRUE(a == b) << "token " << t << " layer " << l;
      }
      ASSERT_EQ(bounded.kept_positions(1, 1), full_size.kept_positions(1, 1)) << t;
    }
    if (policy_evicts(name)) {
      EXPECT_EQ(bounded.slots(), 65);  // grew, to C + 1 at most
    }
  }
  CacheConfig bad = small_config(1, 1, 4, 8);
  bad.max_tokens = 0;
  EXPECT_NE(testing::invalid_argument_message([&] {
              AnyCache cache(bad, Window{});
            }).find("max_tokens = 0: must be at least 1"),
            std::string::npos);
  // The options are checked against C, not max_tokens: recent = C / 2 = 32 > max_tokens is fine.
  CacheConfig few = small_config(1, 1, 4, 64);
  few.max_tokens = 5;
  EXPECT_NO_THROW(AnyCache(few, H2O{}));
  EXPECT_NO_THROW(AnyCache(few, WindowPlusI{40}));
}

TEST(MultiStateCache, StepTakesOneTokenARowBitForBitAsOneHeadARow) {
  expect_token_rows_match_head_rows<MultiStateCache<TOVA>>(make_layout_cache<TOVA>);
  expect_token_rows_match_head_rows<MultiStateCache<Window>>(make_layout_cache<Window>);
  expect_token_rows_match_head_rows<AnyCache>(make_layout_cache<AnyPolicy>);
}

TEST(MultiStateCache, WrongStepShapesNameBothLayouts) {
  AnyCache cache(small_config(4, 2, 8, 16), Window{});
  RowMatrix q(1, 32), kv(1, 16), out(1, 32);
  q.setOnes();
  kv.setOnes();
  const RowMatrix wrong_q(2, 16), wrong_kv(1, 8);
  RowMatrix wrong_out(1, 31);
  const std::string q_message =
      invalid_argument_message([&] { cache.step(0, wrong_q, kv, kv, out); });
  EXPECT_TRUE(mentions(q_message,
                       "q = 2x16: expected shape 4x8 (one head a row) or 1x32 (one "
                       "token a row)"))
      << q_message;
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.step(0, q, wrong_kv, kv, out); }),
                       "k = 1x8: expected shape 2x8 (one head a row) or 1x16 (one token a row)"));
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.step(0, q, kv, wrong_kv, out); }),
                       "v = 1x8: expected shape 2x8"));
  EXPECT_TRUE(mentions(invalid_argument_message([&] { cache.step(0, q, kv, kv, wrong_out); }),
                       "out = 1x31: expected shape 4x8 (one head a row) or 1x32"));
  EXPECT_EQ(cache.size(0), 0);
  cache.step(0, q, kv, kv, out);
  EXPECT_EQ(cache.size(0), 1);
  // With one head the two layouts are the same shape.
  AnyCache one(small_config(1, 1, 8, 4), Window{});
  RowMatrix q1(1, 8), out1(1, 8);
  q1.setOnes();
  one.step(0, q1, q1, q1, out1);
  EXPECT_EQ(one.size(0), 1);
}

// Column-major arguments would bind through a temporary copy (an allocation in step): they do
// not compile. Row-major matrices, maps and blocks of them do.
template <class Cache, class Q, class KV, class = void>
struct can_step : std::false_type {};
template <class Cache, class Q, class KV>
struct can_step<Cache, Q, KV,
                std::void_t<decltype(std::declval<Cache&>().step(
                    Index{0}, std::declval<const Q&>(), std::declval<const KV&>(),
                    std::declval<const KV&>(), std::declval<RowMatrix&>()))>> : std::true_type {};
using ColMatrix = Eigen::MatrixXf;
static_assert(can_step<AnyCache, RowMatrix, RowMatrix>::value);
static_assert(can_step<MultiStateCache<TOVA>, Eigen::Map<const RowMatrix>, RowMatrix>::value);
static_assert(can_step<AnyCache, Eigen::Ref<const RowMatrix>, RowMatrix>::value);
static_assert(can_step<AnyCache, RowVector, RowVector>::value);
static_assert(can_step<AnyCache, Eigen::Block<const RowMatrix>, RowMatrix>::value);
static_assert(!can_step<AnyCache, ColMatrix, RowMatrix>::value);
static_assert(!can_step<AnyCache, RowMatrix, ColMatrix>::value);
static_assert(!can_step<MultiStateCache<TOVA>, Eigen::Map<const ColMatrix>, RowMatrix>::value);
static_assert(!can_step<AnyCache, Eigen::Ref<const ColMatrix>, RowMatrix>::value);

// The API contract (README, "API contract"): what never throws.
static_assert(noexcept(std::declval<AnyCache&>().reset()));
static_assert(noexcept(std::declval<const AnyCache&>().capacity()));
static_assert(noexcept(std::declval<const AnyCache&>().slots()));
static_assert(noexcept(std::declval<const AnyCache&>().state_bytes()));
static_assert(noexcept(std::declval<const AnyCache&>().config()));
static_assert(std::is_nothrow_move_constructible_v<AnyCache>);
static_assert(std::is_nothrow_move_assignable_v<AnyCache>);
static_assert(std::is_nothrow_move_constructible_v<MultiStateCache<TOVA>>);
static_assert(!std::is_copy_constructible_v<AnyCache>);  // copies are explicit: copy()

TEST(MultiStateCache, StepNeverThrowsWithValidArguments) {
  for (std::string_view kind : kPolicyNames) {
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
  // 3 layers, 4 KV heads: keys and values in whole blocks of 16 slots (112 for 101).
  EXPECT_EQ(cache.state_bytes(), std::size_t{3} * 4 * (112 + 112) * 16 * sizeof(float));
  EXPECT_EQ(cache.capacity(), 100);
  // The stored precision: 2 bytes a value (f16, bf16), 1 and a float scale per row (q8).
  for (KvType type : {KvType::f16, KvType::bf16, KvType::q8}) {
    CacheConfig config = small_config(8, 4, 16, 100, 3);
    config.kv_type = type;
    const std::size_t row = type == KvType::q8 ? 16 + 4 : 16 * 2;
    EXPECT_EQ(MultiStateCache<TOVA>(config).state_bytes(), std::size_t{3} * 4 * (112 + 112) * row)
        << to_string(type);
  }
}

TEST(MultiStateCache, EveryKernelVariantTheCpuHasGivesTheSameStepsWithinFloatTolerance) {
  for (KvType type : {KvType::f32, KvType::f16, KvType::bf16, KvType::q8}) {
    CacheConfig config = small_config(8, 2, 40, 12, 1);
    config.rope = Rope(40);
    config.kv_type = type;
    config.kernels = Kernels::portable;
    MultiStateCache<TOVA> portable(config);
    EXPECT_EQ(portable.kernels(), Kernels::portable);
    for (Kernels variant : {Kernels::automatic, Kernels::avx2, Kernels::avx512}) {
      config.kernels = variant;
      if (!kernels_available(variant)) {
        const std::string message =
            invalid_argument_message([&] { MultiStateCache<TOVA> c(config); });
        EXPECT_TRUE(mentions(message, std::string("kernels = ") + to_string(variant))) << message;
        continue;
      }
      MultiStateCache<TOVA> cache(config);
      EXPECT_EQ(cache.kernels(), variant == Kernels::automatic ? best_kernels() : variant);
      MultiStateCache<TOVA> reference = portable.copy();
      reference.reset();
      const RowMatrix q = random_matrix(60, 8 * 40, 1), kv = random_matrix(60, 2 * 2 * 40, 2);
      RowMatrix got(8, 40), want(8, 40);
      for (Index t = 0; t < 60; ++t) {
        const Eigen::Map<const RowMatrix> qt(q.row(t).data(), 8, 40);
        const Eigen::Map<const RowMatrix> kt(kv.row(t).data(), 2, 40);
        const Eigen::Map<const RowMatrix> vt(kv.row(t).data() + 80, 2, 40);
        cache.step(0, qt, kt, vt, got);
        reference.step(0, qt, kt, vt, want);
        ASSERT_TRUE(got.isApprox(want, 1e-5f))
            << to_string(variant) << " " << to_string(type) << " token " << t;
        ASSERT_EQ(cache.kept_positions(0, 1), reference.kept_positions(0, 1));
      }
    }
  }
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
