#include "msrnn/kv_type.hpp"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define MSRNN_TEST_F16C 1
#endif

namespace msrnn {
namespace {

float from_bits(std::uint32_t bits) { return detail::bits_float(bits); }

TEST(KvType, NamesAndRowBytes) {
  EXPECT_STREQ(to_string(KvType::f32), "f32");
  EXPECT_STREQ(to_string(KvType::f16), "f16");
  EXPECT_STREQ(to_string(KvType::bf16), "bf16");
  EXPECT_STREQ(to_string(KvType::q8), "q8");
  EXPECT_STREQ(to_string(static_cast<KvType>(9)), "?");
  EXPECT_EQ(kv_row_bytes(KvType::f32, 128), 512u);
  EXPECT_EQ(kv_row_bytes(KvType::f16, 128), 256u);
  EXPECT_EQ(kv_row_bytes(KvType::bf16, 128), 256u);
  EXPECT_EQ(kv_row_bytes(KvType::q8, 128), 132u);  // 128 int8 and a float scale
}

TEST(KvType, F16OfHandCheckedValues) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);  // the largest finite
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7BFF);  // below the halfway point to 65536
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);  // the tie rounds to even: inf
  EXPECT_EQ(f32_to_f16(-1e9f), 0xFC00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(f32_to_f16(0x1p-14f), 0x0400);         // the smallest normal
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);         // the smallest subnormal
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);         // its half: a tie, to even (zero)
  EXPECT_EQ(f32_to_f16(0x1.8p-24f), 0x0002);       // 1.5 units: a tie, to even (2)
  EXPECT_EQ(f32_to_f16(0x1.000002p-25f), 0x0001);  // just above the half
  EXPECT_EQ(f32_to_f16(0x1.ffcp-15f), 0x0400);     // rounds up into the normals
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3C00);  // tie below: to even
  EXPECT_EQ(f32_to_f16(1.0f + 0x3p-11f), 0x3C02);  // tie above: to even
  EXPECT_EQ(f32_to_f16(FLT_MIN / 4), 0x0000);      // float32 subnormal range
  const std::uint16_t nan = f32_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(from_bits(0x7F800001u)))));  // signalling: quiet
}

TEST(KvType, EveryF16ValueRoundTrips) {
  for (std::uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto code = static_cast<std::uint16_t>(h);
    const float x = f16_to_f32(code);
    if (std::isnan(x)) {
      EXPECT_EQ(code & 0x7C00, 0x7C00);
      EXPECT_NE(code & 0x03FF, 0);
      continue;
    }
    ASSERT_EQ(f32_to_f16(x), code) << std::hex << h;
  }
  EXPECT_EQ(f16_to_f32(0x0001), 0x1p-24f);
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_f32(0xFC00), -std::numeric_limits<float>::infinity());
}

// The nearest of the neighbouring codes, ties to the even one: checked on a spread of float32
// bit patterns (every 4099th), against the decoded neighbours, in double.
TEST(KvType, F16AndBf16RoundToTheNearestTiesToEven) {
  for (std::uint64_t b = 0; b <= 0xFFFFFFFFu; b += 4099) {
    const float x = from_bits(static_cast<std::uint32_t>(b));
    if (std::isnan(x)) continue;
    const double want = x;
    auto check = [&](std::uint16_t code, float (*decode)(std::uint16_t), double largest) {
      if (std::fabs(want) >= largest) return;  // rounds to inf: checked by hand elsewhere
      const double got = decode(code);
      for (int step : {-1, 1}) {
        const auto other = static_cast<std::uint16_t>(code + step);
        const double alternative = decode(other);
        if (std::isnan(alternative) || std::isinf(alternative)) continue;
        if ((other & 0x7FFF) == 0 && (code & 0x7FFF) == 0) continue;  // +0 / -0
        const double mine = std::fabs(got - want), theirs = std::fabs(alternative - want);
        ASSERT_TRUE(mine < theirs || (mine == theirs && (code & 1) == 0))
            << std::hexfloat << x << " -> " << got << " beside " << alternative;
      }
    };
    check(f32_to_f16(x), f16_to_f32, 65520.0);
    check(f32_to_bf16(x), bf16_to_f32, 0x1.ffp127);
  }
}

