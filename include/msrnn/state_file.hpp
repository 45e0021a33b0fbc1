// A cache's whole state as a value: save_state writes it to bytes, load_state builds a cache that
// goes on exactly like the saved one. The format is documented below and versioned.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <istream>
#include <limits>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "msrnn/byte_io.hpp"
#include "msrnn/cache.hpp"
#include "msrnn/policy.hpp"

namespace msrnn {

/// The version of the state format that save_state writes and load_state reads.
inline constexpr std::uint32_t kStateVersion = 1;

/// What a saved state starts with: "msrnnkv" and a 0 byte.
inline constexpr std::string_view kStateMagic{"msrnnkv\0", 8};

/// How load_state builds the cache; the state itself comes from the bytes.
struct StateLoadOptions {
  /// When set, the state must be one of this model: its n_layers, n_q_heads, n_kv_heads, head_dim,
  /// rope (present or not, theta, layout) and scale (empty: 1 / sqrt(head_dim)) must equal the
  /// saved ones; its other fields are not compared (capacity, policy, positions, kv_type are the
  /// state's own).
  std::optional<CacheConfig> model;
  /// The loaded cache's run-time settings (CacheConfig's fields of the same names). threads and
  /// max_chunk change no result. kernels does, in the last bits (each vector unit rounds its
  /// sums its own way): automatic takes the kernels the state was saved with when this CPU has
  /// them (bit for bit), else this CPU's best.
  Index threads = 1;
  Kernels kernels = Kernels::automatic;
  Index max_chunk = 256;
  /// Most bytes the loaded cache may allocate (its keys and values, bookkeeping and scratch,
  /// estimated from above): a state that would need more is refused before anything is
  /// allocated. The default is no limit, which trusts the bytes' capacity: a state of capacity
  /// 2^40 asks for its slots as a constructed cache would (and gets std::bad_alloc). Set it
  /// when loading states you did not write.
  std::size_t max_bytes = std::numeric_limits<std::size_t>::max();
};

// The format, version 1. Every field is little-endian; i64, u32, u8 integers, f32 and f64 IEEE.
//
//   header, 32 bytes
//     magic      8 bytes   "msrnnkv\0"
//     version    u32       1
//     byte order u32       0x01020304 (the bytes 04 03 02 01)
//     size       u64       bytes of the payload that follows
//     checksum   u64       state_checksum of the payload
//   payload
//     config     i64 n_layers, n_q_heads, n_kv_heads, head_dim, capacity (2^63 - 1: unbounded)
//                u8 rope (0 none, 1 present); if present f64 theta, u8 layout (0 interleaved,
//                1 half_split)
//                u8 positions (0 absolute, 1 in_cache), f32 scale (the factor on q.k),
//                u8 kv_type (0 f32, 1 f16, 2 bf16, 3 q8), u8 kernels (the decode kernels it
//                ran: 1 portable, 2 avx2, 3 avx512), i64 max_tokens (0: not set)
//     policy     u32 length + name (kPolicyNames), i64 sinks, i64 recent (resolved: C / 2 is
//                saved as its value), u8 normalize, u8 granularity (0 layer, 1 head)
//     n_layers times:
//       i64 held, i64 seen (tokens_seen), i64 used (slots written since reset)
//       per KV head: i64 free slot; in_cache: i64 base (the virtual position of rank 0)
//       per KV head, per slot in [0, used): i64 position (-1: none, the free slot), f32 score
//         (the policy's: H2O's accumulated attention...); in_cache: i64 virtual position (-1 for
//         the free slot, else base + its rank among the kept states)
//       per KV head, per slot in [0, used): the key then the value as stored
//         (KeyStore::read_raw): head_dim values of kv_type, then q8's f32 scale
//
// Slots are saved as they are laid out, so that the loaded cache sums its states in the same
// order and gives the same bits. In-cache keys rotated at their ranks are not saved: they are
// computed again from the unrotated ones, as they always are. Run-time settings (threads,
// kernels, max_chunk) are not part of a state.

namespace detail {

struct StateAccess {
  static std::string context() { return "msrnn: saved state: "; }

