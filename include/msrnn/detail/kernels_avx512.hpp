// The decode kernels for x86 AVX-512 (F), compiled for that unit whatever the build's flags (a
// target region) and run only where the CPU has it (see kernels.hpp, decode_kernels.inc).
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
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
#endif

namespace msrnn::detail::avx512 {

// The zero-masked forms of the conversions: the same results, and GCC 12's unmasked ones start
// from an undefined vector that -Wmaybe-uninitialized reports (GCC bug 105593).
struct Ops {
  static constexpr int L = 16;
  static constexpr __mmask16 kAll = 0xFFFF;
  using V = __m512;
  static V zero() noexcept { return _mm512_setzero_ps(); }
  static V set1(float a) noexcept { return _mm512_set1_ps(a); }
  static V fma(V a, V b, V c) noexcept { return _mm512_fmadd_ps(a, b, c); }
  static V mul(V a, V b) noexcept { return _mm512_mul_ps(a, b); }
  static V load(const void* p) noexcept { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) noexcept { _mm512_storeu_ps(p, v); }
  static V load_f16(const void* p) noexcept {
    return _mm512_maskz_cvtph_ps(kAll, _mm256_loadu_si256(static_cast<const __m256i*>(p)));
  }
  static V load_bf16(const void* p) noexcept {
    const __m512i wide =
        _mm512_maskz_cvtepu16_epi32(kAll, _mm256_loadu_si256(static_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, wide, 16));
  }
  static V load_q8(const void* p) noexcept {
    const __m128i bytes = _mm_loadu_si128(static_cast<const __m128i*>(p));
    return _mm512_maskz_cvtepi32_ps(kAll, _mm512_maskz_cvtepi8_epi32(kAll, bytes));
  }
  static V add(V a, V b) noexcept { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) noexcept { return _mm512_sub_ps(a, b); }
  static V div(V a, V b) noexcept { return _mm512_div_ps(a, b); }
  // max(a, b) that keeps a NaN of b (VMAXPS returns its second operand when either is NaN).
  static V max_keep_nan(V a, V b) noexcept { return _mm512_maskz_max_ps(kAll, a, b); }
  static float reduce_add(V v) noexcept {
    float lanes[L];
    _mm512_storeu_ps(lanes, v);
    return reduce_lanes(lanes, [](float a, float b) { return a + b; });
  }
  static float reduce_max(V v) noexcept {
    float lanes[L];
    _mm512_storeu_ps(lanes, v);
    return reduce_lanes(lanes, [](float a, float b) { return a > b ? a : b; });
  }
  template <class F>
  static float reduce_lanes(float* lanes, F f) noexcept {  // pairwise, as a tree
    for (int width = L / 2; width >= 1; width /= 2) {
      for (int i = 0; i < width; ++i) lanes[i] = f(lanes[i], lanes[i + width]);
    }
    return lanes[0];
  }
  static V round(V x) noexcept {
    return _mm512_maskz_roundscale_ps(kAll, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static V pow2(V n) noexcept {  // 2^n for integral n in [-126, 127]
    const __m512i e = _mm512_add_epi32(_mm512_maskz_cvtps_epi32(kAll, n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, e, 23));
  }
};

#define MSRNN_DECODE_KERNELS_OPS
#include "msrnn/detail/decode_kernels.inc"
#undef MSRNN_DECODE_KERNELS_OPS

}  // namespace msrnn::detail::avx512

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // MSRNN_X86_KERNELS
