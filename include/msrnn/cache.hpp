// MultiStateCache<Policy>: a transformer's KV cache as the bounded multi-state of an RNN.
#pragma once

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "msrnn/attention.hpp"
#include "msrnn/detail/check.hpp"
#include "msrnn/detail/select_victim.hpp"
#include "msrnn/detail/storage.hpp"
#include "msrnn/eviction.hpp"
#include "msrnn/fork_join.hpp"
#include "msrnn/in_cache_keys.hpp"
#include "msrnn/kernels.hpp"
#include "msrnn/kv_store.hpp"
#include "msrnn/kv_type.hpp"
#include "msrnn/policy.hpp"
#include "msrnn/positions.hpp"
#include "msrnn/rope.hpp"
#include "msrnn/slot_table.hpp"
#include "msrnn/types.hpp"

namespace msrnn {

namespace detail {

// Reads and writes a cache's whole state (state_file.hpp): the one friend of MultiStateCache.
struct StateAccess;

/// True for an Eigen matrix or map that `Eigen::Ref<const RowMatrix>` binds through a temporary
/// copy because it is column-major (compile-time vectors excepted: their layout is the same).
template <class T, class = void>
struct copied_by_row_ref : std::false_type {};
template <class T>
struct copied_by_row_ref<T, std::enable_if_t<std::is_base_of_v<Eigen::DenseBase<T>, T>>>
    : std::bool_constant<!T::IsVectorAtCompileTime && !T::IsRowMajor> {};
template <class T>
inline constexpr bool copied_by_row_ref_v = copied_by_row_ref<std::decay_t<T>>::value;

}  // namespace detail

/// Shape and options of a cache. Checked by the MultiStateCache constructor.
struct CacheConfig {
  Index n_layers = 1;
  Index n_q_heads = 1;   // query heads; a multiple of n_kv_heads (grouped-query attention)
  Index n_kv_heads = 1;  // key/value heads: the cache stores keys and values at this size
  Index head_dim = 0;
  /// C, the multi-state size: states kept per layer and KV head. Required for every policy but
  /// Full; for Full it is only the number of slots reserved up front.
  Index capacity = kUnbounded;
  /// When set, the cache encodes positions of q and k itself (see `positions`); when empty, the
  /// host has done so and keys are stored as given.
  std::optional<Rope> rope;
  /// How positions are encoded when `rope` is set; in_cache needs a rope.
  PositionMode positions = PositionMode::absolute;
  /// Factor on q.k before the softmax; empty means 1 / sqrt(head_dim).
  std::optional<float> scale;
  /// Tokens a sequence will have at most, when the host knows (a prompt plus a step limit): the
  /// cache then allocates min(C + 1, max_tokens) slots instead of C + 1 (Full: max_tokens), with
  /// the same results, since a bounded cache evicts nothing before it holds C + 1 states. The
  /// policy's options are still checked against C (`recent` = C / 2 stays C / 2). A sequence that
  /// goes past it is not an error: the cache grows then (allocating, up to C + 1 slots).
  std::optional<Index> max_tokens;
  /// Most tokens `step_chunk` puts through one matrix product. Fewer go when their attention
  /// probabilities would pass 32 MiB of scratch (long contexts).
  Index max_chunk = 256;
  /// Threads that share the KV heads of a layer in `step` and `step_chunk`: the calling thread
  /// and threads - 1 workers the cache starts once and owns. Outputs and kept states are the same
  /// bit for bit for any number; more threads than KV heads leave the extra ones idle. Each thread
  /// has its own scratch (attention probabilities; up to 32 MiB during a long `step_chunk`).
  Index threads = 1;
  /// How the keys and values are stored: f32 as given, f16, bf16, or q8 (int8 and a float scale
  /// per row). Keys are converted after their rotation (absolute positions), unrotated (in_cache:
  /// and the copy rotated at its rank as well); values as given; once, at insert. Queries,
  /// scores, softmax and sums stay float32.
  KvType kv_type = KvType::f32;
  /// The decode kernels' vector unit; automatic picks this CPU's best once, at construction
  /// (kernels.hpp). Forcing one the CPU lacks is an error.
  Kernels kernels = Kernels::automatic;
};

/// Bytes of key and value storage for `slots` slots per layer and KV head of `config`:
/// n_layers * n_kv_heads * (KeyStore::bytes + ValueStore::bytes), plus another KeyStore with
/// in_cache positions (which keep each key also rotated at its rank, see InCacheKeys): about
/// slots * head_dim * 2 values of config.kv_type (3 in_cache), keys and values in whole blocks of
/// 16 slots, q8 scales included. What `state_bytes()` reports; a bounded cache has C + 1 slots, or
/// min(C + 1, max_tokens). The one formula the tools and benchmarks use.
inline std::size_t kv_state_bytes(const CacheConfig& config, Index slots) noexcept {
  const bool in_cache = config.rope && config.positions == PositionMode::in_cache;
  const std::size_t keys = KeyStore::bytes(config.kv_type, config.head_dim, slots);
  const std::size_t values = ValueStore::bytes(config.kv_type, config.head_dim, slots);
  return static_cast<std::size_t>(config.n_layers) * static_cast<std::size_t>(config.n_kv_heads) *
         (keys * (in_cache ? 2 : 1) + values);
}

/// Slots per layer and KV head a cache of `config` allocates at construction: C + 1 for a policy
/// that evicts (a bounded cache holds C + 1 states between insert and evict), Full's reservation
/// (config.capacity, or 256 when unbounded) otherwise; with config.max_tokens, min(C + 1,
/// max_tokens) and Full exactly max_tokens. The one rule the cache, the state loader's memory
/// estimate and the engine's KV budget use. `evicts`: the policy's kEvicts (policy_evicts).
/// For a config the cache rejects (an evicting policy without a finite capacity): max_tokens, or
/// kUnbounded.
inline Index initial_slots(const CacheConfig& config, bool evicts) noexcept {
  constexpr Index kDefaultFullReservation = 256;
  if (evicts) {
    const Index bounded = config.capacity == kUnbounded ? kUnbounded : config.capacity + 1;
    return config.max_tokens ? std::min(bounded, *config.max_tokens) : bounded;
  }
  if (config.max_tokens) return *config.max_tokens;
  return config.capacity == kUnbounded ? kDefaultFullReservation : config.capacity;
}

/// The KV cache of a decoder-only transformer as the multi-state of a bounded RNN
/// (Oren et al., "Transformers are Multi-State RNNs", 2024).
///
/// Per layer and KV head it keeps at most C key/value rows (the capacity). One call of `step`
/// is one recurrence of one layer: insert the new token's key and value, attend with the new
/// query heads over the kept states plus the new one, let the policy score them, and if more
/// than C are held, evict the one the policy chooses. Its slot becomes the free slot the next
/// token overwrites: no rows move and nothing is allocated per step (except by Full, which grows),
/// as long as q, k, v are row-major with contiguous rows (see `step`). The bookkeeping of which
/// slot holds what is a SlotTable per layer; the keys and values lie beside it.
///
///   msrnn::CacheConfig config;
///   config.n_layers = 6; config.n_q_heads = 8; config.n_kv_heads = 4; config.head_dim = 64;
///   config.capacity = 256;
///   config.rope = msrnn::Rope(64);
///   msrnn::MultiStateCache<msrnn::TOVA> cache(config);
///   cache.step(layer, q, k, v, out);  // q (8, 64), k v (4, 64), out (8, 64)
///   cache.step(layer, q, k, v, out);  // or a token a row: q (1, 512), k v (1, 256), out (1, 512)
///
/// `Policy` is one of the policies (policy.hpp lists their interface) or `AnyPolicy`, chosen at
/// run time; the cache dispatches on it once per call, never per slot. Thread safety: distinct
/// caches may be used from distinct threads; one cache, by one thread at a time.
///
/// A moved-from cache is empty: `step`, `step_chunk`, `append`, `size`, `tokens_seen` and
/// `kept_positions` throw std::invalid_argument ("cache = moved-from"), `reset` does nothing,
/// `capacity`, `slots` and `state_bytes` are 0, and its `copy()` is moved-from too. Assigning a
/// constructed cache to it makes it usable again.
template <class Policy = AnyPolicy>
class MultiStateCache {
  static_assert(std::is_same_v<Policy, AnyPolicy> || is_policy_v<Policy>,
                "Policy must be AnyPolicy or have the members listed in msrnn/policy.hpp");
  friend struct detail::StateAccess;

