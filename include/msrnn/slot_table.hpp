// SlotTable: the bookkeeping of one layer's slots (positions, scores, occupancy), kept
// beside the key/value tensors, which it never sees.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cassert>
#include <cstddef>
#include <utility>
#include <vector>

#include "msrnn/detail/storage.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

/// Which slot of each KV head of one layer holds which state: its original position and the
/// policy's score. The cache keeps one per
/// layer, beside the keys and values, and writes a key and value wherever this table puts a state.
///
/// Invariant between steps: the held states fill slots [0, held] except free_slot(g) in each KV
/// head g (right after an insert, they fill [0, held)). Slots are written in order of first use,
/// so [0, used) are the only ones written since construction or reset: nothing reads above
/// `used`, and neither construction, reset nor a copy writes (and makes resident) the rest.
///
///   SlotTable table(n_kv_heads, slots);
///   const Index live = table.begin_step();           // the newest token: position seen() - 1
///   for (g...) slot[g] = table.insert_newest(g);     // write its key and value there
///   if (live > capacity) { for (g...) table.remove(g, victim[g]); table.end_eviction(); }
///
/// Per-head methods (insert_newest, remove, scores().row(g)) touch only KV head g's entries, so
/// distinct heads may be handled by distinct threads; the others are for one thread. Nothing
/// allocates but the constructors, grow and kept_positions.
class SlotTable {
 public:
  /// Position of a slot that holds no state.
  static constexpr Index kEmpty = -1;

  /// A table of no KV head and no slot (what a moved-from one is).
  SlotTable() = default;

  /// An empty table of `slots` slots per KV head; allocates them without writing any.
  SlotTable(Index n_kv_heads, Index slots)
      : free_slot_(static_cast<std::size_t>(n_kv_heads), 0),
        position_(n_kv_heads, slots),
        score_(n_kv_heads, slots) {
    assert(n_kv_heads >= 0 && slots >= 0);
  }

  /// Copies the slots in use; the copy's others are allocated, unwritten.
  SlotTable(const SlotTable& other)
      : held_(other.held_),
        seen_(other.seen_),
        used_(other.used_),
        free_slot_(other.free_slot_),
        position_(detail::with_left_cols(other.position_, other.slots(), used_)),
        score_(detail::with_left_cols(other.score_, other.slots(), used_)) {}

  /// Hands the counters over with the storage: the moved-from table holds no slot.
  SlotTable(SlotTable&& other) noexcept
      : held_(std::exchange(other.held_, 0)),
        seen_(std::exchange(other.seen_, 0)),
        used_(std::exchange(other.used_, 0)),
        free_slot_(std::move(other.free_slot_)),
        position_(std::move(other.position_)),
        score_(std::move(other.score_)) {}

  SlotTable& operator=(const SlotTable&) = delete;
  SlotTable& operator=(SlotTable&&) = delete;
  ~SlotTable() = default;

  // ---- state ------------------------------------------------------------------------------

  Index n_kv_heads() const noexcept { return static_cast<Index>(free_slot_.size()); }
  /// Slots per KV head.
  Index slots() const noexcept { return position_.cols(); }
  /// States held (the same count in every KV head).
  Index held() const noexcept { return held_; }
  /// Tokens seen: the next token's position.
  Index seen() const noexcept { return seen_; }
  /// Slots written since construction or reset (in every KV head): [0, used).
  Index used() const noexcept { return used_; }

  /// Where KV head g's next state goes.
  Index free_slot(Index g) const noexcept {
    assert(g >= 0 && g < n_kv_heads());
    return free_slot_[static_cast<std::size_t>(g)];
  }
  /// Original position of the state in `slot` of KV head g; kEmpty if it holds none.
  Index position(Index g, Index slot) const noexcept {
    assert(g >= 0 && g < n_kv_heads() && slot >= 0 && slot < used_);
    return position_(g, slot);
  }
  /// KV head g's positions, one per slot (what detail::select_victim reads).
  const Index* positions(Index g) const noexcept {
    assert(g >= 0 && g < n_kv_heads());
    return &position_(g, 0);
  }
  /// (n_kv_heads, slots) the policy's score of each slot: row g is KV head g's, written by the
  /// policy; an inserted state starts at 0.
  RowMatrix& scores() noexcept { return score_; }
  const RowMatrix& scores() const noexcept { return score_; }

  // ---- a step: begin_step, insert_newest per head, then maybe remove per head + end_eviction --

  /// Admits the newest token: seen and held grow by one, and the slot every head may write
  /// (its free slot, at most the old held) counts as used. Returns held, the live states.
  Index begin_step() noexcept {
    assert(held_ < slots());
    ++held_;
    ++seen_;
    used_ = std::max(used_, held_);
    return held_;
  }

