// KeyStore, ValueStore: the stored keys and values of one layer and KV head, in a KvType and a
// layout that the decode kernels read directly; the conversions at insert; attention over them.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "msrnn/attention.hpp"
#include "msrnn/detail/decode_kernels.hpp"
#include "msrnn/detail/kv_views.hpp"
#include "msrnn/detail/storage.hpp"
#include "msrnn/kv_type.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

namespace detail {

// Writes x as a stored value of `type` at p (q8: its code in a row of `scale`).
inline void store_value(KvType type, unsigned char* p, float x, float scale) noexcept {
  switch (type) {
    case KvType::f32:
      std::memcpy(p, &x, sizeof x);
      return;
    case KvType::f16: {
      const std::uint16_t h = f32_to_f16(x);
      std::memcpy(p, &h, sizeof h);
      return;
    }
    case KvType::bf16: {
      const std::uint16_t b = f32_to_bf16(x);
      std::memcpy(p, &b, sizeof b);
      return;
    }
    case KvType::q8: {
      const std::int8_t q = q8_code(x, scale);
      std::memcpy(p, &q, sizeof q);
      return;
    }
  }
}

// Writes the n floats of x as values of type T at p, p + step, ... (bytes), q8 in a row of
// `scale`; and reads them back as floats (q8 times the scale). One type switch per row.
template <KvType T>
inline void store_run(unsigned char* p, std::size_t step, const float* x, Index n,
                      float scale) noexcept {
  if constexpr (T == KvType::f32) {
    if (step == sizeof(float)) {
      std::memcpy(p, x, static_cast<std::size_t>(n) * sizeof(float));
      return;
    }
  }
  for (Index i = 0; i < n; ++i, p += step) store_value(T, p, x[i], scale);
}
template <KvType T>
inline void load_run(const unsigned char* p, std::size_t step, float* x, Index n,
                     float scale) noexcept {
  if constexpr (T == KvType::f32) {
    if (step == sizeof(float)) {
      std::memcpy(x, p, static_cast<std::size_t>(n) * sizeof(float));
      return;
    }
  }
  for (Index i = 0; i < n; ++i, p += step) {
    x[i] = T == KvType::q8 ? stored_value<T>(p) * scale : stored_value<T>(p);
  }
}
// store_run / load_run of a run-time type (`step` in values of the type).
inline void store_run(KvType type, unsigned char* p, Index step, const float* x, Index n,
                      float scale) noexcept {
  const std::size_t bytes = static_cast<std::size_t>(step) * kv_value_bytes(type);
  switch (type) {
    case KvType::f32:
      return store_run<KvType::f32>(p, bytes, x, n, scale);
    case KvType::f16:
      return store_run<KvType::f16>(p, bytes, x, n, scale);
    case KvType::bf16:
      return store_run<KvType::bf16>(p, bytes, x, n, scale);
    case KvType::q8:
      return store_run<KvType::q8>(p, bytes, x, n, scale);
  }
}
inline void load_run(KvType type, const unsigned char* p, Index step, float* x, Index n,
                     float scale) noexcept {
  const std::size_t bytes = static_cast<std::size_t>(step) * kv_value_bytes(type);
  switch (type) {
    case KvType::f32:
      return load_run<KvType::f32>(p, bytes, x, n, scale);
    case KvType::f16:
      return load_run<KvType::f16>(p, bytes, x, n, scale);
    case KvType::bf16:
      return load_run<KvType::bf16>(p, bytes, x, n, scale);
    case KvType::q8:
      return load_run<KvType::q8>(p, bytes, x, n, scale);
  }
}

inline Index blocks_of(Index slots) noexcept { return (slots + kBlockSlots - 1) / kBlockSlots; }

/// What KeyStore and ValueStore share: `slots` slots of head_dim values of `type` in whole blocks
/// of 16 slots (the layout inside a block is theirs), and q8's float scale per slot beside them.
/// Allocated unwritten; nothing allocates but the constructors and `grow`.
class SlotBlocks {
 public:
  SlotBlocks() = default;
  SlotBlocks(KvType type, Index head_dim) : type_(type), head_dim_(head_dim) {}
  /// A copy of other's first `keep` blocks (their scales too), the rest allocated, unwritten.
  SlotBlocks(const SlotBlocks& other, Index keep)
      : type_(other.type_),
        head_dim_(other.head_dim_),
        slots_(other.slots_),
        data_(other.data_, other.data_.size(), block_bytes() * static_cast<std::size_t>(keep)),
        scales_(other.scales_, other.scales_.size(), scale_bytes(keep * kBlockSlots)) {}
  SlotBlocks(SlotBlocks&&) noexcept = default;
  SlotBlocks& operator=(SlotBlocks&&) noexcept = default;
  SlotBlocks& operator=(const SlotBlocks&) = delete;
  ~SlotBlocks() = default;