 public:
  /// Checks the configuration and allocates all storage. Throws std::invalid_argument naming the
  /// parameter and its value: capacity 0, sinks >= capacity, recent >= capacity, n_q_heads not a
  /// multiple of n_kv_heads, a rope whose head_dim differs, in_cache positions without a rope, a
  /// positions or granularity value that is none of its enum's...; std::bad_alloc; and
  /// std::system_error when config.threads > 1 and a worker thread cannot be started (the workers
  /// already started are joined first, so nothing is left running).
  ///
  /// Time and touched memory do not depend on the capacity: the storage is allocated, not
  /// written, and becomes resident as slots are first used (nor does `reset` write it).
  explicit MultiStateCache(const CacheConfig& config, Policy policy = Policy{})
      : config_(config), policy_(std::move(policy)) {
    using detail::require;
    require(config.n_layers >= 1, "n_layers", config.n_layers, "must be at least 1");
    require(config.n_q_heads >= 1, "n_q_heads", config.n_q_heads, "must be at least 1");
    require(config.n_kv_heads >= 1, "n_kv_heads", config.n_kv_heads, "must be at least 1");
    require(config.n_q_heads % config.n_kv_heads == 0, "n_q_heads", config.n_q_heads,
            "must be a multiple of n_kv_heads (" + std::to_string(config.n_kv_heads) + ")");
    require(config.head_dim >= 1, "head_dim", config.head_dim, "must be at least 1");
    require(config.capacity >= 1, "capacity", config.capacity, "must be at least 1");
    require(config.max_chunk >= 1, "max_chunk", config.max_chunk, "must be at least 1");
    require(config.threads >= 1, "threads", config.threads, "must be at least 1");
    require(config.threads <= 1024, "threads", config.threads, "must be at most 1024");
    if (config.rope) {
      require(config.rope->head_dim() == config.head_dim, "rope.head_dim", config.rope->head_dim(),
              "must equal head_dim (" + std::to_string(config.head_dim) + ")");
    }
    require(
        config.positions == PositionMode::absolute || config.positions == PositionMode::in_cache,
        "positions", static_cast<int>(config.positions),
        "must be PositionMode::absolute or PositionMode::in_cache");
    require(config.rope.has_value() || config.positions == PositionMode::absolute, "positions",
            to_string(config.positions), "needs a rope (set CacheConfig::rope)");
    require(config.kv_type == KvType::f32 || config.kv_type == KvType::f16 ||
                config.kv_type == KvType::bf16 || config.kv_type == KvType::q8,
            "kv_type", static_cast<int>(config.kv_type), "must be f32, f16, bf16 or q8");
    require(config.kernels == Kernels::automatic || config.kernels == Kernels::portable ||
                config.kernels == Kernels::avx2 || config.kernels == Kernels::avx512,
            "kernels", static_cast<int>(config.kernels),
            "must be automatic, portable, avx2 or avx512");
    require(kernels_available(config.kernels), "kernels", to_string(config.kernels),
            std::string("this CPU does not have them (the best it has: ") +
                to_string(best_kernels()) + ")");
    kernels_ = detail::kernel_set(config.kernels);
    kernels_used_ = config.kernels == Kernels::automatic ? best_kernels() : config.kernels;
    const float default_scale = 1.0f / std::sqrt(static_cast<float>(config.head_dim));
    scale_ = config.scale.value_or(default_scale);
    require(std::isfinite(scale_) && scale_ > 0.0f, "scale", scale_,
            "must be a finite positive number");

    bool evicts = true;
    dispatch([&](auto& p) {
      using P = std::decay_t<decltype(p)>;
      evicts = P::kEvicts;
      if constexpr (P::kEvicts) {
        detail::require(config_.capacity != kUnbounded, "capacity", "unbounded",
                        std::string("policy ") + P::kName + " needs a finite capacity");
        p.prepare(config_.capacity);
      } else {
        p.prepare(kUnbounded);
      }
    });
    require(!config.max_tokens || *config.max_tokens >= 1, "max_tokens",
            config.max_tokens.value_or(0), "must be at least 1");
    capacity_ = evicts ? config.capacity : kUnbounded;
    const Index slots = initial_slots(config, evicts);
    require(
        static_cast<double>(kv_state_bytes(config, 16)) / 16.0 * static_cast<double>(slots + 16) <
            0x1p62,
        "capacity", config.capacity, "the key/value storage would need more than 2^62 bytes");

    group_ = config.n_q_heads / config.n_kv_heads;
    q_.setZero(config.n_q_heads, config.head_dim);
    // (throws std::system_error if a thread cannot start, after joining the started ones)
    workers_ = ForkJoin(std::min(config.threads, config.n_kv_heads));
    scratch_.resize(static_cast<std::size_t>(workers_.threads()));
    for (Scratch& scratch : scratch_) scratch.key = RowVector(config.head_dim);
    positions_ = PositionEncoder(config.rope, config.positions);
    layers_.reserve(static_cast<std::size_t>(config.n_layers));
    for (Index l = 0; l < config.n_layers; ++l) {
      layers_.emplace_back(config.n_kv_heads, config.head_dim, config.kv_type,
                           positions_.in_cache());
    }
    evictions_ = detail::EvictionReport(config.n_kv_heads);
    resize_slots(slots);
  }

