// After construction, a bounded cache's step allocates nothing: neither through operator new
// nor through Eigen's heap (EIGEN_RUNTIME_NO_MALLOC turns any Eigen heap allocation into a
// failed assertion, which this program reports as an exception).
#define EIGEN_RUNTIME_NO_MALLOC
#include <stdexcept>
#define eigen_assert(x)                                                \
  do {                                                                 \
    if (!(x)) throw std::runtime_error("Eigen assertion failed: " #x); \
  } while (false)

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "msrnn/cache.hpp"
#include "test_util.hpp"

namespace {
std::atomic<long> g_allocations{0};
std::atomic<bool> g_counting{false};
}  // namespace

// The replacement pair is malloc/free on both sides; GCC cannot see that new is replaced.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t size) {
  if (g_counting) ++g_allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace msrnn {
namespace {

using testing::random_matrix;
using testing::small_config;

// Steps `cache` through `tokens` tokens (already generated, one a row) and counts the
// allocations. With `token_rows`, step gets each token's rows as they are (the t = 1 layout of
// step_chunk), else mapped as one head a row.
template <class Cache>
long allocations_while_stepping(Cache& cache, const RowMatrix& q, const RowMatrix& k,
                                const RowMatrix& v, Index tokens, bool token_rows = false) {
  const CacheConfig& c = cache.config();
  RowMatrix out(c.n_q_heads, c.head_dim);
  Eigen::Map<RowMatrix> out_row(out.data(), 1, c.n_q_heads * c.head_dim);
  g_allocations = 0;
  g_counting = true;
  Eigen::internal::set_is_malloc_allowed(false);
  for (Index t = 0; t < tokens; ++t) {
    for (Index l = 0; l < c.n_layers; ++l) {
      if (token_rows) {
        cache.step(l, q.row(t), k.middleRows(t, 1), v.row(t), out_row);
      } else {
        cache.step(l, Eigen::Map<const RowMatrix>(q.row(t).data(), c.n_q_heads, c.head_dim),
                   Eigen::Map<const RowMatrix>(k.row(t).data(), c.n_kv_heads, c.head_dim),
                   Eigen::Map<const RowMatrix>(v.row(t).data(), c.n_kv_heads, c.head_dim), out);
      }
    }
  }
  Eigen::internal::set_is_malloc_allowed(true);
  g_counting = false;
  return g_allocations;
}

TEST(NoAllocation, BoundedStepsNeverAllocate) {
  // head_dim 128 with 300 states crosses three key tiles (128 keys each), as a real model does.
  for (Index head_dim : {8, 128}) {
    for (Index n_kv : {2, 8}) {  // 4 query heads per KV head (matrix products), and 1 (vectors)
      for (PositionMode mode : {PositionMode::absolute, PositionMode::in_cache}) {
        for (std::string_view kind : kPolicyNames) {
          if (!policy_evicts(kind)) continue;    // Full grows
          for (Index threads : {1, 2}) {         // the workers must not allocate either
            for (int run = 0; run < 4; ++run) {  // token rows or not; every precision
              const bool token_rows = run % 2 == 1;
              const auto type = static_cast<KvType>((run + (head_dim == 8 ? 0 : 2)) % 4);
              CacheConfig config = small_config(8, n_kv, head_dim, 300, 2);
              config.kv_type = type;
              config.rope = Rope(head_dim);
              config.positions = mode;
              config.threads = threads;
              PolicyOptions options;
              options.name = std::string(kind);
              AnyCache cache(config, make_policy(options));
              const Index tokens = 320;
              const RowMatrix q = random_matrix(tokens, 8 * head_dim, 1);
              const RowMatrix k = random_matrix(tokens, n_kv * head_dim, 2);
              const RowMatrix v = random_matrix(tokens, n_kv * head_dim, 3);
              EXPECT_EQ(allocations_while_stepping(cache, q, k, v, tokens, token_rows), 0)
                  << kind << " head_dim " << head_dim << " n_kv " << n_kv << " " << to_string(mode)
                  << " threads " << threads << " token_rows " << token_rows << " "
                  << to_string(type);
              EXPECT_EQ(cache.size(1), 300);
            }
          }
        }
      }
    }
  }
}

// An eviction observer that allocates nothing keeps the step free of allocations: the events are
// noted in storage the cache made at construction.
TEST(NoAllocation, AnEvictionObserverAddsNoAllocation) {
  for (std::string_view kind : {TOVA::kName, H2O::kName}) {  // per layer, per head
    for (Index threads : {1, 2}) {
      CacheConfig config = small_config(8, 2, 16, 40, 2);
      config.threads = threads;
      PolicyOptions options;
      options.name = std::string(kind);
      AnyCache cache(config, make_policy(options));
      long events = 0;
      Index last_step = -1;
      cache.set_eviction_observer([&](const Eviction& e) {
        ++events;
        last_step = e.step;
      });
      const Index tokens = 100;
      const RowMatrix q = random_matrix(tokens, 8 * 16, 1);
      const RowMatrix k = random_matrix(tokens, 2 * 16, 2);
      const RowMatrix v = random_matrix(tokens, 2 * 16, 3);
      EXPECT_EQ(allocations_while_stepping(cache, q, k, v, tokens, false), 0) << kind;
      EXPECT_EQ(events, 2 * 2 * (tokens - 40)) << kind;  // layers * KV heads * evicting steps
      EXPECT_EQ(last_step, tokens - 1);
    }
  }
}

TEST(NoAllocation, TheCounterSeesAllocations) {
  // The check above could pass vacuously if nothing were counted.
  g_allocations = 0;
  g_counting = true;
  auto* probe = new std::vector<int>(10);
  g_counting = false;
  EXPECT_GE(g_allocations.load(), 2);  // the vector and its buffer
  delete probe;
  // And Eigen's heap is watched: Full must grow.
  MultiStateCache<Full> cache(small_config(2, 1, 8, 4));
  const RowMatrix q = random_matrix(10, 16, 1);
  const RowMatrix k = random_matrix(10, 8, 2);
  EXPECT_THROW(allocations_while_stepping(cache, q, k, k, 10), std::runtime_error);
  Eigen::internal::set_is_malloc_allowed(true);
  g_counting = false;
}

}  // namespace
}  // namespace msrnn