  // ---- policy options, whichever members a policy has ----
  template <class P, class = void>
  struct has_sinks : std::false_type {};
  template <class P>
  struct has_sinks<P, std::void_t<decltype(std::declval<const P&>().sinks)>> : std::true_type {};
  template <class P, class = void>
  struct has_recent : std::false_type {};
  template <class P>
  struct has_recent<P, std::void_t<decltype(std::declval<const P&>().recent)>> : std::true_type {};
  template <class P, class = void>
  struct has_normalize : std::false_type {};
  template <class P>
  struct has_normalize<P, std::void_t<decltype(std::declval<const P&>().normalize)>>
      : std::true_type {};
  template <class P, class = void>
  struct has_granularity : std::false_type {};
  template <class P>
  struct has_granularity<P, std::void_t<decltype(std::declval<const P&>().granularity)>>
      : std::true_type {};

  template <class P>
  static PolicyOptions options_of(const P& policy) {
    if constexpr (std::is_same_v<P, AnyPolicy>) {
      return std::visit([](const auto& p) { return options_of(p); }, policy);
    } else {
      PolicyOptions options;
      options.name = P::kName;
      if constexpr (has_sinks<P>::value) options.sinks = policy.sinks;
      if constexpr (has_recent<P>::value) options.recent = policy.recent;
      if constexpr (has_normalize<P>::value) options.normalize = policy.normalize;
      if constexpr (has_granularity<P>::value) options.granularity = policy.granularity;
      return options;
    }
  }

  template <class P>
  static bool per_head(const P& policy) {
    if constexpr (std::is_same_v<P, AnyPolicy>) {
      return std::visit([](const auto& p) { return p.per_head(); }, policy);
    } else {
      return policy.per_head();
    }
  }

  // ---- save ----
  template <class P>
  static void save(const MultiStateCache<P>& cache, std::string& out) {
    detail::require(static_cast<bool>(cache.constructed_), "cache", "moved-from",
                    "has no state to save");
    detail::require(little_endian(), "byte order", "big-endian",
                    "saved states are little-endian; this machine is not");
    const CacheConfig& c = cache.config_;
    std::string payload;
    ByteWriter w(payload);
    w.put<std::int64_t>(c.n_layers);
    w.put<std::int64_t>(c.n_q_heads);
    w.put<std::int64_t>(c.n_kv_heads);
    w.put<std::int64_t>(c.head_dim);
    w.put<std::int64_t>(c.capacity);
    w.put<std::uint8_t>(c.rope ? 1 : 0);
    if (c.rope) {
      w.put<double>(c.rope->theta());
      w.put<std::uint8_t>(static_cast<std::uint8_t>(c.rope->layout()));
    }
    w.put<std::uint8_t>(static_cast<std::uint8_t>(c.positions));
    w.put<float>(cache.scale_);
    w.put<std::uint8_t>(static_cast<std::uint8_t>(c.kv_type));
    w.put<std::uint8_t>(static_cast<std::uint8_t>(cache.kernels_used_));
    w.put<std::int64_t>(c.max_tokens.value_or(0));
    const PolicyOptions options = options_of(cache.policy_);
    w.put_string(options.name);
    w.put<std::int64_t>(options.sinks);
    w.put<std::int64_t>(options.recent);
    w.put<std::uint8_t>(options.normalize ? 1 : 0);
    w.put<std::uint8_t>(static_cast<std::uint8_t>(options.granularity));

    const bool in_cache = cache.positions_.in_cache();
    const std::size_t row = kv_row_bytes(c.kv_type, c.head_dim);
    std::vector<unsigned char> bytes(row);
    for (const auto& layer : cache.layers_) {
      const SlotTable& table = layer.table;
      w.put<std::int64_t>(table.held());
      w.put<std::int64_t>(table.seen());
      w.put<std::int64_t>(table.used());
      for (Index g = 0; g < c.n_kv_heads; ++g) {
        w.put<std::int64_t>(table.free_slot(g));
        if (in_cache) w.put<std::int64_t>(layer.in_cache.at_rank(g, 0));
      }
      for (Index g = 0; g < c.n_kv_heads; ++g) {
        for (Index s = 0; s < table.used(); ++s) {
          const Index position = table.position(g, s);
          w.put<std::int64_t>(position);
          w.put<float>(table.scores()(g, s));
          if (in_cache) {
            w.put<std::int64_t>(
                position == SlotTable::kEmpty ? -1 : layer.in_cache.virtual_position(g, s));
          }
        }
      }
      for (Index g = 0; g < c.n_kv_heads; ++g) {
        const auto gi = static_cast<std::size_t>(g);
        for (Index s = 0; s < table.used(); ++s) {
          layer.keys[gi].read_raw(s, bytes.data());
          w.put_bytes(bytes.data(), row);
          layer.values[gi].read_raw(s, bytes.data());
          w.put_bytes(bytes.data(), row);
        }
      }
    }

    ByteWriter h(out);
    h.put_bytes(kStateMagic.data(), kStateMagic.size());
    h.put<std::uint32_t>(kStateVersion);
    h.put<std::uint32_t>(0x01020304U);
    h.put<std::uint64_t>(payload.size());
    h.put<std::uint64_t>(
        state_checksum(reinterpret_cast<const unsigned char*>(payload.data()), payload.size()));
    out += payload;
  }

