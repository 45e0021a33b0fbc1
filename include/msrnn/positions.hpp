// PositionEncoder: how a cache encodes the positions of its queries and keys, with the angles of
// every rotation passed explicitly.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cassert>
#include <cstddef>
#include <optional>
#include <utility>
#include <vector>

#include "msrnn/detail/storage.hpp"
#include "msrnn/rope.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

/// The cosine and sine of every pair's angle at one position: (head_dim / 2) floats each.
struct Angles {
  const float* cos = nullptr;
  const float* sin = nullptr;
};

/// The angles of positions [0, filled()), each computed once, in a table allocated (not written)
/// for rows() positions. Reading is thread-safe; `fill` is for one thread, before readers start.
class AngleTable {
 public:
  AngleTable() = default;
  AngleTable(Index rows, Index half) : cos_(rows, half), sin_(rows, half) {}

  /// Copies the filled rows; the copy's others are allocated, unwritten.
  AngleTable(const AngleTable& other)
      : cos_(detail::with_top_rows(other.cos_, other.rows(), other.cos_.cols(), other.filled_)),
        sin_(detail::with_top_rows(other.sin_, other.rows(), other.sin_.cols(), other.filled_)),
        filled_(other.filled_) {}
  // `filled` goes with the tables (Eigen's move assignment swaps them: the source gets ours, of
  // which it may count no row).
  AngleTable(AngleTable&& other) noexcept
      : cos_(std::move(other.cos_)),
        sin_(std::move(other.sin_)),
        filled_(std::exchange(other.filled_, 0)) {}
  AngleTable& operator=(const AngleTable&) = delete;
  AngleTable& operator=(AngleTable&& other) noexcept {
    cos_ = std::move(other.cos_);
    sin_ = std::move(other.sin_);
    filled_ = std::exchange(other.filled_, 0);
    return *this;
  }
  ~AngleTable() = default;

  Index rows() const noexcept { return cos_.rows(); }
  Index filled() const noexcept { return filled_; }

  /// Reallocates to `rows` positions, keeping the filled ones (at most `rows`).
  void resize(Index rows) {
    const Index keep = std::min(filled_, rows);
    // Assigned, not resized: a bad_alloc leaves the old tables whole.
    RowMatrix cos = detail::with_top_rows(cos_, rows, cos_.cols(), keep);
    RowMatrix sin = detail::with_top_rows(sin_, rows, sin_.cols(), keep);
    cos_ = std::move(cos);
    sin_ = std::move(sin);
    filled_ = keep;
  }

  /// Computes the angles of positions [filled(), n), n <= rows(). Allocates nothing.
  void fill(const Rope& rope, Index n) noexcept {
    assert(n <= rows() && rope.head_dim() == 2 * cos_.cols());
    for (; filled_ < n; ++filled_) rope.angles(filled_, &cos_(filled_, 0), &sin_(filled_, 0));
  }

  /// The angles of `position`, one of the filled ones.
  Angles at(Index position) const noexcept {
    assert(position >= 0 && position < filled_);
    return {&cos_(position, 0), &sin_(position, 0)};
  }

 private:
  RowMatrix cos_;  // (rows, head_dim / 2)
  RowMatrix sin_;  // (rows, head_dim / 2)
  Index filled_ = 0;
};

/// How a cache encodes positions (CacheConfig::rope and ::positions):
///   - none: no rope, the host has encoded them; keys are stored as given;
///   - absolute: a key is rotated once, at its original position, and the query at the newest's;
///   - in_cache (StreamingLLM): a key at its rank among the kept states, the query at the newest's
///     rank. The cache keeps those keys rotated (InCacheKeys) at virtual positions in
///     [0, virtual_rows()), whose angles this encoder tables.
/// Every rotation takes its angles as an argument: `at_position` for absolute positions (computed
/// per call), `at_virtual` for in_cache's (from the table, filled by `prepare_virtual`).
class PositionEncoder {
 public:
  PositionEncoder() = default;
  PositionEncoder(const std::optional<Rope>& rope, PositionMode mode) : rope_(rope), mode_(mode) {
    if (rope_) {
      const auto half = static_cast<std::size_t>(rope_->head_dim() / 2);
      cos_.resize(half);
      sin_.resize(half);
      if (in_cache()) table_ = AngleTable(0, rope_->head_dim() / 2);
    }
  }

  /// True when keys are rotated once, at their original position.
  bool absolute() const noexcept { return rope_ && mode_ == PositionMode::absolute; }
  /// True when keys are rotated at their rank among the kept states.
  bool in_cache() const noexcept { return rope_ && mode_ == PositionMode::in_cache; }

  /// absolute: the angles of `position`, computed into the encoder's buffer, valid until the next
  /// call. For the calling thread only.
  Angles at_position(Index position) noexcept {
    assert(absolute());
    rope_->angles(position, cos_.data(), sin_.data());
    return {cos_.data(), sin_.data()};
  }

  /// in_cache: sizes the table of virtual positions for `slots` slots per KV head (InCacheKeys
  /// keeps its positions below 2 * slots + 1; see there).
  void resize_virtual(Index slots) {
    if (in_cache()) table_.resize(2 * slots + 1);
  }
  /// in_cache: computes the angles of virtual positions [0, n) not yet computed, n at most
  /// 2 * slots + 1. Before threads read them; allocates nothing.
  void prepare_virtual(Index n) noexcept {
    assert(in_cache());
    table_.fill(*rope_, n);
  }
  /// in_cache: the angles of virtual position u, one prepared.
  Angles at_virtual(Index u) const noexcept { return table_.at(u); }

  /// Rotates one head vector (head_dim floats) in place by `angles`.
  void rotate(float* x, Angles angles) const noexcept {
    assert(rope_);
    rope_->rotate(x, angles.cos, angles.sin);
  }
  /// Writes head vector `in` rotated by `angles` to `out` (`in` itself, or not overlapping it).
  void rotate(const float* in, float* out, Angles angles) const noexcept {
    assert(rope_);
    rope_->rotate(in, out, angles.cos, angles.sin);
  }

 private:
  std::optional<Rope> rope_;
  PositionMode mode_ = PositionMode::absolute;
  std::vector<float> cos_;  // (head_dim / 2) absolute: the angles at_position computed last
  std::vector<float> sin_;  // (head_dim / 2)
  AngleTable table_;        // in_cache: (2 * slots + 1, head_dim / 2) virtual positions' angles
};

}  // namespace msrnn