  /// Puts the newest token (position seen() - 1, score 0) into KV head g's free
  /// slot and returns that slot; the free slot becomes held(), until a remove says otherwise.
  Index insert_newest(Index g) noexcept {
    assert(g >= 0 && g < n_kv_heads() && held_ >= 1);
    const auto gi = static_cast<std::size_t>(g);
    const Index slot = free_slot_[gi];
    assert(slot < held_);  // the invariant: every other slot of [0, held) holds a state
    put(g, slot, seen_ - 1);
    free_slot_[gi] = held_;
    return slot;
  }

  /// Frees `slot` of KV head g (one of the held() states) and makes it the free slot.
  void remove(Index g, Index slot) noexcept {
    assert(g >= 0 && g < n_kv_heads() && slot >= 0 && slot < held_);
    assert(position_(g, slot) != kEmpty);
    position_(g, slot) = kEmpty;
    free_slot_[static_cast<std::size_t>(g)] = slot;
  }

  /// Counts the state each KV head has just removed (one each, since begin_step): held goes down
  /// by one.
  void end_eviction() noexcept {
    assert(held_ >= 1);
#ifndef NDEBUG
    for (Index g = 0; g < n_kv_heads(); ++g) assert(free_slot(g) < held_);
#endif
    --held_;
  }

  // ---- states in position order (prefill, append) -------------------------------------------

  /// Puts a state at `position` into slot held() of every KV head with score 0: for
  /// a table without eviction since reset, whose held states fill [0, held) in position order.
  /// held, used and the free slots move up by one; seen becomes position + 1.
  void push(Index position) noexcept {
    assert(held_ < slots() && position >= seen_);
    for (Index g = 0; g < n_kv_heads(); ++g) {
      assert(free_slot(g) == held_);
      put(g, held_, position);
      free_slot_[static_cast<std::size_t>(g)] = held_ + 1;
    }
    ++held_;
    used_ = std::max(used_, held_);
    seen_ = position + 1;
  }

  /// Sets the tokens seen past the newest position held (tokens dropped after it).
  void set_seen(Index seen) noexcept {
    assert(seen >= seen_);
    seen_ = seen;
  }

  // ---- a saved state put back (load_state, state_file.hpp, which checks it first) ------------

  /// Sets the counters and each KV head's free slot of a saved table; `restore_slot` then puts
  /// the position (kEmpty for none) and score of each slot in [0, used). The caller has checked
  /// that they satisfy the invariant above.
  void restore(Index held, Index seen, Index used, const std::vector<Index>& free_slots) noexcept {
    assert(held >= 0 && held <= used && used <= held + 1 && used <= slots() && seen >= held);
    assert(free_slots.size() == free_slot_.size());
    held_ = held;
    seen_ = seen;
    used_ = used;
    std::copy(free_slots.begin(), free_slots.end(), free_slot_.begin());
  }
  void restore_slot(Index g, Index slot, Index position, float score) noexcept {
    assert(g >= 0 && g < n_kv_heads() && slot >= 0 && slot < used_);
    position_(g, slot) = position;
    score_(g, slot) = score;
  }

  // ---- whole table ------------------------------------------------------------------------

  /// Forgets every state; writes no slot, keeps the storage. O(n_kv_heads).
  void reset() noexcept {
    held_ = 0;
    seen_ = 0;
    used_ = 0;
    std::fill(free_slot_.begin(), free_slot_.end(), Index{0});
  }

  /// Original positions of the states KV head g keeps, ascending. Allocates the result.
  std::vector<Index> kept_positions(Index g) const {
    assert(g >= 0 && g < n_kv_heads());
    std::vector<Index> kept;
    for (Index slot = 0; slot < used_; ++slot) {
      if (position_(g, slot) != kEmpty) kept.push_back(position_(g, slot));
    }
    std::sort(kept.begin(), kept.end());
    return kept;
  }

  /// Reallocates to `slots` slots per KV head, keeping the used ones; the rest is unwritten.
  void grow(Index slots) {
    assert(slots >= used_);
    position_ = detail::with_left_cols(position_, slots, used_);
    score_ = detail::with_left_cols(score_, slots, used_);
  }

 private:
  using PositionMatrix = Eigen::Matrix<Index, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  void put(Index g, Index slot, Index position) noexcept {
    position_(g, slot) = position;
    score_(g, slot) = 0.0f;
  }

  Index held_ = 0;
  Index seen_ = 0;
  Index used_ = 0;
  std::vector<Index> free_slot_;  // (n_kv_heads) where each KV head's next state goes
  PositionMatrix position_;       // (n_kv_heads, slots) original position, kEmpty if none
  RowMatrix score_;               // (n_kv_heads, slots) the policy's score of each slot
};

}  // namespace msrnn