  // ---- load ----
  static constexpr std::size_t kHeaderBytes = 32;

  // Checks the header of `header` (kHeaderBytes) and returns the payload size it announces.
  static std::uint64_t payload_size(std::string_view header) {
    ByteReader r(header, context());
    if (header.size() < kHeaderBytes) {
      r.fail("truncated: " + std::to_string(header.size()) + " bytes, the header alone needs " +
             std::to_string(kHeaderBytes));
    }
    if (header.substr(0, kStateMagic.size()) != kStateMagic) {
      r.fail("not a saved msrnn state (the file does not start with \"msrnnkv\")");
    }
    r.take(kStateMagic.size(), "the magic");
    const auto version = r.get<std::uint32_t>("version");
    const auto order = r.get<std::uint32_t>("byte order");
    if (order != 0x01020304U) {
      r.fail("byte order mark " + std::to_string(order) +
             ": the state was saved on a machine of another byte order (or is damaged)");
    }
    if (version != kStateVersion) {
      r.fail("version " + std::to_string(version) + " is not supported (this build reads version " +
             std::to_string(kStateVersion) + ")");
    }
    return r.get<std::uint64_t>("size");
  }

  // A cache holds at least the bytes of its state's payload (each slot's rows and bookkeeping):
  // a payload above max_bytes is refused before it is read.
  static void check_announced(std::uint64_t size, const StateLoadOptions& options) {
    if (size > options.max_bytes) {
      throw std::invalid_argument(context() + "the header announces " + std::to_string(size) +
                                  " payload bytes, more than max_bytes (" +
                                  std::to_string(options.max_bytes) + ")");
    }
  }

  static std::uint64_t checksum_in(std::string_view header) {
    std::uint64_t sum = 0;
    std::memcpy(&sum, header.data() + 24, sizeof sum);
    return sum;
  }

  static void check_checksum(std::string_view header, std::string_view payload) {
    const std::uint64_t sum =
        state_checksum(reinterpret_cast<const unsigned char*>(payload.data()), payload.size());
    if (sum != checksum_in(header)) {
      throw std::invalid_argument(context() +
                                  "checksum mismatch: the payload is damaged (corrupted or "
                                  "edited after it was saved)");
    }
  }

  template <class T>
  static T in_range(ByteReader& r, const char* what, T value, T low, T high) {
    if (value < low || value > high) {
      r.fail(std::string(what) + " = " + std::to_string(value) + ": must be in [" +
             std::to_string(low) + ", " + std::to_string(high) + "]");
    }
    return value;
  }

  // One layer as read, checked before a cache sees it.
  struct LayerState {
    Index held = 0, seen = 0, used = 0;
    std::vector<Index> free_slot;         // (n_kv_heads)
    std::vector<Index> base;              // (n_kv_heads) in_cache only
    std::vector<Index> position;          // (n_kv_heads * used)
    std::vector<float> score;             // (n_kv_heads * used)
    std::vector<Index> virtual_position;  // (n_kv_heads * used) in_cache only
    const unsigned char* rows = nullptr;  // (n_kv_heads, used, 2, row bytes) in the payload
  };

