// Model and tokenizer files: good ones load, bad ones are rejected with a message naming the file
// and the problem, by the loaders and by the command-line tools (exit status 2).
#include "checkpoint.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "shared_data.hpp"
#include "tokenizer.hpp"

namespace engine {
namespace {

using testing::shared_path;

const std::string kModel = shared_path("models/stories260K.bin");
const std::string kTokenizer = shared_path("models/tok512.bin");

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A file of this test process's own (ctest runs tests, and checkouts, side by side).
std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "msrnn_" + std::to_string(getpid()) + "_" + name;
}

std::string write_temp(const std::string& name, const std::string& bytes) {
  const std::string path = temp_path(name);
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

std::string header_bytes(std::vector<std::int32_t> header) {
  return std::string(reinterpret_cast<const char*>(header.data()), header.size() * 4);
}

template <class F>
std::string file_error(F&& f) {
  try {
    f();
  } catch (const FileError& e) {
    return e.what();
  }
  return "";
}

bool mentions(const std::string& message, const std::string& text) {
  return message.find(text) != std::string::npos;
}

TEST(Checkpoint, LoadsStories260K) {
  REQUIRE_SHARED_FILE(kModel);
  const LlamaWeights w = load_checkpoint(kModel);
  EXPECT_EQ(w.config.dim, 64);
  EXPECT_EQ(w.config.hidden_dim, 172);
  EXPECT_EQ(w.config.n_layers, 5);
  EXPECT_EQ(w.config.n_heads, 8);
  EXPECT_EQ(w.config.n_kv_heads, 4);
  EXPECT_EQ(w.config.vocab_size, 512);
  EXPECT_EQ(w.config.seq_len, 512);
  EXPECT_TRUE(w.config.shared_classifier);
  EXPECT_EQ(w.classifier, w.embedding);
}

TEST(Checkpoint, LoadsASeparateClassifierAfterTheRopeTables) {
  REQUIRE_SHARED_FILE(kModel);
  // stories260K with vocab_size negated and a classifier (twice the embedding) appended.
  std::string bytes = bytes_of(kModel);
  std::int32_t vocab = 0;
  std::memcpy(&vocab, &bytes[20], 4);
  const std::int32_t negated = -vocab;
  std::memcpy(&bytes[20], &negated, 4);
  std::vector<float> classifier(static_cast<std::size_t>(vocab) * 64);
  std::memcpy(classifier.data(), &bytes[28], classifier.size() * 4);
  for (float& x : classifier) x *= 2.0f;
  bytes.append(reinterpret_cast<const char*>(classifier.data()), classifier.size() * 4);
  const LlamaWeights w = load_checkpoint(write_temp("separate.bin", bytes));
  EXPECT_FALSE(w.config.shared_classifier);
  EXPECT_EQ(w.config.vocab_size, 512);
  EXPECT_NE(w.classifier, w.embedding);
  for (std::size_t i = 0; i < classifier.size(); i += 997) {
    EXPECT_EQ(w.at(w.classifier)[i], classifier[i]) << i;
    EXPECT_EQ(w.at(w.embedding)[i] * 2.0f, classifier[i]) << i;
  }
}

TEST(Checkpoint, RejectsBadFilesNamingTheProblem) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string good = bytes_of(kModel);
  auto error_for = [&](const std::string& name, const std::string& bytes) {
    const std::string path = write_temp(name, bytes);
    const std::string message = file_error([&] { load_checkpoint(path); });
    EXPECT_EQ(message.rfind(path + ": ", 0), 0u) << message;  // names the file first
    return message;
  };
  EXPECT_TRUE(mentions(error_for("empty.bin", ""), "empty"));
  EXPECT_TRUE(mentions(error_for("short.bin", good.substr(0, 10)), "fewer than the 28"));
  EXPECT_TRUE(mentions(error_for("header_only.bin", good.substr(0, 28)), "truncated"));
  EXPECT_TRUE(mentions(error_for("truncated.bin", good.substr(0, good.size() - 100)), "truncated"));
  EXPECT_TRUE(mentions(error_for("longer.bin", good + "xxxx"), "needs 1056540"));
  EXPECT_TRUE(mentions(
      error_for("negative_dim.bin", header_bytes({-64, 172, 5, 8, 4, 512, 512}) + good.substr(28)),
      "dim = -64"));
  EXPECT_TRUE(mentions(
      error_for("huge_dim.bin", header_bytes({1 << 20, 172, 5, 8, 4, 512, 512}) + good.substr(28)),
      "truncated"));
  EXPECT_TRUE(
      mentions(error_for("huge_layers.bin",
                         header_bytes({64, 172, 1 << 10, 8, 4, 512, 512}) + good.substr(28)),
               "n_layers 1024"));
  EXPECT_TRUE(mentions(
      error_for("overflow.bin", header_bytes({1 << 30, 1 << 30, 1 << 30, 1, 1, 1 << 30, 1 << 30})),
      "more than 2^64"));
  EXPECT_TRUE(
      mentions(error_for("heads.bin", header_bytes({64, 172, 5, 7, 7, 512, 512}) + good.substr(28)),
               "not a multiple of n_heads"));
  EXPECT_TRUE(mentions(
      error_for("kv_heads.bin", header_bytes({64, 172, 5, 8, 3, 512, 512}) + good.substr(28)),
      "not a multiple of n_kv_heads"));
  EXPECT_TRUE(
      mentions(file_error([] { load_checkpoint("/nonexistent/model.bin"); }), "cannot open"));
}

TEST(Tokenizer, RejectsBadFilesNamingTheProblem) {
  REQUIRE_SHARED_FILE(kTokenizer);
  const std::string good = bytes_of(kTokenizer);
  auto error_for = [&](const std::string& name, const std::string& bytes, Index vocab = 512) {
    const std::string path = write_temp(name, bytes);
    const std::string message = file_error([&] { Tokenizer tokenizer(path, vocab); });
    EXPECT_EQ(message.rfind(path + ": ", 0), 0u) << message;
    return message;
  };
  EXPECT_TRUE(mentions(error_for("tok_empty.bin", ""), "empty"));
  EXPECT_TRUE(
      mentions(error_for("tok_truncated.bin", good.substr(0, good.size() / 2)), "truncated"));
  std::string random(4000, '\0');
  std::uint32_t state = 12345;
  for (char& c : random) c = static_cast<char>((state = state * 1103515245u + 12345u) >> 24);
  EXPECT_NE(error_for("tok_random.bin", random), "");
  std::string long_piece = good;
  const std::int32_t huge = 1000000;
  std::memcpy(&long_piece[8], &huge, 4);  // piece 0's length runs past the end
  EXPECT_TRUE(mentions(error_for("tok_long_piece.bin", long_piece), "piece 0 has length 1000000"));
  EXPECT_TRUE(
      mentions(error_for("tok_wrong_vocab.bin", good, 400), "does not match a vocabulary of 400"));
  EXPECT_TRUE(mentions(error_for("tok_too_big_vocab.bin", good, 600), "truncated"));
  std::string nan_score = good;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(&nan_score[4], &nan, 4);  // piece 0's score
  EXPECT_TRUE(
      mentions(error_for("tok_nan.bin", nan_score), "piece 0 has a score that is not finite"));
  EXPECT_TRUE(mentions(file_error([] { Tokenizer t(::testing::TempDir(), 512); }),
                       "is not a regular file"));
}

}  // namespace
}  // namespace engine

