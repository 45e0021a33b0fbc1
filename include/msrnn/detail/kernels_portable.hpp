// The decode kernels in plain C++: the fallback on any CPU (see decode_kernels.inc).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "msrnn/detail/kv_views.hpp"
#include "msrnn/kv_type.hpp"
#include "msrnn/types.hpp"

namespace msrnn::detail::portable {

struct Ops {
  static constexpr int L = 8;
  struct V {
    float x[L];
  };
  static V zero() noexcept { return set1(0.0f); }
  static V set1(float a) noexcept {
    V v;
    for (int i = 0; i < L; ++i) v.x[i] = a;
    return v;
  }
  static V fma(const V& a, const V& b, const V& c) noexcept {
    V v;
    for (int i = 0; i < L; ++i) v.x[i] = a.x[i] * b.x[i] + c.x[i];
    return v;
  }
  static V mul(const V& a, const V& b) noexcept {
    V v;
    for (int i = 0; i < L; ++i) v.x[i] = a.x[i] * b.x[i];
    return v;
  }
  static V load(const void* p) noexcept {
    V v;
    std::memcpy(v.x, p, sizeof v.x);
    return v;
  }
  static void store(float* p, const V& v) noexcept { std::memcpy(p, v.x, sizeof v.x); }
  template <KvType T>
  static V load_typed(const void* p) noexcept {
    V v;
    const auto* bytes = static_cast<const unsigned char*>(p);
    for (int i = 0; i < L; ++i) {
      v.x[i] = stored_value<T>(bytes + static_cast<std::size_t>(i) * kv_value_bytes(T));
    }
    return v;
  }
  static V load_f16(const void* p) noexcept { return load_typed<KvType::f16>(p); }
  static V load_bf16(const void* p) noexcept { return load_typed<KvType::bf16>(p); }
  static V load_q8(const void* p) noexcept { return load_typed<KvType::q8>(p); }
  template <class F>
  static V map(const V& a, const V& b, F f) noexcept {
    V v;
    for (int i = 0; i < L; ++i) v.x[i] = f(a.x[i], b.x[i]);
    return v;
  }
  static V add(const V& a, const V& b) noexcept {
    return map(a, b, [](float x, float y) { return x + y; });
  }
  static V sub(const V& a, const V& b) noexcept {
    return map(a, b, [](float x, float y) { return x - y; });
  }
  static V div(const V& a, const V& b) noexcept {
    return map(a, b, [](float x, float y) { return x / y; });
  }
  // max(a, b) that keeps a NaN of b, as x86's MAXPS.
  static V max_keep_nan(const V& a, const V& b) noexcept {
    return map(a, b, [](float x, float y) { return x > y ? x : y; });
  }
  static float reduce_add(V v) noexcept {
    for (int width = L / 2; width >= 1; width /= 2) {
      for (int i = 0; i < width; ++i) v.x[i] += v.x[i + width];
    }
    return v.x[0];
  }
  static float reduce_max(V v) noexcept {
    for (int width = L / 2; width >= 1; width /= 2) {
      for (int i = 0; i < width; ++i) v.x[i] = v.x[i] > v.x[i + width] ? v.x[i] : v.x[i + width];
    }
    return v.x[0];
  }
  static V round(const V& a) noexcept {
    V v;
    for (int i = 0; i < L; ++i) v.x[i] = std::nearbyint(a.x[i]);
    return v;
  }
  // 2^n for integral n in [-126, 127]; NaN stays NaN, and n outside is clamped first (a float
  // to int conversion out of range would be undefined; only a row that is NaN anyway gets one).
  static V pow2(const V& n) noexcept {
    V v;
    for (int i = 0; i < L; ++i) {
      const float e = n.x[i] < -126.0f ? -126.0f : n.x[i] > 127.0f ? 127.0f : n.x[i];
      v.x[i] = std::isnan(e) ? e : std::ldexp(1.0f, static_cast<int>(e));
    }
    return v;
  }
};

#define MSRNN_DECODE_KERNELS_OPS
#include "msrnn/detail/decode_kernels.inc"
#undef MSRNN_DECODE_KERNELS_OPS

}  // namespace msrnn::detail::portable