  template <class P>
  static MultiStateCache<P> load(std::string_view header, std::string_view payload,
                                 const StateLoadOptions& options) {
    ByteReader r(payload, context());
    if (!little_endian()) r.fail("saved states are little-endian; this machine is not");
    check_checksum(header, payload);
    // Limits that only keep the products below overflow; the memory check comes later.
    constexpr Index kMaxDim = Index{1} << 24;
    CacheConfig config;
    config.n_layers = in_range<Index>(r, "n_layers", r.get<std::int64_t>("n_layers"), 1, kMaxDim);
    config.n_q_heads =
        in_range<Index>(r, "n_q_heads", r.get<std::int64_t>("n_q_heads"), 1, kMaxDim);
    config.n_kv_heads =
        in_range<Index>(r, "n_kv_heads", r.get<std::int64_t>("n_kv_heads"), 1, kMaxDim);
    config.head_dim = in_range<Index>(r, "head_dim", r.get<std::int64_t>("head_dim"), 1, kMaxDim);
    // Capacities and lengths past kMaxPosition mean nothing (positions stop there), and keep the
    // arithmetic on them far from overflow; Full's kUnbounded is its default reservation.
    config.capacity = r.get<std::int64_t>("capacity");
    if (config.capacity != kUnbounded) {
      in_range<Index>(r, "capacity", config.capacity, 1, kMaxPosition);
    }
    const auto has_rope = in_range<int>(r, "rope", r.get<std::uint8_t>("rope"), 0, 1);
    double theta = 0.0;
    int layout = 0;
    if (has_rope == 1) {
      theta = r.get<double>("rope theta");
      layout = in_range<int>(r, "rope layout", r.get<std::uint8_t>("rope layout"), 0, 1);
      if (!(std::isfinite(theta) && theta > 1.0) || config.head_dim % 2 != 0) {
        r.fail("rope theta " + std::to_string(theta) + " with head_dim " +
               std::to_string(config.head_dim) +
               ": a rope needs a finite theta > 1 and an even head_dim");
      }
      config.rope = Rope(config.head_dim, theta, static_cast<RopeLayout>(layout));
    }
    config.positions = static_cast<PositionMode>(
        in_range<int>(r, "positions", r.get<std::uint8_t>("positions"), 0, 1));
    const float scale = r.get<float>("scale");
    if (!(std::isfinite(scale) && scale > 0.0f)) {
      r.fail("scale = " + std::to_string(scale) + ": must be a finite positive number");
    }
    config.scale = scale;
    config.kv_type =
        static_cast<KvType>(in_range<int>(r, "kv_type", r.get<std::uint8_t>("kv_type"), 0, 3));
    const auto saved_kernels = static_cast<Kernels>(
        in_range<int>(r, "kernels", r.get<std::uint8_t>("kernels"),
                      static_cast<int>(Kernels::portable), static_cast<int>(Kernels::avx512)));
    const Index max_tokens =
        in_range<Index>(r, "max_tokens", r.get<std::int64_t>("max_tokens"), 0, kMaxPosition);
    if (max_tokens > 0) config.max_tokens = max_tokens;
    PolicyOptions policy_options;
    policy_options.name = r.get_string("policy name", 64);
    policy_options.sinks = r.get<std::int64_t>("sinks");
    policy_options.recent = r.get<std::int64_t>("recent");
    policy_options.normalize =
        in_range<int>(r, "normalize", r.get<std::uint8_t>("normalize"), 0, 1) != 0;
    policy_options.granularity = static_cast<TovaGranularity>(
        in_range<int>(r, "granularity", r.get<std::uint8_t>("granularity"), 0, 1));
    if (config.positions == PositionMode::in_cache && has_rope == 0) {
      r.fail("positions in_cache without a rope");
    }
    if (options.model) check_model(r, config, has_rope, theta, layout, *options.model);
    config.threads = options.threads;
    // The saved kernels where this CPU has them: another unit's sums round differently.
    config.kernels = options.kernels != Kernels::automatic ? options.kernels
                     : kernels_available(saved_kernels)    ? saved_kernels
                                                           : Kernels::automatic;
    config.max_chunk = options.max_chunk;

    // The policy, by name; a typed cache takes only its own.
    std::optional<P> policy;
    try {
      if constexpr (std::is_same_v<P, AnyPolicy>) {
        policy = make_policy(policy_options);
      } else {
        if (policy_options.name != P::kName) {
          r.fail("policy " + printable(policy_options.name) + ": this cache's policy is " +
                 P::kName);
        }
        policy = P::from_options(policy_options);
      }
    } catch (const std::invalid_argument& error) {
      if (std::string_view(error.what()).substr(0, context().size()) == context()) throw;
      r.fail(error.what());
    }
    const bool evicts = policy_evicts(policy_options.name);
    if (evicts && config.capacity == kUnbounded) {
      r.fail("capacity = unbounded: policy " + policy_options.name + " needs a finite one");
    }
    const bool in_cache = config.positions == PositionMode::in_cache;
    const bool layer_wide = !per_head(*policy);

    // The layers, checked against each other and the config before anything is allocated.
    const std::size_t row = kv_row_bytes(config.kv_type, config.head_dim);
    std::vector<LayerState> layers;  // reserved no further than the payload can fill
    layers.reserve(static_cast<std::size_t>(
        std::min<Index>(config.n_layers, static_cast<Index>(r.left() / 24 + 1))));
    Index most_used = 0;
    for (Index l = 0; l < config.n_layers; ++l) {
      layers.push_back(read_layer(r, config, l, evicts, in_cache, layer_wide, row));
      most_used = std::max(most_used, layers.back().used);
    }
    if (r.left() != 0) {
      r.fail(std::to_string(r.left()) + " bytes are left after the last layer");
    }

    // Memory, before the cache allocates: its slots (the constructor's: initial_slots; at
    // least the slots used) and per slot and
    // KV head its bookkeeping (position, score; in_cache: virtual position, two order entries and
    // the angles of two virtual positions), and the scratch of its threads.
    const Index slots = std::max(most_used, initial_slots(config, evicts));
    const double heads = static_cast<double>(config.n_layers * config.n_kv_heads);
    const double per_slot = static_cast<double>(kv_state_bytes(config, 16)) / 16.0 +
                            heads * (12.0 + (in_cache ? 24.0 : 0.0)) +
                            (in_cache ? 8.0 * static_cast<double>(config.head_dim) : 0.0) +
                            4.0 * static_cast<double>(config.n_q_heads / config.n_kv_heads + 1) *
                                static_cast<double>(options.threads);
    const double need = per_slot * (static_cast<double>(slots) + 16.0) +
                        4.0 * static_cast<double>(config.n_q_heads) *
                            static_cast<double>(config.head_dim) *
                            static_cast<double>(options.threads + 2);
    if (need > static_cast<double>(options.max_bytes)) {
      r.fail("the cache would need about " + std::to_string(static_cast<double>(need)) +
             " bytes, more than max_bytes (" + std::to_string(options.max_bytes) + ")");
    }

    std::optional<MultiStateCache<P>> built;
    try {
      built.emplace(config, std::move(*policy));
    } catch (const std::invalid_argument& error) {
      r.fail(error.what());
    }
    MultiStateCache<P>& cache = *built;
    if (cache.slots_ < most_used) cache.resize_slots(most_used);  // exactly: no doubling
    for (std::size_t l = 0; l < layers.size(); ++l) restore_layer(cache, l, layers[l], row);
    return std::move(*built);
  }

