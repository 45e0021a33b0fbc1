// The typed suite: the invariants and equivalences every policy must satisfy, run over all five.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "msrnn/cache.hpp"
#include "msrnn/state_file.hpp"
#include "reference/masked_reference.hpp"
#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::MaskedReference;
using testing::named;
using testing::random_matrix;
using testing::small_config;

// The option sets of each policy that the suite runs.
template <class P>
std::vector<PolicyOptions> variants();

template <>
std::vector<PolicyOptions> variants<Full>() {
  return {named("full")};
}
template <>
std::vector<PolicyOptions> variants<Window>() {
  return {named("window")};
}
template <>
std::vector<PolicyOptions> variants<WindowPlusI>() {
  PolicyOptions four = named("sink");  // the default, 4 sinks
  PolicyOptions one = named("sink");
  one.sinks = 1;
  return {four, one};
}
template <>
std::vector<PolicyOptions> variants<H2O>() {
  PolicyOptions half = named("h2o");  // recent = C / 2
  PolicyOptions one = named("h2o");
  one.recent = 1;
  PolicyOptions normalized = named("h2o");
  normalized.recent = 0;
  normalized.normalize = true;
  return {half, one, normalized};
}
template <>
std::vector<PolicyOptions> variants<TOVA>() {
  PolicyOptions layer = named("tova");
  PolicyOptions head = named("tova");
  head.granularity = TovaGranularity::head;
  return {layer, head};
}
template <>
std::vector<PolicyOptions> variants<TovaSinks>() {
  PolicyOptions four = named("tova_sink");  // the default, 4 sinks
  PolicyOptions head = named("tova_sink");
  head.sinks = 1;
  head.granularity = TovaGranularity::head;
  return {four, head};
}

template <class P>
P make(const PolicyOptions& options) {
  return std::get<P>(make_policy(options));
}

std::string describe(const PolicyOptions& o) {
  return o.name + " sinks=" + std::to_string(o.sinks) + " recent=" + std::to_string(o.recent) +
         " normalize=" + std::to_string(o.normalize) +
         " per_head=" + std::to_string(o.granularity == TovaGranularity::head);
}

// Attention shapes (query heads, KV heads, head_dim) and position modes the suite crosses.
struct Shape {
  Index n_q, n_kv, d;
};
const Shape kShapes[] = {{4, 4, 8}, {4, 2, 8}, {6, 1, 4}};

enum class Positions { host, absolute, in_cache, in_cache_half_split };
const Positions kPositions[] = {Positions::host, Positions::absolute, Positions::in_cache,
                                Positions::in_cache_half_split};

const KvType kKvTypes[] = {KvType::f32, KvType::f16, KvType::bf16, KvType::q8};

CacheConfig make_config(const Shape& s, Index capacity, Positions positions, Index n_layers = 2,
                        KvType type = KvType::f32) {
  CacheConfig config = small_config(s.n_q, s.n_kv, s.d, capacity, n_layers);
  config.kv_type = type;
  if (positions != Positions::host) {
    config.rope = Rope(s.d, 10000.0,
                       positions == Positions::in_cache_half_split ? RopeLayout::half_split
                                                                   : RopeLayout::interleaved);
    config.positions =
        positions == Positions::absolute ? PositionMode::absolute : PositionMode::in_cache;
  }
  return config;
}

// Random per-layer streams of t tokens: q (t, n_q * d), k and v (t, n_kv * d).
struct Stream {
  std::vector<RowMatrix> q, k, v;  // [layer]
};
Stream make_stream(const CacheConfig& c, Index t, std::uint32_t seed) {
  Stream s;
  for (Index l = 0; l < c.n_layers; ++l) {
    const auto base = seed + 101 * static_cast<std::uint32_t>(l);
    s.q.push_back(random_matrix(t, c.n_q_heads * c.head_dim, base));
    s.k.push_back(random_matrix(t, c.n_kv_heads * c.head_dim, base + 1));
    s.v.push_back(random_matrix(t, c.n_kv_heads * c.head_dim, base + 2));
  }
  return s;
}

// Feeds token `t` of every layer through cache.step; returns the outputs, one row per layer.
template <class Cache>
RowMatrix step_token(Cache& cache, const Stream& s, Index t) {
  const CacheConfig& c = cache.config();
  RowMatrix outs(c.n_layers, c.n_q_heads * c.head_dim);
  RowMatrix out(c.n_q_heads, c.head_dim);
  for (Index l = 0; l < c.n_layers; ++l) {
    const auto L = static_cast<std::size_t>(l);
    cache.step(l, Eigen::Map<const RowMatrix>(s.q[L].row(t).data(), c.n_q_heads, c.head_dim),
               Eigen::Map<const RowMatrix>(s.k[L].row(t).data(), c.n_kv_heads, c.head_dim),
               Eigen::Map<const RowMatrix>(s.v[L].row(t).data(), c.n_kv_heads, c.head_dim), out);
    outs.row(l) = Eigen::Map<const RowVector>(out.data(), out.size());
  }
  return outs;
}

template <class Cache>
std::vector<std::vector<Index>> all_kept(const Cache& cache) {
  std::vector<std::vector<Index>> kept;
  for (Index l = 0; l < cache.config().n_layers; ++l) {
    for (Index g = 0; g < cache.config().n_kv_heads; ++g)
      kept.push_back(cache.kept_positions(l, g));
  }
  return kept;
}

// The policy's own invariant on the positions kept after token t.
void expect_policy_invariant(const PolicyOptions& o, Index capacity, Index t,
                             const std::vector<Index>& kept) {
  auto has = [&](Index p) { return std::binary_search(kept.begin(), kept.end(), p); };
  if (o.name == "full") {
    EXPECT_EQ(static_cast<Index>(kept.size()), t + 1);
  } else if (o.name == "window") {
    for (Index p = std::max<Index>(0, t - capacity + 1); p <= t; ++p) EXPECT_TRUE(has(p)) << p;
  } else if (o.name == "sink" || o.name == "tova_sink") {
    for (Index p = 0; p < std::min(o.sinks, t + 1); ++p) EXPECT_TRUE(has(p)) << "sink " << p;
  } else if (o.name == "h2o") {
    const Index recent = o.recent < 0 ? capacity / 2 : o.recent;
    for (Index p = std::max<Index>(0, t - recent + 1); p <= t; ++p) {
      EXPECT_TRUE(has(p)) << "recent " << p;
    }
  } else {
    EXPECT_EQ(o.name, "tova") << "a policy without its invariant here";
  }
}

