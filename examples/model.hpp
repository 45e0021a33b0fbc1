// The Llama forward pass (llama2.c's architecture) with msrnn caches as its KV state: the weights
// side (Transformer) puts a batch of sequences, one token each, through one pass; LlamaModel is
// one sequence and its cache.
#pragma once

#include <algorithm>
#include <cmath>
#include <exception>
#include <msrnn/msrnn.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint.hpp"

namespace engine {

using msrnn::RowMatrix;
using msrnn::RowVector;
/// A read-only view of rows the model wrote (logits), valid until its next call.
using ConstRowMap = Eigen::Map<const RowMatrix>;

/// How the model's KV cache is bounded.
struct CacheSettings {
  msrnn::PolicyOptions policy;  // name, sinks, recent, ...
  Index capacity = -1;          // C; -1 means the model's seq_len
  msrnn::PositionMode positions = msrnn::PositionMode::absolute;
  Index threads = 1;  // threads that share the KV heads of a layer (CacheConfig::threads)
  msrnn::KvType kv_type = msrnn::KvType::f32;  // how keys and values are stored
  Index max_tokens = 0;  // tokens a sequence has at most, if known (CacheConfig::max_tokens)
};

/// The cache of a model of shape `c` bounded as `s` says (RoPE interleaved, as llama2.c and
/// llama.cpp's `llama` architecture; base c.rope_theta).
inline msrnn::CacheConfig cache_config(const LlamaConfig& c, const CacheSettings& s) {
  msrnn::CacheConfig config;
  config.n_layers = c.n_layers;
  config.n_q_heads = c.n_heads;
  config.n_kv_heads = c.n_kv_heads;
  config.head_dim = c.head_dim();
  config.capacity = s.capacity >= 0 ? s.capacity : c.seq_len;
  config.rope = msrnn::Rope(c.head_dim(), c.rope_theta, msrnn::RopeLayout::interleaved);
  config.positions = s.positions;
  config.threads = s.threads;
  config.kv_type = s.kv_type;
  if (s.max_tokens > 0) config.max_tokens = s.max_tokens;
  return config;
}

/// The weights side of a Llama model (RMSNorm, RoPE, grouped-query attention, SwiGLU) over a
/// llama2.c checkpoint: it holds no sequence, only scratch. `forward_batch` runs one token of
/// each of B sequences through one pass, every weight product taking the B tokens as one (B, dim)
/// matrix, so the weights are read once per step for all of them; row b attends over its own
/// cache, and the B attention steps of a layer are split over the Transformer's threads.
///
///   engine::Transformer model(weights, /*threads=*/2);
///   msrnn::AnyCache a(config, policy), b(config, policy);
///   ConstRowMap logits = model.forward_batch({token_a, token_b}, {&a, &b});  // (2, vocab)
///
/// The weights must outlive it. One call at a time (it owns its scratch and threads).
class Transformer {
 public:
  /// `threads`: the calling thread and threads - 1 workers, started once, that share the
  /// sequences' attention steps (each cache is stepped by one thread at a time).
  explicit Transformer(const LlamaWeights& weights, Index threads = 1)
      : w_(&weights), pool_(threads), product_errors_(static_cast<std::size_t>(pool_.threads())) {}

  const LlamaConfig& config() const { return w_->config; }
  Index threads() const { return pool_.threads(); }
  /// The most tokens a call has put through so far: calls of up to this many allocate nothing.
  Index reserved() const { return x_.rows(); }

  /// Grows the scratch to `tokens` rows now (a batch's B), so that no later call of up to that
  /// many tokens allocates.
  void reserve(Index tokens) {
    if (tokens <= x_.rows()) return;
    const LlamaConfig& c = w_->config;
    // New matrices, not resized ones: the old stay whole if an allocation throws.
    x_ = RowMatrix(tokens, c.dim);                     // (n, dim) residual stream
    xb_ = RowMatrix(tokens, c.dim);                    // (n, dim) normalised
    q_ = RowMatrix(tokens, c.dim);                     // (n, n_heads * head_dim)
    k_ = RowMatrix(tokens, c.kv_dim());                // (n, n_kv_heads * head_dim)
    v_ = RowMatrix(tokens, c.kv_dim());                // (n, n_kv_heads * head_dim)
    att_ = RowMatrix(tokens, c.dim);                   // (n, n_heads * head_dim) attention output
    h1_ = RowMatrix(tokens, c.hidden_dim);             // (n, hidden)
    h3_ = RowMatrix(tokens, c.hidden_dim);             // (n, hidden)
    logits_ = RowMatrix(tokens, c.vocab_size);         // (n, vocab)
    errors_.resize(static_cast<std::size_t>(tokens));  // (n) a throw of each row's step
  }

