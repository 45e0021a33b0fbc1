#include "msrnn/slot_table.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

namespace msrnn {
namespace {

// The invariant between steps: the held states fill slots [0, held] except the free slot of each
// KV head, and nothing at or above `used` is counted.
void expect_invariant(const SlotTable& table) {
  ASSERT_LE(table.held(), table.used());
  ASSERT_LE(table.used(), table.slots());
  for (Index g = 0; g < table.n_kv_heads(); ++g) {
    const Index free = table.free_slot(g);
    ASSERT_GE(free, 0);
    ASSERT_LE(free, table.held());
    Index filled = 0;
    for (Index slot = 0; slot < table.used(); ++slot) {
      const bool holds = table.position(g, slot) != SlotTable::kEmpty;
      if (slot == free) {
        EXPECT_FALSE(holds) << "head " << g << " slot " << slot;
      } else if (slot <= table.held()) {
        EXPECT_TRUE(holds) << "head " << g << " slot " << slot;
      }
      filled += holds ? 1 : 0;
    }
    EXPECT_EQ(filled, table.held()) << "head " << g;
  }
}

// One step of a table of capacity `capacity`: the newest token in every head, then, when over,
// victims[g] removed from head g.
void step(SlotTable& table, Index capacity, const std::vector<Index>& victims) {
  const Index live = table.begin_step();
  for (Index g = 0; g < table.n_kv_heads(); ++g) table.insert_newest(g);
  if (live > capacity) {
    for (Index g = 0; g < table.n_kv_heads(); ++g) {
      table.remove(g, victims[static_cast<std::size_t>(g)]);
    }
    table.end_eviction();
  }
}

TEST(SlotTable, AConstructedTableHoldsNothingAndWritesNoSlot) {
  const SlotTable table(3, 8);
  EXPECT_EQ(table.n_kv_heads(), 3);
  EXPECT_EQ(table.slots(), 8);
  EXPECT_EQ(table.held(), 0);
  EXPECT_EQ(table.seen(), 0);
  EXPECT_EQ(table.used(), 0);
  for (Index g = 0; g < 3; ++g) {
    EXPECT_EQ(table.free_slot(g), 0);
    EXPECT_TRUE(table.kept_positions(g).empty());
  }
}

TEST(SlotTable, StepsFillSlotsInOrderOfFirstUse) {
  SlotTable table(2, 4);
  for (Index t = 0; t < 3; ++t) {
    const Index live = table.begin_step();
    EXPECT_EQ(live, t + 1);
    EXPECT_EQ(table.insert_newest(0), t);
    EXPECT_EQ(table.insert_newest(1), t);
    EXPECT_EQ(table.used(), t + 1);
    EXPECT_EQ(table.position(0, t), t);
    EXPECT_EQ(table.scores()(0, t), 0.0f);
    expect_invariant(table);
  }
  EXPECT_EQ(table.seen(), 3);
  EXPECT_EQ(table.kept_positions(1), (std::vector<Index>{0, 1, 2}));
}

TEST(SlotTable, ARemovedSlotIsTheNextOneWritten) {
  SlotTable table(2, 4);  // capacity 3: four slots, one free between steps
  for (Index t = 0; t < 3; ++t) step(table, 3, {});
  step(table, 3, {1, 2});  // head 0 drops position 1, head 1 position 2
  EXPECT_EQ(table.held(), 3);
  EXPECT_EQ(table.used(), 4);
  EXPECT_EQ(table.free_slot(0), 1);
  EXPECT_EQ(table.free_slot(1), 2);
  EXPECT_EQ(table.kept_positions(0), (std::vector<Index>{0, 2, 3}));
  EXPECT_EQ(table.kept_positions(1), (std::vector<Index>{0, 1, 3}));
  expect_invariant(table);

  table.begin_step();
  EXPECT_EQ(table.insert_newest(0), 1);  // position 4 takes the freed slot
  EXPECT_EQ(table.insert_newest(1), 2);
  EXPECT_EQ(table.position(0, 1), 4);
  EXPECT_EQ(table.free_slot(0), 4);  // until a remove says otherwise
  table.remove(0, 0);
  table.remove(1, 3);
  table.end_eviction();
  EXPECT_EQ(table.kept_positions(0), (std::vector<Index>{2, 3, 4}));
  EXPECT_EQ(table.kept_positions(1), (std::vector<Index>{0, 1, 4}));
  expect_invariant(table);
}

TEST(SlotTable, PushAppendsInPositionOrderAndSetSeenSkipsAhead) {
  SlotTable table(2, 6);
  table.push(10);
  table.push(40);
  EXPECT_EQ(table.held(), 2);
  EXPECT_EQ(table.seen(), 41);
  EXPECT_EQ(table.free_slot(1), 2);
  table.set_seen(45);
  EXPECT_EQ(table.seen(), 45);
  step(table, 5, {});  // a step after a push goes on in the next slot at position 45
  EXPECT_EQ(table.position(0, 2), 45);
  EXPECT_EQ(table.kept_positions(0), (std::vector<Index>{10, 40, 45}));
  expect_invariant(table);
}

TEST(SlotTable, ResetForgetsEverythingAndKeepsTheStorage) {
  SlotTable table(2, 4);
  for (Index t = 0; t < 4; ++t) step(table, 3, {0, 1});
  table.reset();
  EXPECT_EQ(table.held(), 0);
  EXPECT_EQ(table.seen(), 0);
  EXPECT_EQ(table.used(), 0);
  EXPECT_EQ(table.slots(), 4);
  EXPECT_EQ(table.free_slot(1), 0);
  EXPECT_TRUE(table.kept_positions(0).empty());  // stale slots are above `used`
  step(table, 3, {});
  EXPECT_EQ(table.kept_positions(1), (std::vector<Index>{0}));
  expect_invariant(table);
}

TEST(SlotTable, GrowKeepsTheUsedSlots) {
  SlotTable table(2, 2);
  step(table, 8, {});
  step(table, 8, {});
  table.scores()(1, 1) = 0.5f;
  table.grow(16);
  EXPECT_EQ(table.slots(), 16);
  EXPECT_EQ(table.held(), 2);
  EXPECT_EQ(table.used(), 2);
  EXPECT_EQ(table.scores()(1, 1), 0.5f);
  for (Index t = 0; t < 6; ++t) step(table, 8, {});
  EXPECT_EQ(table.kept_positions(0), (std::vector<Index>{0, 1, 2, 3, 4, 5, 6, 7}));
  expect_invariant(table);
}

TEST(SlotTable, CopiesAreIndependentAndMovesLeaveAnEmptyTable) {
  SlotTable table(2, 4);
  for (Index t = 0; t < 5; ++t) step(table, 3, {2, 0});
  table.scores()(0, 1) = 2.0f;
  SlotTable copy(table);
  EXPECT_EQ(copy.kept_positions(0), table.kept_positions(0));
  EXPECT_EQ(copy.free_slot(1), table.free_slot(1));
  EXPECT_EQ(copy.scores()(0, 1), 2.0f);
  step(copy, 3, {1, 1});
  EXPECT_NE(copy.seen(), table.seen());

  const std::vector<Index> kept = table.kept_positions(1);
  SlotTable moved(std::move(table));
  EXPECT_EQ(moved.kept_positions(1), kept);
  EXPECT_EQ(table.held(), 0);  // NOLINT(bugprone-use-after-move): the moved-from state is defined
  EXPECT_EQ(table.used(), 0);
  EXPECT_EQ(table.seen(), 0);
}

static_assert(std::is_nothrow_move_constructible_v<SlotTable>);
static_assert(!std::is_copy_assignable_v<SlotTable>);
static_assert(noexcept(std::declval<SlotTable&>().reset()));
static_assert(noexcept(std::declval<SlotTable&>().begin_step()));

}  // namespace
}  // namespace msrnn
