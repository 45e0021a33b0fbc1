// Attention kernels on Eigen maps: decode (one query token) and chunk (causal prefill).
//
// Both work on one KV head and the query heads that share it (grouped-query attention), so the
// keys and values of a KV head are read once for all of its query heads. The cache's decode step
// reads its own stored state instead (kv_store.hpp, attend_stored, in any KvType); `attend` here
// is the float32 decode kernel for hosts that keep keys and values in row-major matrices, and
// `attend_causal` the cache's prefill.
#pragma once

#include <algorithm>
#include <cassert>
#include <type_traits>

#include "msrnn/types.hpp"

namespace msrnn {

namespace detail {

// The decode kernel works on column blocks of W floats held in registers (W = 32: 2 to 8 SIMD
// registers per query head, so 4 heads fit in AVX-512's 32 and partly spill with AVX2 or SSE;
// W = 8 when head_dim is not a multiple of 32) and on
// query heads 4, 2 or 1 at a time, so every key and value row is read from memory once per KV
// head and used by all of its query heads, with no packing copies. Columns beyond the last full
// block go through a scalar tail.
template <int W>
using Block = Eigen::Matrix<float, 1, W>;
// Value rows per pass of `weighted_values`: 16 rows of head_dim 128 are 8 KiB, which stay in the
// L1 cache while each column block of them is used.
constexpr Index kValueTile = 16;
// Rows ahead that the kernels ask the memory system for: the hardware prefetcher alone falls
// behind when each row takes as long to compute as to load (measured: the key pass at 16384
// states goes from ~62% to ~87% of a plain read's speed).
constexpr Index kPrefetchRows = 8;

inline void prefetch(const float* p) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p);
#else
  (void)p;
#endif
}

// probs[r * pstride + j] = q_r . k_j for the G query rows at q and the n key rows at keys.
template <int G, int W>
void dot_rows(const float* q, Index q_stride, const float* keys, Index k_stride, Index n, Index d,
              float* probs, Index p_stride) noexcept {
  using Block = detail::Block<W>;
  const Index full = d / W * W;
  for (Index j = 0; j < n; ++j) {
    const float* k = keys + j * k_stride;
    if (W == 32 && j + kPrefetchRows < n) {  // (narrow heads: the rows are few, and cached)
      for (Index c = 0; c < d; c += 16) prefetch(k + kPrefetchRows * k_stride + c);  // 64 B lines
    }
    Block acc[G];
    for (int r = 0; r < G; ++r) acc[r].setZero();
    for (Index c = 0; c < full; c += W) {
      const Eigen::Map<const Block> kc(k + c);
      for (int r = 0; r < G; ++r)
        acc[r] += Eigen::Map<const Block>(q + r * q_stride + c).cwiseProduct(kc);
    }
    for (int r = 0; r < G; ++r) {
      float tail = 0.0f;
      for (Index c = full; c < d; ++c) tail += q[r * q_stride + c] * k[c];
      probs[r * p_stride + j] = acc[r].sum() + tail;
    }
  }
}

// out_r += sum_j p[r * pstride + j] * v_j for the G rows at out and the n value rows at values.
template <int G, int W>
void weighted_values(const float* p, Index p_stride, const float* values, Index v_stride, Index n,
                     Index d, float* out, Index o_stride) noexcept {
  using Block = detail::Block<W>;
  const Index full = d / W * W;
  for (Index j0 = 0; j0 < n; j0 += kValueTile) {
    const Index j1 = std::min(n, j0 + kValueTile);
    for (Index c = 0; c < full; c += W) {
      Block acc[G];
      for (int r = 0; r < G; ++r) acc[r] = Eigen::Map<const Block>(out + r * o_stride + c);
      for (Index j = j0; j < j1; ++j) {
        if (W == 32 && j + kPrefetchRows < n) {  // (one 64 B line of each 128 B block: the
          prefetch(values + (j + kPrefetchRows) * v_stride + c);  // CPU fetches its pair)
        }
        const Eigen::Map<const Block> v(values + j * v_stride + c);
        for (int r = 0; r < G; ++r) acc[r] += p[r * p_stride + j] * v;
      }
      for (int r = 0; r < G; ++r) Eigen::Map<Block>(out + r * o_stride + c) = acc[r];
    }
    for (Index j = j0; j < j1; ++j) {
      for (int r = 0; r < G; ++r) {
        for (Index c = full; c < d; ++c)
          out[r * o_stride + c] += p[r * p_stride + j] * values[j * v_stride + c];
      }
    }
  }
}

// Scores of the query heads of one KV head, G of them at a time: probs (group, n) = q keys^T.
template <int W>
void dot_all(const Eigen::Ref<const RowMatrix>& q, const Eigen::Ref<const RowMatrix>& keys,
             Eigen::Ref<RowMatrix> probs) noexcept {
  const Index n = keys.rows(), d = keys.cols(), group = q.rows();
  auto rows = [&](auto g, Index r) {
    dot_rows<decltype(g)::value, W>(q.data() + r * q.outerStride(), q.outerStride(), keys.data(),
                                    keys.outerStride(), n, d, &probs(r, 0), probs.outerStride());
  };
  Index r = 0;
  for (; r + 4 <= group; r += 4) rows(std::integral_constant<int, 4>{}, r);
  for (; r + 2 <= group; r += 2) rows(std::integral_constant<int, 2>{}, r);
  for (; r < group; ++r) rows(std::integral_constant<int, 1>{}, r);
}

