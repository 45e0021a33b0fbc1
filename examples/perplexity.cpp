// msrnn-perplexity: perplexity of a llama2.c checkpoint on a text, per policy and multi-state size.
//
//   msrnn-perplexity --text story.txt --policy full,window,sink,h2o,tova --capacity 16,32,64
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
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "cli.hpp"

namespace {

using namespace engine;

const char* const kUsage = R"(usage: msrnn-perplexity --text FILE [options]
Perplexity of a llama2.c checkpoint on a text, with its KV cache bounded by each policy.
  --model FILE       checkpoint (default stories260K.bin, found in $MSRNN_MODEL_DIR,
                     ../shared/models beside the repository, or models/ in it)
  --tokenizer FILE   tokenizer (default tok512.bin, found likewise)
  --text FILE        the text (required)
  --chunk N          tokens per chunk, BOS included (default the model's seq_len)
  --chunks N         evaluate the first N chunks only (default all)
  --policy LIST      comma-separated: full,window,sink,h2o,tova (default all)
  --capacity LIST    comma-separated multi-state sizes; every bounded policy runs at every
                     capacity, full once (default 16,32,64,128,256)
  --sinks N          sink's protected first positions (default 4)
  --recent N         h2o's protected newest states (default C/2)
  --positions MODE   absolute or in_cache (default absolute)
  --csv FILE         write policy,capacity,tokens,nll,ppl
  --plot FILE.png    plot ppl against capacity (needs gnuplot)
  --help             this text
)";

struct Row {
  std::string policy;
  Index capacity;
  Index tokens;
  double nll;  // mean per token, nats
  double ppl;
};

void write_csv(const std::string& path, const std::vector<Row>& rows) {
  std::ofstream out(path);
  if (!out) cli::fail(path + ": cannot write the CSV file");
  out.precision(10);
  out << "policy,capacity,tokens,nll,ppl\n";
  for (const Row& r : rows) {
    out << r.policy << ',' << r.capacity << ',' << r.tokens << ',' << r.nll << ',' << r.ppl << '\n';
  }
  if (!out) cli::fail(path + ": cannot write the CSV file");
}

bool is_valid_utf8(const std::string& text) {
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

// Text safe inside a gnuplot '...' string.
std::string sanitized(std::string text) {
  for (char& c : text) {
    if (c == '\'' || c == '\n' || c == '\\') c = '_';
  }
  return text;
}

// ppl against capacity (log x), one line per bounded policy, full as a horizontal line.
void plot(const std::string& path, const std::vector<Row>& rows, const std::string& title) {
  std::ostringstream script;
  script << "set terminal pngcairo size 900,600\nset output '" << path << "'\n"
         << "set title '" << sanitized(title) << "' noenhanced\nset logscale x 2\n"
         << "set xlabel 'multi-state size (capacity)'\nset ylabel 'perplexity'\nset key top right\n"
         << "set grid\n";
  std::vector<std::string> policies;
  double full = -1.0;
  for (const Row& r : rows) {
    if (r.policy == "full")
      full = r.ppl;
    else if (std::find(policies.begin(), policies.end(), r.policy) == policies.end())
      policies.push_back(r.policy);
  }
  script << "plot ";
  bool first = true;
  for (const std::string& p : policies) {
    script << (first ? "" : ", ") << "'-' using 1:2 with linespoints title '" << p << "'";
    first = false;
  }
  if (full > 0)
    script << (first ? "" : ", ") << full << " with lines dashtype 2 lc rgb 'black' title 'full'";
  script << "\n";
  for (const std::string& p : policies) {
    for (const Row& r : rows) {
      if (r.policy == p) script << r.capacity << ' ' << r.ppl << '\n';
    }
    script << "e\n";
  }
  FILE* gnuplot = popen("gnuplot", "w");
  if (!gnuplot) cli::fail("--plot: cannot start gnuplot");
  const std::string text = script.str();
  std::fwrite(text.data(), 1, text.size(), gnuplot);
  if (pclose(gnuplot) != 0) cli::fail("--plot: gnuplot failed to write " + path);
}

}  // namespace

int run(int argc, char** argv) {
  std::string text_path, csv_path, plot_path;
  long long chunk = 0, chunks = 0;
  std::vector<msrnn::PolicyKind> policies = {msrnn::PolicyKind::full, msrnn::PolicyKind::window,
                                             msrnn::PolicyKind::sink, msrnn::PolicyKind::h2o,
                                             msrnn::PolicyKind::tova};
  std::vector<Index> capacities = {16, 32, 64, 128, 256};
  cli::CommonFlags common;
  cli::parse_flags(argc, argv, kUsage, [&](std::string_view flag, const std::string& value) {
    if (common.take(flag, value)) return true;
    if (flag == "--text")
      text_path = value;
    else if (flag == "--csv")
      csv_path = value;
    else if (flag == "--plot")
      plot_path = value;
    else if (flag == "--chunk")
      chunk = cli::parse_int(flag, value, 2);
    else if (flag == "--chunks")
      chunks = cli::parse_int(flag, value, 1);
    else if (flag == "--policy") {
      policies.clear();
      for (const std::string& name : cli::parse_list(flag, value)) {
        policies.push_back(cli::parse_policy(name));
      }
    } else if (flag == "--capacity") {
      capacities.clear();
      for (const std::string& c : cli::parse_list(flag, value)) {
        capacities.push_back(cli::parse_int(flag, c, 0));
      }
    } else
      return false;
    return true;
  });
  if (text_path.empty()) cli::fail("--text FILE is required (see --help)");
  // Outputs first: a bad --csv or --plot must not wait for the whole evaluation.
  if (!csv_path.empty() && !std::ofstream(csv_path)) {
    cli::fail(csv_path + ": cannot write the CSV file");
  }
  if (!plot_path.empty()) {
    if (plot_path.find_first_of("'\"\n\\") != std::string::npos) {
      cli::fail("--plot: '" + plot_path +
                "' has a quote, backslash or newline; choose another name");
    }
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
      cli::fail(
          "--plot: gnuplot is not installed (apt-get install gnuplot-nox); without --plot "
          "the table and --csv need no gnuplot");
    }
  }
  const cli::ModelFiles files = common.load_model_files();
  const LlamaWeights& weights = files.weights;
  const Tokenizer& tokenizer = files.tokenizer;
  try {
    require_regular_file(text_path, "text");
  } catch (const FileError& e) {
    cli::fail(e.what());
  }
  std::ifstream text_file(text_path, std::ios::binary);
  if (!text_file) cli::fail(text_path + ": cannot open the text file");
  const std::string text((std::istreambuf_iterator<char>(text_file)),
                         std::istreambuf_iterator<char>());
  if (text.empty()) cli::fail(text_path + ": the text file is empty");
  if (!is_valid_utf8(text)) {
    std::fprintf(stderr,
                 "note: %s is not valid UTF-8; byte fallback encodes the invalid bytes "
                 "one token each\n",
                 text_path.c_str());
  }
  const std::vector<int> stream = encode_stream(tokenizer, text);
  const Index chunk_len = chunk > 0 ? chunk : weights.config.seq_len;
  if (chunk_len > weights.config.seq_len) {
    std::fprintf(stderr,
                 "note: --chunk %lld is longer than the model's seq_len %lld; positions past it "
                 "were never trained\n",
                 static_cast<long long>(chunk_len), static_cast<long long>(weights.config.seq_len));
  }
  Index n_chunks = chunk_count(static_cast<Index>(stream.size()), chunk_len);
  if (chunks > 0) n_chunks = std::min<Index>(n_chunks, chunks);

