// A fork-join pool, the one the cache splits the KV heads of a layer over (public: a host may
// split its own per-head work the same way): the caller and its workers each take a
// contiguous block of tasks, and the call returns when every block is done.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "msrnn/types.hpp"

namespace msrnn {

/// `threads - 1` worker threads, started once and kept until destruction; `run` wakes them,
/// does the first block on the calling thread and waits for the rest. Neither `run` nor the
/// workers allocate. Copying makes a new pool of the same size (a copied cache must not share
/// threads), or of one thread for a moved-from pool; moving keeps the threads (they only hold a
/// pointer to the shared state). Starting the threads (construction, copy) throws
/// std::system_error when the system has no more; the ones already started are joined first.
///
/// One `run` at a time: the cache that owns the pool is used by one thread at a time.
class ForkJoin {
 public:
  explicit ForkJoin(Index threads = 1) : threads_(threads < 1 ? 1 : threads) { start(); }
  ForkJoin(const ForkJoin& other) : ForkJoin(other.shared_ ? other.threads_ : 1) {}
  ForkJoin(ForkJoin&&) noexcept = default;
  ForkJoin& operator=(const ForkJoin&) = delete;
  ForkJoin& operator=(ForkJoin&& other) noexcept {
    if (this != &other) {
      stop();
      threads_ = other.threads_;
      shared_ = std::move(other.shared_);
      workers_ = std::move(other.workers_);
    }
    return *this;
  }
  ~ForkJoin() { stop(); }

  Index threads() const noexcept { return threads_; }

  /// Calls task(i, worker) for every i in [0, n): worker w (0 is the caller) takes the i in
  /// [n * w / threads, n * (w + 1) / threads). `task` must not throw (a throw in a worker ends the
  /// program, as for any thread). With one thread, or n < 2, the caller does everything.
  template <class Task>
  void run(Index n, Task& task) noexcept {
    const Index workers = n < threads_ ? n : threads_;
    if (workers <= 1 || !shared_) {  // (no shared state: a moved-from pool)
      for (Index i = 0; i < n; ++i) task(i, Index{0});
      return;
    }
    Shared& s = *shared_;
    {
      std::lock_guard<std::mutex> lock(s.mutex);
      s.job = &call<Task>;
      s.context = &task;
      s.n = n;
      s.blocks = workers;
      s.pending = workers - 1;
      ++s.generation;
    }
    s.start.notify_all();
    run_block(s, 0);
    std::unique_lock<std::mutex> lock(s.mutex);
    s.done.wait(lock, [&] { return s.pending == 0; });
  }

 private:
  struct Shared {
    std::mutex mutex;
    std::condition_variable start;  // a new generation, or stop
    std::condition_variable done;   // pending reached 0
    void (*job)(void*, Index, Index) = nullptr;
    void* context = nullptr;
    Index n = 0;
    Index blocks = 0;
    Index pending = 0;
    std::uint64_t generation = 0;
    bool stopping = false;
  };

  template <class Task>
  static void call(void* context, Index i, Index worker) {
    (*static_cast<Task*>(context))(i, worker);
  }

  static void run_block(const Shared& s, Index block) noexcept {
    const Index begin = s.n * block / s.blocks;
    const Index end = s.n * (block + 1) / s.blocks;
    for (Index i = begin; i < end; ++i) s.job(s.context, i, block);
  }

  static void work(Shared* s, Index worker) {
    std::uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lock(s->mutex);
      s->start.wait(lock, [&] { return s->stopping || s->generation != seen; });
      if (s->stopping) return;
      seen = s->generation;
      if (worker >= s->blocks) continue;  // fewer tasks than threads this time
      lock.unlock();
      run_block(*s, worker);
      lock.lock();
      if (--s->pending == 0) s->done.notify_one();
    }
  }

  void start() {
    if (threads_ <= 1) return;
    shared_ = std::make_unique<Shared>();
    workers_.reserve(static_cast<std::size_t>(threads_ - 1));
    try {
      for (Index w = 1; w < threads_; ++w) workers_.emplace_back(work, shared_.get(), w);
    } catch (...) {  // (std::system_error: no more threads) join the started ones, then rethrow
      stop();
      throw;
    }
  }

  void stop() noexcept {
    if (!shared_) return;
    {
      std::lock_guard<std::mutex> lock(shared_->mutex);
      shared_->stopping = true;
    }
    shared_->start.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
    shared_.reset();
  }

  Index threads_ = 1;
  std::unique_ptr<Shared> shared_;
  std::vector<std::thread> workers_;
};

}  // namespace msrnn
