// A small model of random weights for the engine's tests (no file needed).
#pragma once

#include <cstdint>

#include "checkpoint.hpp"

namespace engine::testing {

/// Grouped-query attention (4 query heads, 2 KV heads), a hidden size that is no multiple of a
/// vector's width, 3 layers, a vocabulary of 96, context 64; weights from `seed`.
inline LlamaWeights small_random_model(std::uint64_t seed) {
  LlamaConfig c;
  c.dim = 64;
  c.hidden_dim = 172;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 96;
  c.seq_len = 64;
  return random_weights(c, seed);
}

}  // namespace engine::testing