template <class P>
class EveryPolicy : public ::testing::Test {};

// Every alternative of AnyPolicy: a new policy joins the suite (and needs its variants<P>()).
template <class V>
struct TypesOf;
template <class... P>
struct TypesOf<std::variant<P...>> {
  using type = ::testing::Types<P...>;
};
using AllPolicies = TypesOf<AnyPolicy>::type;
// Names the typed tests after the policy (EveryPolicy/tova.…) instead of a number.
struct PolicyNames {
  template <class P>
  static std::string GetName(int) {
    return P::kName;
  }
};
TYPED_TEST_SUITE(EveryPolicy, AllPolicies, PolicyNames);

TYPED_TEST(EveryPolicy, AgreesWithMaskedReferenceStepByStep) {
  constexpr Index kCapacity = 6;
  constexpr Index kTokens = 40;
  for (const PolicyOptions& options : variants<TypeParam>()) {
    for (const Shape& shape : kShapes) {
      for (Positions positions : kPositions) {
        SCOPED_TRACE(describe(options) + " n_q=" + std::to_string(shape.n_q) +
                     " n_kv=" + std::to_string(shape.n_kv) +
                     " positions=" + std::to_string(static_cast<int>(positions)));
        const CacheConfig config = make_config(shape, kCapacity, positions);
        MultiStateCache<TypeParam> cache(config, make<TypeParam>(options));
        MaskedReference reference(config, options);
        const Stream s = make_stream(config, kTokens, 7);
        for (Index t = 0; t < kTokens; ++t) {
          const RowMatrix outs = step_token(cache, s, t);
          for (Index l = 0; l < config.n_layers; ++l) {
            const auto L = static_cast<std::size_t>(l);
            const std::vector<double> want =
                reference.step(l, s.q[L].row(t).data(), s.k[L].row(t).data(), s.v[L].row(t).data());
            for (Index i = 0; i < outs.cols(); ++i) {
              ASSERT_NEAR(outs(l, i), want[static_cast<std::size_t>(i)], 2e-5)
                  << "token " << t << " layer " << l << " entry " << i;
            }
            for (Index g = 0; g < config.n_kv_heads; ++g) {
              ASSERT_EQ(cache.kept_positions(l, g), reference.kept(l, g))
                  << "token " << t << " layer " << l << " kv head " << g;
            }
          }
        }
      }
    }
  }
}

// in_cache keys are kept rotated at a moving offset (InCacheKeys), renormalised every few
// evictions: a long stream at a small capacity crosses many renormalisations, on either RoPE
// layout, and still agrees with the reference, which rotates at ranks every step.
TYPED_TEST(EveryPolicy, InCachePositionsAgreeWithTheReferenceAlongALongStream) {
  constexpr Index kCapacity = 5;
  constexpr Index kTokens = 300;
  for (const PolicyOptions& options : variants<TypeParam>()) {
    for (Positions positions : {Positions::in_cache, Positions::in_cache_half_split}) {
      SCOPED_TRACE(describe(options) + " positions=" + std::to_string(static_cast<int>(positions)));
      const CacheConfig config = make_config({4, 2, 8}, kCapacity, positions, 1);
      MultiStateCache<TypeParam> cache(config, make<TypeParam>(options));
      MaskedReference reference(config, options);
      const Stream s = make_stream(config, kTokens, 17);
      for (Index t = 0; t < kTokens; ++t) {
        const RowMatrix outs = step_token(cache, s, t);
        const std::vector<double> want =
            reference.step(0, s.q[0].row(t).data(), s.k[0].row(t).data(), s.v[0].row(t).data());
        for (Index i = 0; i < outs.cols(); ++i) {
          ASSERT_NEAR(outs(0, i), want[static_cast<std::size_t>(i)], 2e-5)
              << "token " << t << " entry " << i;
        }
        for (Index g = 0; g < config.n_kv_heads; ++g) {
          ASSERT_EQ(cache.kept_positions(0, g), reference.kept(0, g)) << "token " << t;
        }
      }
    }
  }
}

// Every precision against the reference that stores keys and values the same way (its own
// conversions, tests/reference): the same kept states, and outputs within 1e-4, well below what
// the precision itself changes (checked: the f32 cache's outputs differ by more). With in_cache
// positions that holds until the first eviction; after it a kept key is stored rotated at a
// virtual position other than its rank (InCacheKeys) and so rounded otherwise than the reference
// rounds it at its rank: the outputs then agree to the size of the precision's own rounding.
TYPED_TEST(EveryPolicy, EveryPrecisionAgreesWithAReferenceThatStoresAlike) {
  constexpr Index kCapacity = 6;
  constexpr Index kTokens = 40;
  for (const PolicyOptions& options : variants<TypeParam>()) {
    for (KvType type : {KvType::f16, KvType::bf16, KvType::q8}) {
      for (Positions positions : kPositions) {
        SCOPED_TRACE(describe(options) + " " + to_string(type) +
                     " positions=" + std::to_string(static_cast<int>(positions)));
        const CacheConfig config = make_config({4, 2, 8}, kCapacity, positions, 1, type);
        CacheConfig f32_config = config;
        f32_config.kv_type = KvType::f32;
        MultiStateCache<TypeParam> cache(config, make<TypeParam>(options));
        MultiStateCache<TypeParam> f32(f32_config, make<TypeParam>(options));
        MaskedReference reference(config, options);
        const Stream s = make_stream(config, kTokens, 23);
        const bool in_cache = config.positions == PositionMode::in_cache && config.rope;
        const double rounding = type == KvType::f16 ? 2e-3 : type == KvType::bf16 ? 1.5e-2 : 3e-2;
        double from_f32 = 0.0;
        for (Index t = 0; t < kTokens; ++t) {
          const RowMatrix outs = step_token(cache, s, t);
          from_f32 =
              std::max<double>(from_f32, (outs - step_token(f32, s, t)).cwiseAbs().maxCoeff());
          const std::vector<double> want =
              reference.step(0, s.q[0].row(t).data(), s.k[0].row(t).data(), s.v[0].row(t).data());
          const double tolerance = in_cache && t >= kCapacity ? rounding : 1e-4;
          for (Index i = 0; i < outs.cols(); ++i) {
            ASSERT_NEAR(outs(0, i), want[static_cast<std::size_t>(i)], tolerance)
                << "token " << t << " entry " << i;
          }
          for (Index g = 0; g < config.n_kv_heads; ++g) {
            ASSERT_EQ(cache.kept_positions(0, g), reference.kept(0, g)) << "token " << t;
          }
        }
        EXPECT_GT(from_f32, 3e-4) << "the precision changed nothing the test could see";
      }
    }
  }
}

