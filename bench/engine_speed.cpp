// bench_engine: greedy generation speed of the example engine on a real checkpoint, per policy,
// for the comparison with llama2.c's run.c (which decodes stories260K greedily from BOS).
//
//   bench_engine [--model FILE] [--tokens 190] [--repeats 60] [--rounds 9] [--capacity 64]
//                [--positions absolute,in_cache] [--threads 1]
//
// One measurement decodes --tokens tokens greedily from BOS, --repeats times (each from an empty
// cache), and divides the tokens by the time. A single run of msrnn-generate lasts ~15 ms, too
// short on a shared machine; here the rounds interleave the policies (Full, then every bounded
// one at --capacity, in each position mode asked for) so that a slow phase of the machine hits
// them alike, and the median over rounds is reported with the range. Full is left out when the
// tokens pass the model's context.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "cli.hpp"
#include "median.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

namespace {

using namespace engine;

const char* const kUsage = R"(usage: bench_engine [options]
Greedy decode speed of the example engine (tokens/s) per policy, median over interleaved rounds.
  --model FILE     checkpoint (default stories260K.bin, found as msrnn-generate finds it)
  --tokens N       tokens decoded from BOS per sequence (default 190: stories260K's greedy story)
  --repeats N      sequences per measurement (default 60)
  --rounds N       interleaved rounds; the median is reported (default 9)
  --capacity N     multi-state size of the bounded policies (default 64)
  --positions LIST absolute, in_cache or both, comma-separated (default absolute)
  --threads N      threads sharing each layer's KV heads in the cache (default 1)
)";

double tokens_per_second(LlamaModel& model, Index tokens, Index repeats) {
  const auto start = std::chrono::steady_clock::now();
  for (Index r = 0; r < repeats; ++r) {
    model.reset();
    int token = kBos;
    for (Index i = 0; i < tokens; ++i) {
      Index best = 0;
      model.forward(token).maxCoeff(&best);
      token = static_cast<int>(best);
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(tokens * repeats) / seconds;
}

int run(int argc, char** argv) {
  std::string model_path;
  Index tokens = 190, repeats = 60, rounds = 9, capacity = 64;
  Index threads = 1;
  std::vector<msrnn::PositionMode> modes = {msrnn::PositionMode::absolute};
  cli::parse_flags(argc, argv, kUsage, [&](std::string_view flag, const std::string& value) {
    if (flag == "--model") {
      model_path = value;
    } else if (flag == "--tokens") {
      tokens = cli::parse_int(flag, value, 1, 1 << 20);
    } else if (flag == "--repeats") {
      repeats = cli::parse_int(flag, value, 1, 1 << 20);
    } else if (flag == "--rounds") {
      rounds = cli::parse_int(flag, value, 1, 1000);
    } else if (flag == "--capacity") {
      capacity = cli::parse_int(flag, value, 2, 1 << 20);
    } else if (flag == "--threads") {
      threads = cli::parse_int(flag, value, 1, 1024);
    } else if (flag == "--positions") {
      modes.clear();
      for (const std::string& mode : cli::parse_list(flag, value)) {
        modes.push_back(cli::parse_positions(mode));
      }
    } else {
      return false;
    }
    return true;
  });
  if (model_path.empty()) model_path = cli::find_model_file("stories260K.bin", "--model");
  const LlamaWeights weights = cli::load_weights(model_path);
  std::vector<std::string> kinds;  // "policy" or "policy/in_cache", one per model
  std::vector<LlamaModel> models;
  for (msrnn::PositionMode mode : modes) {
    for (const std::string& kind : cli::all_policies()) {
      const bool bounded = msrnn::policy_evicts(kind);
      if (!bounded && tokens > weights.config.seq_len) continue;  // past the context
      CacheSettings settings;
      settings.policy.name = kind;
      settings.capacity = bounded ? capacity : -1;  // -1: the context
      settings.positions = mode;
      settings.threads = threads;
      models.push_back(cli::make_model(weights, settings, tokens));
      kinds.push_back(mode == msrnn::PositionMode::absolute ? kind
                                                            : kind + "/" + msrnn::to_string(mode));
    }
  }
  std::vector<std::vector<double>> rates(kinds.size());
  for (Index round = 0; round < rounds; ++round) {
    for (std::size_t i = 0; i < kinds.size(); ++i) {
      rates[i].push_back(tokens_per_second(models[i], tokens, repeats));
    }
  }
  std::printf("%s, %lld tokens from BOS x %lld, %lld rounds (tokens/s)\n", model_path.c_str(),
              static_cast<long long>(tokens), static_cast<long long>(repeats),
              static_cast<long long>(rounds));
  std::printf("%-18s %9s %10s %10s %10s\n", "policy", "capacity", "median", "min", "max");
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    const std::vector<double>& r = rates[i];
    const Index c = models[i].cache().capacity();
    const std::string shown = c == msrnn::kUnbounded ? "-" : std::to_string(c);
    std::printf("%-18s %9s %10.0f %10.0f %10.0f\n", kinds[i].c_str(), shown.c_str(),
                bench::median(r), *std::min_element(r.begin(), r.end()),
                *std::max_element(r.begin(), r.end()));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return engine::cli::guarded_main([&] { return run(argc, argv); });
}
