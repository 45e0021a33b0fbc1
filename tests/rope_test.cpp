#include "msrnn/rope.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::invalid_argument_message;
using testing::random_matrix;

TEST(Rope, RotatesTheFirstPairByThePositionInRadians) {
  // Pair 0 has frequency theta^0 = 1: at position 1 the vector (1, 0) turns by one radian.
  Rope rope(2);
  RowMatrix x(1, 2);
  x << 1.0f, 0.0f;
  rope.rotate(x, 1);
  EXPECT_NEAR(x(0, 0), std::cos(1.0), 1e-7);
  EXPECT_NEAR(x(0, 1), std::sin(1.0), 1e-7);
}

TEST(Rope, PairFrequenciesFollowTheta) {
  // head_dim 4, theta 100: pair 1 turns by position * 100^(-1/2) = position / 10.
  Rope rope(4, 100.0);
  RowMatrix x(1, 4);
  x << 0.0f, 0.0f, 1.0f, 0.0f;
  rope.rotate(x, 5);
  EXPECT_NEAR(x(0, 2), std::cos(0.5), 1e-7);
  EXPECT_NEAR(x(0, 3), std::sin(0.5), 1e-7);
  EXPECT_FLOAT_EQ(x(0, 0), 0.0f);
}

TEST(Rope, PreservesNorms) {
  Rope rope(16);
  RowMatrix x = random_matrix(5, 16, 1);
  const Eigen::VectorXf before = x.rowwise().norm();
  rope.rotate(x, 12345);
  EXPECT_TRUE(x.rowwise().norm().isApprox(before, 1e-5f));
}

TEST(Rope, DotProductDependsOnlyOnRelativePosition) {
  Rope rope(8);
  const RowMatrix q = random_matrix(1, 8, 2);
  const RowMatrix k = random_matrix(1, 8, 3);
  auto dot_at = [&](Index pq, Index pk) {
    RowMatrix a = q, b = k;
    rope.rotate(a, pq);
    rope.rotate(b, pk);
    return a.row(0).dot(b.row(0));
  };
  EXPECT_NEAR(dot_at(10, 7), dot_at(3, 0), 1e-5);
  EXPECT_NEAR(dot_at(500, 497), dot_at(3, 0), 1e-4);
  EXPECT_GT(std::abs(dot_at(10, 7) - dot_at(10, 0)), 1e-3);  // and it does depend on it
}

TEST(Rope, HalfSplitIsInterleavedOnPermutedDimensions) {
  const Index d = 8;
  Rope interleaved(d, 10000.0, RopeLayout::interleaved);
  Rope half(d, 10000.0, RopeLayout::half_split);
  const RowMatrix x = random_matrix(1, d, 4);
  // Interleaved pair (2i, 2i+1) is half-split pair (i, i + d/2).
  RowMatrix permuted(1, d);
  for (Index i = 0; i < d / 2; ++i) {
    permuted(0, i) = x(0, 2 * i);
    permuted(0, i + d / 2) = x(0, 2 * i + 1);
  }
  RowMatrix a = x;
  interleaved.rotate(a, 9);
  half.rotate(permuted, 9);
  for (Index i = 0; i < d / 2; ++i) {
    EXPECT_FLOAT_EQ(permuted(0, i), a(0, 2 * i));
    EXPECT_FLOAT_EQ(permuted(0, i + d / 2), a(0, 2 * i + 1));
  }
}

TEST(Rope, TableOfAnglesGivesBitIdenticalRotations) {
  for (RopeLayout layout : {RopeLayout::interleaved, RopeLayout::half_split}) {
    Rope rope(12, 500000.0, layout);
    const RowMatrix x = random_matrix(1, 12, 5);
    std::vector<float> c(6), s(6);
    rope.angles(77, c.data(), s.data());
    RowMatrix by_table = x;
    rope.rotate(by_table.data(), c.data(), s.data());
    RowMatrix on_the_fly = x;
    rope.rotate(on_the_fly, 77);
    EXPECT_TRUE(by_table == on_the_fly);
  }
}

TEST(Rope, RejectsOddOrEmptyHeadDimAndBadTheta) {
  EXPECT_NE(invalid_argument_message([] { Rope rope(7); }).find("head_dim = 7"), std::string::npos);
  EXPECT_NE(invalid_argument_message([] { Rope rope(0); }).find("head_dim = 0"), std::string::npos);
  EXPECT_NE(invalid_argument_message([] { Rope rope(8, 0.5); }).find("theta = 0.5"),
            std::string::npos);
  Rope rope(8);
  RowMatrix wrong(2, 6);
  EXPECT_NE(invalid_argument_message([&] { rope.rotate(wrong, 1); }).find("x.cols() = 6"),
            std::string::npos);
}

TEST(Rope, RejectsALayoutThatIsNotOneOfTheTwo) {
  const std::string message =
      invalid_argument_message([] { Rope rope(8, 10000.0, static_cast<RopeLayout>(2)); });
  EXPECT_NE(message.find("layout = 2"), std::string::npos) << message;
  EXPECT_EQ(invalid_argument_message([] { Rope rope(8, 10000.0, RopeLayout::half_split); }), "");
}

// The angle is position * frequency in double: defined (and a rotation) for any Index, the
// largest a cache can reach included.
TEST(Rope, AnglesOfHugePositionsAreFiniteRotations) {
  Rope rope(8);
  for (Index position : {kMaxPosition - 1, kMaxPosition + 1000, std::numeric_limits<Index>::max(),
                         std::numeric_limits<Index>::min()}) {
    std::vector<float> c(4), s(4);
    rope.angles(position, c.data(), s.data());
    for (std::size_t i = 0; i < c.size(); ++i) {
      ASSERT_TRUE(std::isfinite(c[i]) && std::isfinite(s[i])) << position;
      EXPECT_NEAR(double{c[i]} * c[i] + double{s[i]} * s[i], 1.0, 1e-6) << position;
    }
    RowMatrix x = random_matrix(2, 8, 6);
    const Eigen::VectorXf before = x.rowwise().norm();
    rope.rotate(x, position);
    EXPECT_TRUE(x.rowwise().norm().isApprox(before, 1e-5f)) << position;
  }
}

// A moved-from Rope is an empty one (head_dim 0), not one that reads frequencies it no longer has.
TEST(Rope, AMovedFromRopeIsEmpty) {
  Rope rope(8);
  const Rope moved = std::move(rope);
  EXPECT_EQ(moved.head_dim(), 8);
  EXPECT_EQ(rope.head_dim(), 0);  // NOLINT(bugprone-use-after-move): the state is specified
  RowMatrix x(2, 8);
  EXPECT_NE(invalid_argument_message([&] { rope.rotate(x, 3); }).find("x.cols() = 8"),
            std::string::npos);
  rope = Rope(4);
  EXPECT_EQ(rope.head_dim(), 4);
}

}  // namespace
}  // namespace msrnn