  MultiStateCache(MultiStateCache&&) = default;
  MultiStateCache& operator=(MultiStateCache&&) = default;
  MultiStateCache& operator=(const MultiStateCache&) = delete;
  ~MultiStateCache() = default;

  /// A deep copy (for beam search, forking a prefix...). Costs the states in use (and new
  /// threads): explicit on purpose. Throws std::bad_alloc, or std::system_error when
  /// config.threads > 1 and a worker thread cannot be started (the started ones are joined first).
  MultiStateCache copy() const { return MultiStateCache(*this); }

  /// One decode step of `layer`: the new token's q, k, v and out, each in either layout (the
  /// same memory; with one head they coincide):
  ///       one head a row           one token a row (step_chunk's, t = 1)
  ///   q   (n_q_heads, head_dim)    (1, n_q_heads * head_dim)   without positions if we own a rope
  ///   k   (n_kv_heads, head_dim)   (1, n_kv_heads * head_dim)
  ///   v   (n_kv_heads, head_dim)   (1, n_kv_heads * head_dim)
  ///   out (n_q_heads, head_dim)    (1, n_q_heads * head_dim)   written: every query head's output
  /// Throws std::invalid_argument when the layer or a shape is wrong (naming both layouts), or
  /// when tokens_seen is already kMaxPosition (the token would pass the position limit; nothing
  /// changes). Otherwise a bounded policy never throws (but for what an eviction observer throws)
  /// and never allocates, provided q, k and v are row-major with contiguous rows (inner stride 1):
  /// an Eigen::Ref<const RowMatrix> bound to anything else (a column-major matrix, a strided map,
  /// an expression such as `a + b`) is a temporary copy. Column-major Eigen arguments are rejected
  /// at compile time (the deleted overload below). Full allocates (and may throw std::bad_alloc)
  /// when its storage must grow.
  void step(Index layer, const Eigen::Ref<const RowMatrix>& q, const Eigen::Ref<const RowMatrix>& k,
            const Eigen::Ref<const RowMatrix>& v, Eigen::Ref<RowMatrix> out) {
    check_layer(layer);
    const Index nq = config_.n_q_heads;
    const Index nkv = config_.n_kv_heads;
    check_step_shape("q", q.rows(), q.cols(), nq);
    check_step_shape("k", k.rows(), k.cols(), nkv);
    check_step_shape("v", v.rows(), v.cols(), nkv);
    check_step_shape("out", out.rows(), out.cols(), nq);
    check_room(layer, 1);
    const Index d = config_.head_dim;
    // (heads, head_dim) views of either layout: a token row is its heads, one after the other.
    auto heads = [d](auto& m, Index n) {
      using M = std::conditional_t<std::is_const_v<std::remove_reference_t<decltype(*m.data())>>,
                                   const RowMatrix, RowMatrix>;
      return Eigen::Map<M, 0, Eigen::OuterStride<>>(
          m.data(), n, d, Eigen::OuterStride<>(m.rows() == n ? m.outerStride() : d));
    };
    dispatch([&](auto& p) {
      step_one(p, layer, heads(q, nq), heads(k, nkv), heads(v, nkv), heads(out, nq));
    });
  }

  /// Column-major Eigen arguments would bind to `step` through a temporary copy (an allocation on
  /// the per-token path): pass row-major matrices or maps (msrnn::RowMatrix).
  template <class Q, class K, class V, class Out,
            std::enable_if_t<detail::copied_by_row_ref_v<Q> || detail::copied_by_row_ref_v<K> ||
                                 detail::copied_by_row_ref_v<V>,
                             int> = 0>
  void step(Index layer, const Q& q, const K& k, const V& v, Out&& out) = delete;

