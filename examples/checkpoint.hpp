// llama2.c checkpoints (legacy format): header, validation, weights.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <istream>
#include <limits>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "files.hpp"
#include "msrnn/types.hpp"
#include "xorshift.hpp"

namespace engine {

using msrnn::Index;

/// The 7 int32 of a llama2.c legacy header, resolved.
struct LlamaConfig {
  Index dim = 0;
  Index hidden_dim = 0;
  Index n_layers = 0;
  Index n_heads = 0;
  Index n_kv_heads = 0;
  Index vocab_size = 0;
  Index seq_len = 0;
  bool shared_classifier = true;  // the header's vocab_size was positive

  Index head_dim() const { return dim / n_heads; }
  Index kv_dim() const { return n_kv_heads * head_dim(); }
};

/// Every weight of the model, row-major, in llama2.c's order. Matrices are (out, in).
struct LlamaWeights {
  LlamaConfig config;
  std::vector<float> data;  // the whole float payload of the file
  // Offsets (in floats) into data:
  std::size_t embedding = 0;   // (vocab, dim)
  std::size_t rms_att = 0;     // (layers, dim)
  std::size_t wq = 0;          // (layers, dim, dim)
  std::size_t wk = 0;          // (layers, kv_dim, dim)
  std::size_t wv = 0;          // (layers, kv_dim, dim)
  std::size_t wo = 0;          // (layers, dim, dim)
  std::size_t rms_ffn = 0;     // (layers, dim)
  std::size_t w1 = 0;          // (layers, hidden, dim)
  std::size_t w2 = 0;          // (layers, dim, hidden)
  std::size_t w3 = 0;          // (layers, hidden, dim)
  std::size_t rms_final = 0;   // (dim)
  std::size_t classifier = 0;  // (vocab, dim): the embedding when shared

  const float* at(std::size_t offset) const { return data.data() + offset; }
};

namespace detail {

// a * b + c on unsigned 64-bit, or false on overflow.
inline bool mul_add(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t& out) {
  const std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
  if (a != 0 && b > max / a) return false;
  if (a * b > max - c) return false;
  out = a * b + c;
  return true;
}

inline std::string describe(const LlamaConfig& c) {
  return "dim " + std::to_string(c.dim) + ", hidden_dim " + std::to_string(c.hidden_dim) +
         ", n_layers " + std::to_string(c.n_layers) + ", n_heads " + std::to_string(c.n_heads) +
         ", n_kv_heads " + std::to_string(c.n_kv_heads) + ", vocab_size " +
         std::to_string(c.vocab_size) + ", seq_len " + std::to_string(c.seq_len);
}

// Sets the offsets of every tensor of w (w.config given) in the file's float payload, whose
// size goes to `floats`; false if a size overflows 64 bits. The shared classifier is resolved
// by the caller (it is the embedding).
inline bool plan_layout(LlamaWeights& w, std::uint64_t& floats) {
  const LlamaConfig& c = w.config;
  const auto u = [](Index x) { return static_cast<std::uint64_t>(x); };
  struct Part {
    std::size_t* offset;
    std::uint64_t a, b, c;  // a * b * c floats
  };
  const Part parts[] = {
      {&w.embedding, u(c.vocab_size), u(c.dim), 1},
      {&w.rms_att, u(c.n_layers), u(c.dim), 1},
      {&w.wq, u(c.n_layers), u(c.dim), u(c.dim)},
      {&w.wk, u(c.n_layers), u(c.kv_dim()), u(c.dim)},
      {&w.wv, u(c.n_layers), u(c.kv_dim()), u(c.dim)},
      {&w.wo, u(c.n_layers), u(c.dim), u(c.dim)},
      {&w.rms_ffn, u(c.n_layers), u(c.dim), 1},
      {&w.w1, u(c.n_layers), u(c.hidden_dim), u(c.dim)},
      {&w.w2, u(c.n_layers), u(c.dim), u(c.hidden_dim)},
      {&w.w3, u(c.n_layers), u(c.hidden_dim), u(c.dim)},
      {&w.rms_final, u(c.dim), 1, 1},
      {nullptr, u(c.seq_len), u(c.head_dim()),
       1},  // the two RoPE tables, (seq_len, head_dim/2) each
      {&w.classifier, c.shared_classifier ? 0 : u(c.vocab_size), u(c.dim), 1},
  };
  floats = 0;
  bool ok = true;
  for (const Part& part : parts) {
    std::uint64_t ab = 0;
    if (part.offset) *part.offset = static_cast<std::size_t>(floats);
    ok = ok && mul_add(part.a, part.b, 0, ab) && mul_add(ab, part.c, floats, floats);
  }
  return ok;
}

}  // namespace detail

/// Reads a llama2.c legacy checkpoint. Every header value and the file length are checked
/// (overflow-safe) before any weight is read; a bad file throws FileError("<path>: <what>").
inline LlamaWeights read_checkpoint(std::istream& file, std::uint64_t file_bytes,
                                    const std::string& path);

inline LlamaWeights load_checkpoint(const std::string& path) {
  require_regular_file(path, "model");
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) throw FileError(path + ": cannot open the model file");
  const std::streamoff size = file.tellg();
  if (size < 0) throw FileError(path + ": cannot read the model file");
  file.seekg(0);
  return read_checkpoint(file, static_cast<std::uint64_t>(size), path);
}

