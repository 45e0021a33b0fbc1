// The naive reference every policy is checked against: full causal attention recomputed from
// scratch at every step over the whole history, in double precision, with eviction simulated by
// a mask per (layer, KV head). It shares no code with the library: its own RoPE, its own softmax,
// its own reading of each policy's rule (README, "One step, every policy").
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <vector>

#include "msrnn/cache.hpp"

namespace msrnn::testing {

class MaskedReference {
 public:
  // Uses the shape, capacity, rope settings and scale of `config`, and the policy of `options`.
  MaskedReference(const CacheConfig& config, const PolicyOptions& options)
      : n_q_(config.n_q_heads),
        n_kv_(config.n_kv_heads),
        d_(config.head_dim),
        group_(config.n_q_heads / config.n_kv_heads),
        options_(options),
        layers_(static_cast<std::size_t>(config.n_layers)) {
    capacity_ = options.name == "full" ? std::numeric_limits<Index>::max() : config.capacity;
    recent_ = options.recent < 0 ? config.capacity / 2 : options.recent;
    scale_ = config.scale ? double{*config.scale} : 1.0 / std::sqrt(static_cast<double>(d_));
    if (config.rope) {
      rope_ = true;
      theta_ = config.rope->theta();
      interleaved_ = config.rope->layout() == RopeLayout::interleaved;
      in_cache_ = config.positions == PositionMode::in_cache;
    }
    type_ = config.kv_type;
  }

  // One token of one layer: q (n_q * d), k and v (n_kv * d), raw (the reference encodes
  // positions itself when the config has a rope). Returns the attention output (n_q * d).
  std::vector<double> step(Index layer, const float* q, const float* k, const float* v) {
    Layer& L = layers_[static_cast<std::size_t>(layer)];
    const Index t = static_cast<Index>(L.keys.size());
    L.keys.emplace_back(k, k + n_kv_ * d_);
    L.values.emplace_back(v, v + n_kv_ * d_);
    // Stored as the cache stores them: values as given, keys unrotated (no rope, in_cache) or
    // rotated first (absolute, below).
    for (Index g = 0; g < n_kv_; ++g) {
      store(L.values.back().data() + g * d_);
      if (!rope_ || in_cache_) store(L.keys.back().data() + g * d_);
    }
    L.kept.resize(static_cast<std::size_t>(n_kv_));
    L.acc.resize(static_cast<std::size_t>(n_kv_));
    for (Index g = 0; g < n_kv_; ++g) {
      L.kept[static_cast<std::size_t>(g)].push_back(true);
      L.acc[static_cast<std::size_t>(g)].push_back(0.0);
    }

    std::vector<double> out(static_cast<std::size_t>(n_q_ * d_), 0.0);
    // probs[h][p]: probability query head h gives position p (0 if p is masked)
    std::vector<std::vector<double>> probs(static_cast<std::size_t>(n_q_),
                                           std::vector<double>(static_cast<std::size_t>(t + 1)));
    for (Index g = 0; g < n_kv_; ++g) {
      const std::vector<Index> visible = kept_of(L, g);
      const Index n = static_cast<Index>(visible.size());
      for (Index r = 0; r < group_; ++r) {
        const Index h = g * group_ + r;
        std::vector<double> query(q + h * d_, q + (h + 1) * d_);
        encode(query, in_cache_ ? n - 1 : t);
        std::vector<double> logits(static_cast<std::size_t>(n));
        for (Index i = 0; i < n; ++i) {
          const Index p = visible[static_cast<std::size_t>(i)];
          const float* raw = L.keys[static_cast<std::size_t>(p)].data() + g * d_;
          std::vector<double> key(raw, raw + d_);
          encode(key, in_cache_ ? i : p);
          if (rope_) key = stored(key);  // the rotated key, stored as well
          double dot = 0.0;
          for (Index j = 0; j < d_; ++j)
            dot += query[static_cast<std::size_t>(j)] * key[static_cast<std::size_t>(j)];
          logits[static_cast<std::size_t>(i)] = scale_ * dot;
        }
        const double top = *std::max_element(logits.begin(), logits.end());
        double sum = 0.0;
        for (double& x : logits) sum += (x = std::exp(x - top));
        for (Index i = 0; i < n; ++i) {
          const Index p = visible[static_cast<std::size_t>(i)];
          const double prob = logits[static_cast<std::size_t>(i)] / sum;
          probs[static_cast<std::size_t>(h)][static_cast<std::size_t>(p)] = prob;
          const float* value = L.values[static_cast<std::size_t>(p)].data() + g * d_;
          for (Index j = 0; j < d_; ++j)
            out[static_cast<std::size_t>(h * d_ + j)] += prob * value[j];
        }
      }
    }
    simulate_policy(L, t, probs);
    return out;
  }

