// The one summary statistic of the benchmarks: the median of repeated measurements, which a slow
// phase of a shared machine moves least.
#pragma once

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace bench {

/// The median of `xs` (the mean of the middle two for an even count). Throws on an empty list.
inline double median(std::vector<double> xs) {
  if (xs.empty()) throw std::invalid_argument("median of no measurements");
  std::sort(xs.begin(), xs.end());
  const std::size_t n = xs.size();
  return n % 2 ? xs[n / 2] : 0.5 * (xs[n / 2 - 1] + xs[n / 2]);
}

}  // namespace bench