/// The checkpoint in the first `file_bytes` bytes of `file` (named `path` in errors): what
/// load_checkpoint does once the file is open. Reads nothing past the header unless it is valid.
inline LlamaWeights read_checkpoint(std::istream& file, std::uint64_t file_bytes,
                                    const std::string& path) {
  auto fail = [&](const std::string& what) -> void { throw FileError(path + ": " + what); };
  if (file_bytes == 0) fail("the model file is empty");
  if (file_bytes < 28) {
    fail("the model file has " + std::to_string(file_bytes) +
         " bytes, fewer than the 28 of a llama2.c header");
  }
  std::int32_t header[7];
  file.read(reinterpret_cast<char*>(header), sizeof(header));
  if (!file) fail("cannot read the header");

  LlamaConfig c;
  c.dim = header[0];
  c.hidden_dim = header[1];
  c.n_layers = header[2];
  c.n_heads = header[3];
  c.n_kv_heads = header[4];
  c.shared_classifier = header[5] > 0;
  c.vocab_size =
      header[5] == std::numeric_limits<std::int32_t>::min() ? 0 : std::abs(Index{header[5]});
  c.seq_len = header[6];
  const char* names[] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                         "n_kv_heads", "vocab_size", "seq_len"};
  const Index values[] = {c.dim,        c.hidden_dim, c.n_layers, c.n_heads,
                          c.n_kv_heads, c.vocab_size, c.seq_len};
  for (int i = 0; i < 7; ++i) {
    if (values[i] <= 0) {
      fail(std::string("header ") + names[i] + " = " + std::to_string(header[i]) +
           " is not positive: not a llama2.c checkpoint");
    }
  }
  if (c.dim % c.n_heads != 0) {
    fail("header dim = " + std::to_string(c.dim) +
         " is not a multiple of n_heads = " + std::to_string(c.n_heads));
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    fail("header n_heads = " + std::to_string(c.n_heads) +
         " is not a multiple of n_kv_heads = " + std::to_string(c.n_kv_heads));
  }
  if (c.head_dim() % 2 != 0) {
    fail("head size dim / n_heads = " + std::to_string(c.head_dim()) +
         " is odd; RoPE needs it even");
  }

  LlamaWeights w;
  w.config = c;
  std::uint64_t floats = 0;
  const bool ok = detail::plan_layout(w, floats);
  std::uint64_t expected = 0;
  const bool fits = ok && detail::mul_add(floats, 4, 28, expected);
  if (!fits || expected != file_bytes) {
    fail("the file has " + std::to_string(file_bytes) + " bytes, but its header (" +
         detail::describe(c) + ", " + (c.shared_classifier ? "shared" : "separate") +
         " classifier) needs " + (fits ? std::to_string(expected) : std::string("more than 2^64")) +
         ": truncated, or not a llama2.c legacy checkpoint");
  }
  if (c.shared_classifier) w.classifier = w.embedding;

  w.data.resize(static_cast<std::size_t>(floats));
  file.read(reinterpret_cast<char*>(w.data.data()), static_cast<std::streamsize>(floats * 4));
  if (!file) fail("cannot read the weights");
  return w;
}

/// A randomly initialised model of the given shape (benchmarks: no file needed). Matrices are
/// uniform with standard deviation 0.02, norms 1; the same seed gives the same weights.
inline LlamaWeights random_weights(const LlamaConfig& config, std::uint64_t seed) {
  LlamaWeights w;
  w.config = config;
  std::uint64_t floats = 0;
  if (!detail::plan_layout(w, floats)) {
    throw std::length_error("random_weights: " + detail::describe(config) + " overflows");
  }
  if (config.shared_classifier) w.classifier = w.embedding;
  w.data.resize(static_cast<std::size_t>(floats));
  XorShift64Star rng(seed * 0x9E3779B97F4A7C15ull + 1);
  for (float& x : w.data) {  // the top 24 bits -> uniform in [-0.0346, 0.0346)
    const auto bits = static_cast<std::uint32_t>(rng.next() >> 40);
    x = (static_cast<float>(bits) / 16777216.0f - 0.5f) * 0.0693f;
  }
  const Index dim = config.dim;
  auto ones = [&](std::size_t offset, Index n) {
    std::fill_n(w.data.begin() + static_cast<std::ptrdiff_t>(offset), n, 1.0f);
  };
  ones(w.rms_att, config.n_layers * dim);
  ones(w.rms_ffn, config.n_layers * dim);
  ones(w.rms_final, dim);
  return w;
}

}  // namespace engine
