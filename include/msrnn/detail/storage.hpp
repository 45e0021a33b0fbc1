// Reallocating storage that keeps what is in use and leaves the rest unwritten (so that it only
// becomes resident once used): the one helper behind every grow and copy of slot storage.
#pragma once

#include "msrnn/types.hpp"

namespace msrnn::detail {

/// A (rows, cols) matrix holding the first `keep` rows of m; the rest allocated, unwritten.
template <class M>
M with_top_rows(const M& m, Index rows, Index cols, Index keep) {
  M out(rows, cols);
  if (keep > 0) out.topRows(keep) = m.topRows(keep);
  return out;
}

/// A (m.rows(), cols) matrix holding the first `keep` columns of m; the rest allocated, unwritten.
template <class M>
M with_left_cols(const M& m, Index cols, Index keep) {
  M out(m.rows(), cols);
  if (keep > 0) out.leftCols(keep) = m.leftCols(keep);
  return out;
}

}  // namespace msrnn::detail
