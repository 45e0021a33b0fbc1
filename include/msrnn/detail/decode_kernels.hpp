// The decode kernels of every vector unit behind one table of function pointers, chosen once per
// cache (kernels.hpp says which this CPU can run).
#pragma once

#include <stdexcept>
#include <string>

#include "msrnn/detail/kernels_avx2.hpp"
#include "msrnn/detail/kernels_avx512.hpp"
#include "msrnn/detail/kernels_portable.hpp"
#include "msrnn/detail/kv_views.hpp"
#include "msrnn/kernels.hpp"

namespace msrnn::detail {

/// The passes of a decode step over one KV head's stored state (see decode_kernels.inc).
struct KernelSet {
  /// probs (group, n) = q (group, head_dim) keys^T
  void (*scores)(const float* q, Index q_stride, Index group, const KeyView& keys, Index n,
                 float* probs, Index p_stride) noexcept = portable::scores;
  /// out (group, head_dim) = probs (group, n) values
  void (*weigh)(const float* probs, Index p_stride, Index group, const ValueView& values, Index n,
                float* out, Index o_stride) noexcept = portable::weigh;
  /// x (n) = softmax(scale * x), in place
  void (*softmax)(float* x, Index n, float scale) noexcept = portable::softmax;
};

/// The kernels of `kernels` (automatic: the best available). Throws std::invalid_argument when
/// this CPU or build cannot run them.
inline KernelSet kernel_set(Kernels kernels) {
  if (kernels == Kernels::automatic) kernels = best_kernels();
  if (!kernels_available(kernels)) {
    throw std::invalid_argument(
        std::string("kernels = ") + to_string(kernels) +
        ": this CPU does not have them (best: " + to_string(best_kernels()) + ")");
  }
  KernelSet set;
#if MSRNN_X86_KERNELS
  if (kernels == Kernels::avx2) set = {avx2::scores, avx2::weigh, avx2::softmax};
  if (kernels == Kernels::avx512) set = {avx512::scores, avx512::weigh, avx512::softmax};
#endif
  return set;
}

}  // namespace msrnn::detail
