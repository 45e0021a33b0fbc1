// msrnn-generate: text from a llama2.c checkpoint, with its KV cache as a bounded multi-state.
//
//   msrnn-generate [--prompt "Once upon"] [--steps 256] [--policy tova --capacity 64] ...
// Prints the text as it is generated; tokens/s and the KV state size go to stderr.
#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>

#include "cli.hpp"
#include "model.hpp"
#include "sampler.hpp"
#include "tokenizer.hpp"

namespace {

using namespace engine;

const char* const kUsage = R"(usage: msrnn-generate [options]
Generates text with a llama2.c checkpoint whose KV cache is an msrnn multi-state.
  --model FILE          checkpoint (default stories260K.bin, found in $MSRNN_MODEL_DIR,
                        ../shared/models beside the repository, or models/ in it)
  --tokenizer FILE      tokenizer (default tok512.bin, found likewise)
  --prompt TEXT         text to start from (default: none, from BOS)
  --steps N             tokens in all, prompt included (default 256); may exceed the model's
                        seq_len with a bounded policy
  --temperature T       0 is greedy (default 1.0)
  --topp P              top-p sampling in (0, 1) (default 0.9)
  --seed N              random seed (default: the time)
  --policy NAME         {policy_list} (default full)
  --capacity N          multi-state size C (default: the model's seq_len)
  --sinks N             sink's protected first positions (default 4)
  --recent N            h2o's protected newest states (default C/2)
  --positions MODE      absolute or in_cache (default absolute)
  --threads N           threads sharing each layer's KV heads in the cache (default 1;
                        the text is the same for any number)
  --kv-type TYPE        how the cache stores keys and values: f32, f16, bf16 or q8
                        (default f32)
  --help                this text
Flags also take the form --flag=value.
)";

}  // namespace

int run(int argc, char** argv) {
  std::string prompt;
  long long steps = 256, seed = 0, capacity = -1;  // -1: the model's seq_len
  double temperature = 1.0, topp = 0.9;
  std::string policy = msrnn::Full::kName;
  bool capacity_given = false;
  cli::CommonFlags common;
  cli::parse_flags(argc, argv, kUsage, [&](std::string_view flag, const std::string& value) {
    if (common.take(flag, value)) return true;
    if (flag == "--prompt")
      prompt = value;
    else if (flag == "--steps")
      steps = cli::parse_int(flag, value, 1);
    else if (flag == "--temperature")
      temperature = cli::parse_real(flag, value, 0.0, 100.0);
    else if (flag == "--topp")
      topp = cli::parse_real(flag, value, 0.0, 1.0);
    else if (flag == "--seed")
      seed = cli::parse_int(flag, value, 0);
    else if (flag == "--policy")
      policy = cli::parse_policy(value);
    else if (flag == "--capacity") {
      capacity = cli::parse_int(flag, value, 0);
      capacity_given = true;
    } else
      return false;
    return true;
  });
  common.warn_unused({policy}, capacity_given);
  const cli::ModelFiles files = common.load_model_files();
  const LlamaWeights& weights = files.weights;
  const Tokenizer& tokenizer = files.tokenizer;
  if (!msrnn::policy_evicts(policy) && steps > weights.config.seq_len) {
    std::fprintf(stderr,
                 "note: --steps %lld is past the model's seq_len %lld; full stops there "
                 "(a bounded --policy keeps going)\n",
                 steps, static_cast<long long>(weights.config.seq_len));
    steps = weights.config.seq_len;
  }
  LlamaModel model = cli::make_model(weights, common.settings(policy, capacity), steps);
  Sampler sampler(static_cast<float>(temperature), static_cast<float>(topp),
                  seed != 0 ? static_cast<std::uint64_t>(seed)
                            : static_cast<std::uint64_t>(
                                  std::chrono::steady_clock::now().time_since_epoch().count()));

  // As run.c: the prompt's tokens are forced, then each next token is sampled; BOS ends the text.
  const std::vector<int> prompt_tokens = tokenizer.encode(prompt, /*bos=*/true);
  if (static_cast<long long>(prompt_tokens.size()) > steps) {
    cli::warn("the prompt has " + std::to_string(prompt_tokens.size()) +
              " tokens (BOS included), more than --steps " + std::to_string(steps) +
              ": only its first " + std::to_string(steps) + " are read and nothing is generated");
  }
  int token = prompt_tokens[0];
  const auto start = std::chrono::steady_clock::now();
  long long generated = 0;
  for (long long pos = 0; pos < steps; ++pos) {
    const RowVector& logits = model.forward(token);
    const int next = pos + 1 < static_cast<long long>(prompt_tokens.size())
                         ? prompt_tokens[static_cast<std::size_t>(pos + 1)]
                         : sampler.sample(logits);
    ++generated;
    if (next == kBos) break;
    const std::string piece = tokenizer.decode(token, next);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    cli::check_stdout();  // a lost write ends the run now, not after it
    token = next;
  }
  std::printf("\n");
  cli::check_stdout();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "achieved tok/s: %.1f (%lld tokens, policy %s",
               static_cast<double>(generated) / seconds, generated, policy.c_str());
  if (msrnn::policy_evicts(policy)) {
    std::fprintf(stderr, ", capacity %lld",
                 capacity >= 0 ? capacity : static_cast<long long>(weights.config.seq_len));
  }
  const Index threads = model.cache().config().threads;
  if (threads > 1) std::fprintf(stderr, ", %lld threads", static_cast<long long>(threads));
  std::fprintf(stderr, ")\nKV state: %zu bytes (%s, %s kernels)\n", model.cache().state_bytes(),
               msrnn::to_string(model.cache().config().kv_type),
               msrnn::to_string(model.cache().kernels()));
  return 0;
}

int main(int argc, char** argv) {
  return engine::cli::guarded_main([&] { return run(argc, argv); });
}
