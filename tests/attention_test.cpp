#include "msrnn/attention.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::random_matrix;

// Plain loops in double: out[r] = sum_j softmax_j(scale * q[r].k[j]) v[j] over keys [0, visible).
void naive_attention(const RowMatrix& q, Index row, const RowMatrix& k, const RowMatrix& v,
                     Index visible, double scale, std::vector<double>& probs,
                     std::vector<double>& out) {
  probs.assign(static_cast<std::size_t>(visible), 0.0);
  double top = -1e300;
  for (Index j = 0; j < visible; ++j) {
    double dot = 0.0;
    for (Index c = 0; c < q.cols(); ++c) dot += double{q(row, c)} * double{k(j, c)};
    probs[static_cast<std::size_t>(j)] = scale * dot;
    top = std::max(top, scale * dot);
  }
  double sum = 0.0;
  for (double& p : probs) sum += (p = std::exp(p - top));
  for (double& p : probs) p /= sum;
  out.assign(static_cast<std::size_t>(v.cols()), 0.0);
  for (Index j = 0; j < visible; ++j) {
    for (Index c = 0; c < v.cols(); ++c) {
      out[static_cast<std::size_t>(c)] += probs[static_cast<std::size_t>(j)] * double{v(j, c)};
    }
  }
}

TEST(Attention, DecodeMatchesNaiveLoopsForEveryGroupAndLength) {
  // Groups run 4, 2 and 1 query heads at a time; head_dim in blocks of 32 (64, 128), else blocks of
  // 8 (8, 40) with a scalar tail (4, 12).
  for (Index group : {1, 2, 3, 6, 8}) {
    for (Index n : {1, 5, 129, 700}) {
      for (Index d : {4, 8, 12, 40, 64, 128}) {
        SCOPED_TRACE("group " + std::to_string(group) + " n " + std::to_string(n) + " d " +
                     std::to_string(d));
        const RowMatrix q = random_matrix(group, d, 1);
        const RowMatrix k = random_matrix(n, d, 2);
        const RowMatrix v = random_matrix(n, d, 3);
        RowMatrix probs(group, n), out(group, d);
        const float scale = 1.0f / std::sqrt(static_cast<float>(d));
        attend(q, k, v, scale, probs, out);
        std::vector<double> want_probs, want_out;
        for (Index r = 0; r < group; ++r) {
          naive_attention(q, r, k, v, n, scale, want_probs, want_out);
          for (Index j = 0; j < n; ++j) {
            ASSERT_NEAR(probs(r, j), want_probs[static_cast<std::size_t>(j)], 1e-6);
          }
          for (Index c = 0; c < d; ++c) {
            ASSERT_NEAR(out(r, c), want_out[static_cast<std::size_t>(c)], 1e-5);
          }
        }
      }
    }
  }
}

TEST(Attention, SoftmaxIsStableForHugeLogits) {
  std::vector<float> x = {1e4f, 1e4f - 1.0f, -1e4f, 5e3f};
  softmax_prefix(x.data(), 3, 4, 1.0f);
  EXPECT_NEAR(x[0], 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(x[1], std::exp(-1.0) / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_EQ(x[2], 0.0f);
  EXPECT_EQ(x[3], 0.0f);  // masked
}

TEST(Attention, SoftmaxAppliesTheScale) {
  std::vector<float> x = {2.0f, 0.0f};
  softmax_prefix(x.data(), 2, 2, 0.5f);  // logits 1 and 0
  EXPECT_NEAR(x[0], 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
}

TEST(Attention, CausalChunkEqualsDecodingEachTokenOverItsPrefix) {
  const Index d = 16;
  for (Index group : {1, 2}) {
    for (Index before : {0, 7}) {
      const Index t = 9;
      const Index n = before + t;
      const RowMatrix q = random_matrix(t * group, d, 4);
      const RowMatrix k = random_matrix(n, d, 5);
      const RowMatrix v = random_matrix(n, d, 6);
      RowMatrix probs(t * group, n), out(t * group, d);
      attend_causal(q, k, v, 0.25f, before, group, probs, out);
      for (Index i = 0; i < t; ++i) {
        const Index visible = before + i + 1;
        RowMatrix p(group, visible), o(group, d);
        attend(q.middleRows(i * group, group), k.topRows(visible), v.topRows(visible), 0.25f, p, o);
        EXPECT_TRUE(out.middleRows(i * group, group).isApprox(o, 1e-5f)) << "token " << i;
        EXPECT_TRUE(probs.block(i * group, 0, group, visible).isApprox(p, 1e-5f));
        EXPECT_TRUE((probs.block(i * group, visible, group, n - visible).array() == 0.0f).all());
      }
    }
  }
}

// The causal mask is a probability of 0, and 0 * NaN, 0 * inf are NaN: a non-finite key or value
// of token j must reach tokens j and later only, as when each token is decoded over its prefix.
TEST(Attention, CausalChunkKeepsANonFiniteStateFromTheTokensBeforeIt) {
  const Index d = 8;
  const float kNaN = std::numeric_limits<float>::quiet_NaN();
  const float kInf = std::numeric_limits<float>::infinity();
  for (Index group : {1, 2}) {
    for (Index before : {0, 3}) {
      for (int poison = 0; poison < 4; ++poison) {  // NaN value, inf value, NaN key, inf key
        SCOPED_TRACE("group " + std::to_string(group) + " before " + std::to_string(before) +
                     " poison " + std::to_string(poison));
        const Index t = 6;
        const Index n = before + t;
        const Index bad = before + 4;  // token 4 of the chunk
        const RowMatrix q = random_matrix(t * group, d, 7);
        RowMatrix k = random_matrix(n, d, 8);
        RowMatrix v = random_matrix(n, d, 9);
        RowMatrix& target = poison < 2 ? v : k;
        target(bad, 2) = poison % 2 == 0 ? kNaN : kInf;
        RowMatrix probs(t * group, n), out(t * group, d);
        attend_causal(q, k, v, 0.25f, before, group, probs, out);
        for (Index i = 0; i < bad - before; ++i) {  // the tokens that do not see it
          const Index visible = before + i + 1;
          RowMatrix p(group, visible), o(group, d);
          attend(q.middleRows(i * group, group), k.topRows(visible), v.topRows(visible), 0.25f, p,
                 o);
          ASSERT_TRUE(out.middleRows(i * group, group).allFinite()) << "token " << i;
          EXPECT_TRUE(out.middleRows(i * group, group).isApprox(o, 1e-5f)) << "token " << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace msrnn
