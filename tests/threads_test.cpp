// Independent caches in several threads give what they give alone (and, under ThreadSanitizer,
// share nothing: scripts/tsan.sh runs this test with -fsanitize=thread).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <system_error>
#include <thread>
#include <vector>

#include "msrnn/cache.hpp"
#include "test_util.hpp"

#if defined(__GLIBC__)
#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>
#endif

// Sanitizers reserve address space of their own: a limit on it breaks them, not the threads.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MSRNN_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MSRNN_TEST_SANITIZED 1
#endif
#endif

namespace msrnn {
namespace {

using testing::random_matrix;
using testing::small_config;

// Runs one cache of `kind` over a fixed stream; the concatenated outputs.
RowMatrix run_alone(const std::string& kind, std::uint32_t seed, Index threads = 1) {
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
  ForkJoin pool(4);
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
  ForkJoin copy(pool);
  EXPECT_EQ(copy.threads(), 4);
  ForkJoin moved(std::move(pool));
  for (ForkJoin* p : {&copy, &moved, &pool}) {
    std::vector<int> runs(7, 0);
    auto task = [&](Index i, Index) noexcept { ++runs[static_cast<std::size_t>(i)]; };
    p->run(7, task);
    EXPECT_EQ(runs, std::vector<int>(7, 1));
  }
}

// Runs one cache per kind, each in its own thread and with `workers` threads of its own, and
// expects what each gives alone on one thread.
void expect_parallel_runs_equal_sequential(const std::vector<std::string>& kinds, Index workers) {
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
    EXPECT_TRUE(parallel[i] == alone[i]) << kinds[i];
  }
}

TEST(Threads, IndependentCachesInParallelEqualTheirSequentialRuns) {
  expect_parallel_runs_equal_sequential(
      {"full", "window", "sink", "h2o", "tova", "tova", "tova_sink"}, 1);
}

// The cache's own workers (CacheConfig::threads): under ThreadSanitizer this checks that the
// heads they share out never race, and several such caches can run side by side.
TEST(Threads, CachesWithWorkerThreadsEqualSingleThreadedOnes) {
  expect_parallel_runs_equal_sequential({"full", "sink", "h2o", "tova"}, 2);
}

#if defined(__GLIBC__) && !defined(MSRNN_TEST_SANITIZED)
// Limits this process's address space to what it maps now plus room for `stacks` default thread
// stacks, so that the next thread stacks cannot be mapped (std::thread throws std::system_error).
bool leave_room_for_thread_stacks(double stacks) {
  pthread_attr_t attr;
  std::size_t stack = 0;
  if (pthread_getattr_default_np(&attr) != 0) return false;
  pthread_attr_getstacksize(&attr, &stack);
  pthread_attr_destroy(&attr);
  std::ifstream statm("/proc/self/statm");
  unsigned long long pages = 0;
  if (!(statm >> pages)) return false;
  rlimit limit{};
  if (getrlimit(RLIMIT_AS, &limit) != 0) return false;
  limit.rlim_cur =
      static_cast<rlim_t>(pages * static_cast<unsigned long long>(sysconf(_SC_PAGESIZE)) +
                          static_cast<unsigned long long>(stacks * static_cast<double>(stack)));
  return setrlimit(RLIMIT_AS, &limit) == 0;
}
#endif

// The constructor and copy() let std::system_error out when a worker thread cannot start, after
// joining the workers already started (were one left joinable, its std::thread would end the
// program with std::terminate). In a child process, whose address space is then limited.
TEST(ThreadsDeathTest, AThreadThatCannotStartThrowsSystemErrorAndLeavesNoneRunning) {
#if !defined(__GLIBC__) || defined(MSRNN_TEST_SANITIZED)
  GTEST_SKIP() << "needs glibc and no sanitizer (it limits the address space)";
#else
  EXPECT_EXIT(
      {
        CacheConfig config = small_config(8, 8, 8, 16);
        config.threads = 2;
        AnyCache running = testing::any_cache(config, "tova");  // before the limit
        // The copy first: glibc keeps the stacks of joined threads for the next ones.
        if (!leave_room_for_thread_stacks(0.5)) std::_Exit(2);
        int caught = 0;
        try {
          AnyCache copy = running.copy();
        } catch (const std::system_error&) {
          ++caught;
        }
        config.threads = 8;
        if (!leave_room_for_thread_stacks(2.5)) std::_Exit(2);
        try {
          AnyCache cache = testing::any_cache(config, "tova");  // 2 start, then none
        } catch (const std::system_error&) {
          ++caught;
        }
        RowMatrix out(8, 8);
        running.step(0, random_matrix(8, 8, 1), random_matrix(8, 8, 2), random_matrix(8, 8, 3),
                     out);  // the original is untouched
        std::_Exit(caught == 2 && out.allFinite() ? 0 : 10 + caught);
      },
      ::testing::ExitedWithCode(0), "");
#endif
}

}  // namespace
}  // namespace msrnn