  /// Feeds t tokens of `layer` at once (a prompt): the same outputs and kept states, to float
  /// tolerance, as t calls of `step`. One token per row:
  ///   q   (t, n_q_heads * head_dim)
  ///   k   (t, n_kv_heads * head_dim)
  ///   v   (t, n_kv_heads * head_dim)
  ///   out (t, n_q_heads * head_dim)  written
  /// While the tokens fit in the free capacity they go through matrix-matrix products (at most
  /// max_chunk at a time); once the cache is full, each token needs its own eviction, so the rest
  /// goes token by token. Allocates scratch the first time it sees a larger chunk. Tokens that
  /// would take tokens_seen past kMaxPosition are refused (std::invalid_argument) before any is
  /// fed.
  void step_chunk(Index layer, const Eigen::Ref<const RowMatrix>& q,
                  const Eigen::Ref<const RowMatrix>& k, const Eigen::Ref<const RowMatrix>& v,
                  Eigen::Ref<RowMatrix> out) {
    check_layer(layer);
    const Index t = q.rows();
    check_shape("q", q.rows(), q.cols(), t, config_.n_q_heads * config_.head_dim);
    check_shape("k", k.rows(), k.cols(), t, config_.n_kv_heads * config_.head_dim);
    check_shape("v", v.rows(), v.cols(), t, config_.n_kv_heads * config_.head_dim);
    check_shape("out", out.rows(), out.cols(), t, config_.n_q_heads * config_.head_dim);
    check_room(layer, t);
    dispatch([&](auto& p) { chunk(p, layer, q, k, v, out); });
  }

  /// Appends t states to `layer` without attending: keys and values computed elsewhere (the
  /// engine's own prefill kernel, a saved session). Token i gets positions[i]: ascending, from
  /// tokens_seen(layer) on (gaps stand for tokens dropped before); empty `positions` means the next
  /// t positions. tokens_seen becomes `seen` if given (a restored state whose newest tokens were
  /// evicted), else the last position + 1. Positions must be below kMaxPosition and `seen` at most
  /// kMaxPosition. No output is computed; the new
  /// states' scores start at 0, as a stepped token's do before its own step scores it. They must
  /// fit: t <= capacity() - size(layer) (Full grows).
  ///   k (t, n_kv_heads * head_dim)  as `step_chunk` takes them (without positions when the cache
  ///                                 owns a rope: it encodes them at positions[i])
  ///   v (t, n_kv_heads * head_dim)
  /// Throws std::invalid_argument naming what is wrong (shape, positions, seen, room); a rejected
  /// call changes nothing.
  void append(Index layer, const Eigen::Ref<const RowMatrix>& k,
              const Eigen::Ref<const RowMatrix>& v, const std::vector<Index>& positions = {},
              std::optional<Index> seen = std::nullopt) {
    using detail::throw_invalid;
    check_layer(layer);
    const Index t = k.rows();
    const Index width = config_.n_kv_heads * config_.head_dim;
    check_shape("k", k.rows(), k.cols(), t, width);
    check_shape("v", v.rows(), v.cols(), t, width);
    Layer& state = layers_[static_cast<std::size_t>(layer)];
    const SlotTable& table = state.table;
    auto limit = [] { return " (" + std::to_string(kMaxPosition) + ")"; };  // only on failure
    if (!positions.empty() && static_cast<Index>(positions.size()) != t) {
      throw_invalid("positions.size()", positions.size(),
                    "must be 0 or the number of rows of k (" + std::to_string(t) + ")");
    }
    // Each bound is checked before it takes part in a sum, so that none overflows: the previous
    // position is below kMaxPosition, and so is tokens_seen at most kMaxPosition.
    for (std::size_t i = 0; i < positions.size(); ++i) {
      if (positions[i] >= kMaxPosition) {
        throw_invalid("positions", positions[i], "must be below kMaxPosition" + limit());
      }
      const Index after = i == 0 ? table.seen() : positions[i - 1] + 1;
      if (positions[i] < after) {
        throw_invalid("positions", positions[i],
                      "must be ascending and at least tokens_seen (" + std::to_string(after) + ")");
      }
    }
    if (positions.empty() && t > kMaxPosition - table.seen()) {
      throw_invalid("k.rows()", t,
                    "the positions it takes from tokens_seen (" + std::to_string(table.seen()) +
                        ") on must stay below kMaxPosition" + limit());
    }
    const Index next = positions.empty() ? table.seen() + t : positions.back() + 1;
    if (seen && *seen > kMaxPosition) {
      throw_invalid("seen", *seen, "must be at most kMaxPosition" + limit());
    }
    if (seen && *seen < next) {
      throw_invalid("seen", *seen,
                    "must be at least the last position + 1 (" + std::to_string(next) + ")");
    }
    if (capacity_ != kUnbounded && t > capacity_ - table.held()) {
      throw_invalid("k.rows()", t,
                    "must fit in the free capacity (" + std::to_string(capacity_ - table.held()) +
                        " of " + std::to_string(capacity_) + ")");
    }
    reserve(table.held() + t);
    if (positions_.in_cache()) {
      positions_.prepare_virtual(state.in_cache.rows_needed(table.held() + t));
    }
    for (Index i = 0; i < t; ++i) {
      const Index position =
          positions.empty() ? table.seen() : positions[static_cast<std::size_t>(i)];
      push(state, position, row_data(k, i), row_data(v, i));
    }
    if (seen) state.table.set_seen(*seen);
  }

  /// Calls `observer` with every state the cache evicts from now on (an empty function stops it):
  /// layer, KV head, the evicted state's position and the position of the token whose step
  /// evicted it. Replaying the events from an empty cache gives `kept_positions` after every step.
  /// It is called on the thread that called `step` / `step_chunk`, once the step of that token
  /// and layer is complete (all KV heads evicted; with threads > 1 too), one event per KV head in
  /// head order, so it needs no lock. In `step_chunk` it is called after each token that evicts.
  /// It may read the cache (kept_positions, tokens_seen), not change it: no step, reset or
  /// set_eviction_observer on the same cache from inside it.
  /// `reset`, `append` and loading a state evict nothing and report nothing; a `copy()` or a
  /// loaded cache starts without an observer.
  ///
  /// Cost: without an observer, one store per eviction and one test per evicting step (no
  /// allocation, no call); with one, a std::function call per event. An exception the observer
  /// throws leaves the cache as the step made it and propagates: that step's events for the later
  /// KV heads are not reported (a replay no longer matches), and in `step_chunk` the chunk's
  /// later tokens are not fed (tokens_seen says how far the layer got).
  ///
  ///   cache.set_eviction_observer([&](const msrnn::Eviction& e) {
  ///     lifetime[e.layer][e.kv_head][e.position] = e.step - e.position;
  ///   });
  void set_eviction_observer(EvictionObserver observer) { evictions_.set(std::move(observer)); }