TYPED_TEST(EveryPolicy, NeverHoldsMoreThanCapacityAndKeepsItsInvariant) {
  constexpr Index kCapacity = 7;
  constexpr Index kTokens = 60;
  for (const PolicyOptions& options : variants<TypeParam>()) {
    SCOPED_TRACE(describe(options));
    const CacheConfig config = make_config({4, 2, 8}, kCapacity, Positions::absolute);
    MultiStateCache<TypeParam> cache(config, make<TypeParam>(options));
    const Stream s = make_stream(config, kTokens, 11);
    const bool bounded = options.name != "full";
    for (Index t = 0; t < kTokens; ++t) {
      step_token(cache, s, t);
      for (Index l = 0; l < config.n_layers; ++l) {
        const Index expected = bounded ? std::min(t + 1, kCapacity) : t + 1;
        EXPECT_EQ(cache.size(l), expected);
        EXPECT_EQ(cache.tokens_seen(l), t + 1);
        for (Index g = 0; g < config.n_kv_heads; ++g) {
          const std::vector<Index> kept = cache.kept_positions(l, g);
          ASSERT_EQ(static_cast<Index>(kept.size()), expected);
          EXPECT_TRUE(std::adjacent_find(kept.begin(), kept.end()) == kept.end());
          EXPECT_LE(kept.back(), t);
          expect_policy_invariant(options, kCapacity, t, kept);
        }
      }
    }
  }
}

TYPED_TEST(EveryPolicy, EqualsFullExactlyWhenCapacityCoversTheSequence) {
  constexpr Index kTokens = 24;
  for (const PolicyOptions& options : variants<TypeParam>()) {
    for (Positions positions : kPositions) {
      // C equal to the sequence, and larger (other slot counts, other row strides).
      for (int run = 0; run < 8; ++run) {
        const Index capacity = run % 2 == 0 ? kTokens : 3 * kTokens + 1;
        const KvType type = kKvTypes[run / 2];  // every precision
        SCOPED_TRACE(describe(options) +
                     " positions=" + std::to_string(static_cast<int>(positions)) +
                     " C=" + std::to_string(capacity) + " " + to_string(type));
        const CacheConfig config = make_config({4, 2, 8}, capacity, positions, 2, type);
        MultiStateCache<TypeParam> cache(config, make<TypeParam>(options));
        MultiStateCache<Full> full(make_config({4, 2, 8}, 1, positions, 2, type));  // grows
        const Stream s = make_stream(config, kTokens, 13);
        for (Index t = 0; t < kTokens; ++t) {
          const RowMatrix got = step_token(cache, s, t);
          const RowMatrix want = step_token(full, s, t);
          ASSERT_TRUE(got == want) << "token " << t;
        }
        EXPECT_EQ(all_kept(cache), all_kept(full));

        // The chunk path too: a whole prompt at once.
        MultiStateCache<TypeParam> chunked(config, make<TypeParam>(options));
        MultiStateCache<Full> full_chunked(make_config({4, 2, 8}, 1, positions, 2, type));
        for (Index l = 0; l < config.n_layers; ++l) {
          const auto L = static_cast<std::size_t>(l);
          RowMatrix got(kTokens, config.n_q_heads * config.head_dim);
          RowMatrix want(kTokens, config.n_q_heads * config.head_dim);
          chunked.step_chunk(l, s.q[L], s.k[L], s.v[L], got);
          full_chunked.step_chunk(l, s.q[L], s.k[L], s.v[L], want);
          EXPECT_TRUE(got == want) << "layer " << l;
        }
        EXPECT_EQ(all_kept(chunked), all_kept(full_chunked));
      }
    }
  }
}

TYPED_TEST(EveryPolicy, IsDeterministic) {
  for (const PolicyOptions& options : variants<TypeParam>()) {
    SCOPED_TRACE(describe(options));
    const CacheConfig config = make_config({4, 2, 8}, 5, Positions::in_cache);
    MultiStateCache<TypeParam> a(config, make<TypeParam>(options));
    MultiStateCache<TypeParam> b(config, make<TypeParam>(options));
    const Stream s = make_stream(config, 30, 17);
    for (Index t = 0; t < 30; ++t) ASSERT_TRUE(step_token(a, s, t) == step_token(b, s, t));
    EXPECT_EQ(all_kept(a), all_kept(b));
  }
}

// Feeds the prompt through step_chunk in pieces of the given sizes (the last one takes the rest).
template <class Cache>
RowMatrix feed_chunks(Cache& cache, const Stream& s, Index prompt,
                      const std::vector<Index>& pieces) {
  const CacheConfig& c = cache.config();
  RowMatrix outs(prompt, c.n_layers * c.n_q_heads * c.head_dim);
  for (Index l = 0; l < c.n_layers; ++l) {
    const auto L = static_cast<std::size_t>(l);
    Index at = 0;
    for (std::size_t i = 0; at < prompt; ++i) {
      const Index n = i < pieces.size() ? std::min(pieces[i], prompt - at) : prompt - at;
      RowMatrix out(n, c.n_q_heads * c.head_dim);
      cache.step_chunk(l, s.q[L].middleRows(at, n), s.k[L].middleRows(at, n),
                       s.v[L].middleRows(at, n), out);
      outs.block(at, l * out.cols(), n, out.cols()) = out;
      at += n;
    }
  }
  return outs;
}