  /// Logits (B, vocab), B = tokens.size(): row b those of the token after tokens[b] in the
  /// sequence whose KV state is *caches[b] (the decode path, one `step` per layer and sequence).
  /// The caches must be distinct and of the model's shape (cache_config); each may have its own
  /// policy, capacity and length. Throws std::out_of_range for a token outside the vocabulary
  /// and std::invalid_argument for a bad cache, before anything runs; what a cache's step
  /// throws (Full's growth: std::bad_alloc) comes out after the layer, the caches then holding
  /// part of the token (reset them). Once `reserve`d for B tokens its scratch does not grow and
  /// the caches allocate nothing (but Full's growth); Eigen's matrix products take their packing
  /// buffers from Eigen's heap, per block (`product`).
  ConstRowMap forward_batch(const std::vector<int>& tokens,
                            const std::vector<msrnn::AnyCache*>& caches) {
    if (tokens.size() != caches.size()) {
      throw std::invalid_argument("caches.size() = " + std::to_string(caches.size()) +
                                  ": must equal tokens.size() (" + std::to_string(tokens.size()) +
                                  ")");
    }
    return forward_batch(tokens.data(), caches.data(), static_cast<Index>(tokens.size()));
  }

  /// The same for n tokens and caches given as arrays (no vector to build per token).
  ConstRowMap forward_batch(const int* tokens, msrnn::AnyCache* const* caches, Index n) {
    for (Index b = 0; b < n; ++b) {
      if (!caches[b]) throw std::invalid_argument("caches[" + std::to_string(b) + "]: null");
      check_cache(*caches[b], b);
      for (Index a = 0; a < b; ++a) {  // (B is small: B^2 / 2 comparisons a step)
        if (caches[a] == caches[b]) {
          throw std::invalid_argument("caches[" + std::to_string(b) +
                                      "]: the same cache as caches[" + std::to_string(a) +
                                      "]; each sequence needs its own");
        }
      }
    }
    const Index hd = w_->config.head_dim(), dim = w_->config.dim, kv_dim = w_->config.kv_dim();
    const Index n_heads = w_->config.n_heads, n_kv_heads = w_->config.n_kv_heads;
    return run(tokens, n, /*batched=*/n > 1 || pool_.threads() > 1, [&](Index layer) {
      auto attend = [&](Index b) {
        caches[b]->step(layer, ConstRowMap(q_.data() + b * dim, n_heads, hd),
                        ConstRowMap(k_.data() + b * kv_dim, n_kv_heads, hd),
                        ConstRowMap(v_.data() + b * kv_dim, n_kv_heads, hd),
                        Eigen::Map<RowMatrix>(att_.data() + b * dim, n_heads, hd));
      };
      if (n == 1 || pool_.threads() == 1) {  // on this thread: a throw goes straight out
        for (Index b = 0; b < n; ++b) attend(b);
        return;
      }
      // The pool's tasks must not throw: each row's exception waits for the join.
      auto task = [&](Index b, Index /*worker*/) noexcept {
        try {
          attend(b);
        } catch (...) {
          errors_[static_cast<std::size_t>(b)] = std::current_exception();
        }
      };
      pool_.run(n, task);
      for (Index b = 0; b < n; ++b) {
        if (std::exception_ptr error = std::exchange(errors_[static_cast<std::size_t>(b)], {})) {
          for (std::exception_ptr& e : errors_) e = nullptr;
          std::rethrow_exception(error);
        }
      }
    });
  }

  /// Logits (n, vocab) after each of tokens[0, n) of the sequence whose KV state is `cache`: the
  /// prompt path, one `step_chunk` per layer. Throws as forward_batch.
  ConstRowMap forward_chunk(const int* tokens, Index n, msrnn::AnyCache& cache) {
    check_cache(cache, 0);
    return run(tokens, n, /*batched=*/false, [&](Index layer) {
      // the cache applies RoPE, attends, evicts
      cache.step_chunk(layer, rows(q_, n), rows(k_, n), rows(v_, n), rows(att_, n));
    });
  }

 private:
  // The first n rows of a scratch matrix.
  static Eigen::Map<RowMatrix> rows(RowMatrix& m, Index n) {
    return Eigen::Map<RowMatrix>(m.data(), n, m.cols());
  }

  // Part p's tensor of `layer` as a (rows, cols) matrix / a vector of n.
  Eigen::Map<const RowMatrix> matrix(Part p, Index layer, Index rows, Index cols) const {
    return Eigen::Map<const RowMatrix>(w_->tensor(p, layer), rows, cols);
  }
  Eigen::Map<const RowVector> vector(Part p, Index layer, Index n) const {
    return Eigen::Map<const RowVector>(w_->tensor(p, layer), n);
  }