  static void check_model(ByteReader& r, const CacheConfig& saved, int has_rope, double theta,
                          int layout, const CacheConfig& model) {
    auto same = [&](const char* what, Index a, Index b) {
      if (a != b) {
        r.fail(std::string("the state is of another model: its ") + what + " is " +
               std::to_string(a) + ", this model's " + std::to_string(b));
      }
    };
    same("n_layers", saved.n_layers, model.n_layers);
    same("n_q_heads", saved.n_q_heads, model.n_q_heads);
    same("n_kv_heads", saved.n_kv_heads, model.n_kv_heads);
    same("head_dim", saved.head_dim, model.head_dim);
    same("rope", has_rope, model.rope ? 1 : 0);
    if (model.rope &&
        (theta != model.rope->theta() || layout != static_cast<int>(model.rope->layout()))) {
      r.fail("the state is of another model: its rope has theta " + std::to_string(theta) +
             " and layout " + std::to_string(layout) + ", this model's theta " +
             std::to_string(model.rope->theta()) + " and layout " +
             std::to_string(static_cast<int>(model.rope->layout())));
    }
    const float scale = model.scale.value_or(1.0f / std::sqrt(static_cast<float>(model.head_dim)));
    if (*saved.scale != scale) {
      r.fail("the state is of another model: its scale is " + std::to_string(*saved.scale) +
             ", this model's " + std::to_string(scale));
    }
  }