TYPED_TEST(EveryPolicy, ChunkPathMatchesTokenByToken) {
  constexpr Index kCapacity = 8;
  const std::vector<std::vector<Index>> splits = {{}, {5, 1}, {1, 2, 3}};
  for (const PolicyOptions& options : variants<TypeParam>()) {
    for (Positions positions : kPositions) {
      for (Index prompt : {Index{3}, kCapacity, 3 * kCapacity + 2}) {
        for (std::size_t run = 0; run < 2 * splits.size(); ++run) {
          const std::vector<Index>& pieces = splits[run % splits.size()];
          // f32 for every split, and one other precision per split
          const KvType type = run < splits.size() ? KvType::f32 : kKvTypes[1 + run % 3];
          SCOPED_TRACE(describe(options) +
                       " positions=" + std::to_string(static_cast<int>(positions)) +
                       " prompt=" + std::to_string(prompt) +
                       " pieces=" + std::to_string(pieces.size()) + " " + to_string(type));
          CacheConfig config = make_config({4, 2, 8}, kCapacity, positions, 2, type);
          config.max_chunk = 4;  // also split by the cache itself
          MultiStateCache<TypeParam> chunked(config, make<TypeParam>(options));
          MultiStateCache<TypeParam> stepped(config, make<TypeParam>(options));
          const Index total = prompt + 10;
          const Stream s = make_stream(config, total, 19);
          const RowMatrix got = feed_chunks(chunked, s, prompt, pieces);
          for (Index t = 0; t < prompt; ++t) {
            const RowMatrix want = step_token(stepped, s, t);
            for (Index l = 0; l < config.n_layers; ++l) {
              const Index width = want.cols();
              ASSERT_TRUE(got.block(t, l * width, 1, width).isApprox(want.row(l), 1e-5f))
                  << "token " << t << " layer " << l;
            }
          }
          ASSERT_EQ(all_kept(chunked), all_kept(stepped));
          // The states (and the scores behind them) go on alike.
          for (Index t = prompt; t < total; ++t) {
            ASSERT_TRUE(step_token(chunked, s, t).isApprox(step_token(stepped, s, t), 1e-5f))
                << "token " << t;
            ASSERT_EQ(all_kept(chunked), all_kept(stepped)) << "token " << t;
          }
        }
      }
    }
  }
}

TYPED_TEST(EveryPolicy, ThreadsGiveTheSingleThreadedResultsBitForBit) {
  constexpr Index kCapacity = 7;
  constexpr Index kTokens = 30;
  for (const PolicyOptions& options : variants<TypeParam>()) {
    for (Positions positions : {Positions::absolute, Positions::in_cache}) {
      // head_dim 32 takes the 32-wide kernel, with 4 query heads per KV head at a time.
      for (const Shape& shape :
           {Shape{4, 4, 8}, Shape{8, 4, 8}, Shape{6, 3, 4}, Shape{16, 4, 32}}) {
        // 2 threads: even blocks; 3: uneven ones (or one per head); 8: more threads than heads.
        for (Index threads : {2, 3, 8}) {
          SCOPED_TRACE(describe(options) + " n_kv=" + std::to_string(shape.n_kv) +
                       " positions=" + std::to_string(static_cast<int>(positions)) +
                       " threads=" + std::to_string(threads));
          CacheConfig one = make_config(shape, kCapacity, positions);
          one.max_chunk = 3;  // several products before the cache is full
          CacheConfig many = one;
          many.threads = threads;
          const Stream s = make_stream(one, 2 * kTokens, 23);
          MultiStateCache<TypeParam> single(one, make<TypeParam>(options));
          MultiStateCache<TypeParam> parallel(many, make<TypeParam>(options));
          for (Index t = 0; t < kTokens; ++t) {
            ASSERT_TRUE(step_token(parallel, s, t) == step_token(single, s, t)) << "token " << t;
            ASSERT_EQ(all_kept(parallel), all_kept(single)) << "token " << t;
          }
          // The chunk path: a prompt that fills the cache by products, then goes token by token.
          MultiStateCache<TypeParam> single_chunk(one, make<TypeParam>(options));
          MultiStateCache<TypeParam> parallel_chunk(many, make<TypeParam>(options));
          const RowMatrix want = feed_chunks(single_chunk, s, kTokens, {});
          const RowMatrix got = feed_chunks(parallel_chunk, s, kTokens, {});
          EXPECT_TRUE(got == want);
          EXPECT_EQ(all_kept(parallel_chunk), all_kept(single_chunk));
          // A copy gets its own threads and goes on alike.
          MultiStateCache<TypeParam> copied = parallel.copy();
          for (Index t = kTokens; t < kTokens + 5; ++t) {
            ASSERT_TRUE(step_token(copied, s, t) == step_token(single, s, t)) << "token " << t;
          }
        }
      }
    }
  }
}

// A state rebuilt with `append` from the positions a stepped cache keeps (a saved session) goes
// on exactly like the stepped cache. H2O is left out: its accumulated scores are not restored.
TYPED_TEST(EveryPolicy, AppendedStatesGoOnLikeSteppedOnes) {
  if constexpr (std::is_same_v<TypeParam, H2O>) {
    GTEST_SKIP() << "H2O's accumulated scores are not part of what append restores";
  } else {
    constexpr Index kCapacity = 6;
    constexpr Index kTokens = 20;
    for (const PolicyOptions& options : variants<TypeParam>()) {
      if (options.granularity == TovaGranularity::head) continue;  // heads keep different slots
      for (Positions positions : kPositions) {
        SCOPED_TRACE(describe(options) +
                     " positions=" + std::to_string(static_cast<int>(positions)));
        const CacheConfig config = make_config({4, 2, 8}, kCapacity, positions);
        const Stream s = make_stream(config, kTokens + 8, 29);
        MultiStateCache<TypeParam> stepped(config, make<TypeParam>(options));
        for (Index t = 0; t < kTokens; ++t) step_token(stepped, s, t);

        MultiStateCache<TypeParam> restored(config, make<TypeParam>(options));
        for (Index l = 0; l < config.n_layers; ++l) {
          const auto L = static_cast<std::size_t>(l);
          const std::vector<Index> kept = stepped.kept_positions(l, 0);
          RowMatrix k(static_cast<Index>(kept.size()), s.k[L].cols());
          RowMatrix v(k.rows(), k.cols());
          for (std::size_t i = 0; i < kept.size(); ++i) {
            k.row(static_cast<Index>(i)) = s.k[L].row(kept[i]);
            v.row(static_cast<Index>(i)) = s.v[L].row(kept[i]);
          }
          restored.append(l, k, v, kept, stepped.tokens_seen(l));
          EXPECT_EQ(restored.tokens_seen(l), kTokens);
          EXPECT_EQ(restored.size(l), stepped.size(l));
        }
        ASSERT_EQ(all_kept(restored), all_kept(stepped));
        for (Index t = kTokens; t < kTokens + 8; ++t) {
          // Not bit for bit: the stepped cache holds its states in another slot order.
          ASSERT_TRUE(step_token(restored, s, t).isApprox(step_token(stepped, s, t), 1e-5f))
              << "token " << t;
          ASSERT_EQ(all_kept(restored), all_kept(stepped)) << "token " << t;
        }
      }
    }
  }
}

