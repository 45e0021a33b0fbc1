// A generated sequence saved to a file and resumed: the cache's state (msrnn::save_state) with
// what the decoding loop needs to go on (the next token, its position, prompt tokens not yet fed,
// the sampler), tied to the model it was made with.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <msrnn/msrnn.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint.hpp"
#include "files.hpp"
#include "output_file.hpp"

namespace engine {

/// Where a decoding loop stands between two tokens.
struct SessionState {
  int token = 0;                    // the token to feed next (sampled, not yet seen by the model)
  Index position = 0;               // tokens fed so far (the prompt's included)
  std::vector<int> pending_prompt;  // prompt tokens still to force after `token`, in order
  float temperature = 1.0f;
  float topp = 0.9f;
  std::uint64_t rng_state = 1;  // the sampler's xorshift state
};

/// A fingerprint of the model a session belongs to: its shape and a checksum of every weight.
inline std::uint64_t model_fingerprint(const LlamaWeights& weights) {
  const LlamaConfig& c = weights.config;
  const std::int64_t shape[] = {c.dim,        c.hidden_dim, c.n_layers, c.n_heads,
                                c.n_kv_heads, c.vocab_size, c.seq_len,  c.shared_classifier};
  std::string bytes(reinterpret_cast<const char*>(shape), sizeof shape);
  // RoPE's base and RMSNorm's epsilon change the model too; hashed only when they are not
  // llama2.c's (a GGUF file's), so that a checkpoint's fingerprint stays what it was.
  if (c.rope_theta != 10000.0 || c.rms_eps != 1e-5f) {
    bytes.append(reinterpret_cast<const char*>(&c.rope_theta), sizeof c.rope_theta);
    bytes.append(reinterpret_cast<const char*>(&c.rms_eps), sizeof c.rms_eps);
  }
  auto checksum = [](const float* p, std::size_t n) {
    return msrnn::state_checksum(reinterpret_cast<const unsigned char*>(p), n * sizeof(float));
  };
  if (weights.floats_in_file() == 0) {  // all in data (a checkpoint's payload): one checksum
    const std::uint64_t sum = checksum(weights.data.data(), weights.data.size());
    bytes.append(reinterpret_cast<const char*>(&sum), sizeof sum);
  } else {  // tensors in a mapped file too: one checksum a tensor
    weights.for_each_tensor([&](Part, Index, const float* p, std::size_t n) {
      const std::uint64_t sum = checksum(p, n);
      bytes.append(reinterpret_cast<const char*>(&sum), sizeof sum);
    });
  }
  return msrnn::state_checksum(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
}

// The file: "msrnnseq", u32 version 1, u64 model fingerprint, i32 token, i64 position,
// u32 count + i32 pending prompt tokens, f32 temperature, f32 top-p, u64 random state, u64 bytes
// + the cache's state (msrnn's format, with its own header and checksum), u64 checksum of all
// that precedes it. Little-endian.
inline constexpr std::string_view kSessionMagic{"msrnnseq", 8};
inline constexpr std::uint32_t kSessionVersion = 1;

/// Writes the session to `path`, which is replaced only once the file is whole (AtomicOutput).
/// Throws FileError when it cannot be written.
inline void save_session(const std::string& path, const LlamaWeights& weights,
                         const msrnn::AnyCache& cache, const SessionState& s) {
  std::string bytes;
  msrnn::ByteWriter w(bytes);
  w.put_bytes(kSessionMagic.data(), kSessionMagic.size());
  w.put<std::uint32_t>(kSessionVersion);
  w.put<std::uint64_t>(model_fingerprint(weights));
  w.put<std::int32_t>(s.token);
  w.put<std::int64_t>(s.position);
  w.put<std::uint32_t>(static_cast<std::uint32_t>(s.pending_prompt.size()));
  for (int t : s.pending_prompt) w.put<std::int32_t>(t);
  w.put<float>(s.temperature);
  w.put<float>(s.topp);
  w.put<std::uint64_t>(s.rng_state);
  const std::string state = msrnn::save_state(cache);
  w.put<std::uint64_t>(state.size());
  w.put_bytes(state.data(), state.size());
  w.put<std::uint64_t>(
      msrnn::state_checksum(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()));
  AtomicOutput out(path);
  if (std::fwrite(bytes.data(), 1, bytes.size(), out.file()) != bytes.size()) {
    throw FileError(path + ": cannot write the saved state");
  }
  out.commit();
}

/// Reads a session saved by save_session for this model: its cache (threads as given; one that
/// would need more than max_bytes is refused before it is allocated) and where the loop stands.
/// Throws FileError("<path>: <what>") for a file that cannot be read, is not a saved sequence, is
/// damaged, or belongs to another model.
inline msrnn::AnyCache load_session(const std::string& path, const LlamaWeights& weights,
                                    const msrnn::CacheConfig& model, Index threads,
                                    std::size_t max_bytes, SessionState& s) {
  const std::string bytes = read_file(path, "saved state");  // throws FileError
  auto bad = [&](const std::string& what) -> FileError { return FileError(path + ": " + what); };
  if (bytes.size() < kSessionMagic.size() + 8 ||
      std::string_view(bytes).substr(0, kSessionMagic.size()) != kSessionMagic) {
    throw bad("not a saved msrnn sequence (it does not start with \"msrnnseq\")");
  }
  const std::size_t body = bytes.size() - 8;
  std::uint64_t sum = 0;
  std::memcpy(&sum, bytes.data() + body, sizeof sum);
  if (sum != msrnn::state_checksum(reinterpret_cast<const unsigned char*>(bytes.data()), body)) {
    throw bad("checksum mismatch: the file is truncated or damaged");
  }
  try {
    msrnn::ByteReader r(std::string_view(bytes).substr(0, body), path + ": ");
    r.take(kSessionMagic.size(), "the magic");
    const auto version = r.get<std::uint32_t>("version");
    if (version != kSessionVersion) {
      r.fail("version " + std::to_string(version) + " is not supported (this build reads " +
             std::to_string(kSessionVersion) + ")");
    }
    if (r.get<std::uint64_t>("model fingerprint") != model_fingerprint(weights)) {
      r.fail("the state was saved with another model (its fingerprint differs from this one's)");
    }
    s.token = r.get<std::int32_t>("token");
    s.position = r.get<std::int64_t>("position");
    const auto pending = r.get<std::uint32_t>("pending prompt tokens");
    if (pending > r.left() / 4) r.fail("more pending prompt tokens than the file holds");
    s.pending_prompt.clear();
    for (std::uint32_t i = 0; i < pending; ++i)
      s.pending_prompt.push_back(r.get<std::int32_t>("a prompt token"));
    s.temperature = r.get<float>("temperature");
    s.topp = r.get<float>("top-p");
    s.rng_state = r.get<std::uint64_t>("random state");
    const auto size = r.get<std::uint64_t>("cache state size");
    if (size != r.left())
      r.fail("the cache state is " + std::to_string(r.left()) + " bytes, not " +
             std::to_string(size));
    const Index vocab = weights.config.vocab_size;
    auto check_token = [&](int t) {
      if (t < 0 || t >= vocab) r.fail("token " + std::to_string(t) + " is not in the vocabulary");
    };
    check_token(s.token);
    for (int t : s.pending_prompt) check_token(t);
    if (!(s.temperature >= 0.0f && s.temperature <= 100.0f) ||
        !(s.topp >= 0.0f && s.topp <= 1.0f)) {
      r.fail("the sampler's temperature or top-p is out of range");
    }
    msrnn::StateLoadOptions options;
    options.model = model;
    options.threads = threads;
    options.max_bytes = max_bytes;
    const unsigned char* state = r.take(static_cast<std::size_t>(size), "the cache state");
    msrnn::AnyCache cache = msrnn::load_state(
        std::string_view(reinterpret_cast<const char*>(state), static_cast<std::size_t>(size)),
        options);
    for (Index l = 0; l < cache.config().n_layers; ++l) {  // every layer saw every token
      if (s.position < 0 || s.position != cache.tokens_seen(l)) {
        r.fail("position " + std::to_string(s.position) + " is not the tokens layer " +
               std::to_string(l) + " has seen (" + std::to_string(cache.tokens_seen(l)) + ")");
      }
    }
    return cache;
  } catch (const std::invalid_argument& e) {
    std::string what = e.what();
    if (what.rfind(path + ": ", 0) == 0) throw FileError(what);
    if (what.rfind("msrnn: ", 0) == 0) what = what.substr(7);
    throw bad(what);
  }
}

}  // namespace engine