  /// Forgets every state of every layer (a new sequence); keeps the storage. O(n_layers *
  /// n_kv_heads): the slots are not cleared, only no longer counted as used.
  void reset() noexcept {
    if (!constructed_) return;
    for (Layer& layer : layers_) {
      layer.table.reset();
      layer.in_cache.reset();
    }
  }

  // ---- introspection ----------------------------------------------------------------------

  const CacheConfig& config() const noexcept { return config_; }
  /// The decode kernels this cache runs (config().kernels, automatic resolved).
  Kernels kernels() const noexcept { return kernels_used_; }
  const Policy& policy() const noexcept { return policy_; }
  /// C; kUnbounded for Full; 0 for a moved-from cache.
  Index capacity() const noexcept { return constructed_ ? capacity_ : 0; }
  /// Slots allocated per layer and KV head: C + 1 for a bounded policy; 0 for a moved-from cache.
  Index slots() const noexcept { return constructed_ ? slots_ : 0; }
  /// States held by `layer` now (the same in every KV head).
  Index size(Index layer) const {
    check_layer(layer);
    return layers_[static_cast<std::size_t>(layer)].table.held();
  }
  /// Tokens `layer` has seen: the position the next token will get.
  Index tokens_seen(Index layer) const {
    check_layer(layer);
    return layers_[static_cast<std::size_t>(layer)].table.seen();
  }
  /// Original positions of the states `layer` keeps in `kv_head`, ascending.
  std::vector<Index> kept_positions(Index layer, Index kv_head) const {
    check_layer(layer);
    detail::require(kv_head >= 0 && kv_head < config_.n_kv_heads, "kv_head", kv_head,
                    "must be in [0, " + std::to_string(config_.n_kv_heads) + ")");
    return layers_[static_cast<std::size_t>(layer)].table.kept_positions(kv_head);
  }
  /// Bytes of key and value storage in config().kv_type, `kv_state_bytes(config(), slots())`
  /// (allocated; resident as slots are used).
  std::size_t state_bytes() const noexcept { return kv_state_bytes(config_, slots()); }

 private:
  static constexpr Index kChunkScratchFloats = Index{1} << 23;  // 32 MiB of probabilities

  // One layer: its slot bookkeeping and, beside it, the keys and values it places. Row s of
  // keys[g] and values[g] belongs to slot s of KV head g; only rows [0, table.used()) are written.
  // Keys are stored as given (host positions, in_cache) or rotated at their position (absolute);
  // in_cache keeps them rotated at their rank, too.
  struct Layer {
    SlotTable table;
    std::vector<KeyStore> keys;      // (n_kv_heads): (slots, head_dim) in kv_type
    std::vector<ValueStore> values;  // (n_kv_heads): (slots, head_dim) in kv_type
    InCacheKeys in_cache;            // in_cache positions only: (n_kv_heads) (slots, head_dim)

    Layer(Index n_kv_heads, Index head_dim, KvType type, bool in_cache_positions)
        : table(n_kv_heads, 0),
          in_cache(in_cache_positions ? InCacheKeys(n_kv_heads, head_dim, type) : InCacheKeys()) {
      for (Index g = 0; g < n_kv_heads; ++g) {
        keys.emplace_back(type, head_dim);
        values.emplace_back(type, head_dim);
      }
    }
    // Copies the rows in use; the copy's others are allocated, unwritten.
    Layer(const Layer& other) : table(other.table), in_cache(other.in_cache, other.table.used()) {
      keys.reserve(other.keys.size());
      values.reserve(other.values.size());
      for (std::size_t g = 0; g < other.keys.size(); ++g) {
        keys.emplace_back(other.keys[g], table.used());
        values.emplace_back(other.values[g], table.used());
      }
    }
    Layer(Layer&&) noexcept = default;  // the table hands its counters over
    Layer& operator=(const Layer&) = delete;
    Layer& operator=(Layer&&) = delete;
    ~Layer() = default;
  };

  // Scratch of one thread. The decode part is sized at construction (and when Full grows), so
  // `step` never allocates; the chunk part grows on first use. Every use writes what it reads,
  // so a copy gets the room, not the contents.
  struct Scratch {
    RowMatrix probs;         // (group, slots) attention probabilities of one KV head
    RowVector layer_score;   // (slots) calling thread only: per-layer scores summed over KV heads
    RowMatrix chunk_probs;   // (group * t, >= live), rows a multiple of 16 floats long
    RowMatrix chunk_out;     // (group * t, head_dim)
    RowMatrix chunk_keys;    // (>= live, head_dim) a KV head's keys as floats, for the products
    RowMatrix chunk_values;  // (>= live, head_dim)
    RowVector key;           // (head_dim) a key being rotated before it is stored

    Scratch() = default;
    Scratch(const Scratch& other)
        : probs(other.probs.rows(), other.probs.cols()),
          layer_score(other.layer_score.size()),
          chunk_probs(other.chunk_probs.rows(), other.chunk_probs.cols()),
          chunk_out(other.chunk_out.rows(), other.chunk_out.cols()),
          chunk_keys(other.chunk_keys.rows(), other.chunk_keys.cols()),
          chunk_values(other.chunk_values.rows(), other.chunk_values.cols()),
          key(other.key.size()) {}
    Scratch(Scratch&&) = default;
    Scratch& operator=(const Scratch&) = delete;
    Scratch& operator=(Scratch&&) = default;
    ~Scratch() = default;
  };

