// A Llama forward pass written plainly, in double, for checking the example engine: no Eigen,
// no cache; attention is either full causal attention over a whole prefix or delegated.
#pragma once

#include <cmath>
#include <functional>
#include <vector>

#include "checkpoint.hpp"

namespace engine::testing {

class NaiveLlama {
 public:
  explicit NaiveLlama(const LlamaWeights& w) : w_(w), c_(w.config) {}

  // Runs tokens [0, n) from scratch with full causal attention; the logits after the last one.
  std::vector<double> logits_of_prefix(const std::vector<int>& tokens) const {
    const std::size_t n = tokens.size();
    const Index dim = c_.dim, hd = c_.head_dim(), kv_dim = c_.kv_dim();
    std::vector<std::vector<double>> x(n);
    for (std::size_t t = 0; t < n; ++t) x[t] = row(Part::embedding, tokens[t], dim);
    for (Index l = 0; l < c_.n_layers; ++l) {
      std::vector<std::vector<double>> q(n), k(n), v(n);
      for (std::size_t t = 0; t < n; ++t) {
        const std::vector<double> xb = rmsnorm(x[t], Part::rms_att, l);
        q[t] = matvec(Part::wq, l, dim, dim, xb);
        k[t] = matvec(Part::wk, l, kv_dim, dim, xb);
        v[t] = matvec(Part::wv, l, kv_dim, dim, xb);
        rope(q[t], static_cast<Index>(t));
        rope(k[t], static_cast<Index>(t));
      }
      for (std::size_t t = 0; t < n; ++t) {
        std::vector<double> att(static_cast<std::size_t>(dim), 0.0);
        for (Index h = 0; h < c_.n_heads; ++h) {
          const Index g = h / (c_.n_heads / c_.n_kv_heads);
          std::vector<double> p(t + 1);
          double top = -1e300;
          for (std::size_t s = 0; s <= t; ++s) {
            double dot = 0.0;
            for (Index i = 0; i < hd; ++i) dot += q[t][idx(h * hd + i)] * k[s][idx(g * hd + i)];
            p[s] = dot / std::sqrt(static_cast<double>(hd));
            top = std::max(top, p[s]);
          }
          double sum = 0.0;
          for (double& e : p) sum += (e = std::exp(e - top));
          for (std::size_t s = 0; s <= t; ++s) {
            for (Index i = 0; i < hd; ++i)
              att[idx(h * hd + i)] += p[s] / sum * v[s][idx(g * hd + i)];
          }
        }
        finish_layer(x[t], att, l);
      }
    }
    return logits(x[n - 1]);
  }

  // One token through the network; attention is `attend(layer, q, k, v)` on raw (unrotated)
  // float vectors, returning the attention output (n_heads * head_dim).
  using Attend = std::function<std::vector<double>(
      Index, const std::vector<float>&, const std::vector<float>&, const std::vector<float>&)>;
  std::vector<double> step(int token, const Attend& attend) const {
    const Index dim = c_.dim, kv_dim = c_.kv_dim();
    std::vector<double> x = row(Part::embedding, token, dim);
    for (Index l = 0; l < c_.n_layers; ++l) {
      const std::vector<double> xb = rmsnorm(x, Part::rms_att, l);
      const std::vector<double> att = attend(l, to_float(matvec(Part::wq, l, dim, dim, xb)),
                                             to_float(matvec(Part::wk, l, kv_dim, dim, xb)),
                                             to_float(matvec(Part::wv, l, kv_dim, dim, xb)));
      finish_layer(x, att, l);
    }
    return logits(x);
  }

 private:
  static std::size_t idx(Index i) { return static_cast<std::size_t>(i); }
  static std::vector<float> to_float(const std::vector<double>& v) {
    return std::vector<float>(v.begin(), v.end());
  }

  std::vector<double> row(Part part, Index r, Index n) const {
    const float* p = w_.tensor(part) + r * n;
    return std::vector<double>(p, p + n);
  }

  std::vector<double> rmsnorm(const std::vector<double>& x, Part part, Index layer) const {
    double ss = 0.0;
    for (double e : x) ss += e * e;
    const double inv =
        1.0 / std::sqrt(ss / static_cast<double>(x.size()) + static_cast<double>(c_.rms_eps));
    const float* g = w_.tensor(part, layer);
    std::vector<double> out(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = x[i] * inv * g[i];
    return out;
  }

  std::vector<double> matvec(Part part, Index layer, Index rows, Index cols,
                             const std::vector<double>& x) const {
    const float* m = w_.tensor(part, layer);
    std::vector<double> y(idx(rows), 0.0);
    for (Index r = 0; r < rows; ++r) {
      for (Index c = 0; c < cols; ++c) y[idx(r)] += double{m[r * cols + c]} * x[idx(c)];
    }
    return y;
  }

  // llama2.c's RoPE: pairs (2i, 2i+1) of every head turn by position * theta^(-2i/head_dim).
  void rope(std::vector<double>& v, Index position) const {
    const Index hd = c_.head_dim();
    for (std::size_t i = 0; i < v.size(); i += 2) {
      const Index in_head = static_cast<Index>(i) % hd;
      const double angle =
          static_cast<double>(position) *
          std::pow(c_.rope_theta, -static_cast<double>(in_head) / static_cast<double>(hd));
      const double a = v[i], b = v[i + 1];
      v[i] = a * std::cos(angle) - b * std::sin(angle);
      v[i + 1] = a * std::sin(angle) + b * std::cos(angle);
    }
  }

  // x += Wo att; x += W2 (silu(W1 xb) * W3 xb) with xb = rmsnorm(x).
  void finish_layer(std::vector<double>& x, const std::vector<double>& att, Index l) const {
    const Index dim = c_.dim, hidden = c_.hidden_dim;
    const std::vector<double> o = matvec(Part::wo, l, dim, dim, att);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    const std::vector<double> xb = rmsnorm(x, Part::rms_ffn, l);
    std::vector<double> h1 = matvec(Part::w1, l, hidden, dim, xb);
    const std::vector<double> h3 = matvec(Part::w3, l, hidden, dim, xb);
    for (std::size_t i = 0; i < h1.size(); ++i) h1[i] = h1[i] / (1.0 + std::exp(-h1[i])) * h3[i];
    const std::vector<double> f = matvec(Part::w2, l, dim, hidden, h1);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += f[i];
  }

  std::vector<double> logits(const std::vector<double>& x) const {
    const std::vector<double> xb = rmsnorm(x, Part::rms_final, 0);
    return matvec(Part::classifier, 0, c_.vocab_size, c_.dim, xb);
  }

  const LlamaWeights& w_;
  const LlamaConfig& c_;
};

}  // namespace engine::testing
