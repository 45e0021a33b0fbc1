// InCacheKeys: one layer's keys kept rotated at their rank among the kept states (in_cache
// positions), so that a step reads them as they are and an eviction re-rotates only a few.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cassert>
#include <cstddef>
#include <utility>
#include <vector>

#include "msrnn/detail/storage.hpp"
#include "msrnn/kv_store.hpp"
#include "msrnn/kv_type.hpp"
#include "msrnn/positions.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

/// The keys of one layer under in_cache positions (StreamingLLM): a kept state's key is rotated at
/// its rank among the kept states (0 the oldest) and the query at the newest's. RoPE makes their
/// score depend only on the distance of the two, so each KV head keeps its keys rotated at virtual
/// positions shifted by a common offset:
///     u(slot) = base + rank(slot),   the query at base + (live - 1),
/// with the same distances as the ranks. Evicting the state of rank e moves the ranks above e down
/// by one; either those states get u - 1, or the ones below get u + 1 and base grows by one. The
/// smaller side is re-rotated: none when the oldest or the newest goes (Window, TOVA evicting the
/// new token), the i sinks for WindowPlusI, at most (live - 1) / 2 keys for any victim. Once base
/// passes `slots`, every kept key is re-rotated at base 0 (once per slots + 1 evictions at most,
/// about one rotation per eviction on average), so
/// the virtual positions stay below 2 * slots + 1, the rows of the encoder's angle table.
///
/// A rotated key is always computed from the stored unrotated one (as it reads back in the cache's
/// KvType), at its virtual position, and stored in the same KvType: no error accumulates, and until
/// the first eviction (base 0) the keys are those rotated at their ranks bit for bit. After it,
/// scores equal those at ranks up to float rounding (the two rotations of a score are by other
/// angles with the same difference).
///
/// Costs: one more key matrix per KV head (`kv_state_bytes` counts it), a virtual position per slot
/// and a slot per virtual position (3 Index per slot), which make an eviction cost its rotations
/// and nothing per kept state. Per-head methods touch only KV head g's rows, so distinct heads may
/// go to distinct threads. Nothing allocates but the constructors and `grow`.
class InCacheKeys {
 public:
  /// Keys of no KV head (a cache without in_cache positions).
  InCacheKeys() = default;
  /// Keys of n_kv_heads heads of head_dim stored as `type`, with no slot until `grow`.
  InCacheKeys(Index n_kv_heads, Index head_dim, KvType type = KvType::f32)
      : head_dim_(head_dim),
        rows_(2 * n_kv_heads, head_dim),
        virtual_(n_kv_heads, 0),
        order_(n_kv_heads, 1),
        base_(static_cast<std::size_t>(n_kv_heads), 0) {
    for (Index g = 0; g < n_kv_heads; ++g) keys_.emplace_back(type, head_dim);
  }

  /// Copies the slots [0, used); the copy's others are allocated, unwritten.
  InCacheKeys(const InCacheKeys& other, Index used)
      : head_dim_(other.head_dim_),
        rows_(other.rows_.rows(), other.rows_.cols()),
        virtual_(detail::with_left_cols(other.virtual_, other.slots(), used)),
        order_(detail::with_left_cols(other.order_, other.order_.cols(), other.ordered(used))),
        base_(other.base_) {
    keys_.reserve(other.keys_.size());
    for (const KeyStore& k : other.keys_) keys_.emplace_back(k, used);
  }
  InCacheKeys(InCacheKeys&&) noexcept = default;
  InCacheKeys& operator=(const InCacheKeys&) = delete;
  InCacheKeys& operator=(InCacheKeys&&) = delete;
  ~InCacheKeys() = default;

  Index n_kv_heads() const noexcept { return static_cast<Index>(base_.size()); }
  Index slots() const noexcept { return virtual_.cols(); }

  /// (slots, head_dim) KV head g's keys, slot s rotated at the virtual position of slot s.
  const KeyStore& keys(Index g) const noexcept {
    assert(g >= 0 && g < n_kv_heads());
    return keys_[static_cast<std::size_t>(g)];
  }
  /// The virtual position of rank `rank` in KV head g: where a state of that rank is rotated,
  /// and the query at the newest's rank.
  Index at_rank(Index g, Index rank) const noexcept {
    assert(g >= 0 && g < n_kv_heads() && rank >= 0);
    return base_[static_cast<std::size_t>(g)] + rank;
  }
  /// The virtual position the key in `slot` of KV head g is rotated at.
  Index virtual_position(Index g, Index slot) const noexcept {
    assert(g >= 0 && g < n_kv_heads() && slot >= 0 && slot < slots());
    return virtual_(g, slot);
  }
  /// The angle rows a step over `live` states reads: prepare them before the heads split.
  Index rows_needed(Index live) const noexcept { return max_base() + live; }

  /// Reallocates to `slots` slots per KV head, keeping [0, used); the rest is unwritten.
  void grow(Index slots, Index used) {
    assert(slots >= used);
    for (KeyStore& k : keys_) k.grow(slots, used);
    PositionMatrix grown = detail::with_left_cols(virtual_, slots, used);
    PositionMatrix order = detail::with_left_cols(order_, 2 * slots + 1, ordered(used));
    virtual_ = std::move(grown);
    order_ = std::move(order);
  }

  /// Forgets the offsets (a new sequence); writes no key.
  void reset() noexcept { std::fill(base_.begin(), base_.end(), Index{0}); }