TYPED_TEST(EveryPolicy, AppendWithoutPositionsTakesTheNextOnes) {
  for (const PolicyOptions& options : variants<TypeParam>()) {
    SCOPED_TRACE(describe(options));
    const CacheConfig config = make_config({4, 2, 8}, 9, Positions::absolute);
    const Stream s = make_stream(config, 12, 31);
    MultiStateCache<TypeParam> stepped(config, make<TypeParam>(options));
    MultiStateCache<TypeParam> appended(config, make<TypeParam>(options));
    for (Index t = 0; t < 5; ++t) step_token(stepped, s, t);
    for (Index l = 0; l < config.n_layers; ++l) {
      const auto L = static_cast<std::size_t>(l);
      appended.append(l, s.k[L].topRows(2), s.v[L].topRows(2));
      appended.append(l, s.k[L].middleRows(2, 3), s.v[L].middleRows(2, 3));
    }
    ASSERT_EQ(all_kept(appended), all_kept(stepped));
    // The next outputs depend only on the kept keys and values, not on earlier scores.
    EXPECT_TRUE(step_token(appended, s, 5) == step_token(stepped, s, 5));
  }
}

// ---- non-finite keys and values ----------------------------------------------------------------
//
// The rule (detail/select_victim.hpp, and the interface on `Window`): a state whose priority is not
// finite ranks below every finite one, ties among them to the oldest, and protection comes first.
// A NaN key of KV head g makes every probability that g's query heads give NaN (the softmax sums
// it in), so each state held beside it in g gets a NaN score: H2O keeps it in its accumulated
// score, TOVA sees it while the poisoned state is attended.

enum class Poison { nan_key_one_head, nan_key_every_head, inf_key, nan_value };
const Poison kPoisons[] = {Poison::nan_key_one_head, Poison::nan_key_every_head, Poison::inf_key,
                           Poison::nan_value};

const char* poison_name(Poison p) {
  switch (p) {
    case Poison::nan_key_one_head:
      return "NaN key in KV head 1";
    case Poison::nan_key_every_head:
      return "NaN key in every KV head";
    case Poison::inf_key:
      return "+inf key in KV head 1";
    case Poison::nan_value:
      return "NaN value in KV head 1";
  }
  return "?";
}

// The KV heads whose key or value `p` poisons: head 1, or all of them.
std::vector<Index> poisoned_heads(Poison p, Index n_kv) {
  std::vector<Index> heads;
  for (Index g = 0; g < n_kv; ++g) {
    if (p == Poison::nan_key_every_head || g == 1) heads.push_back(g);
  }
  return heads;
}

// Writes the poison into token `at` of layer 0. The +inf key is +inf in every entry: q.k then adds
// +inf and -inf terms (a random query has entries of both signs), so it is NaN as well.
void add_poison(Stream& s, const CacheConfig& c, Index at, Poison p) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const Index d = c.head_dim;
  for (Index g : poisoned_heads(p, c.n_kv_heads)) {
    if (p == Poison::nan_value) {
      s.v[0].row(at).segment(g * d, d).setConstant(nan);
    } else {
      s.k[0].row(at).segment(g * d, d).setConstant(p == Poison::inf_key ? inf : nan);
    }
  }
}

// Equal, or both NaN.
bool same(float a, float b) { return a == b || (std::isnan(a) && std::isnan(b)); }

// Whether query head h's output (head_dim floats of row `out`) is finite.
bool head_finite(const RowMatrix& out, Index h, Index d) {
  return out.row(0).segment(h * d, d).allFinite();
}

bool contains(const std::vector<Index>& kept, Index p) {
  return std::binary_search(kept.begin(), kept.end(), p);
}

// The first step after which `p` is no longer kept in KV head g, or `end` if it stays.
Index departure(const std::vector<std::vector<std::vector<Index>>>& kept, Index g, Index p,
                Index end) {
  for (Index t = p; t < end; ++t) {
    if (!contains(kept[static_cast<std::size_t>(t)][static_cast<std::size_t>(g)], p)) return t;
  }
  return end;
}

