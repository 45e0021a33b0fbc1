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

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>

namespace msrnn::detail {

/// An owned buffer of bytes aligned to 64 (a cache line, a 512-bit vector), left unwritten when
/// allocated: its pages become resident as they are written.
class AlignedBytes {
 public:
  AlignedBytes() = default;
  explicit AlignedBytes(std::size_t size)
      : data_(size > 0 ? static_cast<unsigned char*>(::operator new(size, kAlign)) : nullptr),
        size_(size) {}
  /// A buffer of `size` bytes holding the first `keep` bytes of other.
  AlignedBytes(const AlignedBytes& other, std::size_t size, std::size_t keep) : AlignedBytes(size) {
    if (keep > 0) std::memcpy(data_.get(), other.data(), keep);
  }
  unsigned char* data() noexcept { return data_.get(); }
  const unsigned char* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return size_; }

 private:
  static constexpr std::align_val_t kAlign{64};
  struct Free {
    void operator()(unsigned char* p) const noexcept { ::operator delete(p, kAlign); }
  };
  std::unique_ptr<unsigned char[], Free> data_;
  std::size_t size_ = 0;
};

}  // namespace msrnn::detail