  // True in a constructed cache, false in a moved-from one: its moves hand the flag over and
  // clear the source's, so the cache's own moves stay the defaulted ones.
  class Constructed {
   public:
    Constructed() noexcept = default;
    Constructed(const Constructed&) noexcept = default;
    Constructed(Constructed&& other) noexcept : yes_(std::exchange(other.yes_, false)) {}
    Constructed& operator=(const Constructed&) noexcept = default;
    // A self-move empties the cache's vectors: it leaves a moved-from cache as well.
    Constructed& operator=(Constructed&& other) noexcept {
      const bool yes = other.yes_ && &other != this;
      other.yes_ = false;
      yes_ = yes;
      return *this;
    }
    ~Constructed() = default;
    explicit operator bool() const noexcept { return yes_; }

   private:
    bool yes_ = true;
  };

  MultiStateCache(const MultiStateCache&) = default;

  template <class F>
  void dispatch(F&& f) {
    if constexpr (std::is_same_v<Policy, AnyPolicy>) {
      std::visit(std::forward<F>(f), policy_);
    } else {
      f(policy_);
    }
  }

  // Builds its message only on failure: the per-token path must not allocate.
  void check_layer(Index layer) const {
    if (!constructed_) {
      detail::throw_invalid("cache", "moved-from", "assign a constructed cache before using it");
    }
    if (layer < 0 || layer >= config_.n_layers) {
      detail::throw_invalid("layer", layer,
                            "must be in [0, " + std::to_string(config_.n_layers) + ")");
    }
  }
  static void check_shape(const char* name, Index rows, Index cols, Index want_rows,
                          Index want_cols) {
    if (rows != want_rows || cols != want_cols) {
      detail::throw_invalid(name, detail::shape_string(rows, cols),
                            "expected shape " + detail::shape_string(want_rows, want_cols));
    }
  }

  // Refuses t more tokens when they would take tokens_seen past kMaxPosition (a state the loader
  // would refuse). One comparison on the per-token path; the message is built only on failure.
  void check_room(Index layer, Index t) const {
    const Index seen = layers_[static_cast<std::size_t>(layer)].table.seen();
    if (t > kMaxPosition - seen) {
      detail::throw_invalid("tokens_seen", std::to_string(seen) + " + " + std::to_string(t),
                            detail::seen_limit_rule() + " (layer " + std::to_string(layer) +
                                "; reset the cache to go on)");
    }
  }

  // Accepts (heads, head_dim) or (1, heads * head_dim), see `step`.
  void check_step_shape(const char* name, Index rows, Index cols, Index heads) const {
    const Index d = config_.head_dim;
    if ((rows != heads || cols != d) && (rows != 1 || cols != heads * d)) {
      detail::throw_invalid(name, detail::shape_string(rows, cols),
                            "expected shape " + detail::shape_string(heads, d) +
                                " (one head a row) or " + detail::shape_string(1, heads * d) +
                                " (one token a row)");
    }
  }

  static const float* row_data(const Eigen::Ref<const RowMatrix>& m, Index row) noexcept {
    return m.data() + row * m.outerStride();
  }

  // Sets the number of slots per layer and KV head (construction, Full's growth), keeping the
  // slots in use. Allocates without writing: a slot's memory becomes resident when it is used.
  void resize_slots(Index slots) {
    for (Layer& layer : layers_) {
      const Index used = layer.table.used();
      for (std::size_t g = 0; g < layer.keys.size(); ++g) {
        layer.keys[g].grow(slots, used);
        layer.values[g].grow(slots, used);
      }
      layer.table.grow(slots);
      layer.in_cache.grow(slots, used);
    }
    for (Scratch& scratch : scratch_) {
      // Assigned, not resized: Eigen's resize frees before it allocates, so a bad_alloc there
      // would leave a dangling buffer; a new matrix leaves the old one whole if it throws.
      scratch.probs = RowMatrix(group_, padded(slots));
    }
    scratch_.front().layer_score = RowVector(slots);  // the calling thread's, used after the join
    positions_.resize_virtual(slots);
    slots_ = slots;
  }

  // Row length of probability scratch: a multiple of 16 floats, so that every row starts as
  // aligned as the first. Eigen's vectorized exp and sum treat an unaligned head differently, and
  // a bounded policy must give bit for bit the outputs of Full, whatever their slot counts.
  static Index padded(Index slots) noexcept { return (slots + 15) / 16 * 16; }

  // Makes room for `needed` states, doubling the storage: Full as it grows, and a bounded cache
  // whose sequence went past config.max_tokens (up to its C + 1 slots).
  void reserve(Index needed) {
    if (needed <= slots_) return;
    Index slots = std::max(needed, 2 * slots_);
    if (capacity_ != kUnbounded) slots = std::min(slots, capacity_ + 1);
    resize_slots(slots);
  }

  // Writes one token's key and value (head_dim floats each) into row `slot` of KV head g, where
  // the slot table has just put its state of rank `rank`, and encodes the key's position:
  // absolute, rotated by `angles` (its position's) before it is stored; in_cache, stored as given
  // and a copy rotated at its rank (angles prepared). `key` (head_dim) is the thread's scratch.
  void write_kv(Layer& layer, Index g, Index slot, Index rank, Angles angles, const float* k,
                const float* v, RowVector& key) noexcept {
    const auto gi = static_cast<std::size_t>(g);
    if (positions_.absolute()) {
      positions_.rotate(k, key.data(), angles);
      layer.keys[gi].write(slot, key.data());
    } else {
      layer.keys[gi].write(slot, k);
    }
    if (positions_.in_cache()) layer.in_cache.put(g, slot, rank, layer.keys[gi], positions_);
    layer.values[gi].write(slot, v);
  }

  // Puts one token's state at `position` into slot held() of every KV head (see SlotTable::push)
  // with its key and value (rows of n_kv_heads * head_dim); in_cache angles prepared up to its
  // rank. Returns the angles of `position` in absolute mode (valid until the next push).
  Angles push(Layer& layer, Index position, const float* k, const float* v) noexcept {
    const Index d = config_.head_dim;
    const Index slot = layer.table.held();
    const Angles angles = positions_.absolute() ? positions_.at_position(position) : Angles{};
    for (Index g = 0; g < config_.n_kv_heads; ++g) {
      write_kv(layer, g, slot, slot, angles, k + g * d, v + g * d, scratch_.front().key);
    }
    layer.table.push(position);
    return angles;
  }