TYPED_TEST(EveryPolicy, ANonFiniteStateIsEvictedAndTheKeptSetMovesOn) {
  constexpr Index kCapacity = 8;
  constexpr Index kAt = kCapacity + 3;                // the cache is full when the poison arrives
  constexpr Index kTokens = kAt + 1 + 3 * kCapacity;  // then 3 C finite tokens
  const Shape shape{4, 2, 8};
  const Index d = shape.d;
  const Index group = shape.n_q / shape.n_kv;
  for (const PolicyOptions& options : variants<TypeParam>()) {
    for (Positions positions : {Positions::host, Positions::in_cache}) {
      for (Poison poison : kPoisons) {
        SCOPED_TRACE(describe(options) + " positions=" +
                     std::to_string(static_cast<int>(positions)) + " " + poison_name(poison));
        const CacheConfig config = make_config(shape, kCapacity, positions, 1);
        CacheConfig threaded = config;
        threaded.threads = 2;
        const Stream clean = make_stream(config, kTokens, 41);
        Stream s = clean;
        add_poison(s, config, kAt, poison);
        MultiStateCache<TypeParam> cache(config, make<TypeParam>(options));
        MultiStateCache<TypeParam> parallel(threaded, make<TypeParam>(options));
        MultiStateCache<TypeParam> unpoisoned(config, make<TypeParam>(options));
        MaskedReference reference(config, options);
        std::vector<std::vector<std::vector<Index>>> kept, clean_kept;  // [t][g] after step t
        std::vector<RowMatrix> outs, clean_outs;                        // [t] (1, n_q * d)
        for (Index t = 0; t < kTokens; ++t) {
          outs.push_back(step_token(cache, s, t));
          clean_outs.push_back(step_token(unpoisoned, clean, t));
          const RowMatrix parallel_out = step_token(parallel, s, t);
          for (Index i = 0; i < parallel_out.size(); ++i) {
            ASSERT_TRUE(same(parallel_out(i), outs.back()(i))) << "threads: token " << t;
          }
          ASSERT_EQ(all_kept(parallel), all_kept(cache)) << "threads: token " << t;
          const std::vector<double> want =
              reference.step(0, s.q[0].row(t).data(), s.k[0].row(t).data(), s.v[0].row(t).data());
          for (Index i = 0; i < outs.back().cols(); ++i) {
            const float got = outs.back()(0, i);
            const double w = want[static_cast<std::size_t>(i)];
            ASSERT_EQ(std::isfinite(got), std::isfinite(w)) << "token " << t << " entry " << i;
            if (std::isfinite(w)) {
              ASSERT_NEAR(got, w, 2e-5) << "token " << t << " entry " << i;
            }
          }
          kept.push_back(all_kept(cache));
          clean_kept.push_back(all_kept(unpoisoned));
          for (Index g = 0; g < config.n_kv_heads; ++g) {
            // The reference applies the same rule on its own (tests/reference).
            ASSERT_EQ(kept.back()[static_cast<std::size_t>(g)], reference.kept(0, g))
                << "token " << t << " kv head " << g;
          }
        }

        // (a) When the poisoned position leaves the KV heads it poisons. Window keeps the last C
        // positions: it goes C steps later; WindowPlusI keeps the last C - sinks besides the
        // sinks. H2O and TOVA: while it is held, every state beside it gets a NaN score, so the
        // oldest goes each step; C states older than it were held when it came, so it goes
        // exactly C steps later (H2O protects at most C - 1 newest: the oldest is never
        // protected). A NaN value leaves the scores alone: the kept sets are those of the clean
        // run, step for step. Full keeps it.
        const std::vector<Index> heads = poisoned_heads(poison, config.n_kv_heads);
        Index gone = kAt;  // the step after which it has left every poisoned head
        for (Index g : heads) {
          const Index left = departure(kept, g, kAt, kTokens);
          gone = std::max(gone, left);
          if (options.name == "full") {
            EXPECT_EQ(left, kTokens) << "kv head " << g;
          } else if (options.name == "window") {
            EXPECT_EQ(left, kAt + kCapacity) << "kv head " << g;
          } else if (options.name == "sink") {
            EXPECT_EQ(left, kAt + kCapacity - options.sinks) << "kv head " << g;
          } else if (poison != Poison::nan_value) {
            // h2o and tova: the oldest unprotected goes each step; tova_sink protects its sinks.
            const Index protected_older = options.name == "tova_sink" ? options.sinks : 0;
            EXPECT_EQ(left, kAt + kCapacity - protected_older) << "kv head " << g;
          }
        }
        if (poison == Poison::nan_value) {
          for (Index t = 0; t < kTokens; ++t) {
            ASSERT_EQ(kept[static_cast<std::size_t>(t)], clean_kept[static_cast<std::size_t>(t)])
                << "token " << t;
          }
        }

        // (b) Query heads of a poisoned KV head give non-finite outputs exactly in the steps that
        // attend the poisoned state (a NaN key or value reaches every output of its head); once
        // it has gone from every head, all outputs are finite.
        for (Index t = 0; t < kTokens; ++t) {
          const RowMatrix& out = outs[static_cast<std::size_t>(t)];
          for (Index g : heads) {
            const bool attended =
                t >= kAt &&
                (t == kAt ||
                 contains(kept[static_cast<std::size_t>(t - 1)][static_cast<std::size_t>(g)], kAt));
            for (Index h = g * group; h < (g + 1) * group; ++h) {
              EXPECT_EQ(head_finite(out, h, d), !attended) << "token " << t << " head " << h;
            }
          }
          if (t > gone) {
            EXPECT_TRUE(out.allFinite()) << "token " << t;
          }
        }
        if (options.name == "full") continue;

        // (c) The kept set moves on. Window, WindowPlusI and H2O with recent >= 1 keep the newest
        // position at every step. Every bounded policy changes its kept set at least once in
        // every C steps after the poisoned state has gone: a frozen cache (NaN losing every
        // comparison) evicts each new token at once. (Which tokens TOVA keeps then depends on
        // the data; the agreement with the reference above pins it.)
        const Index recent = options.recent < 0 ? kCapacity / 2 : options.recent;
        const bool keeps_newest = options.name == "window" || options.name == "sink" ||
                                  (options.name == "h2o" && recent >= 1);
        for (Index t = kAt; t < kTokens; ++t) {
          for (Index g = 0; g < config.n_kv_heads; ++g) {
            if (keeps_newest) {
              EXPECT_TRUE(
                  contains(kept[static_cast<std::size_t>(t)][static_cast<std::size_t>(g)], t))
                  << "token " << t << " kv head " << g;
            }
          }
        }
        for (Index t = gone + kCapacity; t < kTokens; ++t) {
          bool moved = false;
          for (Index u = t - kCapacity + 1; u <= t; ++u) {
            moved =
                moved || kept[static_cast<std::size_t>(u)] != kept[static_cast<std::size_t>(u - 1)];
          }
          EXPECT_TRUE(moved) << "the kept set did not change in the " << kCapacity
                             << " steps up to token " << t;
        }
        // H2O keeps the NaN scores of the states that were held beside the poisoned one: they go
        // first, oldest first, so the C tokens after it each stay, and then the poisoned heads
        // hold exactly the C positions after `gone`.
        if (options.name == "h2o" && poison != Poison::nan_value) {
          ASSERT_LT(gone + kCapacity, kTokens) << "the poisoned state never left";
          for (Index g : heads) {
            std::vector<Index> want;
            for (Index p = gone + 1; p <= gone + kCapacity; ++p) want.push_back(p);
            EXPECT_EQ(kept[static_cast<std::size_t>(gone + kCapacity)][static_cast<std::size_t>(g)],
                      want)
                << "kv head " << g;
          }
        }
        // A NaN value changes no score (above: the kept sets of the clean run); once the poisoned
        // state has gone, the outputs are the clean run's bit for bit.
        if (poison == Poison::nan_value) {
          for (Index t = gone + 1; t < kTokens; ++t) {
            EXPECT_TRUE(outs[static_cast<std::size_t>(t)] ==
                        clean_outs[static_cast<std::size_t>(t)])
                << "token " << t;
          }
        }
      }
    }
  }
}

// (d) The sinks are never evicted, poisoned or not (documented on `Window` and WindowPlusI): a
// poisoned sink stays, its KV head's outputs stay non-finite until reset, and the window after the
// sinks moves on as usual.
TEST(NonFinite, APoisonedSinkStaysAndTheWindowMovesOn) {
  constexpr Index kCapacity = 8;
  constexpr Index kTokens = 4 * kCapacity;
  for (const PolicyOptions& options : variants<WindowPlusI>()) {
    for (Poison poison : {Poison::nan_key_one_head, Poison::nan_value}) {
      SCOPED_TRACE(describe(options) + " " + poison_name(poison));
      const CacheConfig config = make_config({4, 2, 8}, kCapacity, Positions::in_cache, 1);
      Stream s = make_stream(config, kTokens, 43);
      add_poison(s, config, 0, poison);
      MultiStateCache<WindowPlusI> cache(config, make<WindowPlusI>(options));
      for (Index t = 0; t < kTokens; ++t) {
        const RowMatrix out = step_token(cache, s, t);
        std::vector<Index> want;
        for (Index p = 0; p < std::min(options.sinks, t + 1); ++p) want.push_back(p);
        for (Index p = std::max(options.sinks, t - (kCapacity - options.sinks) + 1); p <= t; ++p) {
          want.push_back(p);
        }
        for (Index g = 0; g < 2; ++g) EXPECT_EQ(cache.kept_positions(0, g), want) << "token " << t;
        EXPECT_TRUE(out.leftCols(2 * 8).allFinite()) << "token " << t;    // query heads of g = 0
        EXPECT_FALSE(out.rightCols(2 * 8).allFinite()) << "token " << t;  // of the poisoned g = 1
      }
      cache.reset();
      const Stream fresh = make_stream(config, 3, 44);
      for (Index t = 0; t < 3; ++t) EXPECT_TRUE(step_token(cache, fresh, t).allFinite());
    }
  }
}