// out (group, head_dim) = probs (group, n) values, G query heads at a time.
template <int W>
void weighted_all(const Eigen::Ref<const RowMatrix>& probs,
                  const Eigen::Ref<const RowMatrix>& values, Eigen::Ref<RowMatrix> out) noexcept {
  const Index n = values.rows(), d = values.cols(), group = probs.rows();
  out.setZero();
  auto rows = [&](auto g, Index r) {
    weighted_values<decltype(g)::value, W>(probs.data() + r * probs.outerStride(),
                                           probs.outerStride(), values.data(), values.outerStride(),
                                           n, d, &out(r, 0), out.outerStride());
  };
  Index r = 0;
  for (; r + 4 <= group; r += 4) rows(std::integral_constant<int, 4>{}, r);
  for (; r + 2 <= group; r += 2) rows(std::integral_constant<int, 2>{}, r);
  for (; r < group; ++r) rows(std::integral_constant<int, 1>{}, r);
}

}  // namespace detail

/// Stable softmax of scale * x over the first `visible` entries of a row; entries from `visible`
/// to `total` are set to 0 (masked). Requires 1 <= visible <= total.
inline void softmax_prefix(float* x, Index visible, Index total, float scale) noexcept {
  assert(visible >= 1 && visible <= total);
  Eigen::Map<RowVector> row(x, visible);
  const float top = row.maxCoeff();
  row.array() = ((row.array() - top) * scale).exp();
  row /= row.sum();
  std::fill(x + visible, x + total, 0.0f);
}

/// Decode attention for the query heads of one KV head.
///
///   q      (group, head_dim)  the new token's queries, already position-encoded
///   keys   (n, head_dim)      the kept keys plus the new one
///   values (n, head_dim)
///   probs  (group, n)         written: softmax(scale * q keys^T), row by row
///   out    (group, head_dim)  written: probs * values
///
/// One pass over the keys, one over the values, each row read once for all query heads (see
/// detail::dot_rows). Never allocates. The result for a state does not depend on n or on where
/// the rows sit in memory, only on the order of the rows.
inline void attend(const Eigen::Ref<const RowMatrix>& q, const Eigen::Ref<const RowMatrix>& keys,
                   const Eigen::Ref<const RowMatrix>& values, float scale,
                   Eigen::Ref<RowMatrix> probs, Eigen::Ref<RowMatrix> out) noexcept {
  const Index n = keys.rows();
  const Index d = keys.cols();
  const Index group = q.rows();
  assert(n >= 1 && values.rows() == n && probs.rows() == group && probs.cols() == n);
  assert(out.rows() == group && out.cols() == values.cols() && d == q.cols() && d == values.cols());
  const bool wide = d % 32 == 0;  // else blocks of 8 and a scalar tail
  if (wide) {
    detail::dot_all<32>(q, keys, probs);
  } else {
    detail::dot_all<8>(q, keys, probs);
  }
  for (Index r = 0; r < group; ++r) softmax_prefix(&probs(r, 0), n, n, scale);
  if (wide) {
    detail::weighted_all<32>(probs, values, out);
  } else {
    detail::weighted_all<8>(probs, values, out);
  }
}

/// Chunk (prefill) attention with a causal mask, for the query heads of one KV head.
///
///   q      (t * group, head_dim)   query heads of t new tokens, token-major: row i*group + r is
///                                  query head r of token i
///   keys   (n_before + t, head_dim) the n_before keys already kept, then the t new ones in order
///   values (n_before + t, head_dim)
///   probs  (t * group, n_before + t) written: token i sees keys [0, n_before + i]; the rest is 0
///   out    (t * group, head_dim)     written
///
/// One matrix-matrix product for the scores and one for the output. May allocate (Eigen's
/// blocking buffers for large products). A non-finite key or value of token i reaches the
/// outputs of tokens i and later only, as in `attend` over each token's prefix.
inline void attend_causal(const Eigen::Ref<const RowMatrix>& q,
                          const Eigen::Ref<const RowMatrix>& keys,
                          const Eigen::Ref<const RowMatrix>& values, float scale, Index n_before,
                          Index group, Eigen::Ref<RowMatrix> probs, Eigen::Ref<RowMatrix> out) {
  const Index n = keys.rows();
  const Index t = q.rows() / group;
  assert(group >= 1 && q.rows() % group == 0 && n == n_before + t);
  assert(values.rows() == n && probs.rows() == q.rows() && probs.cols() == n);
  probs.noalias() = q * keys.transpose();
  for (Index r = 0; r < probs.rows(); ++r) {
    softmax_prefix(&probs(r, 0), n_before + r / group + 1, n, scale);
  }
  // The mask is a probability of 0, and 0 * NaN and 0 * inf are NaN: with a non-finite value
  // among the new tokens, the product would hand it to the tokens before, so each row then takes
  // only the values it sees. (The check reads t rows; the product costs t * group * n of them.)
  if (values.bottomRows(t).allFinite()) {
    out.noalias() = probs * values;
  } else {
    for (Index r = 0; r < probs.rows(); ++r) {
      const Index visible = n_before + r / group + 1;
      out.row(r).noalias() = probs.row(r).head(visible) * values.topRows(visible);
    }
  }
}

}  // namespace msrnn
