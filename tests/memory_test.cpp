// What construction, reset and the first steps cost with a huge capacity: time and touched memory
// in proportion to the slots used so far, not to the capacity (storage is allocated up front, but
// with lazy allocation only the pages written become resident).
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <string>

#include "msrnn/cache.hpp"
#include "test_util.hpp"

#if defined(__unix__)
#include <unistd.h>
#endif

namespace msrnn {
namespace {

using testing::random_matrix;
using testing::small_config;

// Resident bytes of this process (/proc/self/statm), or -1 where that file is missing.
long long resident_bytes() {
#if defined(__unix__)
  std::ifstream statm("/proc/self/statm");
  long long size = 0;
  long long resident = 0;
  if (statm >> size >> resident) return resident * static_cast<long long>(sysconf(_SC_PAGESIZE));
#endif
  return -1;
}

template <class Cache>
void step_tokens(Cache& cache, Index tokens, std::uint32_t seed) {
  const CacheConfig& c = cache.config();
  RowMatrix out(c.n_q_heads, c.head_dim);
  for (Index t = 0; t < tokens; ++t) {
    const auto s = seed + static_cast<std::uint32_t>(3 * t);
    cache.step(0, random_matrix(c.n_q_heads, c.head_dim, s),
               random_matrix(c.n_kv_heads, c.head_dim, s + 1),
               random_matrix(c.n_kv_heads, c.head_dim, s + 2), out);
  }
}

// C = 2^22 slots with 1 layer, 1 KV head and head_dim 8. The bookkeeping alone (position and
// score of every slot, 8 bytes each counted, and in in_cache mode three more Index per slot) is
// 64-160 MiB, the keys and values 256 MiB, and in in_cache mode the rotated keys another 128 MiB
// and the angle table 256 MiB. After construction,
// reset, 40 steps, reset and 40 steps, the process may have grown by a few MiB at most.
TEST(Memory, ConstructionAndResetTouchOnlyTheSlotsInUse) {
  constexpr Index kCapacity = Index{1} << 22;
  constexpr long long kBookkeeping = kCapacity * 8 * 3;
  for (int mode = 0; mode < 3; ++mode) {  // host positions, absolute, in_cache
    for (const char* kind : {"full", "h2o", "tova"}) {
      SCOPED_TRACE(std::string(kind) + " mode " + std::to_string(mode));
      CacheConfig config = small_config(1, 1, 8, kCapacity);
      if (mode > 0) config.rope = Rope(8);
      if (mode == 2) config.positions = PositionMode::in_cache;
      const long long before = resident_bytes();
      const auto start = std::chrono::steady_clock::now();
      AnyCache cache = testing::any_cache(config, kind);
      for (int i = 0; i < 1000; ++i) cache.reset();
      step_tokens(cache, 40, 1);
      EXPECT_EQ(cache.kept_positions(0, 0).size(), 40u);
      cache.reset();
      step_tokens(cache, 40, 2);
      EXPECT_EQ(cache.size(0), 40);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const long long after = resident_bytes();
      // Generous: 1000 resets that each write every slot's bookkeeping take many seconds.
      EXPECT_LT(seconds, 2.0);
      if (before < 0 || after < 0) {
        GTEST_SKIP() << "/proc/self/statm is missing: resident memory not measured";
      }
      EXPECT_LT(after - before, kBookkeeping / 16)
          << "resident memory grew by " << (after - before) / 1024 << " KiB";
    }
  }
}

// The lazily filled tables give the same outputs, bit for bit, as a cache whose capacity is small
// (whose tables were filled, before, at construction), also across resets.
TEST(Memory, AHugeCapacityGivesTheOutputsOfASmallOne) {
  for (PositionMode mode : {PositionMode::absolute, PositionMode::in_cache}) {
    CacheConfig small = small_config(4, 2, 8, 64);
    small.rope = Rope(8);
    small.positions = mode;
    CacheConfig huge = small;
    huge.capacity = Index{1} << 20;
    MultiStateCache<TOVA> a(small);
    MultiStateCache<TOVA> b(huge);
    RowMatrix out_a(4, 8), out_b(4, 8);
    for (int round = 0; round < 2; ++round) {
      for (Index t = 0; t < 50; ++t) {
        const auto s = static_cast<std::uint32_t>(t * 3 + round);
        const RowMatrix q = random_matrix(4, 8, s);
        const RowMatrix k = random_matrix(2, 8, s + 1);
        const RowMatrix v = random_matrix(2, 8, s + 2);
        a.step(0, q, k, v, out_a);
        b.step(0, q, k, v, out_b);
        ASSERT_TRUE(out_a == out_b) << to_string(mode) << " round " << round << " token " << t;
      }
      EXPECT_EQ(a.kept_positions(0, 1), b.kept_positions(0, 1));
      a.reset();
      b.reset();
    }
    // A copy holds what was used; it goes on alike.
    const RowMatrix kv = random_matrix(10, 16, 9);
    a.append(0, kv, kv);
    b.append(0, kv, kv);
    MultiStateCache<TOVA> copy = b.copy();
    const RowMatrix q = random_matrix(4, 8, 10);
    const Eigen::Map<const RowMatrix> k(kv.row(0).data(), 2, 8);  // (n_kv_heads, head_dim)
    a.step(0, q, k, k, out_a);
    copy.step(0, q, k, k, out_b);
    EXPECT_TRUE(out_a == out_b);
    EXPECT_EQ(copy.kept_positions(0, 0), a.kept_positions(0, 0));
  }
}

}  // namespace
}  // namespace msrnn