  /// Bytes of `slots` slots: whole blocks of 16, scales included.
  static std::size_t bytes(KvType type, Index head_dim, Index slots) noexcept {
    return static_cast<std::size_t>(blocks_of(slots) * kBlockSlots) * kv_row_bytes(type, head_dim);
  }

  KvType type() const noexcept { return type_; }
  Index head_dim() const noexcept { return head_dim_; }
  Index slots() const noexcept { return slots_; }

  /// Reallocates to `slots` slots, keeping the first `keep` blocks; the rest unwritten.
  void grow(Index slots, Index keep) {
    const Index blocks = blocks_of(slots);
    AlignedBytes data(data_, block_bytes() * static_cast<std::size_t>(blocks),
                      block_bytes() * static_cast<std::size_t>(keep));
    AlignedBytes scales(scales_, scale_bytes(blocks * kBlockSlots),
                        scale_bytes(keep * kBlockSlots));
    data_ = std::move(data);
    scales_ = std::move(scales);
    slots_ = slots;
  }

  std::size_t block_bytes() const noexcept {
    return static_cast<std::size_t>(head_dim_ * kBlockSlots) * kv_value_bytes(type_);
  }
  /// Value `element` (of type_) of the blocks: element e at byte e * size of a value.
  unsigned char* at(Index element) noexcept { return data_.data() + offset(element); }
  const unsigned char* at(Index element) const noexcept { return data_.data() + offset(element); }
  /// Zeroes block b's values and scales.
  void zero_block(Index b) noexcept {
    std::memset(data_.data() + block_bytes() * static_cast<std::size_t>(b), 0, block_bytes());
    if (type_ == KvType::q8) {
      std::memset(scales_.data() + scale_bytes(b * kBlockSlots), 0, scale_bytes(kBlockSlots));
    }
  }
  /// q8: the scale of `slot`'s row (0 for the other types, which have none).
  float scale(Index slot) const noexcept {
    float x = 0.0f;
    if (type_ == KvType::q8) std::memcpy(&x, scales_.data() + scale_bytes(slot), sizeof x);
    return x;
  }
  /// q8: computes, stores and returns the scale of row x for `slot` (0 for the other types).
  float set_scale(Index slot, const float* x) noexcept {
    if (type_ != KvType::q8) return 0.0f;
    const float s = q8_scale(x, head_dim_);
    std::memcpy(scales_.data() + scale_bytes(slot), &s, sizeof s);
    return s;
  }
  /// q8: sets the scale of `slot`'s row as given (a restored row); nothing for the other types.
  void put_scale(Index slot, float s) noexcept {
    if (type_ == KvType::q8) std::memcpy(scales_.data() + scale_bytes(slot), &s, sizeof s);
  }
  /// Copies `slot`'s stored row to `row`: its head_dim values, value c at element(c) of the
  /// blocks, then q8's scale; kv_row_bytes(type, head_dim) bytes in all. `put_row` copies one in.
  template <class Element>
  void get_row(Index slot, unsigned char* row, Element element) const noexcept {
    const std::size_t size = kv_value_bytes(type_);
    for (Index c = 0; c < head_dim_; ++c, row += size) std::memcpy(row, at(element(c)), size);
    if (type_ == KvType::q8) {
      const float s = scale(slot);
      std::memcpy(row, &s, sizeof s);
    }
  }
  template <class Element>
  void put_row(Index slot, const unsigned char* row, Element element) noexcept {
    const std::size_t size = kv_value_bytes(type_);
    for (Index c = 0; c < head_dim_; ++c, row += size) std::memcpy(at(element(c)), row, size);
    if (type_ == KvType::q8) {
      float s = 0.0f;
      std::memcpy(&s, row, sizeof s);
      put_scale(slot, s);
    }
  }
  const unsigned char* data() const noexcept { return data_.data(); }
  const float* scales() const noexcept { return reinterpret_cast<const float*>(scales_.data()); }

