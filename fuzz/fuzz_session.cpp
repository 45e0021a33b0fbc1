// libFuzzer target: the engine's saved sequences (read_session) on hostile bytes. Raw bytes as a
// file, and a valid session of a tiny random model edited by the input and resealed (the outer
// checksum), so the checks behind the checksum are reached. The header is read first and then
// exactly what it announces: nothing may be allocated beyond the input's size, and whatever
// loads must step. Anything else must be engine::FileError.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <msrnn/msrnn.hpp>
#include <sstream>
#include <string>

#include "fuzz_bytes.hpp"
#include "model.hpp"
#include "session.hpp"

namespace {

using engine::Index;

const engine::LlamaWeights& weights() {
  static const engine::LlamaWeights w = [] {
    engine::LlamaConfig c;
    c.dim = 16;
    c.hidden_dim = 24;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.vocab_size = 32;
    c.seq_len = 32;
    return engine::random_weights(c, 7);
  }();
  return w;
}

// A valid session: a cache of any policy, stepped a few tokens by the model, and a loop state.
std::string made_session(fuzz::Bytes& in) {
  engine::CacheSettings settings;
  settings.policy.name = std::string(msrnn::kPolicyNames[in.next() % msrnn::kPolicyNames.size()]);
  settings.policy.sinks = 1;
  settings.capacity = 2 + in.next() % 6;
  settings.kv_type = static_cast<msrnn::KvType>(in.next() % 4);
  settings.positions =
      in.next() % 2 ? msrnn::PositionMode::in_cache : msrnn::PositionMode::absolute;
  engine::LlamaModel model(weights(), settings);
  const int steps = in.next() % 10;
  for (int t = 0; t < steps; ++t) model.forward(in.next() % 32);
  engine::SessionState at;
  at.token = in.next() % 32;
  at.position = model.cache().tokens_seen(0);
  for (int p = in.next() % 3; p > 0; --p) at.pending_prompt.push_back(in.next() % 32);
  at.temperature = 0.5f;
  return engine::session_bytes(weights(), model.cache(), at);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Bytes in{data, size};
  std::string bytes;
  if (in.next() % 2 == 0) {
    bytes.assign(reinterpret_cast<const char*>(data) + 1, size > 0 ? size - 1 : 0);
  } else {
    bytes = made_session(in);
    const std::size_t edits = in.next() % 4;
    for (std::size_t e = 0; e < edits && bytes.size() > 8; ++e) {
      const std::size_t at = 8 + (in.next() * 256U + in.next()) % (bytes.size() - 8);
      bytes[at] = static_cast<char>(in.next());
    }
    if (in.next() % 8 == 0) bytes.resize(bytes.size() - in.next() % bytes.size());
    if (bytes.size() >= 16 && in.next() % 8 != 0) {
      const std::uint64_t sum = msrnn::state_checksum(
          reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size() - 8);
      std::memcpy(&bytes[bytes.size() - 8], &sum, sizeof sum);
    }
  }
  engine::CacheSettings shape;
  shape.policy.name = "full";
  std::istringstream stream(bytes);
  engine::SessionState at;
  try {
    msrnn::AnyCache cache = engine::read_session(stream, bytes.size(), "session", weights(),
                                                 engine::cache_config(weights().config, shape), 1,
                                                 std::size_t{64} << 20, at);
    engine::LlamaModel model(weights(), std::move(cache));
    if (at.position < msrnn::kMaxPosition) {  // (at the limit a step is refused)
      model.forward(at.token);
      if (model.cache().tokens_seen(0) != at.position + 1) __builtin_trap();
    }
  } catch (const engine::FileError&) {
    return 0;  // refused, as it must be
  }
  return 0;
}
