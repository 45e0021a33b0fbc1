// KvType: the precisions a key/value row can be stored in, and the exact conversions of one value
// or one row to and from float32 (the scalar reference; issue 11's kernels read these formats).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "msrnn/types.hpp"

namespace msrnn {

/// How a stored key or value row is represented.
enum class KvType {
  f32,   ///< float32, as given
  f16,   ///< IEEE binary16: 10 mantissa bits; magnitudes above 65504 become inf
  bf16,  ///< bfloat16: float32's range, 7 mantissa bits
  q8,  ///< int8 per value and one float32 scale per row: scale = max|x| / 127, q = round(x / scale)
};

/// "f32", "f16", "bf16", "q8", or "?" for a value that is none of them.
inline const char* to_string(KvType type) noexcept {
  switch (type) {
    case KvType::f32:
      return "f32";
    case KvType::f16:
      return "f16";
    case KvType::bf16:
      return "bf16";
    case KvType::q8:
      return "q8";
  }
  return "?";
}

/// Bytes of one stored value (without q8's row scale): 4, 2 (f16, bf16), 1 (q8).
constexpr std::size_t kv_value_bytes(KvType type) noexcept {
  switch (type) {
    case KvType::f32:
      return 4;
    case KvType::f16:
    case KvType::bf16:
      return 2;
    case KvType::q8:
      return 1;
  }
  return 0;
}

/// Bytes of one stored row of n values: 4n, 2n (f16, bf16), n + 4 (q8: the values and the scale).
constexpr std::size_t kv_row_bytes(KvType type, Index n) noexcept {
  const auto values = static_cast<std::size_t>(n);
  switch (type) {
    case KvType::f32:
      return 4 * values;
    case KvType::f16:
    case KvType::bf16:
      return 2 * values;
    case KvType::q8:
      return values + sizeof(float);
  }
  return 0;
}

namespace detail {

inline std::uint32_t float_bits(float x) noexcept {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}
inline float bits_float(std::uint32_t bits) noexcept {
  float x = 0.0f;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// value >> shift rounded to nearest, ties to even (shift in [1, 31]).
inline std::uint32_t shift_round_even(std::uint32_t value, int shift) noexcept {
  const std::uint32_t kept = value >> shift;
  const std::uint32_t rest = value & ((std::uint32_t{1} << shift) - 1);
  const std::uint32_t half = std::uint32_t{1} << (shift - 1);
  return kept + ((rest > half || (rest == half && (kept & 1u) != 0)) ? 1u : 0u);
}

}  // namespace detail

/// float32 -> IEEE binary16, rounded to nearest, ties to even (as F16C's VCVTPS2PH with rounding
/// mode 0): magnitudes from 65520 up become inf, below 2^-25 zero (2^-25 itself, a tie, too);
/// subnormals are kept; NaN stays NaN (quiet), inf stays inf, the sign of zero is kept.
inline std::uint16_t f32_to_f16(float x) noexcept {
  const std::uint32_t bits = detail::float_bits(x);
  const std::uint32_t sign = (bits >> 16) & 0x8000u;
  const std::uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) {  // NaN: quiet, the top of its payload kept
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((magnitude >> 13) & 0x3FFu));
  }
  if (magnitude >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520
  const int exponent = static_cast<int>(magnitude >> 23);                           // biased by 127
  if (exponent < 113) {  // below 2^-14: a binary16 subnormal (or zero), in units of 2^-24
    const int shift = 126 - exponent;  // the 24-bit significand over 2^shift
    if (shift > 24) return static_cast<std::uint16_t>(sign);
    const std::uint32_t significand = (magnitude & 0x7FFFFFu) | 0x800000u;
    return static_cast<std::uint16_t>(sign | detail::shift_round_even(significand, shift));
  }
  // A normal number: the exponent rebiased, 13 mantissa bits rounded off (a carry may step the
  // exponent, which is the right encoding).
  const std::uint32_t rebased = magnitude - (static_cast<std::uint32_t>(127 - 15) << 23);
  return static_cast<std::uint16_t>(sign | detail::shift_round_even(rebased, 13));
}

/// IEEE binary16 -> float32, exactly.
inline float f16_to_f32(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  const std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float32
    const float value = static_cast<float>(mantissa) * 0x1p-24f;
    return sign != 0 ? -value : value;
  }
  if (exponent == 31) return detail::bits_float(sign | 0x7F800000u | (mantissa << 13));
  return detail::bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

/// float32 -> bfloat16, rounded to nearest, ties to even; NaN stays NaN (quiet).
inline std::uint16_t f32_to_bf16(float x) noexcept {
  const std::uint32_t bits = detail::float_bits(x);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  return static_cast<std::uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/// bfloat16 -> float32, exactly.
inline float bf16_to_f32(std::uint16_t b) noexcept {
  return detail::bits_float(static_cast<std::uint32_t>(b) << 16);
}

/// The q8 scale of a row of n floats: max|x| / 127; 0 for a row of zeros; NaN for a row holding
/// inf or NaN (its values are then stored as 0, so it reads back as NaN and reaches no other row).
inline float q8_scale(const float* x, Index n) noexcept {
  float amax = 0.0f;
  bool finite = true;
  for (Index i = 0; i < n; ++i) {
    finite = finite && std::isfinite(x[i]);
    amax = std::max(amax, std::fabs(x[i]));
  }
  if (!finite) return std::numeric_limits<float>::quiet_NaN();
  return amax == 0.0f ? 0.0f : amax / 127.0f;
}

/// The q8 code of x in a row of `scale` (q8_scale): round(x / scale), ties away from zero, in
/// [-127, 127]; 0 when the scale is 0 or NaN.
inline std::int8_t q8_code(float x, float scale) noexcept {
  if (!(scale > 0.0f)) return 0;
  const float r = std::round(x / scale);
  return static_cast<std::int8_t>(std::min(127.0f, std::max(-127.0f, r)));
}

/// Quantizes a row of n floats to int8: returns scale = q8_scale(x, n) and writes q[i] =
/// q8_code(x[i], scale). A row of zeros gets scale 0 and zeros; a row holding inf or NaN gets
/// scale NaN and zeros.
inline float quantize_q8(const float* x, Index n, std::int8_t* q) noexcept {
  const float scale = q8_scale(x, n);
  for (Index i = 0; i < n; ++i) q[i] = q8_code(x[i], scale);
  return scale;
}

/// The float a q8 value stands for: q * scale.
inline float dequantize_q8(std::int8_t q, float scale) noexcept {
  return static_cast<float>(q) * scale;
}

}  // namespace msrnn