 private:
  std::size_t offset(Index element) const noexcept {
    return static_cast<std::size_t>(element) * kv_value_bytes(type_);
  }
  std::size_t scale_bytes(Index slots) const noexcept {
    return type_ == KvType::q8 ? static_cast<std::size_t>(slots) * sizeof(float) : 0;
  }

  KvType type_ = KvType::f32;
  Index head_dim_ = 0;
  Index slots_ = 0;
  AlignedBytes data_;    // (blocks, head_dim, 16) values of type_
  AlignedBytes scales_;  // (blocks * 16) floats, q8 only
};

}  // namespace detail

/// The keys of one KV head, `slots` of them, each head_dim values stored as `type` (converted once,
/// at `write`), in blocks of 16 slots transposed: block b holds, for each column c, the values of
/// slots 16b .. 16b + 15 side by side, so that the score kernel's multiply-add of one column gives
/// 16 scores and no score needs a horizontal sum (detail::KeyView). q8 keeps one float scale per
/// slot beside them. A slot is written in place: nothing moves when another is evicted.
///
/// Memory: blocks_of(slots) * 16 slots of kv_row_bytes(type, head_dim) (`bytes`); allocated
/// unwritten, a block is zeroed when its first slot is written (so that the kernels never read an
/// unwritten lane). Nothing allocates but the constructors and `grow`.
class KeyStore {
 public:
  KeyStore() = default;
  /// No slots until `grow`.
  KeyStore(KvType type, Index head_dim) : blocks_(type, head_dim) {}
  /// A copy of other's slots [0, used), the others allocated, unwritten.
  KeyStore(const KeyStore& other, Index used)
      : zeroed_(std::min(other.zeroed_, detail::blocks_of(used))),
        blocks_(other.blocks_, zeroed_) {}
  KeyStore(KeyStore&&) noexcept = default;
  KeyStore& operator=(KeyStore&&) noexcept = default;
  KeyStore& operator=(const KeyStore&) = delete;
  ~KeyStore() = default;

  KvType type() const noexcept { return blocks_.type(); }
  Index head_dim() const noexcept { return blocks_.head_dim(); }
  Index slots() const noexcept { return blocks_.slots(); }

  /// Bytes a KeyStore of `slots` slots holds: whole blocks of 16 slots, scales included.
  static std::size_t bytes(KvType type, Index head_dim, Index slots) noexcept {
    return detail::SlotBlocks::bytes(type, head_dim, slots);
  }

  /// Reallocates to `slots` slots, keeping [0, used); the rest unwritten.
  void grow(Index slots, Index used) {
    assert(slots >= used);
    zeroed_ = std::min(zeroed_, detail::blocks_of(used));
    blocks_.grow(slots, zeroed_);
  }

  /// Stores key (head_dim floats) in `slot`, converted to the type.
  void write(Index slot, const float* key) noexcept {
    assert(slot >= 0 && slot < slots());
    // (at most once per block, as the slots are first filled)
    while (zeroed_ <= slot / detail::kBlockSlots) blocks_.zero_block(zeroed_++);
    const float scale = blocks_.set_scale(slot, key);
    detail::store_run(type(), blocks_.at(element(slot)), detail::kBlockSlots, key, head_dim(),
                      scale);
  }

