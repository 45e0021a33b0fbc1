// What the decode kernels see of a KV head's stored keys and values: pointers, the layout, the
// type (see KeyStore and ValueStore in kv_store.hpp for who owns them).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "msrnn/kv_type.hpp"
#include "msrnn/types.hpp"

namespace msrnn::detail {

/// Slots per key block: keys are stored in blocks of 16 slots, transposed, so that one vector of
/// a block's column c holds 16 slots' values of it and one multiply-add gives 16 scores.
constexpr Index kBlockSlots = 16;

/// The stored float that a value of type T at p stands for (exact; q8 without its row scale).
template <KvType T>
inline float stored_value(const unsigned char* p) noexcept {
  if constexpr (T == KvType::f32) {
    float x = 0.0f;
    std::memcpy(&x, p, sizeof x);
    return x;
  } else if constexpr (T == KvType::q8) {
    return static_cast<float>(static_cast<std::int8_t>(*p));
  } else {
    std::uint16_t h = 0;
    std::memcpy(&h, p, sizeof h);
    return T == KvType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
}

/// Keys of one KV head: (blocks, head_dim, kBlockSlots) values of `type`, slot s's value c at
/// element (s / 16 * head_dim + c) * 16 + s % 16; q8 row scales (blocks * 16) beside.
struct KeyView {
  const unsigned char* data = nullptr;
  const float* scales = nullptr;  // q8 only
  Index head_dim = 0;
  KvType type = KvType::f32;
};

/// Columns per chunk of a value block.
constexpr Index kChunkColumns = 16;

/// The element index of value (slot s, column c) among (blocks, head_dim, 16) values: blocks of 16
/// slots, each block's columns in chunks of 16 (the last one narrower when head_dim is not a
/// multiple of 16), each chunk holding its 16 slots' rows of it one after the other. A pass of the
/// value kernel over a block and a chunk reads one contiguous run, and the block's passes read
/// the block in memory order.
inline Index value_element(Index head_dim, Index s, Index c) noexcept {
  const Index chunk = c / kChunkColumns;
  const Index width = std::min(kChunkColumns, head_dim - chunk * kChunkColumns);
  return (s / kBlockSlots) * kBlockSlots * head_dim + chunk * kBlockSlots * kChunkColumns +
         (s % kBlockSlots) * width + c % kChunkColumns;
}

/// Values of one KV head: blocks of 16 slots in chunks of columns (value_element) of `type`; q8
/// row scales (blocks * 16) beside.
struct ValueView {
  const unsigned char* data = nullptr;
  const float* scales = nullptr;  // q8 only
  Index head_dim = 0;
  KvType type = KvType::f32;

  /// Value c of slot j as the stored float (q8: without the scale).
  template <KvType T>
  float at(Index j, Index c) const noexcept {
    return stored_value<T>(data +
                           value_element(head_dim, j, c) * static_cast<Index>(kv_value_bytes(T)));
  }
};

}  // namespace msrnn::detail
