// Eviction events: what a cache lets go, as it happens (traces, retention analyses).
#pragma once

#include <functional>
#include <utility>
#include <vector>

#include "msrnn/types.hpp"

namespace msrnn {

/// One state leaving the multi-state: in `layer`, KV head `kv_head`, the state of the token at
/// `position` was evicted by the step of the token at `step` (step >= position; equal when a
/// policy such as TOVA evicts the new token itself). A per-layer policy evicts the same position
/// from every KV head: one event per KV head.
struct Eviction {
  Index layer = 0;
  Index kv_head = 0;
  Index position = 0;
  Index step = 0;
};

/// Called by the cache for every eviction (MultiStateCache::set_eviction_observer).
using EvictionObserver = std::function<void(const Eviction&)>;

namespace detail {

// A cache's observer and the victims of the step under way, one per KV head: the heads (perhaps
// on worker threads) each note their own victim, and the calling thread reports them once the
// step is complete. A copy starts without an observer: it is another sequence, whose host
// connects it if it wants to (a move keeps it).
class EvictionReport {
 public:
  EvictionReport() = default;
  explicit EvictionReport(Index n_kv_heads) : victims_(static_cast<std::size_t>(n_kv_heads)) {}
  EvictionReport(const EvictionReport& other) : victims_(other.victims_.size()) {}
  EvictionReport(EvictionReport&&) noexcept = default;
  EvictionReport& operator=(EvictionReport&&) noexcept = default;
  EvictionReport& operator=(const EvictionReport&) = delete;
  ~EvictionReport() = default;

  void set(EvictionObserver observer) { observer_ = std::move(observer); }
  bool active() const noexcept { return static_cast<bool>(observer_); }

  // KV head g's victim this step (its own entry: safe from its worker thread).
  void note(Index g, Index position) noexcept { victims_[static_cast<std::size_t>(g)] = position; }

  // After a step of `layer` that evicted one state per KV head.
  void report(Index layer, Index step) const {
    for (std::size_t g = 0; g < victims_.size(); ++g) {
      observer_(Eviction{layer, static_cast<Index>(g), victims_[g], step});
    }
  }

 private:
  EvictionObserver observer_;
  std::vector<Index> victims_;  // (n_kv_heads) positions evicted by the step under way
};

}  // namespace detail

}  // namespace msrnn