#include <sys/wait.h>

namespace engine {
namespace {

struct Outcome {
  int status;
  std::string err;
};

// Runs a tool with arguments; its exit status and what it wrote to stderr.
Outcome run_tool(const std::string& tool, const std::string& args) {
  const std::string err_path = temp_path("cli_stderr.txt");
  const std::string command = tool + " " + args + " > /dev/null 2> " + err_path;
  const int raw = std::system(command.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, bytes_of(err_path)};
}

void expect_rejected(const std::string& tool, const std::string& args, const std::string& what) {
  const Outcome o = run_tool(tool, args);
  EXPECT_EQ(o.status, 2) << args << "\n" << o.err;
  EXPECT_EQ(o.err.rfind("error: ", 0), 0u) << args << "\n" << o.err;
  EXPECT_TRUE(mentions(o.err, what)) << args << "\n" << o.err;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << "one line: " << o.err;
}

TEST(CommandLine, ToolsRejectBadInputWithOneErrorLineAndStatus2) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kTokenizer);
  const std::string generate = MSRNN_GENERATE_BIN;
  const std::string perplexity = MSRNN_PERPLEXITY_BIN;
  const std::string good = bytes_of(kModel);
  const std::string files = " --model " + kModel + " --tokenizer " + kTokenizer;
  const std::string truncated = write_temp("cli_truncated.bin", good.substr(0, 5000));
  const std::string header_only = write_temp("cli_header.bin", good.substr(0, 28));
  const std::string empty = write_temp("cli_empty.bin", "");
  const std::string bad_tok = write_temp("cli_tok.bin", bytes_of(kTokenizer).substr(0, 300));
  const std::string empty_text = write_temp("cli_empty.txt", "");

