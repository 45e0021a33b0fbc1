// bench_soak: a long bounded run of the example decoder. Generates --tokens tokens (default
// 1,000,000) with one policy's bounded cache, feeding every sampled token back (a story's end,
// BOS, simply starts the next one), and reports peak RSS along the way (it must stay flat), any
// NaN/Inf in the logits, and tokens/s over time. One policy per process, so that peak RSS is
// that policy's own:
//
//   bench_soak --policy tova [--capacity 256] [--tokens 1000000] [--model FILE] [--tokenizer FILE]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

#include "cli.hpp"
#include "model.hpp"
#include "sampler.hpp"

namespace {

using namespace engine;

const char* const kUsage = R"(usage: bench_soak --policy NAME [options]
  --policy NAME      a bounded policy of {policy_list} (full cannot run past its context)
  --capacity N       multi-state size (default 256)
  --tokens N         tokens to generate (default 1000000)
  --positions MODE   absolute or in_cache (default in_cache: StreamingLLM-style positions)
  --threads N        threads sharing each layer's KV heads in the cache (default 1)
  --model FILE, --tokenizer FILE, --sinks N, --recent N   as msrnn-generate
)";

// Peak resident set size of this process so far, in kB (VmHWM).
long peak_rss_kb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

int run(int argc, char** argv) {
  std::string policy = msrnn::Full::kName;
  long long capacity = 256, tokens = 1000000;
  cli::CommonFlags common;
  common.positions = msrnn::PositionMode::in_cache;  // streaming far past the trained context
  cli::parse_flags(argc, argv, kUsage, [&](std::string_view flag, const std::string& value) {
    if (common.take(flag, value)) return true;
    if (flag == "--policy") {
      policy = cli::parse_policy(value);
    } else if (flag == "--capacity") {
      capacity = cli::parse_int(flag, value, 0);
    } else if (flag == "--tokens") {
      tokens = cli::parse_int(flag, value, 1);
    } else {
      return false;
    }
    return true;
  });
  if (!msrnn::policy_evicts(policy)) cli::fail("--policy: a soak needs a bounded policy");
  const cli::ModelFiles files = common.load_model_files();
  LlamaModel model = cli::make_model(files.weights, common.settings(policy, capacity), capacity);
  Sampler sampler(1.0f, 0.9f, 1234);

  std::printf("policy %s, capacity %lld, model %s, kv state %zu bytes\n", policy.c_str(), capacity,
              files.model_path.c_str(), model.cache().state_bytes());
  std::printf("%10s %12s %12s %10s\n", "tokens", "tokens/s", "peak RSS kB", "non-finite");
  int token = kBos;
  long long non_finite = 0;
  long rss_at_10k = 0;
  auto window_start = std::chrono::steady_clock::now();
  long long window_tokens = 0;
  for (long long t = 1; t <= tokens; ++t) {
    const RowVector& logits = model.forward(token);
    if (!logits.allFinite()) ++non_finite;
    token = sampler.sample(logits);
    ++window_tokens;
    const bool report = t == 10000 || t == tokens || t % 100000 == 0;
    if (report) {
      const auto now = std::chrono::steady_clock::now();
      const double seconds = std::chrono::duration<double>(now - window_start).count();
      const long rss = peak_rss_kb();
      if (t == 10000) rss_at_10k = rss;
      std::printf("%10lld %12.0f %12ld %10lld\n", t, static_cast<double>(window_tokens) / seconds,
                  rss, non_finite);
      std::fflush(stdout);
      window_start = now;
      window_tokens = 0;
    }
  }
  const long rss_end = peak_rss_kb();
  if (rss_at_10k > 0) {
    std::printf("peak RSS at 10k: %ld kB, at %lld: %ld kB (%+.2f%%); non-finite logits: %lld\n",
                rss_at_10k, tokens, rss_end,
                100.0 * static_cast<double>(rss_end - rss_at_10k) / static_cast<double>(rss_at_10k),
                non_finite);
  }
  return non_finite == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  return engine::cli::guarded_main([&] { return run(argc, argv); });
}