  // Positions `layer` keeps in `kv_head`, ascending.
  std::vector<Index> kept(Index layer, Index kv_head) const {
    return kept_of(layers_[static_cast<std::size_t>(layer)], kv_head);
  }

 private:
  struct Layer {
    std::vector<std::vector<float>> keys;    // [position]: (n_kv * d) raw
    std::vector<std::vector<float>> values;  // [position]: (n_kv * d)
    std::vector<std::vector<bool>> kept;     // [kv_head][position]: the eviction mask
    std::vector<std::vector<double>> acc;    // [kv_head][position]: H2O's accumulated attention
  };

  std::vector<Index> kept_of(const Layer& L, Index g) const {
    std::vector<Index> positions;
    if (L.kept.empty()) return positions;
    const std::vector<bool>& mask = L.kept[static_cast<std::size_t>(g)];
    for (std::size_t p = 0; p < mask.size(); ++p) {
      if (mask[p]) positions.push_back(static_cast<Index>(p));
    }
    return positions;
  }

  // A row of d values in the cache's storage type, converted from the definitions: f16 and bf16
  // round to nearest even at their precision (10 and 7 fraction bits; f16 has subnormals below
  // 2^-14 and overflows to inf from 65520), q8 stores round(x / s) * s with s = max|x| / 127
  // (in float, ties away from zero; a zero row stays 0, a row with inf or NaN becomes NaN).
  void store(float* x) const {
    if (type_ == KvType::f32) return;
    if (type_ == KvType::q8) {
      float amax = 0.0f;
      bool finite = true;
      for (Index j = 0; j < d_; ++j) {
        finite = finite && std::isfinite(x[j]);
        amax = std::max(amax, std::fabs(x[j]));
      }
      const float s = amax / 127.0f;
      for (Index j = 0; j < d_; ++j) {
        x[j] = !finite        ? std::numeric_limits<float>::quiet_NaN()
               : amax == 0.0f ? 0.0f
                              : std::round(x[j] / s) * s;
      }
      return;
    }
    const bool half = type_ == KvType::f16;
    const int fraction = half ? 10 : 7;
    for (Index j = 0; j < d_; ++j) {
      const double v = x[j];
      if (!std::isfinite(v) || v == 0.0) continue;
      int e = std::ilogb(v);
      if (half) e = std::max(e, -14);  // subnormals: a fixed quantum of 2^-24
      const double quantum = std::ldexp(1.0, e - fraction);
      const double r = std::nearbyint(v / quantum) * quantum;  // ties to even
      x[j] = static_cast<float>(half && std::fabs(r) > 65504.0 ? std::copysign(HUGE_VAL, v) : r);
    }
  }
  std::vector<double> stored(const std::vector<double>& key) const {
    std::vector<float> x(key.begin(), key.end());
    store(x.data());
    return {x.begin(), x.end()};
  }

  // Rotary encoding at `position`, written from the definition: pair i turns by
  // position * theta^(-2i/d).
  void encode(std::vector<double>& x, Index position) const {
    if (!rope_) return;
    const Index half = d_ / 2;
    for (Index i = 0; i < half; ++i) {
      const double angle =
          static_cast<double>(position) *
          std::pow(theta_, -2.0 * static_cast<double>(i) / static_cast<double>(d_));
      const std::size_t a = static_cast<std::size_t>(interleaved_ ? 2 * i : i);
      const std::size_t b = static_cast<std::size_t>(interleaved_ ? 2 * i + 1 : i + half);
      const double x0 = x[a];
      const double x1 = x[b];
      x[a] = x0 * std::cos(angle) - x1 * std::sin(angle);
      x[b] = x0 * std::sin(angle) + x1 * std::cos(angle);
    }
  }