// The chunk path sees a poisoned token in its matrix products (before the cache is full) and in its
// token-by-token part (after): its outputs and kept states are the step path's, non-finite
// entries included.
TYPED_TEST(EveryPolicy, TheChunkPathTreatsANonFiniteStateAsTheStepPathDoes) {
  constexpr Index kCapacity = 8;
  constexpr Index kTokens = 4 * kCapacity;
  for (const PolicyOptions& options : variants<TypeParam>()) {
    for (Positions positions : {Positions::host, Positions::in_cache}) {
      for (Poison poison : kPoisons) {
        for (Index at : {Index{0}, Index{3}, kCapacity + 3}) {
          for (const std::vector<Index>& pieces :
               {std::vector<Index>{}, std::vector<Index>{5, 1}}) {
            SCOPED_TRACE(describe(options) + " positions=" +
                         std::to_string(static_cast<int>(positions)) + " " + poison_name(poison) +
                         " at " + std::to_string(at) + " pieces " + std::to_string(pieces.size()));
            CacheConfig config = make_config({4, 2, 8}, kCapacity, positions, 1);
            config.max_chunk = 4;
            Stream s = make_stream(config, kTokens, 47);
            add_poison(s, config, at, poison);
            MultiStateCache<TypeParam> chunked(config, make<TypeParam>(options));
            MultiStateCache<TypeParam> stepped(config, make<TypeParam>(options));
            const RowMatrix got = feed_chunks(chunked, s, kTokens, pieces);
            for (Index t = 0; t < kTokens; ++t) {
              const RowMatrix want = step_token(stepped, s, t);
              for (Index h = 0; h < config.n_q_heads; ++h) {
                const RowVector g = got.block(t, h * 8, 1, 8);  // query head h of token t
                const RowVector w = want.block(0, h * 8, 1, 8);
                ASSERT_EQ(g.allFinite(), w.allFinite()) << "token " << t << " head " << h;
                if (w.allFinite()) {
                  ASSERT_TRUE(g.isApprox(w, 1e-5f)) << "token " << t << " head " << h;
                }
              }
            }
            EXPECT_EQ(all_kept(chunked), all_kept(stepped));
          }
        }
      }
    }
  }
}

// A saved state, loaded, goes on exactly like the cache it was saved from: the same outputs and
// kept states bit for bit, and saved again, the same bytes. Saved before the first eviction, right
// after it and deep into evictions (in_cache offsets past a rebase), at every precision, in every
// position mode, loaded as the typed cache and as an AnyCache, with 1 or 2 threads.
TYPED_TEST(EveryPolicy, ASavedStateLoadedGoesOnBitForBit) {
  constexpr Index kCapacity = 6;
  constexpr Index kTokens = 40;
  for (const PolicyOptions& options : variants<TypeParam>()) {
    for (Positions positions : kPositions) {
      for (KvType type : kKvTypes) {
        const Shape shape = kShapes[static_cast<int>(type) % 3];
        CacheConfig config = make_config(shape, kCapacity, positions, 2, type);
        const Stream s = make_stream(config, kTokens, 71);
        for (Index saved_at : {Index{3}, kCapacity + 1, Index{29}}) {
          SCOPED_TRACE(describe(options) +
                       " positions=" + std::to_string(static_cast<int>(positions)) +
                       " kv_type=" + to_string(type) + " saved after " + std::to_string(saved_at));
          MultiStateCache<TypeParam> cache(config, make<TypeParam>(options));
          // A prompt through the chunk path, then steps.
          feed_chunks(cache, s, std::min<Index>(saved_at, 4), {});
          for (Index t = std::min<Index>(saved_at, 4); t < saved_at; ++t) step_token(cache, s, t);
          const std::string bytes = save_state(cache);
          StateLoadOptions load;
          load.model = config;
          load.threads = saved_at == 3 ? 1 : 2;
          MultiStateCache<TypeParam> typed = load_state<TypeParam>(bytes, load);
          AnyCache any = load_state(bytes);
          ASSERT_TRUE(save_state(typed) == bytes);
          ASSERT_TRUE(save_state(any) == bytes);
          EXPECT_EQ(all_kept(typed), all_kept(cache));
          Index t = saved_at;
          if (saved_at < kCapacity) {  // room left: two tokens through the chunk path first
            for (Index l = 0; l < config.n_layers; ++l) {
              const auto L = static_cast<std::size_t>(l);
              RowMatrix want(2, config.n_q_heads * config.head_dim), got = want, got_any = want;
              cache.step_chunk(l, s.q[L].middleRows(t, 2), s.k[L].middleRows(t, 2),
                               s.v[L].middleRows(t, 2), want);
              typed.step_chunk(l, s.q[L].middleRows(t, 2), s.k[L].middleRows(t, 2),
                               s.v[L].middleRows(t, 2), got);
              any.step_chunk(l, s.q[L].middleRows(t, 2), s.k[L].middleRows(t, 2),
                             s.v[L].middleRows(t, 2), got_any);
              ASSERT_TRUE(got == want && got_any == want) << "layer " << l;
            }
            t += 2;
          }
          for (; t < kTokens; ++t) {
            const RowMatrix want = step_token(cache, s, t);
            ASSERT_TRUE(step_token(typed, s, t) == want) << "token " << t;
            ASSERT_TRUE(step_token(any, s, t) == want) << "token " << t;
          }
          EXPECT_EQ(all_kept(typed), all_kept(cache));
          EXPECT_TRUE(save_state(typed) == save_state(cache));
          EXPECT_TRUE(save_state(any) == save_state(cache));
        }
      }
    }
  }
}

