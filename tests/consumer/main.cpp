// Exits 0 when the installed msrnn builds, runs, and bounds its state.
#include <cstdio>
#include <msrnn/msrnn.hpp>

int main() {
  msrnn::CacheConfig config;
  config.n_q_heads = 4;
  config.n_kv_heads = 2;
  config.head_dim = 8;
  config.capacity = 3;
  config.rope = msrnn::Rope(8);
  msrnn::MultiStateCache<msrnn::TOVA> cache(config);
  msrnn::RowMatrix q = msrnn::RowMatrix::Random(4, 8);
  msrnn::RowMatrix kv = msrnn::RowMatrix::Random(2, 8);
  msrnn::RowMatrix out(4, 8);
  for (int t = 0; t < 10; ++t) cache.step(0, q, kv, kv, out);
  const bool ok = cache.size(0) == 3 && cache.kept_positions(0, 1).size() == 3 && out.allFinite();
  std::printf("consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
