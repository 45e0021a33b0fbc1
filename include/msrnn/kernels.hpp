// Kernels: which vector unit the decode kernels use, and what this CPU has (checked at run time,
// so a binary built for any x86-64 still runs the best one; see detail/decode_kernels.inc).
#pragma once

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MSRNN_X86_KERNELS 1
#include <cpuid.h>
#else
#define MSRNN_X86_KERNELS 0
#endif

namespace msrnn {

/// The decode kernels a cache runs (`CacheConfig::kernels`).
enum class Kernels {
  automatic,  ///< the best this CPU has: avx512, else avx2, else portable (resolved once)
  portable,   ///< plain C++ (any CPU; what the compiler makes of it)
  avx2,       ///< x86 AVX2 with FMA and F16C
  avx512,     ///< x86 AVX-512 (F)
};

/// "automatic", "portable", "avx2", "avx512", or "?".
inline const char* to_string(Kernels kernels) noexcept {
  switch (kernels) {
    case Kernels::automatic:
      return "automatic";
    case Kernels::portable:
      return "portable";
    case Kernels::avx2:
      return "avx2";
    case Kernels::avx512:
      return "avx512";
  }
  return "?";
}

namespace detail {

#if MSRNN_X86_KERNELS
// The OS saves the register state of the unit (XCR0 bits) and the CPU has its instructions.
inline unsigned long long xcr0() noexcept {
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}
inline bool cpu_has(Kernels kernels) noexcept {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool osxsave = (c >> 27) & 1u, fma = (c >> 12) & 1u, f16c = (c >> 29) & 1u;
  if (!osxsave || !fma || !f16c) return false;
  const unsigned long long xcr = xcr0();
  if ((xcr & 0x6u) != 0x6u) return false;  // SSE and AVX state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool avx2 = (b >> 5) & 1u, avx512f = (b >> 16) & 1u;
  if (kernels == Kernels::avx2) return avx2;
  return avx2 && avx512f && (xcr & 0xE0u) == 0xE0u;  // opmask and ZMM state
}
#endif

}  // namespace detail

/// Whether this CPU (and this build) can run `kernels`: portable and automatic always.
inline bool kernels_available(Kernels kernels) noexcept {
  switch (kernels) {
    case Kernels::automatic:
    case Kernels::portable:
      return true;
    case Kernels::avx2:
    case Kernels::avx512:
#if MSRNN_X86_KERNELS
      return detail::cpu_has(kernels);
#else
      return false;
#endif
  }
  return false;
}

/// What `automatic` means on this CPU.
inline Kernels best_kernels() noexcept {
  if (kernels_available(Kernels::avx512)) return Kernels::avx512;
  if (kernels_available(Kernels::avx2)) return Kernels::avx2;
  return Kernels::portable;
}

}  // namespace msrnn
