// Shared vocabulary of msrnn: index type, matrix types, sentinels, position modes.
#pragma once

#include <Eigen/Core>
#include <limits>

namespace msrnn {

/// Signed index used for every size, slot and position (Eigen's own index type).
using Index = Eigen::Index;

/// Row-major float matrix: one token (or one head) per row.
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Row vector of floats (one score per slot, one token's features, ...).
using RowVector = Eigen::Matrix<float, 1, Eigen::Dynamic>;

/// Capacity of a cache that never evicts (only `Full` may use it).
inline constexpr Index kUnbounded = std::numeric_limits<Index>::max();

/// Positions are in [0, kMaxPosition), 2^62, and tokens_seen at most kMaxPosition: `append`
/// rejects a position at or past it and a `seen` past it, `step` and `step_chunk` a token that
/// would take tokens_seen past it. So no arithmetic on positions overflows, and whatever a cache
/// holds, `save_state` writes bytes that `load_state` reads.
inline constexpr Index kMaxPosition = Index{1} << 62;

/// How the cache encodes positions when it owns a `Rope`.
enum class PositionMode {
  /// Keys are rotated once, at their original position, and stored rotated (official TOVA code).
  absolute,
  /// Each kept key is rotated at its rank among the kept states and the query at the rank of the
  /// newest (StreamingLLM), so a model can run past the context it was trained on. The cache keeps
  /// the keys unrotated and, beside them, rotated at their ranks (InCacheKeys: one more key row per
  /// state; an eviction re-rotates at most half of them, none when the oldest goes, plus all of
  /// them once every C + 1 evictions or more).
  in_cache,
};

/// "absolute", "in_cache", or "?" for a value that is neither.
inline const char* to_string(PositionMode mode) noexcept {
  switch (mode) {
    case PositionMode::absolute:
      return "absolute";
    case PositionMode::in_cache:
      return "in_cache";
  }
  return "?";
}

}  // namespace msrnn