  expect_rejected(generate, "--model /nonexistent/m.bin --tokenizer " + kTokenizer,
                  "/nonexistent/m.bin: cannot open");
  expect_rejected(generate, "--model " + truncated + " --tokenizer " + kTokenizer,
                  truncated + ": the file has 5000 bytes");
  expect_rejected(generate, "--model " + header_only + " --tokenizer " + kTokenizer, "truncated");
  expect_rejected(generate, "--model " + empty + " --tokenizer " + kTokenizer, "empty");
  expect_rejected(generate, "--model " + kModel + " --tokenizer " + bad_tok,
                  bad_tok + ": truncated");
  expect_rejected(generate, files + " --capacity 12abc", "--capacity: '12abc'");
  expect_rejected(generate, files + " --steps -3", "--steps: '-3'");
  expect_rejected(generate, files + " --policy lru", "unknown policy 'lru'");
  expect_rejected(generate, files + " --policy tova --capacity 0", "capacity = 0");
  expect_rejected(generate, files + " --policy sink --capacity 4",
                  "sinks = 4: must be smaller than capacity (4)");
  expect_rejected(generate, files + " --policy h2o --capacity 8 --recent 8", "recent = 8");
  expect_rejected(generate, files + " --positions sideways", "--positions: 'sideways'");
  expect_rejected(generate, files + " --bogus 1", "unknown flag '--bogus'");
  expect_rejected(generate, files + " --steps", "--steps needs a value");
  expect_rejected(generate, "--model " + kModel + " --tokenizer " + ::testing::TempDir(),
                  "is not a regular file");
  expect_rejected(perplexity, files + " --text " + ::testing::TempDir(), "is not a regular file");
  expect_rejected(perplexity, files + " --text " + kTokenizer + " --policy full,", "empty item");
  expect_rejected(perplexity, files + " --text " + kTokenizer + " --csv /nonexistent/x.csv",
                  "cannot write");
  const std::string absurd = write_temp(
      "cli_absurd.bin", header_bytes({1 << 20, 172, 1 << 10, 8, 4, 512, 512}) + good.substr(28));
  expect_rejected(generate, "--model " + absurd + " --tokenizer " + kTokenizer, "truncated");
  expect_rejected(perplexity, files, "--text FILE is required");
  expect_rejected(perplexity, files + " --text /nonexistent.txt", "/nonexistent.txt: cannot open");
  expect_rejected(perplexity, files + " --text " + empty_text, "is empty");
  expect_rejected(perplexity, files + " --text " + kTokenizer + " --capacity 16,x",
                  "--capacity: 'x'");
  expect_rejected(perplexity, files + " --text " + kTokenizer + " --policy window,lru", "'lru'");
  expect_rejected(perplexity, files + " --text " + kTokenizer + " --chunk 1", "--chunk: '1'");
}

