// A llama2.c checkpoint and its tokenizer as a GGUF file llama.cpp reads (msrnn-convert):
// architecture `llama`, llama.cpp's tensor names, Q and K in the checkpoint's own layout (llama2.c
// rotates interleaved pairs, as llama.cpp's `llama` architecture does, so nothing is permuted),
// the tokenizer as tokenizer.ggml.model `llama` with SentencePiece's "\u2581" for spaces.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "checkpoint.hpp"
#include "ggml_types.hpp"
#include "gguf_model.hpp"  // llama_tensor_names
#include "gguf_writer.hpp"
#include "tokenizer.hpp"

namespace engine {

/// What msrnn-convert --type asks for: every matrix as F32, F16 or Q8_0. Norm vectors stay F32,
/// and under Q8_0 a matrix whose rows are not a multiple of 32 is F16 (as llama-quantize does).
enum class ExportType { f32, f16, q8_0 };

/// Writes `w` and `tokenizer` to `out` as GGUF; false if a write failed. `name` is general.name.
/// A shared classifier is left out (llama.cpp then ties it to token_embd).
inline bool write_llama_gguf(std::FILE* out, const LlamaWeights& w, const Tokenizer& tokenizer,
                             ExportType type, const std::string& name) {
  const LlamaConfig& c = w.config;
  gguf::Writer g;
  g.add_string("general.architecture", "llama");
  g.add_string("general.name", name);
  // llama.cpp's file types: 0 all F32, 1 mostly F16, 7 mostly Q8_0.
  g.add_u32("general.file_type", type == ExportType::f32 ? 0 : type == ExportType::f16 ? 1 : 7);
  auto u32 = [](Index x) { return static_cast<std::uint32_t>(x); };
  g.add_u32("llama.context_length", u32(c.seq_len));
  g.add_u32("llama.embedding_length", u32(c.dim));
  g.add_u32("llama.block_count", u32(c.n_layers));
  g.add_u32("llama.feed_forward_length", u32(c.hidden_dim));
  g.add_u32("llama.rope.dimension_count", u32(c.head_dim()));
  g.add_u32("llama.attention.head_count", u32(c.n_heads));
  g.add_u32("llama.attention.head_count_kv", u32(c.n_kv_heads));
  g.add_f32("llama.attention.layer_norm_rms_epsilon", c.rms_eps);
  g.add_f32("llama.rope.freq_base", static_cast<float>(c.rope_theta));

  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<std::int32_t> types;
  for (int id = 0; id < tokenizer.vocab_size(); ++id) {
    // SentencePiece's token types: 1 normal, 2 unknown, 3 control, 6 byte. Ids 0..2 by its names,
    // as llama.cpp's converter writes them (tok512 has
    // "\n<s>\n" for BOS, which llama.cpp would match as the control token in a prompt's text).
    if (id < kFirstByteToken) {
      static const char* const names[] = {"<unk>", "<s>", "</s>"};
      tokens.emplace_back(names[id]);
      scores.push_back(tokenizer.score(id));
      types.push_back(id == 0 ? 2 : 3);
      continue;
    }
    std::string piece;
    for (char ch : tokenizer.piece(id))
      piece += ch == ' ' ? std::string("\xE2\x96\x81") : std::string(1, ch);
    tokens.push_back(std::move(piece));
    scores.push_back(tokenizer.score(id));
    types.push_back(id < kFirstByteToken + 256 ? 6 : 1);
  }
  g.add_string("tokenizer.ggml.model", "llama");
  g.add_strings("tokenizer.ggml.tokens", tokens);
  g.add_f32s("tokenizer.ggml.scores", scores);
  g.add_i32s("tokenizer.ggml.token_type", types);
  g.add_u32("tokenizer.ggml.unknown_token_id", 0);
  g.add_u32("tokenizer.ggml.bos_token_id", static_cast<std::uint32_t>(kBos));
  g.add_u32("tokenizer.ggml.eos_token_id", 2);

  for (const GgufTensorName& t : llama_tensor_names(c)) {
    const PartShape shape = part_shape(c, t.part);
    const auto cols = static_cast<std::uint64_t>(shape.cols);
    const auto rows = static_cast<std::uint64_t>(shape.rows);
    if (is_vector(t.part)) {
      g.add_tensor(t.name, {cols}, ggml::F32, w.tensor(t.part, t.layer));
      continue;
    }
    const std::uint32_t matrix_type = type == ExportType::f32                      ? ggml::F32
                                      : type == ExportType::q8_0 && cols % 32 == 0 ? ggml::Q8_0
                                                                                   : ggml::F16;
    g.add_tensor(t.name, {cols, rows}, matrix_type, w.tensor(t.part, t.layer));
  }
  return g.write(out);
}

}  // namespace engine
