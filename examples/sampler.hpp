// Choosing the next token from logits: greedy, temperature, top-p (as llama2.c's run.c).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <msrnn/types.hpp>
#include <utility>
#include <vector>

#include "xorshift.hpp"

namespace engine {

class Sampler {
 public:
  /// temperature 0 is greedy; topp in (0, 1) samples from the smallest set of tokens whose
  /// probabilities add up to topp.
  Sampler(float temperature, float topp, std::uint64_t seed)
      : temperature_(temperature), topp_(topp), rng_(seed == 0 ? 1 : seed) {}

  float temperature() const { return temperature_; }
  float topp() const { return topp_; }
  /// The random generator's state: a Sampler made with it as the seed draws what this one would
  /// draw next (a saved sequence resumed).
  std::uint64_t random_state() const { return rng_.state(); }

  int sample(const msrnn::RowVector& logits) {
    msrnn::Index best = 0;
    if (temperature_ == 0.0f || !logits.allFinite()) {
      logits.maxCoeff(&best);
      return static_cast<int>(best);
    }
    // exp((logit - max) / T): no overflow however small T is; the top token keeps probability > 0.
    probs_.array() = ((logits.array() - logits.maxCoeff()) / temperature_).exp();
    probs_ /= probs_.sum();
    const float coin = random_float();
    if (topp_ <= 0.0f || topp_ >= 1.0f) {
      float cdf = 0.0f;
      for (msrnn::Index i = 0; i < probs_.size(); ++i) {
        cdf += probs_(i);
        if (coin < cdf) return static_cast<int>(i);
      }
      return static_cast<int>(probs_.size() - 1);
    }
    // top-p: sort the candidates above a cutoff, keep the prefix whose mass reaches topp
    const float cutoff = (1.0f - topp_) / static_cast<float>(probs_.size() - 1);
    order_.clear();
    for (msrnn::Index i = 0; i < probs_.size(); ++i) {
      if (probs_(i) >= cutoff) order_.emplace_back(probs_(i), static_cast<int>(i));
    }
    if (order_.empty()) {  // cannot happen with finite probabilities; greedy if it does
      probs_.maxCoeff(&best);
      return static_cast<int>(best);
    }
    std::sort(order_.begin(), order_.end(), [](auto& a, auto& b) { return a.first > b.first; });
    float mass = 0.0f;
    std::size_t last = order_.size() - 1;
    for (std::size_t i = 0; i < order_.size(); ++i) {
      mass += order_[i].first;
      if (mass > topp_) {
        last = i;
        break;
      }
    }
    const float r = coin * mass;
    float cdf = 0.0f;
    for (std::size_t i = 0; i <= last; ++i) {
      cdf += order_[i].first;
      if (r < cdf) return order_[i].second;
    }
    return order_[last].second;
  }

 private:
  float random_float() { return rng_.next_float(); }

  float temperature_;
  float topp_;
  XorShift64Star rng_;
  msrnn::RowVector probs_;                    // (vocab)
  std::vector<std::pair<float, int>> order_;  // candidates for top-p
};

}  // namespace engine
