#include "msrnn/in_cache_keys.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <type_traits>
#include <vector>

#include "msrnn/slot_table.hpp"
#include "test_util.hpp"

namespace msrnn {
namespace {

constexpr Index kHeadDim = 8;

// A layer's slots under in_cache positions as the cache drives them: a SlotTable, the unrotated
// keys beside it, and InCacheKeys keeping the rotated copy.
struct Layer {
  Index capacity;
  Rope rope{kHeadDim};
  PositionEncoder positions{rope, PositionMode::in_cache};
  SlotTable table;
  std::vector<KeyStore> unrotated;  // (n_kv_heads): (slots, head_dim)
  InCacheKeys keys;
  std::uint32_t seed = 1;

  Layer(Index n_kv_heads, Index capacity_, KvType type = KvType::f32)
      : capacity(capacity_), table(n_kv_heads, capacity_ + 1), keys(n_kv_heads, kHeadDim, type) {
    for (Index g = 0; g < n_kv_heads; ++g) {
      unrotated.emplace_back(type, kHeadDim);
      unrotated.back().grow(capacity + 1, 0);
    }
    keys.grow(capacity + 1, 0);
    positions.resize_virtual(capacity + 1);
  }

  // One step: the newest token in every head, then victim(g, live) removed from head g if over.
  template <class Victim>
  void step(Victim victim) {
    const Index live = table.begin_step();
    positions.prepare_virtual(keys.rows_needed(live));
    for (Index g = 0; g < table.n_kv_heads(); ++g) {
      const Index slot = table.insert_newest(g);
      KeyStore& k = unrotated[static_cast<std::size_t>(g)];
      k.write(slot, testing::random_matrix(1, kHeadDim, seed++).data());
      keys.put(g, slot, live - 1, k, positions);
    }
    if (live > capacity) {
      for (Index g = 0; g < table.n_kv_heads(); ++g) {
        const Index slot = victim(g, live);
        table.remove(g, slot);
        keys.remove(g, slot, live, unrotated[static_cast<std::size_t>(g)], positions);
      }
      table.end_eviction();
    }
  }