  // Scores every kept state as the policy says and, when more than C are kept, clears the mask
  // of the lowest-scoring unprotected one (ties to the oldest). A score that is not finite (a NaN
  // or inf key poisons every probability of its head) ranks below every finite one; among those,
  // the oldest goes.
  void simulate_policy(Layer& L, Index t, const std::vector<std::vector<double>>& probs) {
    // score[g][p]
    std::vector<std::vector<double>> score(
        static_cast<std::size_t>(n_kv_), std::vector<double>(static_cast<std::size_t>(t + 1), 0.0));
    for (Index g = 0; g < n_kv_; ++g) {
      for (Index p = 0; p <= t; ++p) {
        double group_sum = 0.0;
        for (Index r = 0; r < group_; ++r) {
          group_sum += probs[static_cast<std::size_t>(g * group_ + r)][static_cast<std::size_t>(p)];
        }
        double& s = score[static_cast<std::size_t>(g)][static_cast<std::size_t>(p)];
        if (options_.name == "h2o") {
          double& acc = L.acc[static_cast<std::size_t>(g)][static_cast<std::size_t>(p)];
          acc += group_sum;
          s = options_.normalize ? acc / static_cast<double>(t - p + 1) : acc;
        } else if (tova_like()) {
          s = group_sum / static_cast<double>(group_);  // mean over this KV head's query heads
        }
      }
    }
    if (tova_like() && options_.granularity == TovaGranularity::layer) {
      // Mean over every query head of the layer, the same for every KV head.
      for (Index p = 0; p <= t; ++p) {
        double sum = 0.0;
        for (Index h = 0; h < n_q_; ++h)
          sum += probs[static_cast<std::size_t>(h)][static_cast<std::size_t>(p)];
        for (Index g = 0; g < n_kv_; ++g) {
          score[static_cast<std::size_t>(g)][static_cast<std::size_t>(p)] =
              sum / static_cast<double>(n_q_);
        }
      }
    }

    for (Index g = 0; g < n_kv_; ++g) {
      const std::vector<Index> visible = kept_of(L, g);
      if (static_cast<Index>(visible.size()) <= capacity_) continue;
      Index victim = -1;
      double lowest = 0.0;
      for (Index p : visible) {  // ascending: on equal rank, the first seen is the oldest
        if (is_protected(p, t)) continue;
        const double raw = score[static_cast<std::size_t>(g)][static_cast<std::size_t>(p)];
        const double s = std::isfinite(raw) ? raw : -std::numeric_limits<double>::infinity();
        if (victim < 0 || s < lowest) {
          victim = p;
          lowest = s;
        }
      }
      if (victim < 0) throw std::logic_error("reference: every state is protected");
      // Per-layer policies score every KV head alike, so every KV head picks the same victim.
      L.kept[static_cast<std::size_t>(g)][static_cast<std::size_t>(victim)] = false;
    }
  }

  // TOVA's scores: the new query's attention (tova, and tova_sink with sinks protected).
  bool tova_like() const { return options_.name == "tova" || options_.name == "tova_sink"; }

  bool is_protected(Index p, Index t) const {
    if (options_.name == "sink" || options_.name == "tova_sink") return p < options_.sinks;
    if (options_.name == "h2o") return p > t - recent_;
    return false;
  }

  Index n_q_, n_kv_, d_, group_;
  PolicyOptions options_;
  Index capacity_ = 0;
  Index recent_ = 0;
  double scale_ = 1.0;
  bool rope_ = false;
  double theta_ = 10000.0;
  bool interleaved_ = true;
  bool in_cache_ = false;
  KvType type_ = KvType::f32;
  std::vector<Layer> layers_;  // (n_layers)
};

}  // namespace msrnn::testing
