// msrnn-perplexity: perplexity of a llama2.c checkpoint on a text, per policy and multi-state size.
//
//   msrnn-perplexity --text story.txt --policy full,window,tova --capacity 16,32,64
//
// The definition (so numbers compare across tools) is in perplexity.hpp and the README.
#include "perplexity.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "cli.hpp"
#include "csv.hpp"
#include "gnuplot.hpp"
#include "output_file.hpp"
#include "trace.hpp"

namespace {

using namespace engine;

const char* const kUsage = R"(usage: msrnn-perplexity --text FILE [options]
Perplexity of a Llama model (llama2.c checkpoint or GGUF) on a text, with its KV cache bounded
by each policy.
  --model FILE       a llama2.c checkpoint or a GGUF file (told apart by its first
                     bytes; default stories260K.bin, found in $MSRNN_MODEL_DIR,
                     ../shared/models beside the repository, or models/ in it)
  --tokenizer FILE   a checkpoint's tokenizer (default tok512.bin, found likewise);
                     a GGUF file carries its own
  --text FILE        the text (required)
  --chunk N          tokens per chunk, BOS included (default the model's seq_len)
  --chunks N         evaluate the first N chunks only (default all)
  --stream           the text as one sequence instead: BOS once, no chunks, however long
                     (a bounded policy's memory stays flat); full stops at twice the
                     model's seq_len: enough to show it past its trained context, whose
                     cost grows with the square of the length
  --policy LIST      comma-separated: {policies} (default all)
  --capacity LIST    comma-separated multi-state sizes; every bounded policy runs at every
                     capacity, full once (default 16,32,64,128,256)
  --sinks N          sink's protected first positions (default 4)
  --recent N         h2o's protected newest states (default C/2)
  --positions MODE   absolute or in_cache (default absolute)
  --threads N        threads sharing each layer's KV heads in the cache (default 1; the
                     results are the same for any number)
  --kv-type LIST     comma-separated precisions of the stored keys and values: f32, f16, bf16,
                     q8 (default f32); every run goes at each
  --csv FILE         write policy,capacity,tokens,nll,ppl,kv_type (replaced only when the run
                     succeeds)
  --plot FILE.png    plot ppl against capacity (needs gnuplot; replaced likewise)
  --per-token FILE   write each prediction's loss, a row each:
                     policy,capacity,positions,kv_type,index,token,nll
  --trace FILE       write a row per state each cache held:
                     policy,capacity,layer,kv_head,position,token,evicted_at,positions,
                     kv_type,sequence (evicted_at empty: kept to the end of its sequence,
                     a chunk; token: the token id at position)
  --help             this text
Flags also take the form --flag=value.
)";

struct Row {
  std::string policy;
  Index capacity;
  Index tokens;
  double nll;  // mean per token, nats
  double ppl;
  msrnn::KvType kv_type;
};

// What the flags ask for.
struct Options {
  cli::CommonFlags common;
  std::string text_path, csv_path, plot_path, per_token_path, trace_path;
  long long chunk = 0, chunks = 0;
  bool stream = false;
  std::vector<std::string> policies = cli::all_policies();
  std::vector<Index> capacities = {16, 32, 64, 128, 256};
  std::vector<msrnn::KvType> kv_types = {msrnn::KvType::f32};
  bool capacity_given = false;
};

Options parse_options(int argc, char** argv) {
  Options o;
  cli::parse_flags(argc, argv, kUsage, {"--stream"},
                   [&](std::string_view flag, const std::string& value) {
                     if (flag == "--stream") {
                       o.stream = true;
                       return true;
                     }
                     if (flag == "--kv-type") {
                       o.kv_types.clear();
                       for (const std::string& type : cli::parse_list(flag, value)) {
                         o.kv_types.push_back(cli::parse_kv_type(type));
                       }
                       return true;
                     }
                     if (o.common.take(flag, value)) return true;
                     if (flag == "--text")
                       o.text_path = value;
                     else if (flag == "--csv")
                       o.csv_path = value;
                     else if (flag == "--plot")
                       o.plot_path = value;
                     else if (flag == "--per-token")
                       o.per_token_path = value;
                     else if (flag == "--trace")
                       o.trace_path = value;
                     else if (flag == "--chunk")
                       o.chunk = cli::parse_int(flag, value, 2);
                     else if (flag == "--chunks")
                       o.chunks = cli::parse_int(flag, value, 1);
                     else if (flag == "--policy") {
                       o.policies.clear();
                       for (const std::string& name : cli::parse_list(flag, value)) {
                         o.policies.push_back(cli::parse_policy(name));
                       }
                     } else if (flag == "--capacity") {
                       o.capacities.clear();
                       for (const std::string& c : cli::parse_list(flag, value)) {
                         o.capacities.push_back(cli::parse_int(flag, c, 0));
                       }
                       o.capacity_given = true;
                     } else
                       return false;
                     return true;
                   });
  if (o.text_path.empty()) cli::fail("--text FILE is required (see --help)");
  if (o.stream && (o.chunk > 0 || o.chunks > 0)) {
    cli::fail("--stream evaluates the text as one sequence: it takes no --chunk or --chunks");
  }
  o.common.warn_unused(o.policies, o.capacity_given);
  return o;
}

// Before any work: the outputs can be written, none of them is an input or another output,
// gnuplot is there.
void check_outputs(Options& o) {
  o.common.resolve_paths();
  const std::vector<NamedPath> inputs = {{"--text", o.text_path},
                                         {"--model", o.common.model_path},
                                         {"--tokenizer", o.common.tokenizer_path}};
  const std::vector<NamedPath> outputs = {{"--csv", o.csv_path},
                                          {"--plot", o.plot_path},
                                          {"--per-token", o.per_token_path},
                                          {"--trace", o.trace_path}};
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].path.empty()) continue;
    check_output_path(outputs[i].flag, outputs[i].path, inputs);
    for (std::size_t j = 0; j < i; ++j) {
      if (!outputs[j].path.empty() && same_output(outputs[j].path, outputs[i].path)) {
        cli::fail(outputs[j].flag + " and " + outputs[i].flag + " name the same file " +
                  outputs[i].path);
      }
    }
  }
  if (!o.plot_path.empty() && !gnuplot_installed()) {
    cli::fail(
        "--plot: gnuplot is not installed (apt-get install gnuplot-nox); without --plot "
        "the table and --csv need no gnuplot");
  }
}

