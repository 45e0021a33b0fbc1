// libFuzzer target: load_state on hostile bytes. Two kinds of input: raw bytes as a file (the
// header and checksum checks), and, since a random edit almost never passes the checksum, a
// valid state saved from a cache the input configures and steps, then edited by the input and
// resealed with a correct checksum (the checks of the payload). Whatever loads must be usable:
// it steps with every output finite and at most C states, and saved again it loads again to the
// same bytes, and takes a chunk and an appended state. Anything else must be
// std::invalid_argument.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <msrnn/msrnn.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

#include "fuzz_bytes.hpp"

namespace {

using fuzz::Bytes;

using msrnn::Index;
using msrnn::RowMatrix;

void step_all(msrnn::AnyCache& cache, Bytes& in, Index tokens) {
  const msrnn::CacheConfig& c = cache.config();
  RowMatrix q(c.n_q_heads, c.head_dim), k(c.n_kv_heads, c.head_dim), v(c.n_kv_heads, c.head_dim);
  RowMatrix out(c.n_q_heads, c.head_dim);
  for (Index t = 0; t < tokens; ++t) {
    for (Index l = 0; l < c.n_layers; ++l) {
      for (Index i = 0; i < q.size(); ++i) q.data()[i] = in.value();
      for (Index i = 0; i < k.size(); ++i) k.data()[i] = in.value();
      for (Index i = 0; i < v.size(); ++i) v.data()[i] = in.value();
      cache.step(l, q, k, v, out);
      if (cache.size(l) > cache.capacity()) __builtin_trap();
    }
  }
}

// A valid state from the input's first bytes: a small cache of any policy, precision and
// position mode, stepped a few tokens.
std::string made_state(Bytes& in) {
  msrnn::CacheConfig config;
  config.n_layers = 1 + in.next() % 2;
  config.n_kv_heads = 1 + in.next() % 2;
  config.n_q_heads = config.n_kv_heads * (1 + in.next() % 2);
  config.head_dim = 2 * (1 + in.next() % 3);
  config.capacity = 2 + in.next() % 5;  // above the 1 sink
  config.kv_type = static_cast<msrnn::KvType>(in.next() % 4);
  const std::uint8_t rope = in.next() % 3;
  if (rope > 0) {
    config.rope = msrnn::Rope(config.head_dim);
    config.positions = rope == 1 ? msrnn::PositionMode::absolute : msrnn::PositionMode::in_cache;
  }
  if (in.next() % 4 == 0) config.max_tokens = 1 + in.next() % 8;
  msrnn::PolicyOptions options;
  options.name = std::string(msrnn::kPolicyNames[in.next() % msrnn::kPolicyNames.size()]);
  options.sinks = 1;
  options.recent = 0;
  options.granularity =
      in.next() % 2 ? msrnn::TovaGranularity::head : msrnn::TovaGranularity::layer;
  msrnn::AnyCache cache(config, msrnn::make_policy(options));
  step_all(cache, in, in.next() % 12);
  return msrnn::save_state(cache);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes in{data, size};
  std::string bytes;
  if (in.next() % 2 == 0) {
    bytes.assign(reinterpret_cast<const char*>(data) + 1, size > 0 ? size - 1 : 0);
  } else {
    bytes = made_state(in);
    // Edits: (offset, byte) pairs, then maybe a truncation; resealed unless told otherwise.
    const std::size_t edits = in.next() % 4;
    for (std::size_t e = 0; e < edits && bytes.size() > 32; ++e) {
      const std::size_t at = 32 + (in.next() * 256U + in.next()) % (bytes.size() - 32);
      bytes[at] = static_cast<char>(in.next());
    }
    if (in.next() % 8 == 0) bytes.resize(bytes.size() - in.next() % bytes.size());
    if (bytes.size() >= 32 && in.next() % 8 != 0) {
      const std::uint64_t sum = msrnn::state_checksum(
          reinterpret_cast<const unsigned char*>(bytes.data()) + 32, bytes.size() - 32);
      std::memcpy(&bytes[24], &sum, sizeof sum);
    }
  }
  msrnn::StateLoadOptions options;
  options.max_bytes = std::size_t{64} << 20;
  try {
    // The stream path reads the header first and the payload as it arrives: it accepts what the
    // bytes path accepts (and leaves what follows a state unread), with the same state.
    std::istringstream stream(bytes);
    std::optional<msrnn::AnyCache> streamed;
    try {
      streamed.emplace(msrnn::load_state(stream, options));
    } catch (const std::invalid_argument&) {
    }
    msrnn::AnyCache cache = msrnn::load_state(bytes, options);
    const std::string again = msrnn::save_state(cache);
    if (!streamed || msrnn::save_state(*streamed) != again) __builtin_trap();
    if (msrnn::save_state(msrnn::load_state(again, options)) != again) __builtin_trap();
    step_all(cache, in, 3);
    // The chunk path and append, which rely on the slot layout, too.
    const msrnn::CacheConfig& c = cache.config();
    const Index t = 1 + in.next() % 3;
    RowMatrix q(t, c.n_q_heads * c.head_dim), k(t, c.n_kv_heads * c.head_dim);
    for (Index i = 0; i < q.size(); ++i) q.data()[i] = in.value();
    for (Index i = 0; i < k.size(); ++i) k.data()[i] = in.value();
    RowMatrix out(t, c.n_q_heads * c.head_dim);
    cache.step_chunk(0, q, k, k, out);
    if (cache.capacity() == msrnn::kUnbounded || cache.size(0) < cache.capacity()) {
      cache.append(0, k.topRows(1), k.topRows(1));
    }
    if (cache.size(0) > cache.capacity()) __builtin_trap();
  } catch (const std::invalid_argument&) {
    return 0;  // refused, as it must be
  }
  return 0;
}
