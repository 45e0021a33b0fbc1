// save_state / load_state: the format's checks. (That a loaded state goes on bit for bit, for
// every policy, precision and position mode, is in every_policy_test.cpp.)
#include "msrnn/state_file.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

#include "test_util.hpp"

namespace msrnn {
namespace {

using testing::invalid_argument_message;
using testing::named;
using testing::random_matrix;
using testing::small_config;

constexpr std::size_t kHeader = 32;

// A one-layer cache of 2 KV heads (head_dim 4, no rope) with `tokens` stepped into it.
AnyCache stepped(const std::string& policy, Index capacity, Index tokens, Index n_layers = 1) {
  CacheConfig config = small_config(4, 2, 4, capacity, n_layers);
  AnyCache cache(config, make_policy(named(policy)));
  const RowMatrix q = random_matrix(tokens, 16, 1), k = random_matrix(tokens, 8, 2),
                  v = random_matrix(tokens, 8, 3);
  RowMatrix out(4, 4);
  for (Index t = 0; t < tokens; ++t) {
    for (Index l = 0; l < n_layers; ++l) {
      cache.step(l, Eigen::Map<const RowMatrix>(q.row(t).data(), 4, 4),
                 Eigen::Map<const RowMatrix>(k.row(t).data(), 2, 4),
                 Eigen::Map<const RowMatrix>(v.row(t).data(), 2, 4), out);
    }
  }
  return cache;
}

// The bytes with a valid checksum again (an edit a checksum cannot catch: a crafted file).
std::string resealed(std::string bytes) {
  const std::uint64_t sum = state_checksum(
      reinterpret_cast<const unsigned char*>(bytes.data()) + kHeader, bytes.size() - kHeader);
  std::memcpy(&bytes[24], &sum, sizeof sum);
  return bytes;
}

template <class T>
void poke(std::string& bytes, std::size_t at, T value) {
  ASSERT_LE(at + sizeof value, bytes.size());
  std::memcpy(&bytes[at], &value, sizeof value);
}
template <class T>
T peek(const std::string& bytes, std::size_t at) {
  T value{};
  std::memcpy(&value, &bytes[at], sizeof value);
  return value;
}

// Offsets in the payload of a state of small_config (no rope) and policy `name` (format v1).
struct Offsets {
  std::size_t layer;  // the first layer's held
  Offsets(const std::string& name) {
    const std::size_t config = 5 * 8 + 1 + 1 + 4 + 1 + 1 + 8;  // no rope
    const std::size_t policy = 4 + name.size() + 8 + 8 + 1 + 1;
    layer = kHeader + config + policy;
  }
  std::size_t held() const { return layer; }
  std::size_t seen() const { return layer + 8; }
  std::size_t used() const { return layer + 16; }
  std::size_t free_slot(Index g) const { return layer + 24 + 8 * static_cast<std::size_t>(g); }
  // Slot s of KV head g, for 2 KV heads and `used` slots: its position (then its f32 score).
  std::size_t position(Index g, Index s, Index used) const {
    return layer + 24 + 16 + 12 * static_cast<std::size_t>(g * used + s);
  }
};

std::string load_error(const std::string& bytes, const StateLoadOptions& options = {}) {
  return invalid_argument_message([&] { load_state(bytes, options); });
}

TEST(StateFile, RoundTripsThroughAStreamAndLeavesWhatFollows) {
  AnyCache cache = stepped("h2o", 5, 12);
  std::stringstream stream;
  save_state(cache, stream);
  stream << "next";
  AnyCache loaded = load_state(stream);
  std::string rest;
  stream >> rest;
  EXPECT_EQ(rest, "next");
  EXPECT_TRUE(save_state(loaded) == save_state(cache));
  EXPECT_EQ(loaded.kept_positions(0, 1), cache.kept_positions(0, 1));
  EXPECT_EQ(policy_name(loaded.policy()), std::string("h2o"));
  EXPECT_EQ(std::get<H2O>(loaded.policy()).recent, 2);  // C / 2, resolved when saved
}

TEST(StateFile, EveryTruncationIsRejectedAndNamed) {
  const std::string bytes = save_state(stepped("tova", 4, 9));
  for (std::size_t size = 0; size < bytes.size(); ++size) {
    const std::string message = load_error(bytes.substr(0, size));
    ASSERT_NE(message.find("truncated"), std::string::npos) << size << ": " << message;
    std::istringstream stream(bytes.substr(0, size));
    const std::string from_stream = invalid_argument_message([&] { load_state(stream); });
    ASSERT_NE(from_stream.find("truncated"), std::string::npos) << size << ": " << from_stream;
  }
}

TEST(StateFile, EveryFlippedPayloadByteFailsTheChecksum) {
  const std::string bytes = save_state(stepped("window", 3, 7));
  for (std::size_t at = kHeader; at < bytes.size(); ++at) {
    std::string damaged = bytes;
    damaged[at] = static_cast<char>(damaged[at] ^ 0x10);
    ASSERT_NE(load_error(damaged).find("checksum mismatch"), std::string::npos) << at;
  }
}

TEST(StateFile, TheHeaderIsChecked) {
  const std::string bytes = save_state(stepped("window", 3, 7));
  std::string magic = bytes;
  magic[0] = 'X';
  EXPECT_NE(load_error(magic).find("not a saved msrnn state"), std::string::npos);
  std::string version = bytes;
  poke<std::uint32_t>(version, 8, 2);
  EXPECT_NE(load_error(version).find("version 2 is not supported"), std::string::npos);
  std::string order = bytes;
  poke<std::uint32_t>(order, 12, 0x04030201U);
  EXPECT_NE(load_error(order).find("byte order"), std::string::npos);
  EXPECT_NE(load_error(bytes + "x").find("1 bytes follow the state"), std::string::npos);
  // A header that announces far more than follows costs no more than what follows.
  std::string huge = bytes;
  poke<std::uint64_t>(huge, 16, std::uint64_t{1} << 60);
  EXPECT_NE(load_error(huge).find("truncated"), std::string::npos);
  std::istringstream stream(huge);
  EXPECT_NE(invalid_argument_message([&] { load_state(stream); }).find("truncated"),
            std::string::npos);
}

TEST(StateFile, AStateOfAnotherModelIsRefused) {
  const std::string bytes = save_state(stepped("window", 3, 7));
  StateLoadOptions options;
  options.model = small_config(4, 2, 4, 3, 2);  // two layers
  EXPECT_NE(load_error(bytes, options).find("another model: its n_layers is 1, this model's 2"),
            std::string::npos);
  options.model = small_config(4, 1, 4, 3);
  EXPECT_NE(load_error(bytes, options).find("n_kv_heads"), std::string::npos);
  options.model = small_config(4, 2, 4, 3);
  options.model->rope = Rope(4);
  EXPECT_NE(load_error(bytes, options).find("rope"), std::string::npos);
  options.model = small_config(4, 2, 4, 99);  // the capacity is the state's own
  EXPECT_EQ(load_error(bytes, options), "");
  options.model->scale = 0.25f;
  EXPECT_NE(load_error(bytes, options).find("scale"), std::string::npos);
  // A typed cache takes only its own policy.
  EXPECT_NE(invalid_argument_message([&] {
              load_state<TOVA>(bytes);
            }).find("policy window: this cache's policy is tova"),
            std::string::npos);
  EXPECT_EQ(invalid_argument_message([&] { load_state<Window>(bytes); }), "");
}

TEST(StateFile, InconsistentStatesAreRefusedByName) {
  // window, C = 3, 7 tokens: 3 held, 4 slots used; per-layer eviction, so both heads alike.
  const std::string name = "window";
  const std::string bytes = save_state(stepped(name, 3, 7));
  const Offsets at(name);
  ASSERT_EQ(peek<std::int64_t>(bytes, at.held()), 3);
  ASSERT_EQ(peek<std::int64_t>(bytes, at.used()), 4);
  const Index used = 4;
  const Index free = peek<std::int64_t>(bytes, at.free_slot(0));
  const Index taken = free == 0 ? 1 : 0;  // a slot that holds a state
  const Index other = free == 0 || free == 1 ? 2 : 1;
  auto edited = [&](auto edit) {
    std::string b = bytes;
    edit(b);
    return load_error(resealed(b));
  };
  EXPECT_NE(edited([&](std::string& b) {
              poke<std::int64_t>(b, at.held(), 4);
            }).find("more states than the capacity (3)"),
            std::string::npos);
  EXPECT_NE(edited([&](std::string& b) {
              poke<std::int64_t>(b, at.seen(), 2);
            }).find("tokens_seen = 2: must be at least held"),
            std::string::npos);
  EXPECT_NE(edited([&](std::string& b) { poke<std::int64_t>(b, at.seen(), kMaxPosition + 1); })
                .find("tokens_seen = " + std::to_string(kMaxPosition + 1) +
                      ": must be at most kMaxPosition"),
            std::string::npos);
  EXPECT_NE(
      edited([&](std::string& b) { poke<std::int64_t>(b, at.used(), 6); }).find("used slots = 6"),
      std::string::npos);
  EXPECT_NE(edited([&](std::string& b) {
              poke<std::int64_t>(b, at.free_slot(0), 9);
            }).find("free slot 9"),
            std::string::npos);
  // Positions: repeated, past tokens seen, negative, in the free slot.
  const auto p = [&](Index g, Index s) { return at.position(g, s, used); };
  EXPECT_NE(edited([&](std::string& b) {
              for (Index g = 0; g < 2; ++g)
                poke<std::int64_t>(b, p(g, other), peek<std::int64_t>(b, p(g, taken)));
            }).find("is held twice"),
            std::string::npos);
  EXPECT_NE(edited([&](std::string& b) {
              for (Index g = 0; g < 2; ++g) poke<std::int64_t>(b, p(g, taken), 7);
            }).find("not in [0, tokens seen = 7)"),
            std::string::npos);
  EXPECT_NE(edited([&](std::string& b) {
              for (Index g = 0; g < 2; ++g) poke<std::int64_t>(b, p(g, taken), -5);
            }).find("holds position -5"),
            std::string::npos);
  EXPECT_NE(edited([&](std::string& b) {
              for (Index g = 0; g < 2; ++g) poke<std::int64_t>(b, p(g, free), 0);
            }).find("the free slot"),
            std::string::npos);
  // A per-layer policy's heads must agree.
  EXPECT_NE(edited([&](std::string& b) {
              poke<std::int64_t>(b, p(1, taken), 0);
            }).find("differ from KV head 0's"),
            std::string::npos);
  // Config fields out of range, and an unknown policy.
  EXPECT_NE(edited([&](std::string& b) { poke<std::int64_t>(b, kHeader, 0); }).find("n_layers = 0"),
            std::string::npos);
  EXPECT_NE(
      edited([&](std::string& b) { poke<std::int64_t>(b, kHeader + 32, 0); }).find("capacity = 0"),
      std::string::npos);
  EXPECT_NE(edited([&](std::string& b) {
              poke<std::uint8_t>(b, kHeader + 40 + 1 + 1 + 4, 7);
            }).find("kv_type = 7"),
            std::string::npos);
  EXPECT_NE(edited([&](std::string& b) { b[kHeader + 56 + 4] = 'W'; }).find("unknown policy"),
            std::string::npos);
  // A name from the bytes reaches the message escaped: no line break, no terminal control.
  const std::string escaped = edited([&](std::string& b) {
    b[kHeader + 56 + 4] = '\n';
    b[kHeader + 56 + 5] = '\x1b';
  });
  EXPECT_NE(escaped.find("policy = \\n\\x1b"), std::string::npos) << escaped;
  EXPECT_EQ(escaped.find_first_of("\n\x1b"), std::string::npos) << escaped;
  // A payload longer than its layers.
  std::string longer = bytes + std::string(8, '\0');
  poke<std::uint64_t>(longer, 16, longer.size() - kHeader);
  EXPECT_NE(load_error(resealed(longer)).find("8 bytes are left after the last layer"),
            std::string::npos);
}

// Before its first eviction a layer's states fill slots [0, held) in position order, and only a
// full cache that evicted uses held + 1 slots (step_chunk and append rely on both).
TEST(StateFile, TheSlotLayoutOfACacheThatNeverEvictedIsChecked) {
  const std::string name = "window";
  const std::string bytes = save_state(stepped(name, 8, 5));
  const Offsets at(name);
  ASSERT_EQ(peek<std::int64_t>(bytes, at.held()), 5);
  ASSERT_EQ(peek<std::int64_t>(bytes, at.used()), 5);
  const auto p = [&](Index g, Index s) { return at.position(g, s, 5); };
  std::string swapped = bytes;
  for (Index g = 0; g < 2; ++g) {
    poke<std::int64_t>(swapped, p(g, 0), peek<std::int64_t>(bytes, p(g, 1)));
    poke<std::int64_t>(swapped, p(g, 1), peek<std::int64_t>(bytes, p(g, 0)));
  }
  EXPECT_NE(load_error(resealed(swapped)).find("the positions ascend with the slots"),
            std::string::npos);
  std::string extra = bytes;  // one more slot used, as if it had evicted, with 5 of 8 states
  poke<std::int64_t>(extra, at.used(), 6);
  EXPECT_NE(load_error(resealed(extra)).find("once a full cache has evicted"), std::string::npos);
  // And the loaded cache takes a prompt through the chunk path, and appended states, as the
  // original does.
  AnyCache original = load_state(bytes);
  AnyCache loaded = load_state(bytes);
  const RowMatrix q = random_matrix(2, 16, 9), k = random_matrix(2, 8, 10);
  RowMatrix out_a(2, 16), out_b(2, 16);
  original.step_chunk(0, q, k, k, out_a);
  loaded.step_chunk(0, q, k, k, out_b);
  EXPECT_TRUE(out_a == out_b);
  original.append(0, k.topRows(1), k.topRows(1));
  loaded.append(0, k.topRows(1), k.topRows(1));
  EXPECT_TRUE(save_state(original) == save_state(loaded));
  EXPECT_EQ(loaded.size(0), 8);
}

// A state remembers the decode kernels it ran: loaded where the CPU has them, it uses them (each
// vector unit rounds its sums its own way), unless told otherwise.
TEST(StateFile, TheSavedKernelsAreKept) {
  CacheConfig config = small_config(4, 2, 16, 6);
  config.kernels = Kernels::portable;
  AnyCache cache(config, make_policy(named("tova")));
  const RowMatrix q = random_matrix(20, 64, 3), k = random_matrix(20, 32, 4);
  RowMatrix out(4, 16), again(4, 16);
  auto step = [&](AnyCache& c, Index t, RowMatrix& o) {
    c.step(0, Eigen::Map<const RowMatrix>(q.row(t).data(), 4, 16),
           Eigen::Map<const RowMatrix>(k.row(t).data(), 2, 16),
           Eigen::Map<const RowMatrix>(k.row(t).data(), 2, 16), o);
  };
  for (Index t = 0; t < 10; ++t) step(cache, t, out);
  AnyCache loaded = load_state(save_state(cache));
  EXPECT_EQ(loaded.kernels(), Kernels::portable);
  for (Index t = 10; t < 20; ++t) {
    step(cache, t, out);
    step(loaded, t, again);
    ASSERT_TRUE(out == again) << t;
  }
  StateLoadOptions options;
  options.kernels = best_kernels();
  EXPECT_EQ(load_state(save_state(cache), options).kernels(), best_kernels());
}

TEST(StateFile, InCacheRanksAreChecked) {
  CacheConfig config = small_config(2, 1, 4, 4);
  config.rope = Rope(4);
  config.positions = PositionMode::in_cache;
  AnyCache cache(config, make_policy(named("tova")));
  const RowMatrix q = random_matrix(12, 8, 5), k = random_matrix(12, 4, 6);
  RowMatrix out(2, 4);
  for (Index t = 0; t < 12; ++t) {
    cache.step(0, Eigen::Map<const RowMatrix>(q.row(t).data(), 2, 4),
               Eigen::Map<const RowMatrix>(k.row(t).data(), 1, 4),
               Eigen::Map<const RowMatrix>(k.row(t).data(), 1, 4), out);
  }
  const std::string bytes = save_state(cache);
  // config with a rope: 5 i64, u8, f64, u8, u8, f32, u8, u8, i64; policy "tova".
  const std::size_t layer = kHeader + 40 + 1 + 8 + 1 + 1 + 4 + 1 + 1 + 8 + 4 + 4 + 18;
  const Index used = peek<std::int64_t>(bytes, layer + 16);
  ASSERT_EQ(used, 5);
  const Index free = peek<std::int64_t>(bytes, layer + 24);
  const std::size_t base = layer + 32;
  const Index slot = free == 0 ? 1 : 0;
  const std::size_t virtual_at = layer + 40 + 20 * static_cast<std::size_t>(slot) + 12;
  std::string rank = bytes;
  poke<std::int64_t>(rank, virtual_at, peek<std::int64_t>(bytes, virtual_at) + 9);
  EXPECT_NE(load_error(resealed(rank)).find("the rank is out of place"), std::string::npos);
  // An offset in a cache that never evicted: only evictions move it, and only a full one evicts.
  AnyCache young(config, make_policy(named("tova")));
  for (Index t = 0; t < 3; ++t) {
    young.step(0, Eigen::Map<const RowMatrix>(q.row(t).data(), 2, 4),
               Eigen::Map<const RowMatrix>(k.row(t).data(), 1, 4),
               Eigen::Map<const RowMatrix>(k.row(t).data(), 1, 4), out);
  }
  std::string moved = save_state(young);
  ASSERT_EQ(peek<std::int64_t>(moved, layer + 16), 3);  // 3 slots used, no eviction
  poke<std::int64_t>(moved, base, 1);
  EXPECT_NE(load_error(resealed(moved)).find("says states were evicted, but the layer holds 3"),
            std::string::npos);
  std::string offset = bytes;
  poke<std::int64_t>(offset, base, 6);  // past C + 1
  EXPECT_NE(load_error(resealed(offset)).find("in_cache base 6 is out of range [0, 5]"),
            std::string::npos);
}

TEST(StateFile, AStateTooLargeForMaxBytesIsRefusedBeforeItIsBuilt) {
  const std::string bytes = save_state(stepped("window", 1000, 3));
  StateLoadOptions options;
  options.max_bytes = 4096;
  EXPECT_NE(load_error(bytes, options).find("more than max_bytes (4096)"), std::string::npos);
  options.max_bytes = std::size_t{1} << 30;
  EXPECT_EQ(load_error(bytes, options), "");
}

// The header is checked first: a payload it announces above max_bytes is refused before a byte
// of it is read (a stream is left just after the header).
TEST(StateFile, AnAnnouncedPayloadAboveMaxBytesIsRefusedUnread) {
  std::string bytes = save_state(stepped("window", 8, 3));
  poke<std::uint64_t>(bytes, 16, std::uint64_t{1} << 40);
  StateLoadOptions options;
  options.max_bytes = std::size_t{1} << 20;
  std::istringstream stream(bytes);
  const std::string m = invalid_argument_message([&] { load_state(stream, options); });
  EXPECT_NE(m.find("announces 1099511627776 payload bytes, more than max_bytes (1048576)"),
            std::string::npos)
      << m;
  EXPECT_EQ(stream.tellg(), 32);
  EXPECT_NE(load_error(bytes, options).find("more than max_bytes"), std::string::npos);
}

TEST(StateFile, AMovedFromCacheHasNoStateToSave) {
  AnyCache cache = stepped("full", 8, 2);
  AnyCache taken = std::move(cache);
  EXPECT_NE(invalid_argument_message([&] { save_state(cache); }).find("moved-from"),
            std::string::npos);
  EXPECT_EQ(load_state(save_state(taken)).tokens_seen(0), 2);
}

}  // namespace
}  // namespace msrnn