  /// The floats the key in `slot` stands for (head_dim of them; q8 times its scale).
  void read(Index slot, float* key) const noexcept {
    assert(slot >= 0 && slot < slots() && slot / detail::kBlockSlots < zeroed_);
    detail::load_run(type(), blocks_.at(element(slot)), detail::kBlockSlots, key, head_dim(),
                     blocks_.scale(slot));
  }

  /// The stored bytes of the key in `slot`, as `write` left them: head_dim values of the type in
  /// column order (the machine's byte order), then q8's float scale; kv_row_bytes(type(),
  /// head_dim()) bytes. write_raw puts such a row back bit for bit (a saved state, state_file.hpp).
  void read_raw(Index slot, unsigned char* row) const noexcept {
    assert(slot >= 0 && slot < slots() && slot / detail::kBlockSlots < zeroed_);
    blocks_.get_row(slot, row, [&](Index c) { return element(slot) + c * detail::kBlockSlots; });
  }
  void write_raw(Index slot, const unsigned char* row) noexcept {
    assert(slot >= 0 && slot < slots());
    while (zeroed_ <= slot / detail::kBlockSlots) blocks_.zero_block(zeroed_++);
    blocks_.put_row(slot, row, [&](Index c) { return element(slot) + c * detail::kBlockSlots; });
  }
  /// Rows [0, n) as floats: keys (>= n, head_dim), for the matrix products of a chunk.
  void read_rows(Index n, Eigen::Ref<RowMatrix> keys) const noexcept {
    assert(keys.rows() >= n && keys.cols() == head_dim());
    for (Index s = 0; s < n; ++s) read(s, &keys(s, 0));
  }

  detail::KeyView view() const noexcept {
    return {blocks_.data(), blocks_.scales(), head_dim(), type()};
  }

 private:
  // The element of slot's column 0 (column c is c * 16 after it).
  Index element(Index slot) const noexcept {
    return (slot / detail::kBlockSlots) * head_dim() * detail::kBlockSlots +
           slot % detail::kBlockSlots;
  }

  Index zeroed_ = 0;           // blocks [0, zeroed_) are initialized
  detail::SlotBlocks blocks_;  // (blocks, head_dim, 16): slot s's column c at element(s) + 16 c
};

/// The values of one KV head, `slots` of them, each head_dim values stored as `type` (converted
/// once, at `write`), in blocks of 16 slots whose columns go in chunks of 16 (see
/// detail::value_element): the weighted sum reads a block chunk by chunk, in memory order, each
/// value once for all query heads. q8 keeps one float scale per slot beside them.
///
/// Memory: blocks_of(slots) * 16 slots of kv_row_bytes(type, head_dim) (`bytes`), allocated
/// unwritten (the kernels read only the slots below n). Nothing allocates but the constructors
/// and `grow`.
class ValueStore {
 public:
  ValueStore() = default;
  /// No slots until `grow`.
  ValueStore(KvType type, Index head_dim) : blocks_(type, head_dim) {}
  /// A copy of other's slots [0, used), the others allocated, unwritten.
  ValueStore(const ValueStore& other, Index used)
      : blocks_(other.blocks_, detail::blocks_of(used)) {}
  ValueStore(ValueStore&&) noexcept = default;
  ValueStore& operator=(ValueStore&&) noexcept = default;
  ValueStore& operator=(const ValueStore&) = delete;
  ~ValueStore() = default;

  KvType type() const noexcept { return blocks_.type(); }
  Index head_dim() const noexcept { return blocks_.head_dim(); }
  Index slots() const noexcept { return blocks_.slots(); }

  /// Bytes a ValueStore of `slots` slots holds: whole blocks of 16 slots, scales included.
  static std::size_t bytes(KvType type, Index head_dim, Index slots) noexcept {
    return detail::SlotBlocks::bytes(type, head_dim, slots);
  }

