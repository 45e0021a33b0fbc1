// The machine's read baseline: GB/s of one streaming read of a buffer (the weights, what a batch-1
// step reads at least), quoted beside every step figure since the machine's read rate swings.
#pragma once

#include <chrono>
#include <cstddef>
#include <vector>

#include "median.hpp"

namespace bench {

/// GB/s of reading the n floats at `data` once, the median of 5 passes.
inline double read_gbps(const float* data, std::size_t n) {
  std::vector<double> rates;
  volatile float sink = 0.0f;
  for (int pass = 0; pass < 5; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    float sums[16] = {};
    const std::size_t whole = n / 16 * 16;
    for (std::size_t i = 0; i < whole; i += 16) {
      for (int j = 0; j < 16; ++j) sums[j] += data[i + static_cast<std::size_t>(j)];
    }
    float total = 0.0f;
    for (float x : sums) total += x;
    sink = sink + total;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    rates.push_back(static_cast<double>(whole * sizeof(float)) / seconds / 1e9);
  }
  return median(rates);
}

}  // namespace bench
