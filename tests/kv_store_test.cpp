#include "msrnn/kv_store.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "msrnn/kernels.hpp"
#include "test_util.hpp"

namespace msrnn {
namespace {

constexpr KvType kTypes[] = {KvType::f32, KvType::f16, KvType::bf16, KvType::q8};
constexpr Kernels kVariants[] = {Kernels::portable, Kernels::avx2, Kernels::avx512};

// The float a value becomes in a row stored as `type`, by the scalar conversions (kv_type.hpp,
// checked by hand there).
float round_trip(KvType type, float x, float scale) {
  switch (type) {
    case KvType::f32:
      return x;
    case KvType::f16:
      return f16_to_f32(f32_to_f16(x));
    case KvType::bf16:
      return bf16_to_f32(f32_to_bf16(x));
    case KvType::q8:
      return dequantize_q8(q8_code(x, scale), scale);
  }
  return 0.0f;
}

std::vector<float> expected_row(KvType type, const std::vector<float>& x) {
  const float scale = q8_scale(x.data(), static_cast<Index>(x.size()));
  std::vector<float> want;
  for (float v : x) want.push_back(round_trip(type, v, scale));
  return want;
}

template <class Store>
std::vector<float> read_back(const Store& store, Index slot) {
  std::vector<float> x(static_cast<std::size_t>(store.head_dim()));
  store.read(slot, x.data());
  return x;
}

// Equal as stored floats: NaN equals NaN.
void expect_same_floats(const std::vector<float>& got, const std::vector<float>& want,
                        const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << what << " value " << i;
    } else {
      EXPECT_EQ(got[i], want[i]) << what << " value " << i;
    }
  }
}

TEST(KvStore, RowsReadBackAsTheirTypesConversionOfThem) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<std::vector<float>> rows = {
      {0.5f, -1.25f, 3.0e-6f, 65504.0f, 1.0e-8f, -0.0f, 7.0f, 0.1f},   // f16 max, subnormal
      {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f},                // a zero row
      {70000.0f, -3.4e38f, 1.0f, 2.0f, -2.0f, 0.33f, 1.0e-40f, 5.0f},  // past f16, f32 max
      {1.0f, inf, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f},                 // inf
      {1.0f, 2.0f, nan, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f},                 // NaN
      {127.0f, -127.0f, 63.5f, -63.5f, 0.5f, -0.5f, 1.5f, 126.5f},     // q8 ties (scale 1)
  };
  for (KvType type : kTypes) {
    KeyStore keys(type, 8);
    ValueStore values(type, 8);
    const auto n = static_cast<Index>(rows.size());
    keys.grow(40, 0);
    values.grow(40, 0);
    // Slots out of order and across two blocks of 16.
    for (Index i = 0; i < n; ++i) {
      keys.write(3 * i + 1, rows[static_cast<std::size_t>(i)].data());
      values.write(3 * i + 1, rows[static_cast<std::size_t>(i)].data());
    }
    for (Index i = 0; i < n; ++i) {
      const std::string what = std::string(to_string(type)) + " row " + std::to_string(i);
      const std::vector<float> want = expected_row(type, rows[static_cast<std::size_t>(i)]);
      expect_same_floats(read_back(keys, 3 * i + 1), want, what + " key");
      expect_same_floats(read_back(values, 3 * i + 1), want, what + " value");
    }
  }
  // Hand-checked: q8 scale 1 rounds ties away from zero; f16 saturates to inf past 65519.
  KeyStore q8(KvType::q8, 8);
  q8.grow(1, 0);
  q8.write(0, rows[5].data());
  EXPECT_EQ(read_back(q8, 0), (std::vector<float>{127, -127, 64, -64, 1, -1, 2, 127}));
  KeyStore f16(KvType::f16, 8);
  f16.grow(1, 0);
  f16.write(0, rows[2].data());
  EXPECT_EQ(read_back(f16, 0)[0], inf);
  EXPECT_EQ(read_back(f16, 0)[1], -inf);
  EXPECT_EQ(read_back(f16, 0)[6], 0.0f);
}

TEST(KvStore, ANonFiniteRowTouchesNoOtherRow) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (KvType type : kTypes) {
    KeyStore keys(type, 4);
    keys.grow(3, 0);
    const std::vector<float> a = {1, 2, 3, 4}, bad = {nan, 1, 1, 1}, c = {-4, -3, -2, -1};
    keys.write(0, a.data());
    keys.write(1, bad.data());
    keys.write(2, c.data());
    expect_same_floats(read_back(keys, 0), expected_row(type, a), to_string(type));
    expect_same_floats(read_back(keys, 2), expected_row(type, c), to_string(type));
    if (type == KvType::q8) {  // its scale is NaN: the whole row reads NaN
      for (float x : read_back(keys, 1)) EXPECT_TRUE(std::isnan(x));
    }
  }
}