bool is_valid_utf8(std::string_view text) {
  for (std::size_t i = 0; i < text.size();) {
    const auto lead = static_cast<unsigned char>(text[i]);
    const std::size_t n = lead < 0x80           ? 1
                          : (lead >> 5) == 0x6  ? 2
                          : (lead >> 4) == 0xE  ? 3
                          : (lead >> 3) == 0x1E ? 4
                                                : 0;
    if (n == 0 || i + n > text.size()) return false;
    for (std::size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// The text's evaluation stream, read line by line (perplexity.hpp).
std::vector<int> read_stream(const std::string& path, const Tokenizer& tokenizer) {
  try {
    require_regular_file(path, "text");
  } catch (const FileError& e) {
    cli::fail(e.what());
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) cli::fail(path + ": cannot open the text file");
  bool utf8 = true, empty = true;
  std::vector<int> stream = encode_stream(tokenizer, file, [&](const std::string& line) {
    utf8 = utf8 && is_valid_utf8(line);
    empty = false;
  });
  if (file.bad()) cli::fail(path + ": cannot read the text file");
  if (empty) cli::fail(path + ": the text file is empty");
  if (!utf8) {
    std::fprintf(stderr,
                 "note: %s is not valid UTF-8; byte fallback encodes the invalid bytes "
                 "one token each\n",
                 path.c_str());
  }
  return stream;
}

// Tokens per chunk, BOS included: --chunk, else the model's context.
Index chunk_length(const Options& o, const LlamaConfig& config) {
  const Index chunk_len = o.chunk > 0 ? o.chunk : config.seq_len;
  if (chunk_len < 2) {
    cli::fail("the model's seq_len is " + std::to_string(config.seq_len) +
              ": a chunk needs BOS and at least one token to predict; pass --chunk N (N >= 2)");
  }
  if (chunk_len > config.seq_len) {
    std::fprintf(stderr,
                 "note: --chunk %lld is longer than the model's seq_len %lld; positions past it "
                 "were never trained\n",
                 static_cast<long long>(chunk_len), static_cast<long long>(config.seq_len));
  }
  return chunk_len;
}

struct Run {
  std::string policy;
  Index capacity;
  msrnn::KvType kv_type;
};

// The sequences a run evaluates: the text's chunks, or (--stream) the whole text as one.
struct Sequences {
  const std::vector<int>& stream;  // chunks: the text's tokens; --stream: BOS, then them
  bool whole = false;              // --stream
  Index chunk_len = 0;
  Index n_chunks = 0;
  Index full_limit = 0;  // --stream: the tokens full reads at most, BOS included
  Index piece = 1;       // tokens per forward pass: a chunk whole when its scratch fits (below)

  Index count() const { return whole ? 1 : n_chunks; }
  // Sequence c of a run of `policy`: BOS, then its part of the text. A bounded policy's stream
  // is `stream` itself (not copied: a book's tokens are held once); the rest goes to `buffer`.
  const std::vector<int>& tokens(Index c, const std::string& policy,
                                 std::vector<int>& buffer) const {
    if (!whole) {
      buffer = chunk_tokens(stream, chunk_len, c);
    } else if (msrnn::policy_evicts(policy) || static_cast<Index>(stream.size()) <= full_limit) {
      return stream;
    } else {
      buffer.assign(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(full_limit));
    }
    return buffer;
  }
  // The most tokens one sequence of `policy` has (a cache's max_tokens).
  Index longest(const std::string& policy) const {
    const auto n = static_cast<Index>(stream.size());
    if (whole) return msrnn::policy_evicts(policy) ? n : std::min(n, full_limit);
    return std::min<Index>(chunk_len, n + 1);
  }
};

// At each precision, every bounded policy at every capacity, full once (at the chunk length, or
// along a stream at the tokens it reads).
std::vector<Run> plan_runs(const Options& o, const Sequences& sequences) {
  std::vector<Run> runs;
  for (msrnn::KvType type : o.kv_types) {
    for (const std::string& policy : o.policies) {
      if (!msrnn::policy_evicts(policy)) {
        runs.push_back(
            {policy, sequences.whole ? sequences.longest(policy) : sequences.chunk_len, type});
        continue;
      }
      for (Index c : o.capacities) runs.push_back({policy, c, type});
    }
  }
  return runs;
}

void show_progress(std::size_t run, std::size_t runs, const Run& r, Index done, Index total,
                   const char* unit, double tokens_per_s) {
  const int width = 30;
  const int bar = static_cast<int>(width * done / std::max<Index>(total, 1));
  std::fprintf(stderr, "\r[%zu/%zu] %-9s C=%-6lld [%s%s] %lld/%lld %s, %.0f tokens/s ", run, runs,
               r.policy.c_str(), static_cast<long long>(r.capacity),
               std::string(static_cast<std::size_t>(bar), '#').c_str(),
               std::string(static_cast<std::size_t>(width - bar), '.').c_str(),
               static_cast<long long>(done), static_cast<long long>(total), unit, tokens_per_s);
}

// The record files of the whole invocation, when asked for (every run writes into them).
struct Records {
  std::optional<TraceFile> trace;
  std::optional<PerTokenFile> per_token;
};

// Tokens per forward pass along a stream: one piece's logits are all it holds.
constexpr Index kStreamPiece = 512;

// What a run too large for the machine should lower (make_model's refusal).
constexpr const char* kLower = "--chunk or --capacity, or leave full out";

// The mean loss of one policy and capacity over its sequences, and their records.
Row evaluate(LlamaModel& model, const Run& run, const Sequences& sequences, Records& records,
             std::size_t index, std::size_t runs) {
  const bool progress = isatty(STDERR_FILENO) != 0;
  const RunLabel label{run.policy, run.capacity, model.cache().config().positions, run.kv_type};
  double nll = 0.0;
  Index count = 0;
  const auto start = std::chrono::steady_clock::now();
  auto report = [&](Index done, Index total, const char* unit) {
    if (!progress) return;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    show_progress(index + 1, runs, run, done, total, unit, static_cast<double>(count) / seconds);
  };
  for (Index c = 0; c < sequences.count(); ++c) {
    std::vector<int> buffer;
    const std::vector<int>& tokens = sequences.tokens(c, run.policy, buffer);
    const auto n = static_cast<Index>(tokens.size());
    std::optional<SequenceTrace> trace;
    if (records.trace) trace.emplace(*records.trace, label, c, model.cache());
    // A chunk goes in one forward pass (as it always has) unless its scratch would pass the
    // piece limit (a model declaring a huge context or vocabulary); a stream in pieces.
    sequence_losses(
        model, tokens, sequences.piece,
        [&](Index t, double loss) {
          if (records.per_token) {
            records.per_token->row(label, count, tokens[static_cast<std::size_t>(t + 1)], loss);
          }
          nll += loss;
          ++count;
        },
        [&](Index fed) {
          if (trace) trace->write(tokens);
          if (sequences.whole) report(fed, n, "tokens");
        });
    if (trace) trace->finish(tokens);
    if (!sequences.whole) report(c + 1, sequences.count(), "chunks");
  }
  if (progress) std::fprintf(stderr, "\r\033[K");
  const double mean = nll / static_cast<double>(count);
  return {run.policy, run.capacity, count, mean, std::exp(mean), run.kv_type};
}

void write_csv(CsvWriter& csv, const std::vector<Row>& rows) {
  for (const Row& r : rows) {
    csv.row(r.policy, r.capacity, r.tokens, r.nll, r.ppl, msrnn::to_string(r.kv_type));
  }
}

// ppl against capacity (log x), one line per bounded policy (and precision, when there are
// several), full as a horizontal line (one per precision), into `out` (committed by the caller).
void plot(const AtomicOutput& out, const std::string& path, const std::vector<Row>& rows,
          const std::string& title) {
  std::ostringstream script;
  script << "set terminal pngcairo size 900,600\n"  // no `set output`: the image goes to stdout
         << "set title '" << gnuplot_text(title) << "' noenhanced\nset logscale x 2\n"
         << "set xlabel 'multi-state size (capacity)'\nset ylabel 'perplexity'\nset key top right\n"
         << "set grid\n";
  const bool typed = std::any_of(rows.begin(), rows.end(),
                                 [&](const Row& r) { return r.kv_type != rows.front().kv_type; });
  auto series = [&](const Row& r) {
    return typed ? r.policy + " " + msrnn::to_string(r.kv_type) : r.policy;
  };
  std::vector<std::string> lines;
  std::vector<std::pair<std::string, double>> fulls;
  for (const Row& r : rows) {
    if (r.policy == "full")
      fulls.emplace_back(series(r), r.ppl);
    else if (std::find(lines.begin(), lines.end(), series(r)) == lines.end())
      lines.push_back(series(r));
  }
  script << "plot ";
  bool first = true;
  for (const std::string& line : lines) {
    script << (first ? "" : ", ") << "'-' using 1:2 with linespoints title '" << line << "'";
    first = false;
  }
  for (const auto& [name, ppl] : fulls) {
    script << (first ? "" : ", ") << ppl << " with lines dashtype 2 lc rgb 'black' title '" << name
           << "'";
    first = false;
  }
  script << "\n";
  for (const std::string& line : lines) {
    for (const Row& r : rows) {
      if (series(r) == line) script << r.capacity << ' ' << r.ppl << '\n';
    }
    script << "e\n";
  }
  run_gnuplot(script.str(), out, path);
}

std::string base_name(const std::string& path) { return path.substr(path.find_last_of('/') + 1); }

}  // namespace

int run(int argc, char** argv) {
  Options o = parse_options(argc, argv);
  check_outputs(o);
  const cli::ModelFiles files = o.common.load_model_files();
  const LlamaWeights& weights = files.weights;
  std::vector<int> stream = read_stream(o.text_path, files.tokenizer);
  Sequences sequences{stream};
  if (o.stream) {
    stream.insert(stream.begin(), kBos);  // the one sequence, BOS first
    sequences.whole = true;
    sequences.full_limit = 2 * weights.config.seq_len;
    if (static_cast<Index>(stream.size()) > sequences.full_limit &&
        std::find_if(o.policies.begin(), o.policies.end(), [](const std::string& p) {
          return !msrnn::policy_evicts(p);
        }) != o.policies.end()) {
      std::fprintf(stderr,
                   "note: --stream: full reads the first %lld of the %lld tokens (twice the "
                   "model's seq_len %lld, past which it was never trained: enough to show it "
                   "there; its cost grows with the square of the length)\n",
                   static_cast<long long>(sequences.full_limit),
                   static_cast<long long>(stream.size()),
                   static_cast<long long>(weights.config.seq_len));
    }
  } else {
    sequences.chunk_len = chunk_length(o, weights.config);
    sequences.n_chunks = chunk_count(static_cast<Index>(stream.size()), sequences.chunk_len);
    if (o.chunks > 0) sequences.n_chunks = std::min<Index>(sequences.n_chunks, o.chunks);
  }
  sequences.piece = std::min(sequences.whole ? kStreamPiece : sequences.chunk_len,
                             cli::forward_piece(weights.config));

  const std::vector<Run> runs = plan_runs(o, sequences);
  // Every model first, so that a bad option fails before any work. A sequence never holds more
  // than its tokens: no cache needs more states than that.
  for (const Run& r : runs) {
    cli::make_model(weights, o.common.settings(r.policy, r.capacity, r.kv_type),
                    sequences.longest(r.policy), sequences.piece, kLower);
  }

  Records records;
  if (!o.trace_path.empty()) records.trace.emplace(o.trace_path);
  if (!o.per_token_path.empty()) records.per_token.emplace(o.per_token_path);
  std::vector<Row> rows;
  std::printf("%-9s %9s %9s %10s %10s %7s\n", "policy", "capacity", "tokens", "nll/token", "ppl",
              "kv_type");
  for (std::size_t r = 0; r < runs.size(); ++r) {
    LlamaModel model = cli::make_model(
        weights, o.common.settings(runs[r].policy, runs[r].capacity, runs[r].kv_type),
        sequences.longest(runs[r].policy), sequences.piece, kLower);
    rows.push_back(evaluate(model, runs[r], sequences, records, r, runs.size()));
    std::printf("%-9s %9lld %9lld %10.4f %10.3f %7s\n", rows.back().policy.c_str(),
                static_cast<long long>(rows.back().capacity),
                static_cast<long long>(rows.back().tokens), rows.back().nll, rows.back().ppl,
                msrnn::to_string(rows.back().kv_type));
    cli::check_stdout();
  }
  // Every output is finished before any replaces what was there: a failed plot leaves an
  // earlier CSV as it was.
  std::optional<CsvWriter> csv;
  std::optional<AtomicOutput> image;
  if (!o.csv_path.empty()) {
    csv.emplace(o.csv_path, std::initializer_list<std::string_view>{"policy", "capacity", "tokens",
                                                                    "nll", "ppl", "kv_type"});
    write_csv(*csv, rows);
  }
  if (!o.plot_path.empty()) {
    image.emplace(o.plot_path);
    plot(*image, o.plot_path, rows,
         base_name(files.model_path) + " on " + base_name(o.text_path) +
             (o.stream ? std::string(", one stream")
                       : ", chunk " + std::to_string(sequences.chunk_len)));
  }
  // All finished before any replaces what was there: a full disk replaces none of them.
  try {
    commit_all({records.trace ? &records.trace->output() : nullptr,
                records.per_token ? &records.per_token->output() : nullptr,
                csv ? &csv->output() : nullptr, image ? &*image : nullptr});
  } catch (const FileError& e) {
    cli::fail(e.what());
  }
  return 0;
}

int main(int argc, char** argv) {
  return engine::cli::guarded_main([&] { return run(argc, argv); });
}