// Replays eviction events: every position a layer has seen, less those evicted from a KV head.
struct Replay {
  std::vector<std::vector<Index>> kept;  // [layer * n_kv + head] ascending
  Index n_kv = 1;
  std::vector<std::vector<Eviction>> events;  // [layer] in the order reported

  explicit Replay(const CacheConfig& c)
      : kept(static_cast<std::size_t>(c.n_layers * c.n_kv_heads)),
        n_kv(c.n_kv_heads),
        events(static_cast<std::size_t>(c.n_layers)) {}
  // Token `position` entered every head of `layer`.
  void insert(Index layer, Index position) {
    for (Index g = 0; g < n_kv; ++g) at(layer, g).push_back(position);
  }
  void evict(const Eviction& e) {
    std::vector<Index>& k = at(e.layer, e.kv_head);
    const auto found = std::find(k.begin(), k.end(), e.position);
    ASSERT_NE(found, k.end()) << "evicted position " << e.position << " was not kept";
    k.erase(found);
    events[static_cast<std::size_t>(e.layer)].push_back(e);
  }
  std::vector<Index>& at(Index layer, Index g) {
    return kept[static_cast<std::size_t>(layer * n_kv + g)];
  }
};

// The events an observer reports reconstruct the kept set exactly: after every step of every
// layer (step), and after every chunk (step_chunk, whose events are those of the step path); each
// is reported once its step is complete (the state is gone, the layer has seen the token), the
// new token evicted at most by its own step; with 2 threads the same; a copy reports nothing.
TYPED_TEST(EveryPolicy, EvictionEventsReplayToTheKeptSetAtEveryStep) {
  constexpr Index kCapacity = 5;
  constexpr Index kTokens = 30;
  for (const PolicyOptions& options : variants<TypeParam>()) {
    for (const Shape& shape : kShapes) {
      for (Positions positions : {Positions::host, Positions::in_cache}) {
        SCOPED_TRACE(describe(options) + " n_kv=" + std::to_string(shape.n_kv) +
                     " positions=" + std::to_string(static_cast<int>(positions)));
        CacheConfig config = make_config(shape, kCapacity, positions, 3);
        const Stream s = make_stream(config, kTokens, 23);
        std::vector<std::vector<Eviction>> stepped_events;
        for (Index threads : {Index{1}, Index{2}}) {
          config.threads = threads;
          MultiStateCache<TypeParam> cache(config, make<TypeParam>(options));
          Replay replay(config);
          Index reported = 0;
          cache.set_eviction_observer([&](const Eviction& e) {
            ++reported;
            EXPECT_EQ(cache.tokens_seen(e.layer), e.step + 1);
            EXPECT_LE(e.position, e.step);
            const std::vector<Index> now = cache.kept_positions(e.layer, e.kv_head);
            EXPECT_FALSE(std::binary_search(now.begin(), now.end(), e.position));
            replay.evict(e);
          });
          MultiStateCache<TypeParam> copy = cache.copy();
          for (Index t = 0; t < kTokens; ++t) {
            RowMatrix out(config.n_q_heads, config.head_dim);
            for (Index l = 0; l < config.n_layers; ++l) {
              const auto L = static_cast<std::size_t>(l);
              replay.insert(l, t);
              cache.step(l, s.q[L].row(t), s.k[L].row(t), s.v[L].row(t),
                         Eigen::Map<RowMatrix>(out.data(), 1, out.size()));
              copy.step(l, s.q[L].row(t), s.k[L].row(t), s.v[L].row(t),
                        Eigen::Map<RowMatrix>(out.data(), 1, out.size()));
              for (Index g = 0; g < config.n_kv_heads; ++g) {
                ASSERT_EQ(replay.at(l, g), cache.kept_positions(l, g))
                    << "token " << t << " layer " << l << " head " << g;
              }
            }
          }
          ASSERT_EQ(all_kept(copy), all_kept(cache));
          const Index evicts = policy_evicts(options.name) ? kTokens - kCapacity : 0;
          EXPECT_EQ(reported, config.n_layers * config.n_kv_heads * evicts);
          if (threads == 1) {
            stepped_events = replay.events;
          } else {
            for (std::size_t l = 0; l < replay.events.size(); ++l) {
              ASSERT_EQ(replay.events[l].size(), stepped_events[l].size());
              for (std::size_t i = 0; i < replay.events[l].size(); ++i) {
                const Eviction& a = replay.events[l][i];
                const Eviction& b = stepped_events[l][i];
                ASSERT_EQ(std::vector<Index>({a.kv_head, a.position, a.step}),
                          std::vector<Index>({b.kv_head, b.position, b.step}));
              }
            }
          }
        }
        // step_chunk in pieces (and past the capacity, token by token inside the cache).
        config.threads = 1;
        MultiStateCache<TypeParam> chunked(config, make<TypeParam>(options));
        Replay replay(config);
        chunked.set_eviction_observer([&](const Eviction& e) { replay.evict(e); });
        for (Index l = 0; l < config.n_layers; ++l) {
          const auto L = static_cast<std::size_t>(l);
          for (Index at = 0; at < kTokens;) {
            const Index n = std::min<Index>(kTokens - at, 3 + at % 7);
            RowMatrix out(n, config.n_q_heads * config.head_dim);
            for (Index t = at; t < at + n; ++t) replay.insert(l, t);
            chunked.step_chunk(l, s.q[L].middleRows(at, n), s.k[L].middleRows(at, n),
                               s.v[L].middleRows(at, n), out);
            for (Index g = 0; g < config.n_kv_heads; ++g) {
              ASSERT_EQ(replay.at(l, g), chunked.kept_positions(l, g)) << "chunk at " << at;
            }
            at += n;
          }
        }
        for (std::size_t l = 0; l < replay.events.size(); ++l) {
          ASSERT_EQ(replay.events[l].size(), stepped_events[l].size());
          for (std::size_t i = 0; i < replay.events[l].size(); ++i) {
            EXPECT_EQ(replay.events[l][i].position, stepped_events[l][i].position);
            EXPECT_EQ(replay.events[l][i].step, stepped_events[l][i].step);
          }
        }
        // Removing the observer stops the reports.
        chunked.set_eviction_observer(nullptr);
        const std::size_t before = replay.events[0].size();
        RowMatrix out(1, config.n_q_heads * config.head_dim);
        chunked.step_chunk(0, s.q[0].topRows(1), s.k[0].topRows(1), s.v[0].topRows(1), out);
        EXPECT_EQ(replay.events[0].size(), before);
      }
    }
  }
}

}  // namespace
}  // namespace msrnn
