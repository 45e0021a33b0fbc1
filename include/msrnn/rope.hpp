// Rotary position encoding (RoPE) in the two layouts used by open models.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "msrnn/detail/check.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

/// Which dimensions of a head form a rotated pair.
enum class RopeLayout {
  /// Pairs (2i, 2i+1): Llama's original code and llama2.c.
  interleaved,
  /// Pairs (i, i + head_dim/2): GPT-NeoX and Hugging Face's Llama.
  half_split,
};

/// Rotary position encoding: pair i of a head is rotated by the angle position *
/// theta^(-2i/head_dim).
///
/// Angles are computed in double and rounded once to float, so a table of angles (see `angles`)
/// and a rotation computed on the fly give bit-identical results.
///
///   msrnn::Rope rope(64);                       // head_dim 64, theta 10000, interleaved
///   rope.rotate(q_heads, /*position=*/17);      // q_heads: (n_heads, 64), rotated in place
class Rope {
 public:
  /// Throws std::invalid_argument when head_dim is not a positive even number, theta is not
  /// a finite number greater than 1, or layout is neither interleaved nor half_split.
  ///
  /// Any Index is a valid position: the angle is computed in double, so it is defined for every
  /// one (far positions lose precision, never a rotation's norm). A moved-from Rope is empty
  /// (head_dim 0).
  explicit Rope(Index head_dim, double theta = 10000.0, RopeLayout layout = RopeLayout::interleaved)
      : theta_(theta), layout_(layout) {
    detail::require(head_dim > 0 && head_dim % 2 == 0, "head_dim", head_dim,
                    "RoPE needs a positive even head_dim");
    detail::require(std::isfinite(theta) && theta > 1.0, "theta", theta,
                    "RoPE needs a finite base greater than 1");
    detail::require(layout == RopeLayout::interleaved || layout == RopeLayout::half_split, "layout",
                    static_cast<int>(layout),
                    "must be RopeLayout::interleaved or RopeLayout::half_split");
    inv_freq_.resize(static_cast<std::size_t>(head_dim / 2));
    for (Index i = 0; i < head_dim / 2; ++i) {
      inv_freq_[static_cast<std::size_t>(i)] =
          std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    }
  }

  Index head_dim() const noexcept { return 2 * half(); }
  double theta() const noexcept { return theta_; }
  RopeLayout layout() const noexcept { return layout_; }

  /// Writes cos and sin of every pair's angle at `position`: (head_dim / 2) floats each.
  void angles(Index position, float* cos_out, float* sin_out) const noexcept {
    for (Index i = 0; i < half(); ++i) angle(position, i, cos_out[i], sin_out[i]);
  }

  /// Rotates one head vector `x` (head_dim floats) in place by angles from `angles()`.
  void rotate(float* x, const float* cos_in, const float* sin_in) const noexcept {
    rotate(x, x, cos_in, sin_in);
  }

  /// Writes head vector `in` (head_dim floats) rotated by angles from `angles()` to `out`, which
  /// is `in` or does not overlap it. The one rotation every other goes through, so that all give
  /// the same bits.
  void rotate(const float* in, float* out, const float* cos_in,
              const float* sin_in) const noexcept {
    const Index n = half();
    if (layout_ == RopeLayout::interleaved) {
      for (Index i = 0; i < n; ++i)
        turn(in[2 * i], in[2 * i + 1], out + 2 * i, out + 2 * i + 1, cos_in[i], sin_in[i]);
    } else {
      for (Index i = 0; i < n; ++i)
        turn(in[i], in[i + n], out + i, out + i + n, cos_in[i], sin_in[i]);
    }
  }

  /// Rotates every row of x (rows, head_dim) in place at `position`.
  void rotate(Eigen::Ref<RowMatrix> x, Index position) const {
    detail::require(x.cols() == head_dim(), "x.cols()", x.cols(),
                    "must equal the Rope's head_dim (" + std::to_string(head_dim()) + ")");
    for (Index i = 0; i < half(); ++i) {
      float c = 0.0f;
      float s = 0.0f;
      angle(position, i, c, s);
      for (Index r = 0; r < x.rows(); ++r) {
        float* row = &x(r, 0);
        const Index j = layout_ == RopeLayout::interleaved ? 2 * i : i;
        const Index k = layout_ == RopeLayout::interleaved ? 2 * i + 1 : i + half();
        turn(row[j], row[k], row + j, row + k, c, s);
      }
    }
  }

 private:
  double theta_;
  RopeLayout layout_;
  // (head_dim / 2) the frequency of each pair. Its size is the only record of head_dim, so that a
  // moved-from Rope (whose vector is empty) is an empty one rather than one that reads past it.
  std::vector<double> inv_freq_;

  Index half() const noexcept { return static_cast<Index>(inv_freq_.size()); }

  void angle(Index position, Index pair, float& c, float& s) const noexcept {
    const double a = static_cast<double>(position) * inv_freq_[static_cast<std::size_t>(pair)];
    c = static_cast<float>(std::cos(a));
    s = static_cast<float>(std::sin(a));
  }

  // Writes the pair (a, b) rotated by the angle whose cosine and sine are c and s to (*x, *y).
  // Both are read before either is written: in place is fine.
  static void turn(float a, float b, float* x, float* y, float c, float s) noexcept {
    *x = a * c - b * s;
    *y = a * s + b * c;
  }
};

}  // namespace msrnn