  static LayerState read_layer(ByteReader& r, const CacheConfig& config, Index l, bool evicts,
                               bool in_cache, bool layer_wide, std::size_t row) {
    const std::string at = "layer " + std::to_string(l) + ": ";
    LayerState s;
    const Index most = evicts ? config.capacity : kMaxPosition;
    s.held = r.get<std::int64_t>("held");
    if (s.held < 0 || s.held > most) {
      r.fail(at + "held = " + std::to_string(s.held) + ": more states than the capacity (" +
             std::to_string(config.capacity) + ")" + (s.held < 0 ? " or negative" : ""));
    }
    s.seen = r.get<std::int64_t>("seen");
    if (s.seen > kMaxPosition) {
      r.fail(at + "tokens_seen = " + std::to_string(s.seen) + ": " + detail::seen_limit_rule());
    }
    if (s.seen < s.held) {
      r.fail(at + "tokens_seen = " + std::to_string(s.seen) + ": must be at least held (" +
             std::to_string(s.held) + ")");
    }
    s.used = r.get<std::int64_t>("used");
    // A cache that evicted holds C states in C + 1 slots; before its first eviction its states
    // fill slots [0, held) in position order (push, prefill and append rely on it).
    if (s.used != s.held && !(s.used == s.held + 1 && evicts && s.held == config.capacity)) {
      r.fail(at + "used slots = " + std::to_string(s.used) + ": must be held (" +
             std::to_string(s.held) + "), or held + 1 once a full cache has evicted");
    }
    const Index nkv = config.n_kv_heads;
    // Each slot brings at least 12 bytes and two rows: more than are left is a lie.
    const double per_slot = 12.0 + 2.0 * static_cast<double>(row);
    if (static_cast<double>(s.used) * static_cast<double>(nkv) * per_slot >
        static_cast<double>(r.left())) {
      r.fail(at + "used slots = " + std::to_string(s.used) + ": the payload ends before them");
    }
    const auto n = static_cast<std::size_t>(nkv * s.used);
    for (Index g = 0; g < nkv; ++g) {
      const Index free = r.get<std::int64_t>("free slot");
      if (free < 0 || free > s.held || (s.used == s.held && free != s.held)) {
        r.fail(at + "KV head " + std::to_string(g) + ": free slot " + std::to_string(free) +
               " is not one the states leave free");
      }
      s.free_slot.push_back(free);
      if (in_cache) {
        const Index base = r.get<std::int64_t>("in_cache base");
        const Index most_base = evicts ? config.capacity + 1 : 0;
        if (base < 0 || base > most_base) {
          r.fail(at + "KV head " + std::to_string(g) + ": in_cache base " + std::to_string(base) +
                 " is out of range [0, " + std::to_string(most_base) + "]");
        }
        // The offset moves only with evictions, and a cache evicts only when full: then it
        // holds C states in C + 1 slots (so the angles of base + rank fit the cache's table).
        if (base > 0 && (s.held != config.capacity || s.used != s.held + 1)) {
          r.fail(at + "KV head " + std::to_string(g) + ": in_cache base " + std::to_string(base) +
                 " says states were evicted, but the layer holds " + std::to_string(s.held) +
                 " of " + std::to_string(config.capacity) + " states in " + std::to_string(s.used) +
                 " slots");
        }
        s.base.push_back(base);
      }
    }
    s.position.reserve(n);
    s.score.reserve(n);
    for (Index g = 0; g < nkv; ++g) {
      for (Index slot = 0; slot < s.used; ++slot) {
        s.position.push_back(r.get<std::int64_t>("position"));
        s.score.push_back(r.get<float>("score"));
        if (in_cache) s.virtual_position.push_back(r.get<std::int64_t>("virtual position"));
      }
    }
    s.rows = r.take(n * 2 * row, "the keys and values");

    // Per head: the free slot empty, the others distinct positions below seen; the virtual
    // positions base + rank; a layer-wide policy's heads alike.
    std::vector<std::pair<Index, Index>> order;  // (position, slot)
    for (Index g = 0; g < nkv; ++g) {
      const std::string head = at + "KV head " + std::to_string(g) + ": ";
      const auto first = static_cast<std::size_t>(g * s.used);
      order.clear();
      for (Index slot = 0; slot < s.used; ++slot) {
        const Index p = s.position[first + static_cast<std::size_t>(slot)];
        if (slot == s.free_slot[static_cast<std::size_t>(g)]) {
          if (p != SlotTable::kEmpty) {
            r.fail(head + "the free slot " + std::to_string(slot) + " holds position " +
                   std::to_string(p));
          }
          continue;
        }
        if (p < 0 || p >= s.seen) {
          r.fail(head + "slot " + std::to_string(slot) + " holds position " + std::to_string(p) +
                 ", not in [0, tokens seen = " + std::to_string(s.seen) + ")");
        }
        if (s.used == s.held && !order.empty() && p <= order.back().first) {
          r.fail(head + "slot " + std::to_string(slot) + " holds position " + std::to_string(p) +
                 " after " + std::to_string(order.back().first) +
                 ": before any eviction the positions ascend with the slots");
        }
        order.emplace_back(p, slot);
      }
      std::sort(order.begin(), order.end());
      for (std::size_t i = 1; i < order.size(); ++i) {
        if (order[i].first == order[i - 1].first) {
          r.fail(head + "position " + std::to_string(order[i].first) +
                 " is held twice (positions must be distinct and ascending)");
        }
      }
      if (in_cache) {
        const Index base = s.base[static_cast<std::size_t>(g)];
        for (std::size_t rank = 0; rank < order.size(); ++rank) {
          const auto slot = static_cast<std::size_t>(order[rank].second);
          const Index u = s.virtual_position[first + slot];
          if (u != base + static_cast<Index>(rank)) {
            r.fail(head + "slot " + std::to_string(slot) + " has virtual position " +
                   std::to_string(u) + " (offset " + std::to_string(base) +
                   "), but its position makes it rank " + std::to_string(rank) +
                   ": the rank is out of place");
          }
        }
        const Index free = s.free_slot[static_cast<std::size_t>(g)];
        if (free < s.used && s.virtual_position[first + static_cast<std::size_t>(free)] != -1) {
          r.fail(head + "the free slot has a virtual position");
        }
      }
      if (layer_wide && g > 0) {
        const bool alike = s.free_slot[static_cast<std::size_t>(g)] == s.free_slot[0] &&
                           std::equal(s.position.begin() + static_cast<std::ptrdiff_t>(first),
                                      s.position.begin() + static_cast<std::ptrdiff_t>(first) +
                                          static_cast<std::ptrdiff_t>(s.used),
                                      s.position.begin());
        if (!alike) {
          r.fail(head +
                 "its states differ from KV head 0's, but the policy evicts the same "
                 "slot in every KV head");
        }
      }
    }
    return s;
  }

