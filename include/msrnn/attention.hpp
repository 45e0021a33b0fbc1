// Attention kernels on Eigen maps: decode (one query token) and chunk (causal prefill).
//
// Both work on one KV head and the query heads that share it (grouped-query attention), so the
// keys and values of a KV head are read once for all of its query heads.
#pragma once

#include <algorithm>
#include <cassert>

#include "msrnn/types.hpp"

namespace msrnn {

namespace detail {

// Keys per tile in the decode kernel. A tile of keys (tile, head_dim) is at most 64 KiB, so
// Eigen packs each product on the stack: the decode step never touches the heap.
inline Index key_tile(Index head_dim) noexcept {
  return std::max<Index>(16, Index{16384} / std::max<Index>(1, head_dim));
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
/// Never allocates: the products run over key tiles small enough for Eigen's stack buffers.
inline void attend(const Eigen::Ref<const RowMatrix>& q, const Eigen::Ref<const RowMatrix>& keys,
                   const Eigen::Ref<const RowMatrix>& values, float scale,
                   Eigen::Ref<RowMatrix> probs, Eigen::Ref<RowMatrix> out) noexcept {
  const Index n = keys.rows();
  assert(n >= 1 && values.rows() == n && probs.rows() == q.rows() && probs.cols() == n);
  assert(out.rows() == q.rows() && out.cols() == values.cols() && keys.cols() == q.cols());
  const Index tile = detail::key_tile(keys.cols());
  for (Index j = 0; j < n; j += tile) {
    const Index width = std::min(tile, n - j);
    probs.middleCols(j, width).noalias() = q * keys.middleRows(j, width).transpose();
  }
  for (Index r = 0; r < probs.rows(); ++r) softmax_prefix(&probs(r, 0), n, n, scale);
  out.setZero();
  for (Index j = 0; j < n; j += tile) {
    const Index width = std::min(tile, n - j);
    out.noalias() += probs.middleCols(j, width) * values.middleRows(j, width);
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
/// blocking buffers for large products).
inline void attend_causal(const Eigen::Ref<const RowMatrix>& q,
                          const Eigen::Ref<const RowMatrix>& keys,
                          const Eigen::Ref<const RowMatrix>& values, float scale, Index n_before,
                          Index group, Eigen::Ref<RowMatrix> probs, Eigen::Ref<RowMatrix> out) {
  const Index n = keys.rows();
  assert(group >= 1 && q.rows() % group == 0 && n == n_before + q.rows() / group);
  assert(values.rows() == n && probs.rows() == q.rows() && probs.cols() == n);
  probs.noalias() = q * keys.transpose();
  for (Index r = 0; r < probs.rows(); ++r) {
    softmax_prefix(&probs(r, 0), n_before + r / group + 1, n, scale);
  }
  out.noalias() = probs * values;
}

}  // namespace msrnn
