// The decode kernels for x86 AVX2 + FMA + F16C, compiled for that unit whatever the build's flags
// (a target region) and run only where the CPU has it (see kernels.hpp, decode_kernels.inc).
#pragma once

#include "msrnn/kernels.hpp"

#if MSRNN_X86_KERNELS
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "msrnn/detail/kv_views.hpp"
#include "msrnn/kv_type.hpp"
#include "msrnn/types.hpp"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace msrnn::detail::avx2 {

struct Ops {
  static constexpr int L = 8;
  using V = __m256;
  static V zero() noexcept { return _mm256_setzero_ps(); }
  static V set1(float a) noexcept { return _mm256_set1_ps(a); }
  static V fma(V a, V b, V c) noexcept { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) noexcept { return _mm256_mul_ps(a, b); }
  static V load(const void* p) noexcept { return _mm256_loadu_ps(static_cast<const float*>(p)); }
  static void store(float* p, V v) noexcept { _mm256_storeu_ps(p, v); }
  static V load_f16(const void* p) noexcept {
    return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  }
  static V load_bf16(const void* p) noexcept {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static V load_q8(const void* p) noexcept {
    const __m128i bytes = _mm_loadl_epi64(static_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  }
  static V add(V a, V b) noexcept { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) noexcept { return _mm256_sub_ps(a, b); }
  static V div(V a, V b) noexcept { return _mm256_div_ps(a, b); }
  // max(a, b) that keeps a NaN of b (MAXPS returns its second operand when either is NaN).
  static V max_keep_nan(V a, V b) noexcept { return _mm256_max_ps(a, b); }
  static float reduce_add(V v) noexcept {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
  }
  static float reduce_max(V v) noexcept {
    const __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
  }
  static V round(V x) noexcept {
    return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static V pow2(V n) noexcept {  // 2^n for integral n in [-126, 127]
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
};

#define MSRNN_DECODE_KERNELS_OPS
#include "msrnn/detail/decode_kernels.inc"
#undef MSRNN_DECODE_KERNELS_OPS

}  // namespace msrnn::detail::avx2

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // MSRNN_X86_KERNELS
