// xorshift64*: the random numbers of the example engine (llama2.c's run.c uses the same), so
// that sampling, random weights and benchmark data are reproducible everywhere from a seed.
#pragma once

#include <cstdint>

namespace engine {

/// Marsaglia's xorshift64* generator. Not for cryptography; a fixed seed gives a fixed sequence
/// on every platform.
class XorShift64Star {
 public:
  explicit XorShift64Star(std::uint64_t state) : state_(state) {}

  /// The next 64 bits.
  std::uint64_t next() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return state_ * 0x2545F4914F6CDD1Dull;
  }
  /// The top 32 bits of the next value (run.c's random_u32).
  std::uint32_t next_u32() { return static_cast<std::uint32_t>(next() >> 32); }
  /// Uniform in [0, 1) with 24 random bits (run.c's random_f32).
  float next_float() { return static_cast<float>(next_u32() >> 8) / 16777216.0f; }

  std::uint64_t state() const { return state_; }

 private:
  std::uint64_t state_;
};

}  // namespace engine
