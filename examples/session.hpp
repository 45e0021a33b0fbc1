// A generated sequence saved to a file and resumed: the cache's state (msrnn::save_state) with
// what the decoding loop needs to go on (the next token, its position, prompt tokens not yet fed,
// the sampler), tied to the model it was made with.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <istream>
#include <msrnn/msrnn.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
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

/// The bytes of a saved session (the format above).
inline std::string session_bytes(const LlamaWeights& weights, const msrnn::AnyCache& cache,
                                 const SessionState& s) {
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
  return bytes;
}

/// Writes the session into `out`, which the caller commits (with its other outputs).
inline void write_session(AtomicOutput& out, const LlamaWeights& weights,
                          const msrnn::AnyCache& cache, const SessionState& s) {
  const std::string bytes = session_bytes(weights, cache, s);
  // (a failed write shows at commit, which names the file)
  std::fwrite(bytes.data(), 1, bytes.size(), out.file());
}

/// Writes the session to `path`, which is replaced only once the file is whole (AtomicOutput).
/// Throws FileError when it cannot be written.
inline void save_session(const std::string& path, const LlamaWeights& weights,
                         const msrnn::AnyCache& cache, const SessionState& s) {
  AtomicOutput out(path);
  write_session(out, weights, cache, s);
  out.commit();
}