  // The angles the queries of KV head g's group get for a token of rank `rank`: its position's
  // (`absolute`, absolute mode) or its rank's virtual position (in_cache); unused without a rope.
  Angles query_angles(const Layer& layer, Index g, Index rank, Angles absolute) const noexcept {
    return positions_.in_cache() ? positions_.at_virtual(layer.in_cache.at_rank(g, rank))
                                 : absolute;
  }

  // Encodes the position of one query head (head_dim floats) in place, by query_angles'.
  void encode_query(float* q, Angles angles) const noexcept {
    if (positions_.absolute() || positions_.in_cache()) positions_.rotate(q, angles);
  }

  // The keys KV head g attends over, rows [0, live) valid: the stored ones, or in in_cache mode
  // those rotated at their rank.
  const KeyStore& attended_keys(const Layer& layer, Index g) const noexcept {
    return positions_.in_cache() ? layer.in_cache.keys(g) : layer.keys[static_cast<std::size_t>(g)];
  }

  // Evicts the state in `slot` of KV head g, whose states fill slots [0, live) (right after the
  // insert).
  void remove(Layer& layer, Index g, Index slot, Index live) noexcept {
    evictions_.note(g, layer.table.positions(g)[slot]);
    layer.table.remove(g, slot);
    if (positions_.in_cache()) {
      layer.in_cache.remove(g, slot, live, layer.keys[static_cast<std::size_t>(g)], positions_);
    }
  }

  // One recurrence of one layer: insert -> attend -> score -> evict. q and out (n_q_heads,
  // head_dim), k and v (n_kv_heads, head_dim), shapes checked.
  template <class P>
  void step_one(P& policy, Index layer_index, const Eigen::Ref<const RowMatrix>& q,
                const Eigen::Ref<const RowMatrix>& k, const Eigen::Ref<const RowMatrix>& v,
                Eigen::Ref<RowMatrix> out) {
    Layer& layer = layers_[static_cast<std::size_t>(layer_index)];
    SlotTable& table = layer.table;
    reserve(table.held() + 1);  // (only Full, or past config.max_tokens)
    const Index position = table.seen();
    const Index live = table.begin_step();  // the kept states plus the new one
    // The angles of the new token's position (absolute) or the in_cache table up to its rank,
    // computed before the heads split.
    const Angles angles = positions_.absolute() ? positions_.at_position(position) : Angles{};
    if (positions_.in_cache()) positions_.prepare_virtual(layer.in_cache.rows_needed(live));
    const bool over = P::kEvicts && live > capacity_;
    const bool evict_per_head = over && policy.per_head();

    // Per KV head, the heads split across threads: 1. insert into the free slot; 2. attend with
    // its query heads over the kept states plus the new one; 3. let the policy score them; a
    // per-head policy also chooses its victim here. Each head writes only its own rows.
    auto head_step = [&](Index g, Index worker) noexcept {
      Scratch& scratch = scratch_[static_cast<std::size_t>(worker)];
      write_kv(layer, g, table.insert_newest(g), live - 1, angles, row_data(k, g), row_data(v, g),
               scratch.key);
      const Angles query = query_angles(layer, g, live - 1, angles);
      for (Index h = g * group_; h < (g + 1) * group_; ++h) {
        q_.row(h) = q.row(h);
        encode_query(&q_(h, 0), query);
      }
      auto probs = scratch.probs.topLeftCorner(group_, live);
      attend_stored(kernels_, q_.middleRows(g * group_, group_), attended_keys(layer, g),
                    layer.values[static_cast<std::size_t>(g)], live, scale_, probs,
                    out.middleRows(g * group_, group_));
      if constexpr (P::kNeedsProbabilities) {
        policy.observe(g, probs, 1, table.scores().row(g).head(live));
      }
      if (evict_per_head) {
        remove(layer, g,
               detail::select_victim(policy, &table.scores()(g, 0), table.positions(g), live,
                                     position),
               live);
      }
    };
    workers_.run(config_.n_kv_heads, head_step);

    // 4. evict down to C
    if (over) {
      if (!evict_per_head) evict_per_layer(policy, layer, live);
      table.end_eviction();
      if (evictions_.active()) evictions_.report(layer_index, position);
    }
  }

  // One victim for the whole layer, the same slot in every KV head (their slots stay aligned).
  template <class P>
  void evict_per_layer(const P& policy, Layer& layer, Index live) noexcept {
    SlotTable& table = layer.table;
    const float* score = &table.scores()(0, 0);
    if constexpr (P::kNeedsProbabilities) {
      if (config_.n_kv_heads > 1) {
        RowVector& sum = scratch_[0].layer_score;  // the calling thread's: the heads have joined
        sum.head(live).noalias() = table.scores().leftCols(live).colwise().sum();
        score = sum.data();
      }
    }
    const Index victim =
        detail::select_victim(policy, score, table.positions(0), live, table.seen() - 1);
    // in_cache re-rotations (the same count in every KV head) are worth the threads when many.
    constexpr Index kRotationsWorthThreads = 64;
    if (positions_.in_cache() && workers_.threads() > 1 &&
        layer.in_cache.rotations(0, victim, live) >= kRotationsWorthThreads) {
      auto head_remove = [&](Index g, Index) noexcept { remove(layer, g, victim, live); };
      workers_.run(config_.n_kv_heads, head_remove);
    } else {
      for (Index g = 0; g < config_.n_kv_heads; ++g) remove(layer, g, victim, live);
    }
  }

