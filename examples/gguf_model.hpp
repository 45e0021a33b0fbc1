// A GGUF file as the example engine's model: architecture `llama` from the metadata, its tensors
// converted at load into the engine's float32 layout (LlamaWeights), and the tokenizer the file
// carries (tokenizer.ggml.model `llama`: SentencePiece-style BPE by scores with byte fallback).
//
// The engine's products run over float32 matrices: F32 tensors are used in place in the mapped
// file (no copy; the page cache holds them), the others (F16, BF16, Q8_0, Q4_0) are converted to
// float32 once, at load. Memory is then 4 bytes a weight for those (an F16 file's weights take
// twice its size, a Q8_0 file's 3.8 times) and the step runs at the F32 engine's speed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "checkpoint.hpp"
#include "ggml_types.hpp"
#include "gguf.hpp"
#include "machine.hpp"
#include "tokenizer.hpp"

namespace engine {

/// GGUF's tensor names for the llama architecture, with the engine's (llama2.c's) meaning.
namespace gguf_names {
inline constexpr const char* kEmbedding = "token_embd.weight";   // (vocab, dim)
inline constexpr const char* kFinalNorm = "output_norm.weight";  // (dim)
inline constexpr const char* kClassifier = "output.weight";      // (vocab, dim); absent: tied
/// Per layer "blk.<i>.<name>.weight".
inline std::string block(Index layer, const char* name) {
  return "blk." + std::to_string(layer) + "." + name + ".weight";
}
}  // namespace gguf_names

/// A tensor of a llama GGUF file and the part of the model it is.
struct GgufTensorName {
  std::string name;
  Part part;
  Index layer;
};

/// Every tensor a llama model of shape c has in a GGUF file, in llama.cpp's order (output.weight
/// only when the classifier is not tied): ffn_gate is llama2.c's w1, ffn_down w2, ffn_up w3.
inline std::vector<GgufTensorName> llama_tensor_names(const LlamaConfig& c) {
  std::vector<GgufTensorName> names = {{gguf_names::kEmbedding, Part::embedding, 0},
                                       {gguf_names::kFinalNorm, Part::rms_final, 0}};
  if (!c.shared_classifier) names.push_back({gguf_names::kClassifier, Part::classifier, 0});
  const std::pair<const char*, Part> blocks[] = {
      {"attn_norm", Part::rms_att}, {"attn_q", Part::wq},      {"attn_k", Part::wk},
      {"attn_v", Part::wv},         {"attn_output", Part::wo}, {"ffn_norm", Part::rms_ffn},
      {"ffn_gate", Part::w1},       {"ffn_down", Part::w2},    {"ffn_up", Part::w3}};
  for (Index l = 0; l < c.n_layers; ++l) {
    for (const auto& [name, part] : blocks) names.push_back({gguf_names::block(l, name), part, l});
  }
  return names;
}

/// The model shape a llama GGUF file's metadata gives; throws FileError naming the key that is
/// missing, of the wrong type or out of range, and for an architecture other than llama or
/// options the engine does not implement (partial rotary, rope scaling, experts).
inline LlamaConfig gguf_llama_config(const gguf::File& f) {
  const std::string arch(f.string("general.architecture"));
  if (arch != "llama") {
    f.fail("architecture '" + msrnn::printable(arch) +
           "' is not supported (the example engine runs llama)");
  }
  const std::uint64_t big = std::uint64_t{1} << 31;
  auto key = [](const char* k) { return std::string("llama.") + k; };
  auto count = [&](const char* k, std::int64_t fallback = -1) {
    const std::uint64_t x = f.integer(key(k), fallback, big - 1);
    if (x == 0) f.fail("metadata " + key(k) + " = 0 must be positive");
    return static_cast<Index>(x);
  };
  LlamaConfig c;
  c.dim = count("embedding_length");
  c.n_layers = count("block_count");
  c.n_heads = count("attention.head_count");
  c.n_kv_heads = count("attention.head_count_kv", c.n_heads);
  c.hidden_dim = count("feed_forward_length");
  // Nine tensors a block: a count the file cannot back is found before anything is listed.
  if (static_cast<std::uint64_t>(c.n_layers) > f.tensors().size() / 9) {
    f.fail("llama.block_count = " + std::to_string(c.n_layers) + ", but the file has " +
           std::to_string(f.tensors().size()) + " tensors (a block has 9)");
  }
  c.seq_len = count("context_length");
  const double theta_default = 10000.0;
  c.rope_theta = f.number(key("rope.freq_base"), &theta_default);
  c.rms_eps = static_cast<float>(f.number(key("attention.layer_norm_rms_epsilon")));
  if (!(c.rope_theta > 1.0) || !std::isfinite(c.rope_theta)) {
    f.fail("metadata llama.rope.freq_base = " + std::to_string(c.rope_theta) +
           " is not a finite number above 1");
  }
  if (!(c.rms_eps > 0.0f) || !std::isfinite(c.rms_eps)) {
    f.fail("metadata llama.attention.layer_norm_rms_epsilon is not a finite positive number");
  }
  if (c.dim % c.n_heads != 0) {
    f.fail("llama.embedding_length = " + std::to_string(c.dim) +
           " is not a multiple of llama.attention.head_count = " + std::to_string(c.n_heads));
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    f.fail("llama.attention.head_count = " + std::to_string(c.n_heads) +
           " is not a multiple of llama.attention.head_count_kv = " + std::to_string(c.n_kv_heads));
  }
  if (c.head_dim() % 2 != 0) {
    f.fail("the head size " + std::to_string(c.head_dim()) + " is odd; RoPE needs it even");
  }
  const Index rotary = count("rope.dimension_count", c.head_dim());
  if (rotary != c.head_dim()) {
    f.fail("llama.rope.dimension_count = " + std::to_string(rotary) +
           " rotates part of a head of " + std::to_string(c.head_dim()) +
           "; partial rotary embeddings are not supported");
  }
  for (const char* k : {"attention.key_length", "attention.value_length"}) {
    if (f.find(key(k)) && count(k) != c.head_dim()) {
      f.fail("metadata " + key(k) + " = " + std::to_string(count(k)) +
             " differs from the head size " + std::to_string(c.head_dim()) + "; not supported");
    }
  }
  if (f.find(key("expert_count")) && f.integer(key("expert_count")) > 0) {
    f.fail("llama.expert_count = " + std::to_string(f.integer(key("expert_count"))) +
           ": mixture-of-experts models are not supported");
  }
  const std::string scaling(f.string(key("rope.scaling.type"), "none"));
  if (scaling != "none") {
    f.fail("llama.rope.scaling.type = '" + msrnn::printable(scaling) +
           "': RoPE scaling is not supported");
  }
  if (f.find(key("rope.scale_linear")) && f.number(key("rope.scale_linear")) != 1.0) {
    f.fail("llama.rope.scale_linear is set: RoPE scaling is not supported");
  }
  const gguf::Tensor* embedding = f.tensor(gguf_names::kEmbedding);
  if (!embedding) f.fail(std::string("tensor ") + gguf_names::kEmbedding + " is missing");
  if (embedding->dims.size() != 2 || embedding->dims[1] >= big) {
    f.fail(std::string("tensor ") + gguf_names::kEmbedding + " has shape " + embedding->shape() +
           ", not [embedding_length, vocabulary]");
  }
  c.vocab_size = static_cast<Index>(embedding->dims[1]);
  if (f.find(key("vocab_size")) &&
      f.integer(key("vocab_size")) != static_cast<std::uint64_t>(c.vocab_size)) {
    f.fail("llama.vocab_size = " + std::to_string(f.integer(key("vocab_size"))) +
           " differs from token_embd's " + std::to_string(c.vocab_size) + " rows");
  }
  c.shared_classifier = f.tensor(gguf_names::kClassifier) == nullptr;
  return c;
}

/// The weights of a llama GGUF file. Every tensor the architecture needs must be there with its
/// shape (ggml's order: {cols, rows}) and a type the engine reads (F32, F16, BF16, Q8_0, Q4_0);
/// any other tensor is an error naming it, as in llama.cpp. F32 tensors are used in place (the
/// weights keep the file mapped; for a File parsed from memory the bytes must outlive them);
/// the others are converted to float32 into `data`. NaN and infinite weights are kept (the tools
/// warn about them).
inline LlamaWeights gguf_llama_weights(const gguf::File& f, const LlamaConfig& c) {
  LlamaWeights w;
  w.config = c;
  w.file = f.mapping();
  std::vector<bool> used(f.tensors().size(), false);
  // Checks `name` is there with part p's shape ({cols} for a vector, {cols, rows} a matrix).
  auto require = [&](const std::string& name, Part p) -> const gguf::Tensor& {
    const gguf::Tensor* t = f.tensor(name);
    if (!t) f.fail("tensor " + name + " is missing");
    const PartShape shape = part_shape(c, p);
    const auto cols = static_cast<std::uint64_t>(shape.cols);
    const auto rows = static_cast<std::uint64_t>(shape.rows);
    const std::vector<std::uint64_t> want =
        is_vector(p) ? std::vector<std::uint64_t>{cols} : std::vector<std::uint64_t>{cols, rows};
    if (t->dims != want) {
      f.fail("tensor " + name + " has shape " + t->shape() + "; the metadata (" +
             detail::describe(c) + ") needs [" + std::to_string(cols) +
             (is_vector(p) ? "" : ", " + std::to_string(rows)) + "]");
    }
    if (!ggml::readable(t->type->id)) {
      f.fail("tensor " + name + " has type " + t->type->name +
             ", which the engine does not read (F32, F16, BF16, Q8_0, Q4_0)");
    }
    used[static_cast<std::size_t>(t - f.tensors().data())] = true;
    return *t;
  };
  // Every tensor is checked before anything is allocated: the converted ones then take no more
  // than the file holds (at most 7 floats a byte, for Q4_0).
  struct Load {
    const gguf::Tensor* tensor;
    Part part;
    Index layer;
  };
  std::vector<Load> loads;
  for (const GgufTensorName& t : llama_tensor_names(c)) {
    loads.push_back({&require(t.name, t.part), t.part, t.layer});
  }
  for (std::size_t i = 0; i < used.size(); ++i) {
    if (!used[i]) {
      f.fail("tensor " + msrnn::printable(f.tensors()[i].name) + " " + f.tensors()[i].shape() +
             " is not one of a llama model's (" + std::to_string(c.n_layers) +
             " blocks): not supported");
    }
  }
  // F32 in place where its first byte is float-aligned (the data section is aligned to
  // general.alignment, usually 32; a file aligned to less may leave a tensor unaligned).
  auto in_place = [](const gguf::Tensor& t) {
    return t.type->id == ggml::F32 &&
           reinterpret_cast<std::uintptr_t>(t.data) % alignof(float) == 0;
  };
  std::size_t owned = 0;
  for (const Load& l : loads) {
    if (!in_place(*l.tensor)) owned += static_cast<std::size_t>(l.tensor->elements);
  }
  // Converted floats beyond the machine's memory would be an out-of-memory kill, not an error.
  const double memory = physical_memory_bytes();
  if (memory > 0 && 4.0 * static_cast<double>(owned) > memory) {
    char what[200];
    std::snprintf(what, sizeof what,
                  "its tensors converted to float32 need %.1f GiB, more than this machine's %.1f "
                  "GiB (F32 tensors are used in place; other types are converted at load)",
                  4.0 * static_cast<double>(owned) / 1073741824.0, memory / 1073741824.0);
    f.fail(what);
  }
  w.data.resize(owned);
  std::size_t at = 0;
  for (const Load& l : loads) {
    const gguf::Tensor& t = *l.tensor;
    if (in_place(t)) {
      w.place(l.part, l.layer, {reinterpret_cast<const float*>(t.data), 0});
      continue;
    }
    w.place(l.part, l.layer, {nullptr, at});
    const std::uint64_t cols = t.dims[0], rows = t.elements / cols;
    const std::uint64_t row_bytes = ggml::row_bytes(t.type->id, cols);
    for (std::uint64_t r = 0; r < rows; ++r) {
      ggml::dequantize_row(t.type->id, t.data + r * row_bytes, w.data.data() + at + r * cols, cols);
    }
    f.release(t);  // converted: its file pages need not stay resident
    at += static_cast<std::size_t>(t.elements);
  }
  if (c.shared_classifier) {  // the embedding's place
    const Load& e = loads.front();
    w.place(Part::classifier, 0,
            in_place(*e.tensor)
                ? LlamaWeights::Place{reinterpret_cast<const float*>(e.tensor->data), 0}
                : LlamaWeights::Place{nullptr, 0});
  }
  return w;
}

/// The tokenizer a GGUF file carries (tokenizer.ggml.*) for a model of `vocab_size` pieces:
/// model `llama`, tokens with SentencePiece's "\u2581" for spaces, scores, BOS 1 and EOS 2 (the
/// engine's, as in Llama 2 and llama2.c; a generated text ends at either), the 256 byte pieces at
/// ids 3..258. Other tokenizer models are rejected, naming them.
inline Tokenizer gguf_tokenizer(const gguf::File& f, Index vocab_size) {
  const std::string model(f.string("tokenizer.ggml.model"));
  if (model != "llama") {
    f.fail("tokenizer.ggml.model = '" + msrnn::printable(model) +
           "' is not supported (the engine encodes with llama's SentencePiece BPE)");
  }
  const gguf::Value* tokens = f.array("tokenizer.ggml.tokens", gguf::ValueType::string);
  if (!tokens) f.fail("metadata tokenizer.ggml.tokens is missing");
  const gguf::Value* scores = f.array("tokenizer.ggml.scores", gguf::ValueType::f32);
  if (!scores) f.fail("metadata tokenizer.ggml.scores is missing (llama's BPE merges by them)");
  const auto n = static_cast<std::uint64_t>(vocab_size);
  if (tokens->count != n || scores->count != n) {
    f.fail("the tokenizer has " + std::to_string(tokens->count) + " tokens and " +
           std::to_string(scores->count) + " scores, but the model's vocabulary is " +
           std::to_string(vocab_size) + ": they do not belong together");
  }
  if (const gguf::Value* types = f.array("tokenizer.ggml.token_type", gguf::ValueType::i32)) {
    if (types->count != n) {
      f.fail("tokenizer.ggml.token_type has " + std::to_string(types->count) + " entries for " +
             std::to_string(vocab_size) + " tokens");
    }
  }
  for (const char* k : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"}) {
    const std::uint64_t want = std::string_view(k).find("bos") != std::string_view::npos
                                   ? static_cast<std::uint64_t>(kBos)
                                   : 2;
    const std::uint64_t id = f.integer(k, static_cast<std::int64_t>(want));
    if (id != want) {
      f.fail("metadata " + std::string(k) + " = " + std::to_string(id) + "; the engine needs " +
             std::to_string(want) + " (as Llama 2 and llama2.c)");
    }
  }
  std::vector<std::string> pieces;
  pieces.reserve(static_cast<std::size_t>(n));
  static constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space
  for (std::string_view t : tokens->strings) {
    std::string piece;
    piece.reserve(t.size());
    for (std::size_t i = 0; i < t.size();) {
      if (t.compare(i, kSpace.size(), kSpace) == 0) {
        piece += ' ';
        i += kSpace.size();
      } else {
        piece += t[i++];
      }
    }
    pieces.push_back(std::move(piece));
  }
  std::vector<float> s(static_cast<std::size_t>(n));
  if (n > 0) std::memcpy(s.data(), scores->raw, 4 * static_cast<std::size_t>(n));
  return Tokenizer(std::move(pieces), std::move(s), /*eos=*/2, f.name());
}

/// A llama GGUF file's weights and tokenizer.
struct GgufModel {
  LlamaWeights weights;
  Tokenizer tokenizer;
};

/// Reads `path` (memory-mapped, validated, converted): throws FileError("<path>: <what>").
inline GgufModel load_gguf_model(const std::string& path) {
  const gguf::File f = gguf::File::open(path);
  const LlamaConfig c = gguf_llama_config(f);
  Tokenizer tokenizer = gguf_tokenizer(f, c.vocab_size);
  return {gguf_llama_weights(f, c), std::move(tokenizer)};
}

/// True if `path` starts with GGUF's magic (how the tools tell it from a llama2.c checkpoint).
/// Anything but a regular file is not (its loader then says what is wrong with it).
inline bool is_gguf_file(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(std::filesystem::status(path, error))) return false;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && gguf::has_magic(reinterpret_cast<const unsigned char*>(magic), 4);
}

}  // namespace engine