  // Builds its message only on failure: the per-token path must not allocate.
  void check_cache(const msrnn::AnyCache& cache, Index b) const {
    const LlamaConfig& c = w_->config;
    const msrnn::CacheConfig& got = cache.config();
    auto require = [&](Index value, Index want, const char* name, const char* model_name) {
      if (value != want) {
        throw std::invalid_argument("caches[" + std::to_string(b) + "]." + name + " = " +
                                    std::to_string(value) + ": must equal the model's " +
                                    model_name + " (" + std::to_string(want) + ")");
      }
    };
    require(got.n_layers, c.n_layers, "n_layers", "n_layers");
    require(got.n_q_heads, c.n_heads, "n_q_heads", "n_heads");
    require(got.n_kv_heads, c.n_kv_heads, "n_kv_heads", "n_kv_heads");
    require(got.head_dim, c.head_dim(), "head_dim", "head size");
  }

  // out = rmsnorm(x) * weight, row by row (eps: the config's, 1e-5 in llama2.c).
  static void rmsnorm(Eigen::Map<RowMatrix> out, const Eigen::Map<RowMatrix>& x,
                      const Eigen::Map<const RowVector>& weight, float eps) {
    for (Index r = 0; r < x.rows(); ++r) {
      const float mean_square = x.row(r).squaredNorm() / static_cast<float>(x.cols());
      const float inv = 1.0f / std::sqrt(mean_square + eps);
      out.row(r) = (x.row(r) * inv).cwiseProduct(weight);
    }
  }

  // Weight rows per block of a batched product: fixed, so that each block is the same Eigen
  // product (the same blocking, the same sums) whichever thread takes it and however many there
  // are; 256 rows of a 768-wide model are 768 KiB of weights.
  static constexpr Index kBlockRows = 256;

  // out (n, rows) = x (n, cols) * w^T (or +=) for weights w (rows, cols). `batched` false (one
  // sequence, LlamaModel): Eigen's product whole, for one token its matrix-vector kernel
  // (llama2.c's matmul: the single-sequence arithmetic). `batched` (forward_batch): blocks of
  // kBlockRows weight rows split over the threads, each weight read once for all n tokens. Eigen's
  // product allocates its packing buffers (a few hundred KiB) per block: cutting the products small
  // enough for its stack buffers made a 110M-parameter batch of 55 1.5x slower. A row's sums are
  // those of its own product to float rounding (the two kernels sum in different orders).
  void product(Eigen::Map<RowMatrix> out, const Eigen::Map<RowMatrix>& x,
               const Eigen::Map<const RowMatrix>& w, bool batched, bool add) {
    auto block = [&](Index r, Index nr) {
      if (add) {
        out.middleCols(r, nr).noalias() += x * w.middleRows(r, nr).transpose();
      } else {
        out.middleCols(r, nr).noalias() = x * w.middleRows(r, nr).transpose();
      }
    };
    if (!batched) {
      if (add) {
        out.noalias() += x * w.transpose();
      } else {
        out.noalias() = x * w.transpose();
      }
      return;
    }
    const Index blocks = (w.rows() + kBlockRows - 1) / kBlockRows;
    if (pool_.threads() == 1) {
      for (Index i = 0; i < blocks; ++i) {
        block(i * kBlockRows, std::min(kBlockRows, w.rows() - i * kBlockRows));
      }
      return;
    }
    // The pool's tasks must not throw: a failed allocation waits for the join.
    auto task = [&](Index i, Index worker) noexcept {
      try {
        block(i * kBlockRows, std::min(kBlockRows, w.rows() - i * kBlockRows));
      } catch (...) {
        product_errors_[static_cast<std::size_t>(worker)] = std::current_exception();
      }
    };
    pool_.run(blocks, task);
    for (std::exception_ptr& error : product_errors_) {
      if (error) std::rethrow_exception(std::exchange(error, nullptr));
    }
  }