/// Reads a session saved by save_session, `size` bytes in all, from `in` for this model: its
/// cache (threads as given; one that would need more than max_bytes is refused before it is
/// allocated) and where the loop stands. Reads the header first and then exactly the bytes it
/// announces: a file that is not a saved sequence, belongs to another model, or whose size is
/// not the one its header gives is refused before the rest is read. Throws FileError("<name>:
/// <what>") for anything wrong with it.
inline msrnn::AnyCache read_session(std::istream& in, std::uint64_t size, const std::string& name,
                                    const LlamaWeights& weights, const msrnn::CacheConfig& model,
                                    Index threads, std::size_t max_bytes, SessionState& s) {
  auto bad = [&](const std::string& what) { return FileError(name + ": " + what); };
  std::string bytes;  // what has been read, from the file's first byte
  auto read = [&](std::uint64_t n) {
    const std::size_t at = bytes.size();
    bytes.resize(at + static_cast<std::size_t>(n));
    in.read(bytes.data() + at, static_cast<std::streamsize>(n));
    if (static_cast<std::uint64_t>(in.gcount()) != n) {
      throw bad("cannot read byte " + std::to_string(at + static_cast<std::size_t>(in.gcount())) +
                " of " + std::to_string(size) + " (did the file change?)");
    }
  };
  // magic, version, fingerprint, token, position, pending count | pending tokens | temperature,
  // top-p, random state, cache state size | the cache state | checksum
  constexpr std::uint64_t kHead = 36, kTail = 24, kSum = 8;
  if (size < kSessionMagic.size()) {
    throw bad("not a saved msrnn sequence (it does not start with \"msrnnseq\")");
  }
  read(kSessionMagic.size());
  if (bytes != kSessionMagic) {
    throw bad("not a saved msrnn sequence (it does not start with \"msrnnseq\")");
  }
  if (size < kHead + kTail + kSum) {
    throw bad("truncated: " + std::to_string(size) + " bytes; a saved sequence has at least " +
              std::to_string(kHead + kTail + kSum));
  }
  try {
    // The sizes first (they bound what is read; damaged, they read as a truncation), the
    // verdicts on the contents once the checksum has passed.
    read(kHead - kSessionMagic.size());
    msrnn::ByteReader head(std::string_view(bytes).substr(kSessionMagic.size()), name + ": ");
    const auto version = head.get<std::uint32_t>("version");
    const auto fingerprint = head.get<std::uint64_t>("model fingerprint");
    s.token = head.get<std::int32_t>("token");
    s.position = head.get<std::int64_t>("position");
    const auto pending = head.get<std::uint32_t>("pending prompt tokens");
    if (pending > (size - kHead - kTail - kSum) / 4) {
      head.fail("truncated or damaged: the header announces " + std::to_string(pending) +
                " pending prompt tokens, more than the file's " + std::to_string(size) +
                " bytes hold");
    }
    read(4 * std::uint64_t{pending} + kTail);
    msrnn::ByteReader tail(std::string_view(bytes).substr(kHead), name + ": ");
    s.pending_prompt.clear();
    for (std::uint32_t i = 0; i < pending; ++i)
      s.pending_prompt.push_back(tail.get<std::int32_t>("a prompt token"));
    s.temperature = tail.get<float>("temperature");
    s.topp = tail.get<float>("top-p");
    s.rng_state = tail.get<std::uint64_t>("random state");
    const auto state_size = tail.get<std::uint64_t>("cache state size");
    const std::uint64_t fixed = kHead + 4 * std::uint64_t{pending} + kTail + kSum;
    if (state_size > size - fixed) {
      tail.fail("truncated or damaged: the header announces a cache state of " +
                std::to_string(state_size) + " bytes; the file has " +
                std::to_string(size - fixed) + " for it");
    }
    if (state_size < size - fixed) {
      tail.fail(std::to_string(size - fixed - state_size) +
                " bytes follow the saved sequence (its header announces " +
                std::to_string(fixed + state_size) + " of the file's " + std::to_string(size) +
                "; or the header is damaged)");
    }
    if (state_size > max_bytes) {
      tail.fail("the cache state is " + std::to_string(state_size) +
                " bytes, more than this machine's memory allows (" + std::to_string(max_bytes) +
                ")");
    }
    read(state_size + kSum);  // (the readers above now point at freed bytes: `bad` below)
    const std::size_t body = bytes.size() - kSum;
    std::uint64_t sum = 0;
    std::memcpy(&sum, bytes.data() + body, sizeof sum);
    if (sum != msrnn::state_checksum(reinterpret_cast<const unsigned char*>(bytes.data()), body)) {
      throw bad("checksum mismatch: the file is damaged");
    }
    if (version != kSessionVersion) {
      throw bad("version " + std::to_string(version) + " is not supported (this build reads " +
                std::to_string(kSessionVersion) + ")");
    }
    if (fingerprint != model_fingerprint(weights)) {
      throw bad("the state was saved with another model (its fingerprint differs from this one's)");
    }
    const Index vocab = weights.config.vocab_size;
    auto check_token = [&](int t) {
      if (t < 0 || t >= vocab)
        throw bad("token " + std::to_string(t) + " is not in the vocabulary");
    };
    check_token(s.token);
    for (int t : s.pending_prompt) check_token(t);
    if (!(s.temperature >= 0.0f && s.temperature <= 100.0f) ||
        !(s.topp >= 0.0f && s.topp <= 1.0f)) {
      throw bad("the sampler's temperature or top-p is out of range");
    }
    msrnn::StateLoadOptions options;
    options.model = model;
    options.threads = threads;
    options.max_bytes = max_bytes;
    msrnn::AnyCache cache =
        msrnn::load_state(std::string_view(bytes).substr(static_cast<std::size_t>(fixed - kSum),
                                                         static_cast<std::size_t>(state_size)),
                          options);
    for (Index l = 0; l < cache.config().n_layers; ++l) {  // every layer saw every token
      if (s.position < 0 || s.position != cache.tokens_seen(l)) {
        throw bad("position " + std::to_string(s.position) + " is not the tokens layer " +
                  std::to_string(l) + " has seen (" + std::to_string(cache.tokens_seen(l)) + ")");
      }
    }
    return cache;
  } catch (const std::invalid_argument& e) {
    std::string what = e.what();
    if (what.rfind(name + ": ", 0) == 0) throw FileError(what);
    if (what.rfind("msrnn: ", 0) == 0) what = what.substr(7);
    throw bad(what);
  }
}

/// Reads the session saved in the file `path` (read_session); FileError("<path>: <what>") also
/// for a file that does not exist, is not a regular file or cannot be read.
inline msrnn::AnyCache load_session(const std::string& path, const LlamaWeights& weights,
                                    const msrnn::CacheConfig& model, Index threads,
                                    std::size_t max_bytes, SessionState& s) {
  require_regular_file(path, "saved state");
  std::error_code error;
  const std::uintmax_t size = std::filesystem::file_size(path, error);
  std::ifstream in(path, std::ios::binary);
  if (error || !in) throw FileError(path + ": cannot open the saved state file");
  return read_session(in, size, path, weights, model, threads, max_bytes, s);
}

}  // namespace engine