  template <class P>
  void chunk(P& policy, Index layer, const Eigen::Ref<const RowMatrix>& q,
             const Eigen::Ref<const RowMatrix>& k, const Eigen::Ref<const RowMatrix>& v,
             Eigen::Ref<RowMatrix> out) {
    const SlotTable& table = layers_[static_cast<std::size_t>(layer)].table;
    const Index nq = config_.n_q_heads;
    const Index nkv = config_.n_kv_heads;
    const Index d = config_.head_dim;
    Index t = 0;
    while (t < q.rows()) {
      const Index room = P::kEvicts ? capacity_ - table.held() : q.rows() - t;
      if (room <= 0) {
        // Full cache: every token brings an eviction that depends on its own query.
        step_one(policy, layer, Eigen::Map<const RowMatrix>(row_data(q, t), nq, d),
                 Eigen::Map<const RowMatrix>(row_data(k, t), nkv, d),
                 Eigen::Map<const RowMatrix>(row_data(v, t), nkv, d),
                 Eigen::Map<RowMatrix>(&out(t, 0), nq, d));
        ++t;
        continue;
      }
      Index n = std::min({q.rows() - t, room, config_.max_chunk});
      while (n > 1 && group_ * n * padded(table.held() + n) > kChunkScratchFloats) n /= 2;
      reserve(table.held() + n);
      prefill(policy, layer, q.middleRows(t, n), k.middleRows(t, n), v.middleRows(t, n),
              out.middleRows(t, n));
      t += n;
    }
  }

  // n tokens that fit in the free capacity: no eviction, so the slots are in position order and
  // causal attention over [0, held + n) is one matrix product per KV head.
  template <class P>
  void prefill(P& policy, Index layer_index, const Eigen::Ref<const RowMatrix>& q,
               const Eigen::Ref<const RowMatrix>& k, const Eigen::Ref<const RowMatrix>& v,
               Eigen::Ref<RowMatrix> out) {
    Layer& layer = layers_[static_cast<std::size_t>(layer_index)];
    SlotTable& table = layer.table;
    const Index n = q.rows();
    const Index d = config_.head_dim;
    const Index rows = group_ * n;  // query rows per KV head
    const Index before = table.held();
    const Index live = before + n;
    assert(live <= slots_);
    if (chunk_q_.rows() < config_.n_q_heads * n) {
      chunk_q_ = RowMatrix(config_.n_q_heads * n, d);  // (n_kv_heads * rows, head_dim)
    }
    for (Scratch& scratch : scratch_) {
      if (scratch.chunk_out.rows() < rows)
        scratch.chunk_out = RowMatrix(rows, d);  // (rows, head_dim)
      if (scratch.chunk_keys.rows() < live) {
        scratch.chunk_keys = RowMatrix(padded(live), d);  // (>= live, head_dim)
        scratch.chunk_values = RowMatrix(padded(live), d);
      }
      if (scratch.chunk_probs.rows() < rows || scratch.chunk_probs.cols() < live) {
        scratch.chunk_probs = RowMatrix(std::max(rows, scratch.chunk_probs.rows()),
                                        padded(live));  // (rows, >= live)
      }
    }
    if (positions_.in_cache()) positions_.prepare_virtual(layer.in_cache.rows_needed(live));

    for (Index i = 0; i < n; ++i) {
      const Index slot = before + i;  // and rank: no eviction since reset
      const Angles angles = push(layer, table.seen(), row_data(k, i), row_data(v, i));
      // Query head h of token i goes to row i * group + r of its KV head's block.
      for (Index h = 0; h < config_.n_q_heads; ++h) {
        const Index row = (h / group_) * rows + i * group_ + h % group_;
        chunk_q_.row(row) = q.row(i).segment(h * d, d);
        encode_query(&chunk_q_(row, 0), query_angles(layer, h / group_, slot, angles));
      }
    }

    // Per KV head, the heads split across threads; each writes only its own columns of out.
    auto head_prefill = [&](Index g, Index worker) noexcept {
      Scratch& scratch = scratch_[static_cast<std::size_t>(worker)];
      auto probs = scratch.chunk_probs.topLeftCorner(rows, live);
      // The products take floats: the stored keys and values as they read back (so a chunk sees
      // the states a step would).
      attended_keys(layer, g).read_rows(live, scratch.chunk_keys);
      layer.values[static_cast<std::size_t>(g)].read_rows(live, scratch.chunk_values);
      attend_causal(chunk_q_.middleRows(g * rows, rows), scratch.chunk_keys.topRows(live),
                    scratch.chunk_values.topRows(live), scale_, before, group_, probs,
                    scratch.chunk_out.topRows(rows));
      for (Index i = 0; i < n; ++i) {
        for (Index r = 0; r < group_; ++r) {
          out.row(i).segment((g * group_ + r) * d, d) = scratch.chunk_out.row(i * group_ + r);
        }
      }
      if constexpr (P::kNeedsProbabilities) {
        policy.observe(g, probs, n, table.scores().row(g).head(live));
      }
    };
    workers_.run(config_.n_kv_heads, head_prefill);
  }

  CacheConfig config_;
  Policy policy_;
  Constructed constructed_;  // false once moved from
  Index capacity_ = 0;
  Index slots_ = 0;
  Index group_ = 1;  // query heads per KV head
  float scale_ = 1.0f;

  std::vector<Layer> layers_;  // (n_layers)

  ForkJoin workers_;              // the threads that share the KV heads of a layer
  std::vector<Scratch> scratch_;  // (threads)
  // Shared scratch, written before the heads split or after they join (or per head's rows).
  PositionEncoder positions_;  // the rope and the angles of every rotation
  detail::KernelSet kernels_;  // the decode kernels, chosen at construction
  Kernels kernels_used_ = Kernels::portable;
  RowMatrix q_;        // (n_q_heads, head_dim) queries with positions encoded
  RowMatrix chunk_q_;  // (n_q_heads * t, head_dim) step_chunk: queries grouped by KV head
  detail::EvictionReport evictions_;  // the observer, and each KV head's victim of the step
};

/// A cache whose policy is chosen at run time (command-line tools): `AnyCache cache(config,
/// make_policy(options))`.
using AnyCache = MultiStateCache<AnyPolicy>;

}  // namespace msrnn