#ifdef MSRNN_TEST_F16C
__attribute__((target("f16c"))) std::uint16_t hardware_f16(float x) {
  const __m128i h = _mm_cvtps_ph(_mm_set_ss(x), 0);  // round to nearest even
  return static_cast<std::uint16_t>(_mm_extract_epi16(h, 0));
}
bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & (1u << 29)) != 0;
}
#endif

TEST(KvType, F16AgreesWithTheCpusConversion) {
#ifdef MSRNN_TEST_F16C
  if (!cpu_has_f16c()) GTEST_SKIP() << "this CPU has no F16C";
  for (std::uint64_t b = 0; b <= 0xFFFFFFFFu; b += 997) {
    const float x = from_bits(static_cast<std::uint32_t>(b));
    const std::uint16_t mine = f32_to_f16(x), cpu = hardware_f16(x);
    if (std::isnan(x)) {
      ASSERT_EQ(mine & 0x7E00, 0x7E00);
    } else {
      ASSERT_EQ(mine, cpu) << std::hexfloat << x;
    }
  }
#else
  GTEST_SKIP() << "not an x86 build";
#endif
}

TEST(KvType, Bf16OfHandCheckedValues) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(-1.0f), 0xBF80);
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f), 0x3F80);          // tie: to even
  EXPECT_EQ(f32_to_bf16(1.0f + 0x3p-8f), 0x3F82);          // tie: to even
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-7f), 0x3F81);          // exact
  EXPECT_EQ(f32_to_bf16(FLT_MAX), 0x7F80);                 // rounds past the largest finite: inf
  EXPECT_EQ(f32_to_bf16(from_bits(0x00000001u)), 0x0000);  // the smallest float32 subnormal
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(bf16_to_f32(0x3F81), 1.0f + 0x1p-7f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7F800001u)))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(KvType, Q8ScalesByTheLargestMagnitudeAndRoundsHalfAwayFromZero) {
  const std::vector<float> x = {1.0f, -2.0f, 0.5f, 254.0f, -254.0f, 3.0f};
  std::vector<std::int8_t> q(x.size());
  const float scale = quantize_q8(x.data(), static_cast<Index>(x.size()), q.data());
  EXPECT_EQ(scale, 2.0f);                                            // 254 / 127
  EXPECT_EQ(q, (std::vector<std::int8_t>{1, -1, 0, 127, -127, 2}));  // 0.5 -> 1, -1 -> -1, 1.5 -> 2
  EXPECT_EQ(dequantize_q8(q[3], scale), 254.0f);
  EXPECT_EQ(dequantize_q8(q[5], scale), 4.0f);
}

TEST(KvType, Q8OfZeroExtremeAndNonFiniteRows) {
  std::vector<std::int8_t> q(4, 5);
  const std::vector<float> zeros(4, 0.0f);
  EXPECT_EQ(quantize_q8(zeros.data(), 4, q.data()), 0.0f);
  EXPECT_EQ(q, std::vector<std::int8_t>(4, 0));

  const std::vector<float> extreme = {FLT_MAX, -FLT_MAX, FLT_MAX / 4, 0.0f};
  const float big = quantize_q8(extreme.data(), 4, q.data());
  EXPECT_TRUE(std::isfinite(big));
  EXPECT_EQ(q, (std::vector<std::int8_t>{127, -127, 32, 0}));  // 31.75 -> 32

  const std::vector<float> tiny = {from_bits(0x00000100u), -from_bits(0x00000100u), 0.0f, 0.0f};
  const float small = quantize_q8(tiny.data(), 4, q.data());
  EXPECT_GT(small, 0.0f);
  EXPECT_GE(q[0], 126);  // subnormal scales lose bits, never the sign or the range
  EXPECT_LE(q[1], -126);

  for (float bad :
       {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    std::vector<float> row = {1.0f, bad, -3.0f, 2.0f};
    q.assign(4, 9);
    const float scale = quantize_q8(row.data(), 4, q.data());
    EXPECT_TRUE(std::isnan(scale));
    EXPECT_EQ(q, std::vector<std::int8_t>(4, 0));
    EXPECT_TRUE(std::isnan(dequantize_q8(q[0], scale)));  // the row reads back as NaN, alone
  }
}

}  // namespace
}  // namespace msrnn