  /// Puts the key of a state of rank `rank` into `slot` of KV head g, rotated at its virtual
  /// position (prepared in `positions`) from `unrotated` (the KV head's stored keys, slot written).
  void put(Index g, Index slot, Index rank, const KeyStore& unrotated,
           const PositionEncoder& positions) noexcept {
    assert(g >= 0 && g < n_kv_heads() && slot >= 0 && slot < slots());
    move(g, slot, at_rank(g, rank), unrotated, positions);
  }

  /// Puts back KV head g's offset and its slots' virtual positions as a saved state had them
  /// (load_state, state_file.hpp): `virtual_positions[s]` for each of the `live` slots s, -1 for
  /// the free one, base + rank for the others (the caller has checked it); each kept key is
  /// rotated there again from `unrotated` (restored), which gives the bits it had: a rotated key
  /// is always computed so. Angles prepared up to rows_needed(live).
  void restore(Index g, Index base, const Index* virtual_positions, Index live,
               const KeyStore& unrotated, const PositionEncoder& positions) noexcept {
    assert(g >= 0 && g < n_kv_heads() && base >= 0 && base <= slots() && live <= slots());
    base_[static_cast<std::size_t>(g)] = base;
    for (Index s = 0; s < live; ++s) {
      if (virtual_positions[s] >= 0) move(g, s, virtual_positions[s], unrotated, positions);
    }
  }

  /// Keys this step's eviction of `slot` re-rotates in KV head g, when its states fill slots
  /// [0, live) (right after an insert): the fewer of those older and those newer than it, and
  /// when base passes `slots` with it, the live - 1 that stay as well.
  Index rotations(Index g, Index slot, Index live) const noexcept {
    const Index base = base_[static_cast<std::size_t>(g)];
    const Index rank = virtual_(g, slot) - base;
    assert(rank >= 0 && rank < live);
    const bool newer = live - 1 - rank <= rank;
    const Index side = newer ? live - 1 - rank : rank;
    return !newer && base + 1 > slots() ? side + live - 1 : side;
  }

  /// Drops the state in `slot` of KV head g, whose states fill slots [0, live) (right after an
  /// insert); the others keep their distances to the newest. `unrotated` is the KV head's stored
  /// keys, the source of every rotation. O(rotations + 1) while they are fewer
  /// than live / 8, else O(live) (a scan in memory order).
  void remove(Index g, Index slot, Index live, const KeyStore& unrotated,
              const PositionEncoder& positions) noexcept {
    assert(g >= 0 && g < n_kv_heads() && slot >= 0 && slot < live && live <= slots());
    Index& base = base_[static_cast<std::size_t>(g)];
    const Index gone = virtual_(g, slot);
    const Index newest = base + live - 1;
    assert(gone >= base && gone <= newest && order_(g, gone) == slot);
    const bool newer = newest - gone <= gone - base;  // the smaller side
    const Index count = newer ? newest - gone : gone - base;
    if (count * kScanFraction < live) {
      // Few: walk them by virtual position, the slots they hold in any order.
      if (newer) {  // one rank down: u - 1, the same base
        for (Index u = gone + 1; u <= newest; ++u)
          move(g, order_(g, u), u - 1, unrotated, positions);
      } else {  // the same ranks under a base one higher: u + 1
        for (Index u = gone - 1; u >= base; --u) move(g, order_(g, u), u + 1, unrotated, positions);
      }
    } else {
      // Many: visit the slots in memory order (the prefetcher streams them), moving the side's.
      for (Index s = 0; s < live; ++s) {
        const Index u = virtual_(g, s);
        if (s != slot && (newer ? u > gone : u < gone))
          move(g, s, newer ? u - 1 : u + 1, unrotated, positions);
      }
    }
    if (!newer) ++base;
    if (base > slots()) {  // back to base 0: the live - 1 states left keep their ranks
      for (Index s = 0; s < live; ++s) {
        if (s != slot) move(g, s, virtual_(g, s) - base, unrotated, positions);
      }
      base = 0;
    }
  }

 private:
  using PositionMatrix = Eigen::Matrix<Index, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  Index max_base() const noexcept {
    Index base = 0;
    for (Index b : base_) base = std::max(base, b);
    return base;
  }
  // Columns of order_ that may be in use with `used` slots written: [0, max base + used).
  Index ordered(Index used) const noexcept {
    return used > 0 ? std::min(order_.cols(), max_base() + used) : 0;
  }

  // Below 1 / kScanFraction of the states, an eviction walks the ones it moves by virtual
  // position; above, it scans every slot in memory order.
  static constexpr Index kScanFraction = 8;

  // The state in `slot` of KV head g goes to virtual position `to`: its unrotated key rotated
  // there. (Its old position's entry in order_ is left stale: it is overwritten or unused.)
  void move(Index g, Index slot, Index to, const KeyStore& unrotated,
            const PositionEncoder& positions) noexcept {
    order_(g, to) = slot;
    virtual_(g, slot) = to;
    float* source = &rows_(2 * g, 0);
    float* rotated = &rows_(2 * g + 1, 0);
    unrotated.read(slot, source);
    positions.rotate(source, rotated, positions.at_virtual(to));
    keys_[static_cast<std::size_t>(g)].write(slot, rotated);
  }

  Index head_dim_ = 0;
  std::vector<KeyStore> keys_;  // (n_kv_heads): (slots, head_dim) rotated at virtual positions
  RowMatrix rows_;              // (2 * n_kv_heads, head_dim) per head: a key read back, rotated
  PositionMatrix virtual_;      // (n_kv_heads, slots) each slot's virtual position
  PositionMatrix order_;        // (n_kv_heads, 2 * slots + 1) the slot at each virtual position
  std::vector<Index> base_;     // (n_kv_heads) the virtual position of rank 0
};

}  // namespace msrnn