  // The pass of n tokens, one a row; `attend(layer)` turns q_, k_, v_ into att_ (first n rows).
  // `batched`: the weight products as matrix-matrix products (`product`). Returns the logits
  // (n, vocab).
  template <class Attend>
  ConstRowMap run(const int* tokens, Index n, bool batched, Attend&& attend) {
    const LlamaConfig& c = w_->config;
    const Index dim = c.dim, kv_dim = c.kv_dim(), hidden = c.hidden_dim;
    for (Index t = 0; t < n; ++t) {
      if (tokens[t] < 0 || tokens[t] >= c.vocab_size) {
        throw std::out_of_range("token " + std::to_string(tokens[t]) + " is not in [0, " +
                                std::to_string(c.vocab_size) + ")");
      }
    }
    reserve(n);
    // Views of the first n rows: the scratch keeps the rows of the largest call.
    Eigen::Map<RowMatrix> x = rows(x_, n), xb = rows(xb_, n);    // (n, dim)
    Eigen::Map<RowMatrix> q = rows(q_, n), att = rows(att_, n);  // (n, n_heads * head_dim)
    Eigen::Map<RowMatrix> k = rows(k_, n), v = rows(v_, n);      // (n, n_kv_heads * head_dim)
    Eigen::Map<RowMatrix> h1 = rows(h1_, n), h3 = rows(h3_, n);  // (n, hidden)
    Eigen::Map<RowMatrix> logits = rows(logits_, n);             // (n, vocab)
    for (Index t = 0; t < n; ++t) {
      x.row(t) = Eigen::Map<const RowVector>(w_->tensor(Part::embedding) + tokens[t] * dim, dim);
    }
    for (Index l = 0; l < c.n_layers; ++l) {
      // attention
      rmsnorm(xb, x, vector(Part::rms_att, l, dim), c.rms_eps);
      product(q, xb, matrix(Part::wq, l, dim, dim), batched, false);
      product(k, xb, matrix(Part::wk, l, kv_dim, dim), batched, false);
      product(v, xb, matrix(Part::wv, l, kv_dim, dim), batched, false);
      attend(l);  // the one call site of the cache(s)
      product(x, att, matrix(Part::wo, l, dim, dim), batched, true);
      // feed-forward: w2(silu(w1 x) * w3 x)
      rmsnorm(xb, x, vector(Part::rms_ffn, l, dim), c.rms_eps);
      product(h1, xb, matrix(Part::w1, l, hidden, dim), batched, false);
      product(h3, xb, matrix(Part::w3, l, hidden, dim), batched, false);
      h1.array() = h1.array() / (1.0f + (-h1.array()).exp()) * h3.array();
      product(x, h1, matrix(Part::w2, l, dim, hidden), batched, true);
    }
    rmsnorm(xb, x, vector(Part::rms_final, 0, dim), c.rms_eps);
    product(logits, xb, matrix(Part::classifier, 0, c.vocab_size, dim), batched, false);
    return ConstRowMap(logits_.data(), n, c.vocab_size);
  }

  const LlamaWeights* w_;
  msrnn::ForkJoin pool_;  // splits the sequences' attention steps and the products' blocks
  // Scratch of reserved() rows, one token a row; a call uses the first n.
  RowMatrix x_, xb_, q_, k_, v_, att_, h1_, h3_, logits_;
  std::vector<std::exception_ptr> errors_;  // (reserved()) what a row's step threw, until rethrown
  std::vector<std::exception_ptr> product_errors_;  // (threads) what a product block threw
};

/// A Llama model over the weights of a llama2.c checkpoint, for one sequence at a time: a
/// Transformer and the sequence's cache. The weights must outlive the model.
class LlamaModel {
 public:
  LlamaModel(const LlamaWeights& weights, const CacheSettings& settings)
      : transformer_(weights),
        cache_(cache_config(weights.config, settings), msrnn::make_policy(settings.policy)) {}
  /// The model over a cache made elsewhere (a loaded state), of the model's shape.
  LlamaModel(const LlamaWeights& weights, msrnn::AnyCache cache)
      : transformer_(weights), cache_(std::move(cache)) {}

  const LlamaConfig& config() const { return transformer_.config(); }
  const msrnn::AnyCache& cache() const { return cache_; }
  /// The KV state itself, e.g. to restore a saved one with `append`.
  msrnn::AnyCache& cache() { return cache_; }

  /// Starts a new sequence.
  void reset() { cache_.reset(); }

  /// Logits (vocab) of the next token after `token`: the decode path, one `cache.step` per layer.
  const RowVector& forward(int token) {
    msrnn::AnyCache* cache = &cache_;
    last_ = transformer_.forward_batch(&token, &cache, 1).row(0);
    return last_;
  }

  /// Logits (n, vocab) after each of `tokens`: the prompt path, one `cache.step_chunk` per layer.
  const RowMatrix& forward_chunk(const std::vector<int>& tokens) {
    logits_ = transformer_.forward_chunk(tokens.data(), static_cast<Index>(tokens.size()), cache_);
    return logits_;
  }

 private:
  Transformer transformer_;
  msrnn::AnyCache cache_;
  RowMatrix logits_;  // (n, vocab) of the last forward_chunk
  RowVector last_;    // (vocab) of the last forward
};

}  // namespace engine
