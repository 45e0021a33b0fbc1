// llama2.c checkpoints (legacy format): header, validation, weights (LlamaWeights, weights.hpp).
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
#include "weights.hpp"
#include "xorshift.hpp"

namespace engine {

using msrnn::Index;

namespace detail {

// a * b + c on unsigned 64-bit, or false on overflow.
inline bool mul_add(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t& out) {
  const std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
  if (a != 0 && b > max / a) return false;
  if (a * b > max - c) return false;
  out = a * b + c;
  return true;
}

// The floats of a llama2.c payload for shape c, in the file's order: each part for all layers,
// then the two RoPE tables, (seq_len, head_dim / 2) each, which the engine does not use, then the
// classifier unless shared. False if the size overflows 64 bits. Arithmetic only: nothing is
// allocated before the caller has checked the size against the file.
inline bool payload_floats(const LlamaConfig& c, std::uint64_t& floats) {
  const auto layers = static_cast<std::uint64_t>(c.n_layers);
  floats = 0;
  bool ok = true;
  for (Part p : kAllParts) {
    if (p == Part::classifier && c.shared_classifier) continue;
    // (part_elements multiplies two positive int32, which fits in 64 bits)
    ok = ok && mul_add(part_elements(c, p), per_layer(p) ? layers : 1, floats, floats);
    if (p == Part::rms_final) {
      ok = ok && mul_add(static_cast<std::uint64_t>(c.seq_len),
                         static_cast<std::uint64_t>(c.head_dim()), floats, floats);
    }
  }
  return ok;
}

// Places every tensor of w (w.config given, its payload_floats checked) in data, in that order.
inline void place_payload(LlamaWeights& w) {
  const LlamaConfig& c = w.config;
  std::size_t at = 0;
  for (Part p : kAllParts) {
    if (p == Part::classifier && c.shared_classifier) {
      w.place(p, 0, {nullptr, 0});  // the embedding, at offset 0
      continue;
    }
    const auto each = static_cast<std::size_t>(part_elements(c, p));
    for (Index l = 0; l < (per_layer(p) ? c.n_layers : 1); ++l, at += each) {
      w.place(p, l, {nullptr, at});
    }
    if (p == Part::rms_final) at += static_cast<std::size_t>(c.seq_len * c.head_dim());
  }
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
  const bool ok = detail::payload_floats(c, floats);
  std::uint64_t expected = 0;
  const bool fits = ok && detail::mul_add(floats, 4, 28, expected);
  if (!fits || expected != file_bytes) {
    fail("the file has " + std::to_string(file_bytes) + " bytes, but its header (" +
         detail::describe(c) + ", " + (c.shared_classifier ? "shared" : "separate") +
         " classifier) needs " + (fits ? std::to_string(expected) : std::string("more than 2^64")) +
         ": truncated, or not a llama2.c legacy checkpoint");
  }
  detail::place_payload(w);
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
  if (!detail::payload_floats(config, floats)) {
    throw std::length_error("random_weights: " + detail::describe(config) + " overflows");
  }
  detail::place_payload(w);
  w.data.resize(static_cast<std::size_t>(floats));
  XorShift64Star rng(seed * 0x9E3779B97F4A7C15ull + 1);
  for (float& x : w.data) {  // the top 24 bits -> uniform in [-0.0346, 0.0346)
    const auto bits = static_cast<std::uint32_t>(rng.next() >> 40);
    x = (static_cast<float>(bits) / 16777216.0f - 0.5f) * 0.0693f;
  }
  for (Part p : {Part::rms_att, Part::rms_ffn, Part::rms_final}) {
    for (Index l = 0; l < (per_layer(p) ? config.n_layers : 1); ++l) {
      std::fill_n(w.owned_tensor(p, l), config.dim, 1.0f);
    }
  }
  return w;
}

}  // namespace engine
