// Model shapes the benchmarks build random models of (no file needed).
#pragma once

#include "checkpoint.hpp"

namespace bench {

/// The shape of llama2.c's stories110M (dim 768, hidden 2048, 12 layers, 12 heads, vocab 32000),
/// with a context of `seq_len` tokens.
inline engine::LlamaConfig stories110m_shape(engine::Index seq_len) {
  engine::LlamaConfig c;
  c.dim = 768;
  c.hidden_dim = 2048;
  c.n_layers = 12;
  c.n_heads = 12;
  c.n_kv_heads = 12;
  c.vocab_size = 32000;
  c.seq_len = seq_len;
  c.shared_classifier = true;
  return c;
}

}  // namespace bench
