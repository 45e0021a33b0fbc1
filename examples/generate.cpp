// msrnn-generate: text from a llama2.c checkpoint, with its KV cache as a bounded multi-state.
//
//   msrnn-generate [--prompt "Once upon"] [--steps 256] [--policy tova --capacity 64] ...
// Prints the text as it is generated; tokens/s and the KV state size go to stderr.
#include <chrono>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "batch.hpp"
#include "cli.hpp"
#include "json.hpp"
#include "model.hpp"
#include "sampler.hpp"
#include "session.hpp"
#include "tokenizer.hpp"
#include "trace.hpp"

namespace {

using namespace engine;

const char* const kUsage = R"(usage: msrnn-generate [options]
Generates text with a Llama model (llama2.c checkpoint or GGUF) whose KV cache is an msrnn
multi-state.
  --model FILE          a llama2.c checkpoint or a GGUF file (told apart by its first
                        bytes; default stories260K.bin, found in $MSRNN_MODEL_DIR,
                        ../shared/models beside the repository, or models/ in it)
  --tokenizer FILE      a checkpoint's tokenizer (default tok512.bin, found likewise);
                        a GGUF file carries its own
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
  --save-state FILE     when generation ends, write the sequence's state to FILE: its
                        cache, the next token, its position, the sampler
  --load-state FILE     go on from a state --save-state wrote (with the same model):
                        --steps then counts the new tokens; the state's policy, capacity,
                        precision and positions are used, and its sampler (--temperature
                        and --topp override it, --seed is ignored)
  --prompts FILE        decode every line of FILE as a prompt (an empty line is BOS only),
                        many at once: one JSON object a line on stdout, in prompt order,
                        {"index": i, "prompt": "...", "completion": "...", "tokens": n}
                        (n: the completion's tokens), and a summary on stderr. Each
                        sequence samples with its own generator (--seed + its index), so its
                        text does not depend on the batch
  --batch N             with --prompts: most sequences decoded together (default 8)
  --kv-budget BYTES     with --prompts: KV memory the sequences hold at once at most
                        (suffixes K, M, G; default half the machine's memory). A sequence is
                        admitted when its state fits: C + 1 slots for a bounded policy, all
                        --steps tokens for full
  --trace FILE          write a row per state the cache held (with --prompts too):
                        policy,capacity,layer,kv_head,position,token,evicted_at,positions,
                        kv_type,sequence (evicted_at empty: kept to the end; token empty:
                        from before --load-state; sequence: the prompt's index)
  --help                this text
Flags also take the form --flag=value.
)";

}  // namespace

// Before any work: the outputs can be written, are not an input and not the same file.
void check_outputs(cli::CommonFlags& common, const std::string& trace_path,
                   const std::string& save_path, const std::string& input_path) {
  common.resolve_paths();
  std::vector<NamedPath> inputs = {{"--model", common.model_path},
                                   {"--tokenizer", common.tokenizer_path}};
  try {
    // (--save-state may replace the --load-state it went on from: it is written atomically)
    if (!save_path.empty()) check_output_path("--save-state", save_path, inputs);
    if (!input_path.empty()) inputs.push_back({"--load-state or --prompts", input_path});
    if (!trace_path.empty()) check_output_path("--trace", trace_path, inputs);
  } catch (const FileError& e) {
    cli::fail(e.what());
  }
  if (!save_path.empty() && !trace_path.empty() && same_output(save_path, trace_path)) {
    cli::fail("--save-state and --trace name the same file " + trace_path);
  }
}

// The label of a traced run: the policy, its capacity (full: the model's seq_len), positions
// and precision as the flags set them.
RunLabel trace_label(const std::string& policy, long long capacity, const LlamaConfig& model,
                     const cli::CommonFlags& common) {
  const Index c = msrnn::policy_evicts(policy) && capacity > 0 ? capacity : model.seq_len;
  return RunLabel{policy, c, common.positions, common.kv_type};
}

// Most bytes a loaded state's cache may take: the machine's memory (none if unknown).
std::size_t max_state_bytes() {
  const double memory = cli::physical_memory_bytes();
  return memory > 0 ? static_cast<std::size_t>(memory) : std::numeric_limits<std::size_t>::max();
}

// The cache of a saved sequence (--load-state) and where it stands, errors as "error: ...".
msrnn::AnyCache resume_cache(const std::string& path, const LlamaWeights& weights, Index threads,
                             SessionState& at) {
  CacheSettings shape;  // only the model's shape is compared; the state sets the rest
  shape.policy.name = msrnn::Full::kName;
  try {
    return cli::starting_threads(threads, [&] {
      return load_session(path, weights, cache_config(weights.config, shape), threads,
                          max_state_bytes(), at);
    });
  } catch (const FileError& e) {
    cli::fail(e.what());
  }
}

// The cache flags given with --load-state ("--policy, --capacity"), which the state overrides.
std::string ignored_state_flags(bool policy_given, bool capacity_given,
                                const cli::CommonFlags& common) {
  std::string names;
  auto add = [&](bool given, const char* flag) {
    if (given) names += (names.empty() ? "" : ", ") + std::string(flag);
  };
  add(policy_given, "--policy");
  add(capacity_given, "--capacity");
  add(common.sinks_given, "--sinks");
  add(common.recent_given, "--recent");
  add(common.positions_given, "--positions");
  add(common.kv_type_given, "--kv-type");
  return names;
}

// "tova, capacity 64, f32, absolute positions": what a cache is, for messages.
std::string describe_cache(const msrnn::AnyCache& cache) {
  std::string text = msrnn::policy_name(cache.policy());
  if (cache.capacity() != msrnn::kUnbounded)
    text += ", capacity " + std::to_string(cache.capacity());
  return text + ", " + msrnn::to_string(cache.config().kv_type) + ", " +
         msrnn::to_string(cache.config().positions) + " positions";
}

// --prompts: every line a sequence, decoded with continuous batching; JSON lines in prompt order.
int generate_prompts(const std::string& path, cli::CommonFlags& common, const std::string& policy,
                     long long capacity, long long steps, long long seed, double temperature,
                     double topp, long long batch, std::size_t budget,
                     const std::string& trace_path) {
  std::string text;
  try {
    text = read_file(path, "prompts");
  } catch (const FileError& e) {
    cli::fail(e.what());
  }
  std::vector<std::string> prompts;  // a final newline ends the last line
  for (std::size_t at = 0; at < text.size();) {
    const std::size_t end = std::min(text.find('\n', at), text.size());
    prompts.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  if (prompts.empty()) cli::fail(path + ": no prompts (the file is empty)");
  const cli::ModelFiles files = common.load_model_files();
  const LlamaWeights& weights = files.weights;
  const Tokenizer& tokenizer = files.tokenizer;
  if (!msrnn::policy_evicts(policy) && steps > weights.config.seq_len) {
    std::fprintf(stderr, "note: --steps %lld is past the model's seq_len %lld; full stops there\n",
                 steps, static_cast<long long>(weights.config.seq_len));
    steps = weights.config.seq_len;
  }
  const double memory = cli::physical_memory_bytes();
  if (budget == 0) {
    budget = memory > 0 ? static_cast<std::size_t>(memory / 2) : std::size_t{1} << 32;
  }
  // The forward pass holds a row of activations and logits per sequence of the batch.
  const double pass = cli::forward_bytes(weights.config, batch);
  if (memory > 0 && pass > memory / 2) {
    cli::fail("--batch " + std::to_string(batch) + ": the forward pass of " +
              std::to_string(batch) + " sequences needs " + std::to_string(pass / 1073741824.0) +
              " GiB, more than half this machine's memory (lower --batch)");
  }
  const std::uint64_t base_seed =
      seed != 0
          ? static_cast<std::uint64_t>(seed)
          : static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  std::vector<Request> requests;
  std::size_t cut = 0;  // prompts longer than --steps: read in part, nothing generated
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    Request r;
    r.prompt = tokenizer.encode(prompts[i], /*bos=*/true);
    if (static_cast<long long>(r.prompt.size()) > steps) {
      cli::warn("prompt " + std::to_string(i) + " has " + std::to_string(r.prompt.size()) +
                " tokens (BOS included), more than --steps " + std::to_string(steps) +
                ": only its first " + std::to_string(steps) + " are read and nothing is generated");
      ++cut;
    }
    r.end_token = tokenizer.eos();
    r.max_tokens = steps;
    r.temperature = static_cast<float>(temperature);
    r.topp = static_cast<float>(topp);
    r.seed = base_seed + i;
    requests.push_back(std::move(r));
  }
  BatchSettings settings;
  settings.max_batch = batch;
  settings.kv_budget = budget;
  settings.cache = common.settings(policy, capacity);

  // Each sequence's completion grows as it goes; its line is printed once those before it are.
  std::vector<std::string> completion(prompts.size());
  std::vector<long long> generated(prompts.size(), 0);
  std::vector<bool> done(prompts.size(), false);
  std::size_t printed = 0;
  auto print_ready = [&] {
    for (; printed < prompts.size() && done[printed]; ++printed) {
      JsonLine line;
      line.field("index", static_cast<long long>(printed));
      line.field("prompt", prompts[printed]);
      line.field("completion", completion[printed]);
      line.field("tokens", generated[printed]);
      const std::string out = line.str() + "\n";
      std::fwrite(out.data(), 1, out.size(), stdout);
      cli::check_stdout();
    }
  };
  BatchCallbacks callbacks;
  callbacks.on_token = [&](const TokenEvent& e) {
    if (e.sampled && !tokenizer.ends_text(e.next)) {
      completion[e.sequence] += tokenizer.decode(e.token, e.next);
      ++generated[e.sequence];
    }
    if (tokenizer.ends_text(e.next) || e.position + 1 == requests[e.sequence].max_tokens) {
      done[e.sequence] = true;
    }
  };
  callbacks.on_step = [&](const StepEvent&) { print_ready(); };
  // --trace: each sequence's cache observed from admission to its end, its rows written as its
  // tokens become known (the file's rows of different sequences interleave).
  std::optional<TraceFile> trace_file;
  std::vector<std::unique_ptr<SequenceTrace>> traces(prompts.size());
  std::vector<std::vector<int>> fed(prompts.size());  // [sequence] the tokens by position
  if (!trace_path.empty()) {
    trace_file.emplace(trace_path);
    const RunLabel label = trace_label(policy, capacity, weights.config, common);
    callbacks.on_start = [&, label](std::size_t i, msrnn::AnyCache& cache) {
      traces[i] = std::make_unique<SequenceTrace>(*trace_file, label, static_cast<Index>(i), cache);
    };
    callbacks.on_token = [&, count = callbacks.on_token](const TokenEvent& e) {
      fed[e.sequence].push_back(e.token);
      traces[e.sequence]->write(fed[e.sequence]);
      count(e);
    };
    callbacks.on_end = [&](std::size_t i, msrnn::AnyCache&) {
      traces[i]->finish(fed[i]);
      traces[i].reset();
      fed[i] = {};
    };
  }
  Transformer model =
      cli::starting_threads(common.threads, [&] { return Transformer(weights, common.threads); });
  BatchResult result;
  // A decode_batch that fails has freed the caches of the sequences still running: their traces
  // must not touch them as they go.
  struct AbandonTraces {
    std::vector<std::unique_ptr<SequenceTrace>>& traces;
    bool finished = false;
    ~AbandonTraces() {
      for (std::unique_ptr<SequenceTrace>& trace : traces) {
        if (trace && !finished) trace->abandon();
      }
    }
  } guard{traces};
  try {
    result = decode_batch(model, requests, settings, callbacks);
  } catch (const std::invalid_argument& e) {
    std::string what = e.what();
    if (what.rfind("msrnn: ", 0) == 0) what = what.substr(7);
    cli::fail(what);
  }
  guard.finished = true;
  print_ready();
  if (trace_file) {
    try {
      trace_file->commit();
    } catch (const FileError& e) {
      cli::fail(e.what());
    }
  }
  for (std::size_t i = 0; i < prompts.size(); ++i) {  // the stream and the result agree
    if (generated[i] != static_cast<long long>(result.sequences[i].generated.size())) {
      cli::fail("internal: sequence " + std::to_string(i) + " lost tokens");
    }
  }
  const BatchSummary& s = result.summary;
  std::size_t per_sequence = 0;
  for (const SequenceResult& r : result.sequences)
    per_sequence = std::max(per_sequence, r.kv_bytes);
  std::fprintf(stderr,
               "%lld sequences, %lld tokens in %.2f s: %.1f tokens/s; peak batch %lld of %lld; "
               "KV bytes: %zu per sequence, %zu at the peak (budget %zu); policy %s\n",
               static_cast<long long>(s.sequences), static_cast<long long>(s.tokens), s.seconds,
               s.tokens_per_second(), static_cast<long long>(s.peak_batch), batch, per_sequence,
               s.peak_kv_bytes, budget, policy.c_str());
  if (cut > 0) {
    std::fprintf(stderr, "%zu of %zu prompts were longer than --steps %lld: nothing generated\n",
                 cut, prompts.size(), steps);
  }
  return 0;
}

int run(int argc, char** argv) {
  std::string prompt, save_path, load_path, prompts_path, trace_path;
  bool prompt_given = false;  // (--prompt '' is the empty text: given)
  long long batch = 8;
  bool batch_given = false;
  std::size_t budget = 0;                          // 0: half the machine's memory
  long long steps = 256, seed = 0, capacity = -1;  // -1: the model's seq_len
  double temperature = 1.0, topp = 0.9;
  std::string policy = msrnn::Full::kName;
  bool capacity_given = false, policy_given = false, sampler_given = false, seed_given = false;
  cli::CommonFlags common;
  cli::parse_flags(argc, argv, kUsage, [&](std::string_view flag, const std::string& value) {
    if (common.take(flag, value)) return true;
    if (flag == "--prompt") {
      prompt = value;
      prompt_given = true;
    } else if (flag == "--steps")
      steps = cli::parse_int(flag, value, 1);
    else if (flag == "--temperature") {
      temperature = cli::parse_real(flag, value, 0.0, 100.0);
      sampler_given = true;
    } else if (flag == "--topp") {
      topp = cli::parse_real(flag, value, 0.0, 1.0);
      sampler_given = true;
    } else if (flag == "--seed") {
      seed = cli::parse_int(flag, value, 0);
      seed_given = true;
    } else if (flag == "--policy") {
      policy = cli::parse_policy(value);
      policy_given = true;
    } else if (flag == "--capacity") {
      capacity = cli::parse_int(flag, value, 0);
      capacity_given = true;
    } else if (flag == "--prompts")
      prompts_path = value;
    else if (flag == "--batch") {
      batch = cli::parse_int(flag, value, 1, 4096);
      batch_given = true;
    } else if (flag == "--kv-budget") {
      budget = cli::parse_bytes(flag, value);
    } else if (flag == "--save-state")
      save_path = value;
    else if (flag == "--load-state")
      load_path = value;
    else if (flag == "--trace")
      trace_path = value;
    else
      return false;
    return true;
  });
  if (!prompts_path.empty()) {
    if (prompt_given) cli::fail("--prompt and --prompts: give one or the other");
    if (!save_path.empty() || !load_path.empty()) {
      cli::fail("--save-state and --load-state take one sequence, not --prompts");
    }
    common.warn_unused({policy}, capacity_given);
    check_outputs(common, trace_path, "", prompts_path);
    return generate_prompts(prompts_path, common, policy, capacity, steps, seed, temperature, topp,
                            batch, budget, trace_path);
  }
  if (batch_given || budget > 0) cli::warn("--batch and --kv-budget are for --prompts; ignored");
  const bool resume = !load_path.empty();
  if (resume) {
    if (prompt_given) cli::fail("--prompt and --load-state: a resumed sequence has its text");
    if (seed_given) cli::warn("--seed is ignored with --load-state: the state's sampler goes on");
  } else {
    common.warn_unused({policy}, capacity_given);
  }
  check_outputs(common, trace_path, save_path, load_path);
  const cli::ModelFiles files = common.load_model_files();
  const LlamaWeights& weights = files.weights;
  const Tokenizer& tokenizer = files.tokenizer;

  // Where the loop starts: a new sequence's BOS and prompt, or a saved one's state. A resumed
  // sequence's cache is the state's: the flags that would set it are not looked at (only named).
  SessionState at;
  std::optional<LlamaModel> loaded;
  if (resume) {
    loaded.emplace(weights, resume_cache(load_path, weights, common.threads, at));
    const std::string ignored = ignored_state_flags(policy_given, capacity_given, common);
    if (!ignored.empty()) {
      cli::warn("--load-state: " + ignored + " ignored: the state sets its own cache (" +
                describe_cache(loaded->cache()) + ")");
    }
    if (steps > msrnn::kMaxPosition - at.position) {
      cli::fail(load_path + ": the sequence is at position " + std::to_string(at.position) +
                "; --steps " + std::to_string(steps) + " would take it past kMaxPosition (" +
                std::to_string(msrnn::kMaxPosition) + ")");
    }
    policy = msrnn::policy_name(loaded->cache().policy());
    if (sampler_given) {
      at.temperature = static_cast<float>(temperature);
      at.topp = static_cast<float>(topp);
    }
  } else {
    const std::vector<int> prompt_tokens = tokenizer.encode(prompt, /*bos=*/true);
    if (static_cast<long long>(prompt_tokens.size()) > steps && save_path.empty()) {
      cli::warn("the prompt has " + std::to_string(prompt_tokens.size()) +
                " tokens (BOS included), more than --steps " + std::to_string(steps) +
                ": only its first " + std::to_string(steps) + " are read and nothing is generated");
    }
    at.token = prompt_tokens[0];
    at.pending_prompt.assign(prompt_tokens.begin() + 1, prompt_tokens.end());
    at.temperature = static_cast<float>(temperature);
    at.topp = static_cast<float>(topp);
    at.rng_state = seed != 0 ? static_cast<std::uint64_t>(seed)
                             : static_cast<std::uint64_t>(
                                   std::chrono::steady_clock::now().time_since_epoch().count());
  }
  // Full stops at the model's context: capped before its cache is sized by --steps.
  const bool bounded = msrnn::policy_evicts(policy);
  const long long limit = weights.config.seq_len - at.position;
  if (!bounded && steps > limit) {
    std::fprintf(stderr,
                 "note: --steps %lld is past the model's seq_len %lld; full stops there "
                 "(a bounded --policy keeps going)\n",
                 steps, static_cast<long long>(weights.config.seq_len));
    steps = std::max(0LL, limit);
  }
  LlamaModel model = resume ? std::move(*loaded)
                            : cli::make_model(weights, common.settings(policy, capacity), steps);
  loaded.reset();
  Sampler sampler(at.temperature, at.topp, at.rng_state);
  // --trace: the tokens fed by this run, from position at.position on (those before a
  // --load-state are unknown): memory that grows with this run, not with the saved position.
  std::optional<TraceFile> trace_file;
  std::optional<SequenceTrace> trace;
  std::vector<int> fed;
  if (!trace_path.empty()) {
    trace_file.emplace(trace_path);
    const msrnn::CacheConfig& c = model.cache().config();
    trace.emplace(*trace_file,
                  RunLabel{policy, bounded ? model.cache().capacity() : weights.config.seq_len,
                           c.positions, c.kv_type},
                  0, model.cache());
  }

  // As run.c: the prompt's tokens are forced, then each next token is sampled; BOS ends the text.
  const auto start = std::chrono::steady_clock::now();
  long long generated = 0;
  std::size_t forced = 0;  // of at.pending_prompt
  int token = at.token;
  // A saved sequence that had ended (BOS came next) stays ended, as one longer run would.
  const bool ended =
      resume && tokenizer.ends_text(token) && at.position > 0 && at.pending_prompt.empty();
  if (ended) cli::warn("--load-state: the saved sequence had ended (BOS); nothing to generate");
  for (long long i = 0; i < steps && !ended; ++i) {
    const RowVector& logits = model.forward(token);
    if (trace) {
      fed.push_back(token);
      trace->write(fed, at.position);
    }
    const int next =
        forced < at.pending_prompt.size() ? at.pending_prompt[forced++] : sampler.sample(logits);
    ++generated;
    const int previous = token;
    token = next;                          // the next to feed: a saved state resumes with it
    if (tokenizer.ends_text(next)) break;  // BOS, or a GGUF model's EOS
    const std::string piece = tokenizer.decode(previous, next);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    cli::check_stdout();  // a lost write ends the run now, not after it
  }
  std::printf("\n");
  cli::check_stdout();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (trace) trace->finish(fed, at.position);
  std::optional<AtomicOutput> saved;  // the state and the trace replace their files together
  try {
    if (!save_path.empty()) {
      SessionState end;
      end.token = token;
      end.position = model.cache().tokens_seen(0);
      end.pending_prompt.assign(at.pending_prompt.begin() + static_cast<std::ptrdiff_t>(forced),
                                at.pending_prompt.end());
      end.temperature = at.temperature;
      end.topp = at.topp;
      end.rng_state = sampler.random_state();
      saved.emplace(save_path);
      write_session(*saved, weights, model.cache(), end);
    }
    commit_all({trace_file ? &trace_file->output() : nullptr, saved ? &*saved : nullptr});
  } catch (const FileError& e) {
    cli::fail(e.what());
  }
  std::fprintf(stderr, "achieved tok/s: %.1f (%lld tokens, policy %s",
               static_cast<double>(generated) / seconds, generated, policy.c_str());
  if (bounded) {
    std::fprintf(stderr, ", capacity %lld", static_cast<long long>(model.cache().capacity()));
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
