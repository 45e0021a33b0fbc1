// The Llama forward pass (llama2.c's architecture) with an msrnn cache as its KV state.
#pragma once

#include <cmath>
#include <msrnn/msrnn.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "checkpoint.hpp"

namespace engine {

using msrnn::RowMatrix;
using msrnn::RowVector;

/// How the model's KV cache is bounded.
struct CacheSettings {
  msrnn::PolicyOptions policy;  // name, sinks, recent, ...
  Index capacity = -1;          // C; -1 means the model's seq_len
  msrnn::PositionMode positions = msrnn::PositionMode::absolute;
  Index threads = 1;  // threads that share the KV heads of a layer (CacheConfig::threads)
  msrnn::KvType kv_type = msrnn::KvType::f32;  // how keys and values are stored
  Index max_tokens = 0;  // tokens a sequence has at most, if known (CacheConfig::max_tokens)
};

/// The cache of a model of shape `c` bounded as `s` says (RoPE interleaved, theta 10000, as
/// llama2.c).
inline msrnn::CacheConfig cache_config(const LlamaConfig& c, const CacheSettings& s) {
  msrnn::CacheConfig config;
  config.n_layers = c.n_layers;
  config.n_q_heads = c.n_heads;
  config.n_kv_heads = c.n_kv_heads;
  config.head_dim = c.head_dim();
  config.capacity = s.capacity >= 0 ? s.capacity : c.seq_len;
  config.rope = msrnn::Rope(c.head_dim(), 10000.0, msrnn::RopeLayout::interleaved);
  config.positions = s.positions;
  config.threads = s.threads;
  config.kv_type = s.kv_type;
  if (s.max_tokens > 0) config.max_tokens = s.max_tokens;
  return config;
}

/// A Llama model (RMSNorm, RoPE, grouped-query attention, SwiGLU) over the weights of a
/// llama2.c checkpoint, for one sequence at a time. The weights must outlive the model.
class LlamaModel {
 public:
  LlamaModel(const LlamaWeights& weights, const CacheSettings& settings)
      : w_(weights),
        cache_(cache_config(weights.config, settings), msrnn::make_policy(settings.policy)) {}

  const LlamaConfig& config() const { return w_.config; }
  const msrnn::AnyCache& cache() const { return cache_; }
  /// The KV state itself, e.g. to restore a saved one with `append`.
  msrnn::AnyCache& cache() { return cache_; }

  /// Starts a new sequence.
  void reset() { cache_.reset(); }

  /// Logits (vocab) of the next token after `token`: the decode path, one `cache.step` per layer.
  const RowVector& forward(int token) {
    run({&token, 1}, /*prefill=*/false);
    last_ = logits_.row(0);
    return last_;
  }

  /// Logits (n, vocab) after each of `tokens`: the prompt path, one `cache.step_chunk` per layer.
  const RowMatrix& forward_chunk(const std::vector<int>& tokens) {
    run({tokens.data(), tokens.size()}, /*prefill=*/true);
    return logits_;
  }

 private:
  struct Tokens {
    const int* data;
    std::size_t size;
  };

  Eigen::Map<const RowMatrix> matrix(std::size_t offset, Index layer, Index rows,
                                     Index cols) const {
    return Eigen::Map<const RowMatrix>(
        w_.at(offset + static_cast<std::size_t>(layer * rows * cols)), rows, cols);
  }
  Eigen::Map<const RowVector> vector(std::size_t offset, Index layer, Index n) const {
    return Eigen::Map<const RowVector>(w_.at(offset + static_cast<std::size_t>(layer * n)), n);
  }

  // out = rmsnorm(x) * weight, row by row (eps 1e-5 as llama2.c).
  static void rmsnorm(RowMatrix& out, const RowMatrix& x,
                      const Eigen::Map<const RowVector>& weight) {
    for (Index r = 0; r < x.rows(); ++r) {
      const float mean_square = x.row(r).squaredNorm() / static_cast<float>(x.cols());
      const float inv = 1.0f / std::sqrt(mean_square + 1e-5f);
      out.row(r) = (x.row(r) * inv).cwiseProduct(weight);
    }
  }

  void run(Tokens tokens, bool prefill) {
    const LlamaConfig& c = w_.config;
    const Index n = static_cast<Index>(tokens.size);
    const Index dim = c.dim, kv_dim = c.kv_dim(), hidden = c.hidden_dim;
    if (x_.rows() != n) {
      x_.resize(n, dim);     // (n, dim) residual stream
      xb_.resize(n, dim);    // (n, dim) normalised
      q_.resize(n, dim);     // (n, n_heads * head_dim)
      k_.resize(n, kv_dim);  // (n, n_kv_heads * head_dim)
      v_.resize(n, kv_dim);
      att_.resize(n, dim);    // (n, n_heads * head_dim) attention output
      h1_.resize(n, hidden);  // (n, hidden)
      h3_.resize(n, hidden);
      logits_.resize(n, c.vocab_size);  // (n, vocab)
    }
    for (Index t = 0; t < n; ++t) {
      if (tokens.data[t] < 0 || tokens.data[t] >= c.vocab_size) {
        throw std::out_of_range("token " + std::to_string(tokens.data[t]) + " is not in [0, " +
                                std::to_string(c.vocab_size) + ")");
      }
      x_.row(t) = vector(w_.embedding, tokens.data[t], dim);
    }
    for (Index l = 0; l < c.n_layers; ++l) {
      // attention
      rmsnorm(xb_, x_, vector(w_.rms_att, l, dim));
      q_.noalias() = xb_ * matrix(w_.wq, l, dim, dim).transpose();
      k_.noalias() = xb_ * matrix(w_.wk, l, kv_dim, dim).transpose();
      v_.noalias() = xb_ * matrix(w_.wv, l, kv_dim, dim).transpose();
      if (prefill) {
        cache_.step_chunk(l, q_, k_, v_, att_);  // the cache applies RoPE, attends, evicts
      } else {
        const Index hd = c.head_dim();
        cache_.step(l, Eigen::Map<const RowMatrix>(q_.data(), c.n_heads, hd),
                    Eigen::Map<const RowMatrix>(k_.data(), c.n_kv_heads, hd),
                    Eigen::Map<const RowMatrix>(v_.data(), c.n_kv_heads, hd),
                    Eigen::Map<RowMatrix>(att_.data(), c.n_heads, hd));
      }
      x_.noalias() += att_ * matrix(w_.wo, l, dim, dim).transpose();
      // feed-forward: w2(silu(w1 x) * w3 x)
      rmsnorm(xb_, x_, vector(w_.rms_ffn, l, dim));
      h1_.noalias() = xb_ * matrix(w_.w1, l, hidden, dim).transpose();
      h3_.noalias() = xb_ * matrix(w_.w3, l, hidden, dim).transpose();
      h1_.array() = h1_.array() / (1.0f + (-h1_.array()).exp()) * h3_.array();
      x_.noalias() += h1_ * matrix(w_.w2, l, dim, hidden).transpose();
    }
    rmsnorm(xb_, x_, vector(w_.rms_final, 0, dim));
    logits_.noalias() = xb_ * matrix(w_.classifier, 0, c.vocab_size, dim).transpose();
  }

  const LlamaWeights& w_;
  msrnn::AnyCache cache_;
  RowMatrix x_, xb_, q_, k_, v_, att_, h1_, h3_, logits_;
  RowVector last_;
};

}  // namespace engine