  // Slot of the state of `rank` (0 the oldest) in KV head g, right after an insert.
  Index slot_of_rank(Index g, Index rank, Index live) const {
    std::vector<std::pair<Index, Index>> by_position;  // (position, slot)
    for (Index s = 0; s < live; ++s) by_position.emplace_back(table.position(g, s), s);
    std::sort(by_position.begin(), by_position.end());
    return by_position[static_cast<std::size_t>(rank)].second;
  }
};

// Slot s of a store as floats, (1, head_dim).
RowMatrix row_of(const KeyStore& store, Index s) {
  RowMatrix row(1, store.head_dim());
  store.read(s, row.data());
  return row;
}

// x as a key store of `type` holds it (converted and read back).
RowMatrix stored_as(KvType type, const RowMatrix& x) {
  KeyStore store(type, x.cols());
  store.grow(1, 0);
  store.write(0, x.data());
  return row_of(store, 0);
}

// Every held key is its unrotated key (as stored) rotated, bit for bit, at base + its rank among
// the kept and stored in the same type, and the virtual positions stay inside the angle table.
void expect_rotated_at_ranks(const Layer& layer) {
  for (Index g = 0; g < layer.table.n_kv_heads(); ++g) {
    const std::vector<Index> kept = layer.table.kept_positions(g);
    for (Index s = 0; s < layer.table.used(); ++s) {
      const Index p = layer.table.position(g, s);
      if (p == SlotTable::kEmpty) continue;
      const auto rank =
          static_cast<Index>(std::lower_bound(kept.begin(), kept.end(), p) - kept.begin());
      const Index u = layer.keys.virtual_position(g, s);
      ASSERT_EQ(u, layer.keys.at_rank(g, rank)) << "head " << g << " slot " << s;
      ASSERT_LT(u, 2 * layer.table.slots() + 1);
      RowMatrix want = row_of(layer.unrotated[static_cast<std::size_t>(g)], s);
      layer.rope.rotate(want, u);
      want = stored_as(layer.keys.keys(g).type(), want);
      ASSERT_TRUE(row_of(layer.keys.keys(g), s) == want) << "head " << g << " slot " << s;
    }
  }
}

TEST(InCacheKeys, KeysStayRotatedAtTheirRanksThroughEvictionsAndRebases) {
  // Victims anywhere (random per head), the oldest, the newest, and a sink's: 400 steps of a
  // capacity of 5 pass base = slots many times.
  // Every storage type: the rotated copies are rotated from the stored keys and stored alike.
  std::mt19937 rng(7);
  for (int i = 0; i < 16; ++i) {
    const int kind = i % 4;
    const auto type = static_cast<KvType>(i / 4);
    SCOPED_TRACE("victims " + std::to_string(kind) + ", " + to_string(type));
    Layer layer(3, 5, type);
    for (int t = 0; t < 400; ++t) {
      layer.step([&](Index g, Index live) {
        const Index rank = kind == 0   ? std::uniform_int_distribution<Index>(0, live - 1)(rng)
                           : kind == 1 ? 0
                           : kind == 2 ? live - 1
                                       : 2;  // two sinks
        return layer.slot_of_rank(g, rank, live);
      });
      expect_rotated_at_ranks(layer);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

TEST(InCacheKeys, EvictingTheOldestOrTheNewestRotatesNoKey) {
  Layer layer(1, 6);
  for (int t = 0; t < 6; ++t) layer.step([](Index, Index) { return Index{0}; });  // fill
  layer.table.begin_step();
  const Index live = layer.table.held();
  layer.positions.prepare_virtual(layer.keys.rows_needed(live));
  const Index slot = layer.table.insert_newest(0);
  layer.keys.put(0, slot, live - 1, layer.unrotated[0], layer.positions);
  EXPECT_EQ(layer.keys.rotations(0, layer.slot_of_rank(0, 0, live), live), 0);
  EXPECT_EQ(layer.keys.rotations(0, layer.slot_of_rank(0, live - 1, live), live), 0);
  EXPECT_EQ(layer.keys.rotations(0, layer.slot_of_rank(0, 2, live), live), 2);
  EXPECT_EQ(layer.keys.rotations(0, layer.slot_of_rank(0, 4, live), live), 2);
  EXPECT_EQ(layer.keys.rotations(0, layer.slot_of_rank(0, 3, live), live), 3);
}

TEST(InCacheKeys, TheEvictionThatResetsTheOffsetCountsEveryKeptKey) {
  Layer layer(1, 2);  // 3 slots: base passes 3 at the fourth eviction of the oldest
  auto oldest = [&](Index g, Index live) { return layer.slot_of_rank(g, 0, live); };
  for (int t = 0; t < 5; ++t) layer.step(oldest);
  EXPECT_EQ(layer.keys.at_rank(0, 0), 3);
  layer.table.begin_step();
  const Index live = layer.table.held();
  layer.positions.prepare_virtual(layer.keys.rows_needed(live));
  const Index slot = layer.table.insert_newest(0);
  layer.keys.put(0, slot, live - 1, layer.unrotated[0], layer.positions);
  EXPECT_EQ(layer.keys.rotations(0, layer.slot_of_rank(0, 0, live), live), live - 1);
  EXPECT_EQ(layer.keys.rotations(0, layer.slot_of_rank(0, live - 1, live), live), 0);
  const Index victim = layer.slot_of_rank(0, 0, live);
  layer.table.remove(0, victim);
  layer.keys.remove(0, victim, live, layer.unrotated[0], layer.positions);
  layer.table.end_eviction();
  EXPECT_EQ(layer.keys.at_rank(0, 0), 0);  // reset to base 0
  expect_rotated_at_ranks(layer);
}

TEST(InCacheKeys, ACopyHoldsTheUsedSlotsAndResetForgetsTheOffset) {
  Layer layer(2, 4);
  for (int t = 0; t < 9; ++t) {
    layer.step([&](Index g, Index live) { return layer.slot_of_rank(g, 0, live); });
  }
  EXPECT_GT(layer.keys.at_rank(0, 0), 0);  // the oldest went: base moved up
  const InCacheKeys copy(layer.keys, layer.table.used());
  for (Index g = 0; g < 2; ++g) {
    EXPECT_EQ(copy.at_rank(g, 0), layer.keys.at_rank(g, 0));
    for (Index s = 0; s < layer.table.used(); ++s) {
      EXPECT_EQ(copy.virtual_position(g, s), layer.keys.virtual_position(g, s));
      EXPECT_TRUE(row_of(copy.keys(g), s) == row_of(layer.keys.keys(g), s));
    }
  }
  layer.keys.reset();
  EXPECT_EQ(layer.keys.at_rank(1, 3), 3);
  EXPECT_EQ(copy.at_rank(1, 0), 5);  // 9 tokens, 4 kept: five evictions of the oldest
}

static_assert(std::is_nothrow_move_constructible_v<InCacheKeys>);
static_assert(!std::is_copy_constructible_v<InCacheKeys>);

}  // namespace
}  // namespace msrnn
