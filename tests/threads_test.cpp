// Independent caches in several threads give what they give alone (and, under ThreadSanitizer,
// share nothing: scripts/tsan.sh runs this test with -fsanitize=thread).
#include <gtest/gtest.h>

#include <algorithm>
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
  AnyCache cache = testing::any_cache(config, kind);
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

// The pool itself: every task runs exactly once, by the worker its block names, for any number of
// tasks (fewer than the threads too), again and again; copies get their own threads and a
// moved-from pool still runs (on the caller).
TEST(ForkJoin, RunsEveryTaskOnceInContiguousBlocks) {
  detail::ForkJoin pool(4);
  for (int round = 0; round < 50; ++round) {
    for (Index n : {0, 1, 2, 3, 5, 9}) {
      std::vector<int> runs(static_cast<std::size_t>(n), 0);
      std::vector<Index> by(static_cast<std::size_t>(n), -1);
      auto task = [&](Index i, Index worker) noexcept {
        ++runs[static_cast<std::size_t>(i)];
        by[static_cast<std::size_t>(i)] = worker;
      };
      pool.run(n, task);
      const Index blocks = std::min<Index>(n, 4);
      for (Index i = 0; i < n; ++i) {
        ASSERT_EQ(runs[static_cast<std::size_t>(i)], 1) << "n " << n << " task " << i;
        // Block w holds tasks [n * w / blocks, n * (w + 1) / blocks).
        const Index w = by[static_cast<std::size_t>(i)];
        ASSERT_TRUE(n * w / blocks <= i && i < n * (w + 1) / blocks) << "n " << n << " task " << i;
      }
    }
  }
  detail::ForkJoin copy(pool);
  EXPECT_EQ(copy.threads(), 4);
  detail::ForkJoin moved(std::move(pool));
  for (detail::ForkJoin* p : {&copy, &moved, &pool}) {
    std::vector<int> runs(7, 0);
    auto task = [&](Index i, Index) noexcept { ++runs[static_cast<std::size_t>(i)]; };
    p->run(7, task);
    EXPECT_EQ(runs, std::vector<int>(7, 1));
  }
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
