// The tensor element types the example engine reads from GGUF files and msrnn-convert writes:
// F32, F16, BF16, Q8_0 and Q4_0 rows to float32 (dequantize_row), and float32 rows to F16 and Q8_0
// (quantize_row). Blocks as ggml lays them out: Q8_0 is 32 elements as an f16 scale d and 32 int8
// q (x = d q); Q4_0 an f16 scale and 16 bytes whose low nibbles are elements 0..15 and high
// nibbles 16..31 (x = d (nibble - 8)).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <msrnn/kv_type.hpp>  // f16_to_f32, f32_to_f16, bf16_to_f32
#include <stdexcept>
#include <string>

namespace engine::ggml {

enum TypeId : std::uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, BF16 = 30 };

/// True for the types dequantize_row reads.
inline bool readable(std::uint32_t type) {
  return type == F32 || type == F16 || type == BF16 || type == Q8_0 || type == Q4_0;
}

/// Bytes of a row of n elements of `type` (n a multiple of its block, which the caller checked).
inline std::uint64_t row_bytes(std::uint32_t type, std::uint64_t n) {
  switch (type) {
    case F32:
      return 4 * n;
    case F16:
    case BF16:
      return 2 * n;
    case Q8_0:
      return n / 32 * 34;
    case Q4_0:
      return n / 32 * 18;
    default:
      throw std::invalid_argument("row_bytes: type " + std::to_string(type));
  }
}

namespace detail {
inline std::uint16_t u16(const unsigned char* p) {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}
inline void put_u16(unsigned char* p, std::uint16_t x) {
  p[0] = static_cast<unsigned char>(x & 0xFF);
  p[1] = static_cast<unsigned char>(x >> 8);
}
}  // namespace detail

/// out[0, n) = the n elements of `type` at `in` (a row; n a multiple of the type's block).
inline void dequantize_row(std::uint32_t type, const unsigned char* in, float* out,
                           std::uint64_t n) {
  switch (type) {
    case F32:
      std::memcpy(out, in, 4 * n);
      return;
    case F16:
      for (std::uint64_t i = 0; i < n; ++i) out[i] = msrnn::f16_to_f32(detail::u16(in + 2 * i));
      return;
    case BF16:
      for (std::uint64_t i = 0; i < n; ++i) out[i] = msrnn::bf16_to_f32(detail::u16(in + 2 * i));
      return;
    case Q8_0:
      for (std::uint64_t b = 0; b < n / 32; ++b, in += 34, out += 32) {
        const float d = msrnn::f16_to_f32(detail::u16(in));
        for (int j = 0; j < 32; ++j)
          out[j] = d * static_cast<float>(static_cast<std::int8_t>(in[2 + j]));
      }
      return;
    case Q4_0:
      for (std::uint64_t b = 0; b < n / 32; ++b, in += 18, out += 32) {
        const float d = msrnn::f16_to_f32(detail::u16(in));
        for (int j = 0; j < 16; ++j) {
          out[j] = d * static_cast<float>((in[2 + j] & 0x0F) - 8);
          out[j + 16] = d * static_cast<float>((in[2 + j] >> 4) - 8);
        }
      }
      return;
    default:
      throw std::invalid_argument("dequantize_row: type " + std::to_string(type));
  }
}

/// Writes the n floats at `in` as `type` (F32, F16 or Q8_0; n a multiple of 32 for Q8_0) to
/// `out` (row_bytes(type, n) bytes). Q8_0: d = max|x| / 127 rounded to f16, q = round(x / d).
inline void quantize_row(std::uint32_t type, const float* in, unsigned char* out, std::uint64_t n) {
  switch (type) {
    case F32:
      std::memcpy(out, in, 4 * n);
      return;
    case F16:
      for (std::uint64_t i = 0; i < n; ++i) detail::put_u16(out + 2 * i, msrnn::f32_to_f16(in[i]));
      return;
    case Q8_0:
      for (std::uint64_t b = 0; b < n / 32; ++b, in += 32, out += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(in[j]));
        const float d = amax / 127.0f;
        const float inv = d != 0.0f ? 1.0f / d : 0.0f;
        detail::put_u16(out, msrnn::f32_to_f16(d));
        for (int j = 0; j < 32; ++j) {
          const long q = std::lround(in[j] * inv);
          out[2 + j] = static_cast<unsigned char>(static_cast<std::int8_t>(q < -127  ? -127
                                                                           : q > 127 ? 127
                                                                                     : q));
        }
      }
      return;
    default:
      throw std::invalid_argument("quantize_row: type " + std::to_string(type));
  }
}

}  // namespace engine::ggml