  // A chunk never holds more than the stream plus BOS: no cache needs more states than that.
  const Index max_tokens = std::min<Index>(chunk_len, static_cast<Index>(stream.size()) + 1);
  // Every model first, so that a bad option fails before any work.
  struct Run {
    msrnn::PolicyKind kind;
    Index capacity;
  };
  std::vector<Run> runs;
  for (msrnn::PolicyKind kind : policies) {
    if (kind == msrnn::PolicyKind::full) {
      runs.push_back({kind, chunk_len});
      continue;
    }
    for (Index c : capacities) runs.push_back({kind, c});
  }
  for (const Run& run : runs) {
    cli::make_model(weights, common.settings(run.kind, run.capacity), max_tokens);
  }

  const bool progress = isatty(STDERR_FILENO) != 0;
  std::vector<Row> rows;
  std::printf("%-8s %9s %9s %10s %10s\n", "policy", "capacity", "tokens", "nll/token", "ppl");
  for (std::size_t r = 0; r < runs.size(); ++r) {
    LlamaModel model =
        cli::make_model(weights, common.settings(runs[r].kind, runs[r].capacity), max_tokens);
    double nll = 0.0;
    Index count = 0;
    const auto start = std::chrono::steady_clock::now();
    for (Index c = 0; c < n_chunks; ++c) {
      for (double loss : token_losses(model, chunk_tokens(stream, chunk_len, c))) {
        nll += loss;
        ++count;
      }
      if (progress) {
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const int width = 30;
        const int done = static_cast<int>(width * (c + 1) / n_chunks);
        std::fprintf(stderr, "\r[%zu/%zu] %-5s C=%-6lld [%s%s] %lld/%lld chunks, %.0f tokens/s ",
                     r + 1, runs.size(), msrnn::policy_name(runs[r].kind),
                     static_cast<long long>(runs[r].capacity),
                     std::string(static_cast<std::size_t>(done), '#').c_str(),
                     std::string(static_cast<std::size_t>(width - done), '.').c_str(),
                     static_cast<long long>(c + 1), static_cast<long long>(n_chunks),
                     static_cast<double>(count) / seconds);
      }
    }
    if (progress) std::fprintf(stderr, "\r\033[K");
    const double mean = nll / static_cast<double>(count);
    rows.push_back(
        {msrnn::policy_name(runs[r].kind), runs[r].capacity, count, mean, std::exp(mean)});
    std::printf("%-8s %9lld %9lld %10.4f %10.3f\n", rows.back().policy.c_str(),
                static_cast<long long>(rows.back().capacity), static_cast<long long>(count), mean,
                rows.back().ppl);
    std::fflush(stdout);
  }
  if (!csv_path.empty()) write_csv(csv_path, rows);
  if (!plot_path.empty()) {
    std::string model_name = files.model_path.substr(files.model_path.find_last_of('/') + 1);
    std::string text_name = text_path.substr(text_path.find_last_of('/') + 1);
    plot(plot_path, rows, model_name + " on " + text_name + ", chunk " + std::to_string(chunk_len));
  }
  return 0;
}

int main(int argc, char** argv) {
  return engine::cli::guarded_main([&] { return run(argc, argv); });
}
