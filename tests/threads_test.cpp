// Independent caches in several threads give what they give alone (and, under ThreadSanitizer,
// share nothing: scripts/tsan.sh runs this test with -fsanitize=thread).
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "msrnn/cache.hpp"
#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::random_matrix;
using testing::small_config;

// Runs one cache of `kind` over a fixed stream; the concatenated outputs.
RowMatrix run_alone(PolicyKind kind, std::uint32_t seed, Index threads = 1) {
  CacheConfig config = small_config(4, 2, 8, 12, 2);
  config.rope = Rope(8);
  config.threads = threads;
  PolicyOptions options;
  options.kind = kind;
  AnyCache cache(config, make_policy(options));
  const Index tokens = 60;
  const RowMatrix q = random_matrix(tokens, 32, seed);
  const RowMatrix kv = random_matrix(tokens, 16, seed + 1);
  RowMatrix outs(tokens, 2 * 32);
  RowMatrix out(4, 8);
  for (Index t = 0; t < tokens; ++t) {
    for (Index l = 0; l < 2; ++l) {
      cache.step(l, Eigen::Map<const RowMatrix>(q.row(t).data(), 4, 8),
                 Eigen::Map<const RowMatrix>(kv.row(t).data(), 2, 8),
                 Eigen::Map<const RowMatrix>(kv.row(t).data(), 2, 8), out);
      outs.block(t, l * 32, 1, 32) = Eigen::Map<const RowVector>(out.data(), 32);
    }
  }
  return outs;
}

// Runs one cache per kind, each in its own thread and with `workers` threads of its own, and
// expects what each gives alone on one thread.
void expect_parallel_runs_equal_sequential(const std::vector<PolicyKind>& kinds, Index workers) {
  std::vector<RowMatrix> alone, parallel(kinds.size());
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    alone.push_back(run_alone(kinds[i], static_cast<std::uint32_t>(i)));
  }
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    threads.emplace_back(
        [&, i] { parallel[i] = run_alone(kinds[i], static_cast<std::uint32_t>(i), workers); });
  }
  for (std::thread& thread : threads) thread.join();
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    EXPECT_TRUE(parallel[i] == alone[i]) << policy_name(kinds[i]);
  }
}

TEST(Threads, IndependentCachesInParallelEqualTheirSequentialRuns) {
  expect_parallel_runs_equal_sequential({PolicyKind::full, PolicyKind::window, PolicyKind::sink,
                                         PolicyKind::h2o, PolicyKind::tova, PolicyKind::tova},
                                        1);
}

// The cache's own workers (CacheConfig::threads): under ThreadSanitizer this checks that the
// heads they share out never race, and several such caches can run side by side.
TEST(Threads, CachesWithWorkerThreadsEqualSingleThreadedOnes) {
  expect_parallel_runs_equal_sequential(
      {PolicyKind::full, PolicyKind::sink, PolicyKind::h2o, PolicyKind::tova}, 2);
}

}  // namespace
}  // namespace msrnn