TEST(KvStore, GrowAndCopyKeepTheUsedSlots) {
  for (KvType type : kTypes) {
    KeyStore keys(type, 8);
    ValueStore values(type, 8);
    keys.grow(20, 0);
    values.grow(20, 0);
    const RowMatrix x = testing::random_matrix(20, 8, 3);
    for (Index s = 0; s < 20; ++s) {
      keys.write(s, &x(s, 0));
      values.write(s, &x(s, 0));
    }
    const KeyStore key_copy(keys, 18);
    const ValueStore value_copy(values, 18);
    keys.grow(100, 18);
    values.grow(100, 18);
    for (Index s = 0; s < 18; ++s) {
      EXPECT_EQ(read_back(keys, s), read_back(key_copy, s)) << to_string(type) << " slot " << s;
      EXPECT_EQ(read_back(values, s), read_back(value_copy, s)) << to_string(type);
    }
    EXPECT_EQ(KeyStore::bytes(type, 8, 17), 32 * kv_row_bytes(type, 8));  // whole blocks
    EXPECT_EQ(ValueStore::bytes(type, 8, 17), 32 * kv_row_bytes(type, 8));
  }
}

// attend_stored against attention in double over the stored values as they read back.
void expect_attention_like_naive(Kernels variant, KvType type, Index d, Index group, Index n) {
  KeyStore keys(type, d);
  ValueStore values(type, d);
  keys.grow(n + 5, 0);
  values.grow(n + 5, 0);
  const RowMatrix k = testing::random_matrix(n, d, 11);
  const RowMatrix v = testing::random_matrix(n, d, 12);
  const RowMatrix q = testing::random_matrix(group, d, 13);
  for (Index s = 0; s < n; ++s) {
    keys.write(s, &k(s, 0));
    values.write(s, &v(s, 0));
  }
  const float scale = 0.3f;
  RowMatrix probs = RowMatrix::Constant(group, n + 16, -1.0f);
  RowMatrix out(group, d);
  attend_stored(detail::kernel_set(variant), q, keys, values, n, scale, probs, out);
  for (Index r = 0; r < group; ++r) {
    std::vector<double> p(static_cast<std::size_t>(n));
    double top = -1e300, sum = 0.0;
    for (Index s = 0; s < n; ++s) {
      const std::vector<float> key = read_back(keys, s);
      double dot = 0.0;
      for (Index c = 0; c < d; ++c) dot += double{q(r, c)} * key[static_cast<std::size_t>(c)];
      p[static_cast<std::size_t>(s)] = scale * dot;
      top = std::max(top, scale * dot);
    }
    for (double& x : p) sum += (x = std::exp(x - top));
    for (Index s = 0; s < n; ++s) {
      p[static_cast<std::size_t>(s)] /= sum;
      const double want = p[static_cast<std::size_t>(s)];
      ASSERT_NEAR(probs(r, s), want, 1e-7 + 2e-5 * want) << "slot " << s;
    }
    EXPECT_EQ(probs(r, n), -1.0f) << "wrote past n";
    for (Index c = 0; c < d; ++c) {
      double want = 0.0;
      for (Index s = 0; s < n; ++s)
        want += p[static_cast<std::size_t>(s)] * read_back(values, s)[static_cast<std::size_t>(c)];
      ASSERT_NEAR(out(r, c), want, 1e-5 + 1e-5 * std::fabs(want))
          << "head " << r << " column " << c;
    }
  }
}

TEST(KvStore, EveryKernelVariantComputesAttentionOverEveryType) {
  int ran = 0;
  for (Kernels variant : kVariants) {
    if (!kernels_available(variant)) {
      std::printf("[ SKIPPED  ] %s: this CPU does not have it\n", to_string(variant));
      continue;
    }
    ++ran;
    for (KvType type : kTypes) {
      for (Index d : {Index{8}, Index{40}, Index{128}}) {
        for (Index group : {Index{1}, Index{2}, Index{3}, Index{4}, Index{7}}) {
          for (Index n : {Index{1}, Index{16}, Index{17}, Index{150}}) {
            SCOPED_TRACE(std::string(to_string(variant)) + " " + to_string(type) +
                         " d=" + std::to_string(d) + " group=" + std::to_string(group) +
                         " n=" + std::to_string(n));
            expect_attention_like_naive(variant, type, d, group, n);
            if (::testing::Test::HasFatalFailure()) return;
          }
        }
      }
    }
  }
  EXPECT_GE(ran, 1);
}

TEST(KvStore, AutomaticIsTheBestAvailableAndAMissingUnitIsRefused) {
  EXPECT_TRUE(kernels_available(Kernels::portable));
  EXPECT_TRUE(kernels_available(best_kernels()));
  if (kernels_available(Kernels::avx512)) {
    EXPECT_EQ(best_kernels(), Kernels::avx512);
  }
  for (Kernels variant : kVariants) {
    if (!kernels_available(variant)) {
      EXPECT_THROW(detail::kernel_set(variant), std::invalid_argument);
    }
  }
#if MSRNN_X86_KERNELS
  std::printf("this CPU: best kernels %s\n", to_string(best_kernels()));
#endif
}

}  // namespace
}  // namespace msrnn