TEST(CommandLine, ExtremeButValidSettingsWork) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kTokenizer);
  const std::string files = " --model " + kModel + " --tokenizer " + kTokenizer;
  // A capacity far beyond what the run can hold allocates only what it can hold.
  EXPECT_EQ(
      run_tool(MSRNN_GENERATE_BIN, files + " --policy tova --capacity 1000000000000 --steps 20")
          .status,
      0);
  // A temperature so small that logits / T overflows.
  EXPECT_EQ(run_tool(MSRNN_GENERATE_BIN, files + " --temperature 1e-38 --steps 20 --seed 5").status,
            0);
  // A bounded cache runs past the model's context (512).
  const Outcome long_run =
      run_tool(MSRNN_GENERATE_BIN, files + " --policy sink --capacity 32 --steps 700 --seed 7");
  EXPECT_EQ(long_run.status, 0) << long_run.err;
  EXPECT_TRUE(mentions(long_run.err, "capacity 32"));
}

TEST(CommandLine, WarnsAboutNonFiniteWeightsAndNonUtf8Text) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kTokenizer);
  std::string bytes = bytes_of(kModel);
  const float inf = std::numeric_limits<float>::infinity();
  std::memcpy(&bytes[28 + 4 * 100], &inf, 4);  // one embedding weight
  const std::string model = write_temp("inf.bin", bytes);
  const Outcome gen = run_tool(MSRNN_GENERATE_BIN, "--model " + model + " --tokenizer " +
                                                       kTokenizer + " --steps 5 --seed 1");
  EXPECT_EQ(gen.status, 0) << gen.err;
  EXPECT_TRUE(mentions(gen.err, "warning: " + model + ": 1 weights are NaN or infinite"))
      << gen.err;
  const std::string text = write_temp("latin1.txt", "caf\xe9 au lait\n");
  const Outcome ppl =
      run_tool(MSRNN_PERPLEXITY_BIN, "--model " + kModel + " --tokenizer " + kTokenizer +
                                         " --text " + text + " --policy window --capacity 4");
  EXPECT_EQ(ppl.status, 0) << ppl.err;
  EXPECT_TRUE(mentions(ppl.err, "is not valid UTF-8; byte fallback")) << ppl.err;
}

TEST(CommandLine, PerplexityWritesItsCsv) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string text = shared_path("texts/TinyStories-valid.head30k.txt");
  REQUIRE_SHARED_FILE(text);
  const std::string csv = temp_path("ppl.csv");
  const Outcome o =
      run_tool(MSRNN_PERPLEXITY_BIN, "--model " + kModel + " --tokenizer " + kTokenizer +
                                         " --text " + text + " --chunks 2 --chunk 128" +
                                         " --policy full,tova --capacity 16,32 --csv " + csv);
  ASSERT_EQ(o.status, 0) << o.err;
  const std::string table = bytes_of(csv);
  EXPECT_EQ(table.rfind("policy,capacity,tokens,nll,ppl\nfull,128,254,", 0), 0u) << table;
  EXPECT_TRUE(mentions(table, "\ntova,16,254,"));
  EXPECT_TRUE(mentions(table, "\ntova,32,254,"));
}

}  // namespace
}  // namespace engine

#include "cli.hpp"

namespace engine {
namespace {

TEST(CommandLine, AMissingModelSaysWhereToPutIt) {
  EXPECT_EXIT(
      cli::find_model_file("no_such_model.bin", "--model"), ::testing::ExitedWithCode(2),
      "error: cannot find no_such_model.bin \\(looked in .*shared/models, .*/models\\); put "
      "it in one of them, set MSRNN_MODEL_DIR, or pass --model");
}

}  // namespace
}  // namespace engine
