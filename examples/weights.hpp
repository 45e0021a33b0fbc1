// A Llama model's shape (LlamaConfig) and weights (LlamaWeights): where each tensor is, in a
// float32 buffer the weights own or in a memory-mapped file they keep open (GGUF tensors used in
// place). The loaders fill them: checkpoint.hpp (llama2.c) and gguf_model.hpp (GGUF).
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "msrnn/types.hpp"

namespace engine {

using msrnn::Index;

/// A Llama model's shape (a llama2.c header's 7 int32, or a GGUF file's metadata).
struct LlamaConfig {
  Index dim = 0;
  Index hidden_dim = 0;
  Index n_layers = 0;
  Index n_heads = 0;
  Index n_kv_heads = 0;
  Index vocab_size = 0;
  Index seq_len = 0;
  bool shared_classifier = true;  // the classifier is the embedding (tied)
  double rope_theta = 10000.0;    // RoPE's base (llama2.c's; a GGUF file's rope.freq_base)
  float rms_eps = 1e-5f;          // RMSNorm's epsilon (llama2.c's; GGUF's layer_norm_rms_epsilon)

  Index head_dim() const { return dim / n_heads; }
  Index kv_dim() const { return n_kv_heads * head_dim(); }
};

/// The model's tensors. Matrices are row-major (out, in); the per-layer ones have one tensor a
/// layer.
enum class Part : int {
  embedding,   // (vocab, dim)
  rms_att,     // (dim) per layer
  wq,          // (dim, dim) per layer
  wk,          // (kv_dim, dim) per layer
  wv,          // (kv_dim, dim) per layer
  wo,          // (dim, dim) per layer
  rms_ffn,     // (dim) per layer
  w1,          // (hidden, dim) per layer: the gate
  w2,          // (dim, hidden) per layer: down
  w3,          // (hidden, dim) per layer: up
  rms_final,   // (dim)
  classifier,  // (vocab, dim): the embedding when shared
};
inline constexpr int kParts = 12;
inline constexpr Part kAllParts[kParts] = {
    Part::embedding, Part::rms_att, Part::wq, Part::wk, Part::wv,        Part::wo,
    Part::rms_ffn,   Part::w1,      Part::w2, Part::w3, Part::rms_final, Part::classifier};

inline bool per_layer(Part p) {
  return p != Part::embedding && p != Part::rms_final && p != Part::classifier;
}

/// True for the norms' weight vectors (one dimension in a file), false for the matrices.
inline bool is_vector(Part p) {
  return p == Part::rms_att || p == Part::rms_ffn || p == Part::rms_final;
}

/// The (rows, cols) of part p's tensor (rows 1 for a vector).
struct PartShape {
  Index rows, cols;
};
inline PartShape part_shape(const LlamaConfig& c, Part p) {
  switch (p) {
    case Part::embedding:
    case Part::classifier:
      return {c.vocab_size, c.dim};
    case Part::wq:
    case Part::wo:
      return {c.dim, c.dim};
    case Part::wk:
    case Part::wv:
      return {c.kv_dim(), c.dim};
    case Part::w1:
    case Part::w3:
      return {c.hidden_dim, c.dim};
    case Part::w2:
      return {c.dim, c.hidden_dim};
    case Part::rms_att:
    case Part::rms_ffn:
    case Part::rms_final:
      break;
  }
  return {1, c.dim};
}

/// Elements of one tensor of part p (one layer's, for a per-layer part).
inline std::uint64_t part_elements(const LlamaConfig& c, Part p) {
  const PartShape s = part_shape(c, p);
  return static_cast<std::uint64_t>(s.rows) * static_cast<std::uint64_t>(s.cols);
}

/// Every weight of a model. Each tensor is either in `data` (owned: a checkpoint's whole payload,
/// or the tensors a GGUF file holds in a type the products cannot use) or in place in a mapped
/// file that `file` keeps open; copies share the file and copy `data`.
///
///   const float* wq = weights.tensor(Part::wq, layer);  // (dim, dim)
struct LlamaWeights {
  LlamaConfig config;
  std::vector<float> data;           // the owned floats
  std::shared_ptr<const void> file;  // keeps the mapping of in-place tensors (null: none)

  /// Where a tensor is: `in_file` (a pointer into the mapping), else `offset` floats into data.
  struct Place {
    const float* in_file = nullptr;
    std::size_t offset = 0;
  };

  /// The first float of part p's tensor of `layer` (0 for the parts that are not per layer).
  const float* tensor(Part p, Index layer = 0) const {
    assert(!places_.empty() && "the loader has placed the tensors");
    const Place& at = places_[index(p, layer)];
    return at.in_file ? at.in_file : data.data() + at.offset;
  }
  /// The same, writable, for a tensor in data.
  float* owned_tensor(Part p, Index layer = 0) {
    return data.data() + places_[index(p, layer)].offset;
  }
  bool in_file(Part p, Index layer = 0) const { return places_[index(p, layer)].in_file; }

  /// Sets where a tensor is (the loaders).
  void place(Part p, Index layer, Place at) {
    if (places_.empty()) places_.resize(static_cast<std::size_t>(kParts * layers()));
    places_[index(p, layer)] = at;
  }

  /// Calls f(part, layer, first float, elements) for every tensor, in kAllParts order and layer
  /// by layer (the classifier too when it is the embedding).
  template <class F>
  void for_each_tensor(F&& f) const {
    for (Part p : kAllParts) {
      const Index n = per_layer(p) ? config.n_layers : 1;
      for (Index l = 0; l < n; ++l) {
        f(p, l, tensor(p, l), static_cast<std::size_t>(part_elements(config, p)));
      }
    }
  }

  /// Floats used in place from the mapped file (not copied).
  std::size_t floats_in_file() const {
    std::size_t n = 0;
    for_each_tensor([&](Part p, Index l, const float*, std::size_t elements) {
      if (in_file(p, l) && !(p == Part::classifier && config.shared_classifier)) n += elements;
    });
    return n;
  }

 private:
  Index layers() const { return config.n_layers > 0 ? config.n_layers : 1; }
  std::size_t index(Part p, Index layer) const {
    assert(layer >= 0 && layer < (per_layer(p) ? layers() : 1));
    return static_cast<std::size_t>(static_cast<int>(p) * layers() + layer);
  }
  std::vector<Place> places_;  // (parts, layers)
};

namespace detail {

inline std::string describe(const LlamaConfig& c) {
  return "dim " + std::to_string(c.dim) + ", hidden_dim " + std::to_string(c.hidden_dim) +
         ", n_layers " + std::to_string(c.n_layers) + ", n_heads " + std::to_string(c.n_heads) +
         ", n_kv_heads " + std::to_string(c.n_kv_heads) + ", vocab_size " +
         std::to_string(c.vocab_size) + ", seq_len " + std::to_string(c.seq_len);
}

}  // namespace detail

}  // namespace engine