  /// Reallocates to `slots` slots, keeping [0, used); the rest unwritten.
  void grow(Index slots, Index used) {
    assert(slots >= used);
    blocks_.grow(slots, detail::blocks_of(used));
  }

  /// Stores value (head_dim floats) in `slot`, converted to the type.
  void write(Index slot, const float* value) noexcept {
    assert(slot >= 0 && slot < slots());
    const float scale = blocks_.set_scale(slot, value);
    for (Index c = 0; c < head_dim(); c += detail::kChunkColumns) {  // a run per chunk
      const Index n = std::min(detail::kChunkColumns, head_dim() - c);
      detail::store_run(type(), blocks_.at(detail::value_element(head_dim(), slot, c)), 1,
                        value + c, n, scale);
    }
  }

  /// The floats the value in `slot` stands for (head_dim of them; q8 times its scale).
  void read(Index slot, float* value) const noexcept {
    assert(slot >= 0 && slot < slots());
    const float scale = blocks_.scale(slot);
    for (Index c = 0; c < head_dim(); c += detail::kChunkColumns) {
      const Index n = std::min(detail::kChunkColumns, head_dim() - c);
      detail::load_run(type(), blocks_.at(detail::value_element(head_dim(), slot, c)), 1, value + c,
                       n, scale);
    }
  }

  /// The stored bytes of the value in `slot`, as KeyStore::read_raw gives a key's; write_raw puts
  /// such a row back bit for bit.
  void read_raw(Index slot, unsigned char* row) const noexcept {
    assert(slot >= 0 && slot < slots());
    blocks_.get_row(slot, row, [&](Index c) { return detail::value_element(head_dim(), slot, c); });
  }
  void write_raw(Index slot, const unsigned char* row) noexcept {
    assert(slot >= 0 && slot < slots());
    blocks_.put_row(slot, row, [&](Index c) { return detail::value_element(head_dim(), slot, c); });
  }
  /// Rows [0, n) as floats: values (>= n, head_dim), for the matrix products of a chunk.
  void read_rows(Index n, Eigen::Ref<RowMatrix> values) const noexcept {
    assert(values.rows() >= n && values.cols() == head_dim());
    for (Index s = 0; s < n; ++s) read(s, &values(s, 0));
  }

  detail::ValueView view() const noexcept {
    return {blocks_.data(), blocks_.scales(), head_dim(), type()};
  }

 private:
  detail::SlotBlocks blocks_;  // (blocks, head_dim, 16) in chunks: detail::value_element
};

/// Decode attention of the query heads of one KV head over its stored slots [0, n):
///   q     (group, head_dim)  the new token's queries, position-encoded
///   probs (group, >= n)      written, columns [0, n): softmax(scale * q keys^T)
///   out   (group, head_dim)  written: probs values
/// One pass over the keys and one over the values, each read once for all query heads, as stored
/// (no float copy). Never allocates. The result for a slot depends only on its key and value and
/// the order of the slots, not on n or on which slot it is.
inline void attend_stored(const detail::KernelSet& kernels, const Eigen::Ref<const RowMatrix>& q,
                          const KeyStore& keys, const ValueStore& values, Index n, float scale,
                          Eigen::Ref<RowMatrix> probs, Eigen::Ref<RowMatrix> out) noexcept {
  const Index group = q.rows();
  assert(n >= 1 && n <= keys.slots() && n <= values.slots() && probs.rows() == group);
  assert(probs.cols() >= n && out.rows() == group && out.cols() == values.head_dim());
  kernels.scores(q.data(), q.outerStride(), group, keys.view(), n, probs.data(),
                 probs.outerStride());
  for (Index r = 0; r < group; ++r) kernels.softmax(&probs(r, 0), n, scale);
  kernels.weigh(probs.data(), probs.outerStride(), group, values.view(), n, out.data(),
                out.outerStride());
}

}  // namespace msrnn