  template <class P>
  static void restore_layer(MultiStateCache<P>& cache, std::size_t l, const LayerState& s,
                            std::size_t row) {
    auto& layer = cache.layers_[l];
    const Index nkv = cache.config_.n_kv_heads;
    layer.table.restore(s.held, s.seen, s.used, s.free_slot);
    const unsigned char* rows = s.rows;
    for (Index g = 0; g < nkv; ++g) {
      const auto gi = static_cast<std::size_t>(g);
      const auto first = static_cast<std::size_t>(g * s.used);
      for (Index slot = 0; slot < s.used; ++slot) {
        const auto i = first + static_cast<std::size_t>(slot);
        layer.table.restore_slot(g, slot, s.position[i], s.score[i]);
        layer.keys[gi].write_raw(slot, rows);
        layer.values[gi].write_raw(slot, rows + row);
        rows += 2 * row;
      }
    }
    if (cache.positions_.in_cache()) {
      Index most = 0;
      for (Index base : s.base) most = std::max(most, base + s.used);
      cache.positions_.prepare_virtual(most);
      for (Index g = 0; g < nkv; ++g) {
        const auto gi = static_cast<std::size_t>(g);
        layer.in_cache.restore(g, s.base[gi],
                               s.virtual_position.data() + gi * static_cast<std::size_t>(s.used),
                               s.used, layer.keys[gi], cache.positions_);
      }
    }
  }
};

}  // namespace detail

/// Appends the whole state of `cache` to `out` (the format above): its config, policy and
/// options, precision, and per layer the kept keys and values, their positions, ranks and scores,
/// and the tokens seen. `load_state` of the bytes gives a cache that goes on exactly like this
/// one, bit for bit. Costs the states in use. Throws std::invalid_argument for a moved-from
/// cache, std::bad_alloc.
///
///   std::string bytes = msrnn::save_state(cache);
///   msrnn::AnyCache resumed = msrnn::load_state(bytes);
template <class Policy>
void save_state(const MultiStateCache<Policy>& cache, std::string& out) {
  detail::StateAccess::save(cache, out);
}
template <class Policy>
std::string save_state(const MultiStateCache<Policy>& cache) {
  std::string out;
  save_state(cache, out);
  return out;
}
/// Writes the state to a stream; throws std::runtime_error if the stream fails.
template <class Policy>
void save_state(const MultiStateCache<Policy>& cache, std::ostream& out) {
  const std::string bytes = save_state(cache);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("msrnn: saved state: the stream failed while writing");
}

/// A cache with the state saved in `bytes` (all of them: one state, nothing after it). Checks
/// everything before it trusts it, and throws std::invalid_argument("msrnn: saved state: ...")
/// naming what is wrong: truncated, not a state, another version or byte order, a checksum
/// mismatch, another model's shape (options.model), or inconsistent data (positions repeated or
/// past tokens seen, more states than C, a rank or free slot out of place, bytes left over...).
/// A typed cache (Policy not AnyPolicy) takes only a state of its policy.
template <class Policy = AnyPolicy>
MultiStateCache<Policy> load_state(std::string_view bytes, const StateLoadOptions& options = {}) {
  using detail::StateAccess;
  const std::uint64_t size = StateAccess::payload_size(bytes);
  StateAccess::check_announced(size, options);
  const std::string_view payload = bytes.substr(StateAccess::kHeaderBytes);
  if (payload.size() < size) {
    throw std::invalid_argument(StateAccess::context() + "truncated: the header announces " +
                                std::to_string(size) + " payload bytes, " +
                                std::to_string(payload.size()) + " follow");
  }
  if (payload.size() > size) {
    throw std::invalid_argument(StateAccess::context() + std::to_string(payload.size() - size) +
                                " bytes follow the state");
  }
  return StateAccess::load<Policy>(bytes.substr(0, StateAccess::kHeaderBytes), payload, options);
}

/// Reads one state from a stream (up to the end of its payload; what follows is left unread) and
/// loads it as `load_state(bytes)` does. Reads the header first and the payload as its bytes
/// arrive, so a header that announces more than the stream holds costs no more memory than the
/// stream has, and one that announces more than options.max_bytes is refused unread.
template <class Policy = AnyPolicy>
MultiStateCache<Policy> load_state(std::istream& in, const StateLoadOptions& options = {}) {
  using detail::StateAccess;
  std::string header(StateAccess::kHeaderBytes, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header.size()));
  header.resize(static_cast<std::size_t>(in.gcount()));
  const std::uint64_t size = StateAccess::payload_size(header);
  StateAccess::check_announced(size, options);
  std::string payload;
  constexpr std::size_t kPiece = std::size_t{1} << 20;
  while (payload.size() < size && in) {
    const std::size_t piece =
        static_cast<std::size_t>(std::min<std::uint64_t>(kPiece, size - payload.size()));
    const std::size_t before = payload.size();
    payload.resize(before + piece);
    in.read(payload.data() + before, static_cast<std::streamsize>(piece));
    payload.resize(before + static_cast<std::size_t>(in.gcount()));
  }
  if (payload.size() < size) {
    throw std::invalid_argument(StateAccess::context() + "truncated: the header announces " +
                                std::to_string(size) + " payload bytes, " +
                                std::to_string(payload.size()) + " follow");
  }
  return StateAccess::load<Policy>(header, payload, options);
}

}  // namespace msrnn
