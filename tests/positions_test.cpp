#include "msrnn/positions.hpp"

#include <gtest/gtest.h>

#include <type_traits>
#include <utility>
#include <vector>

#include "test_util.hpp"

namespace msrnn {
namespace {

// The angles Rope computes for `position`: (head_dim / 2) cos, then sin.
std::pair<std::vector<float>, std::vector<float>> rope_angles(const Rope& rope, Index position) {
  std::vector<float> c(static_cast<std::size_t>(rope.head_dim() / 2));
  std::vector<float> s(c.size());
  rope.angles(position, c.data(), s.data());
  return {c, s};
}

void expect_angles(Angles got, const Rope& rope, Index position) {
  const auto [c, s] = rope_angles(rope, position);
  for (std::size_t i = 0; i < c.size(); ++i) {
    ASSERT_EQ(got.cos[i], c[i]) << "position " << position << " pair " << i;
    ASSERT_EQ(got.sin[i], s[i]) << "position " << position << " pair " << i;
  }
}

TEST(AngleTable, FillsOnDemandWithTheRopesAnglesBitForBit) {
  const Rope rope(16, 500000.0);
  AngleTable table(40, 8);
  EXPECT_EQ(table.rows(), 40);
  EXPECT_EQ(table.filled(), 0);
  table.fill(rope, 7);
  EXPECT_EQ(table.filled(), 7);
  table.fill(rope, 3);  // never shrinks
  EXPECT_EQ(table.filled(), 7);
  table.fill(rope, 40);
  for (Index p = 0; p < 40; ++p) expect_angles(table.at(p), rope, p);
}

TEST(AngleTable, CopiesResizesAndMovesKeepTheFilledRows) {
  const Rope rope(8);
  AngleTable table(10, 4);
  table.fill(rope, 6);
  const AngleTable copy(table);
  EXPECT_EQ(copy.filled(), 6);
  EXPECT_EQ(copy.rows(), 10);
  expect_angles(copy.at(5), rope, 5);

  table.resize(30);  // grows, keeping what was filled
  EXPECT_EQ(table.rows(), 30);
  EXPECT_EQ(table.filled(), 6);
  table.fill(rope, 30);
  expect_angles(table.at(29), rope, 29);
  table.resize(4);  // shrinks to the rows it keeps
  EXPECT_EQ(table.filled(), 4);
  expect_angles(table.at(3), rope, 3);

  AngleTable moved(std::move(table));
  EXPECT_EQ(moved.filled(), 4);
  EXPECT_EQ(table.filled(), 0);  // NOLINT(bugprone-use-after-move): defined as empty
}

TEST(PositionEncoder, ModesFollowTheRopeAndThePositionMode) {
  EXPECT_FALSE(PositionEncoder().absolute());
  EXPECT_FALSE(PositionEncoder().in_cache());
  const PositionEncoder host(std::nullopt, PositionMode::in_cache);  // no rope: the host's
  EXPECT_FALSE(host.absolute());
  EXPECT_FALSE(host.in_cache());
  const PositionEncoder absolute(Rope(8), PositionMode::absolute);
  EXPECT_TRUE(absolute.absolute());
  EXPECT_FALSE(absolute.in_cache());
  const PositionEncoder in_cache(Rope(8), PositionMode::in_cache);
  EXPECT_FALSE(in_cache.absolute());
  EXPECT_TRUE(in_cache.in_cache());
}

TEST(PositionEncoder, AnglesOfPositionsAndVirtualPositionsRotateAsTheRopeDoes) {
  const Rope rope(8, 10000.0, RopeLayout::half_split);
  PositionEncoder absolute(rope, PositionMode::absolute);
  expect_angles(absolute.at_position(123456789), rope, 123456789);

  PositionEncoder in_cache(rope, PositionMode::in_cache);
  in_cache.resize_virtual(5);  // virtual positions [0, 11)
  in_cache.prepare_virtual(11);
  for (Index u = 0; u < 11; ++u) expect_angles(in_cache.at_virtual(u), rope, u);

  // A rotation by the encoder's angles is the rope's rotation at that position.
  const RowMatrix x = testing::random_matrix(1, 8, 3);
  RowMatrix want = x;
  rope.rotate(want, 9);
  RowMatrix got = x;
  in_cache.rotate(got.data(), in_cache.at_virtual(9));
  EXPECT_TRUE(got == want);
  in_cache.resize_virtual(20);  // Full's growth keeps the prepared angles
  expect_angles(in_cache.at_virtual(10), rope, 10);
}

static_assert(std::is_nothrow_move_constructible_v<AngleTable>);
static_assert(noexcept(std::declval<PositionEncoder&>().at_position(0)));

}  // namespace
}  // namespace msrnn
