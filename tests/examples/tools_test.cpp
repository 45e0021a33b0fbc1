// The command-line tools as a user meets them: bad input gets one line "error: ..." and status 2,
// outputs never destroy inputs or earlier results, nothing hangs, no write failure goes unseen.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoint.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"
#include "tool_runner.hpp"

namespace engine {
namespace {

using testing::shared_path;

const std::string kModel = shared_path("models/stories260K.bin");
const std::string kTokenizer = shared_path("models/tok512.bin");
const std::string kStories = shared_path("texts/TinyStories-valid.head30k.txt");

const testing::TempDir& dir() { return testing::process_temp_dir(); }

using testing::bytes_of;
using testing::expect_rejected;
using testing::hidden_files;
using testing::mentions;
using testing::Outcome;
using testing::quoted;
using testing::run_tool;
using testing::write_temp;

std::string header_bytes(std::vector<std::int32_t> header) {
  return std::string(reinterpret_cast<const char*>(header.data()), header.size() * 4);
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
  expect_rejected(generate, files + " --threads 0", "--threads: '0'");
  expect_rejected(generate, files + " --kv-type f8", "--kv-type: 'f8' is not f32, f16, bf16 or q8");
  expect_rejected(perplexity, files + " --text " + kTokenizer + " --kv-type f16,int4", "'int4'");
  expect_rejected(perplexity, files + " --text " + kTokenizer + " --threads 2000", "--threads");
  expect_rejected(generate, files + " --bogus 1", "unknown flag '--bogus'");
  expect_rejected(generate, files + " --steps", "--steps needs a value");
  expect_rejected(generate, "--model " + kModel + " --tokenizer " + ::testing::TempDir(),
                  "is not a regular file");
  expect_rejected(perplexity, files + " --text " + ::testing::TempDir(), "is not a regular file");
  expect_rejected(perplexity, files + " --text " + kTokenizer + " --policy full,", "empty item");
  expect_rejected(perplexity, files + " --text " + kTokenizer + " --csv /nonexistent/x.csv",
                  "/nonexistent/x.csv: its folder /nonexistent does not exist");
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
  const std::string csv = dir().file("ppl.csv");
  const Outcome o =
      run_tool(MSRNN_PERPLEXITY_BIN, "--model " + kModel + " --tokenizer " + kTokenizer +
                                         " --text " + text + " --chunks 2 --chunk 128" +
                                         " --policy full,tova --capacity 16,32 --csv " + csv);
  ASSERT_EQ(o.status, 0) << o.err;
  const std::string table = bytes_of(csv);
  EXPECT_EQ(table.rfind("policy,capacity,tokens,nll,ppl,kv_type\nfull,128,254,", 0), 0u) << table;
  EXPECT_TRUE(mentions(table, "\ntova,16,254,"));
  EXPECT_TRUE(mentions(table, "\ntova,32,254,"));
}

// --threads splits each layer's KV heads over threads; the results are the cache's, bit for bit.
TEST(CommandLine, ThreadsGiveTheSameTextAndTheSamePerplexity) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const std::string files = "--model " + kModel + " --tokenizer " + kTokenizer;
  std::string text[2], table[2];
  for (int threads : {1, 2}) {
    const std::string t = " --threads " + std::to_string(threads);
    const Outcome g = run_tool(MSRNN_GENERATE_BIN, files + " --temperature 0 --steps 120" +
                                                       " --policy tova --capacity 24" +
                                                       " --positions in_cache" + t);
    ASSERT_EQ(g.status, 0) << g.err;
    EXPECT_EQ(mentions(g.err, ", 2 threads)"), threads == 2) << g.err;  // the flag is taken
    text[threads - 1] = g.out;
    const std::string csv = dir().file("threads" + std::to_string(threads) + ".csv");
    const Outcome p = run_tool(MSRNN_PERPLEXITY_BIN,
                               files + " --text " + kStories + " --chunks 1 --chunk 200" +
                                   " --policy h2o,tova --capacity 16" + " --csv " + csv + t);
    ASSERT_EQ(p.status, 0) << p.err;
    table[threads - 1] = bytes_of(csv);
  }
  EXPECT_FALSE(text[0].empty());
  EXPECT_EQ(text[0], text[1]);
  EXPECT_TRUE(mentions(table[0], "\ntova,16,199,")) << table[0];
  EXPECT_EQ(table[0], table[1]);
}

// --kv-type: the tools store the cache in each precision; perplexity takes a list and says which
// precision each row is; 16 bits change the perplexity a little, not at all nothing.
TEST(CommandLine, KvTypeStoresTheStateInEachPrecision) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const std::string files = "--model " + kModel + " --tokenizer " + kTokenizer;
  const Outcome g32 = run_tool(
      MSRNN_GENERATE_BIN, files + " --temperature 0 --steps 60" + " --policy tova --capacity 24");
  const Outcome g8 = run_tool(MSRNN_GENERATE_BIN, files + " --temperature 0 --steps 60" +
                                                      " --policy tova --capacity 24 --kv-type q8");
  ASSERT_EQ(g32.status, 0) << g32.err;
  ASSERT_EQ(g8.status, 0) << g8.err;
  EXPECT_TRUE(mentions(g8.err, "(q8, ")) << g8.err;
  EXPECT_TRUE(mentions(g32.err, "(f32, ")) << g32.err;
  const std::string csv = dir().file("kv_types.csv");
  const Outcome p = run_tool(MSRNN_PERPLEXITY_BIN,
                             files + " --text " + kStories + " --chunks 1 --chunk 200" +
                                 " --policy tova --capacity 16 --kv-type f32,f16,q8 --csv " + csv);
  ASSERT_EQ(p.status, 0) << p.err;
  const std::string table = bytes_of(csv);
  std::vector<double> ppl;
  for (const char* type : {",f32\n", ",f16\n", ",q8\n"}) {
    const std::size_t end = table.find(type);
    ASSERT_NE(end, std::string::npos) << type << " in " << table;
    const std::size_t start = table.rfind(',', end - 1) + 1;
    ppl.push_back(std::stod(table.substr(start, end - start)));
  }
  EXPECT_NE(ppl[1], ppl[0]);
  EXPECT_NEAR(ppl[1], ppl[0], 0.01 * ppl[0]);  // f16: within 1%
  EXPECT_NEAR(ppl[2], ppl[0], 0.05 * ppl[0]);  // q8: within 5%
}

// A llama2.c checkpoint file of `weights` (header, then the floats in their order).
std::string checkpoint_bytes(const LlamaWeights& w) {
  const LlamaConfig& c = w.config;
  const auto i32 = [](Index x) { return static_cast<std::int32_t>(x); };
  std::string bytes = header_bytes(
      {i32(c.dim), i32(c.hidden_dim), i32(c.n_layers), i32(c.n_heads), i32(c.n_kv_heads),
       c.shared_classifier ? i32(c.vocab_size) : -i32(c.vocab_size), i32(c.seq_len)});
  bytes.append(reinterpret_cast<const char*>(w.data.data()), w.data.size() * sizeof(float));
  return bytes;
}

// Issue 9, 1: an output that is an input is refused, by identity, and the input is untouched.
TEST(CommandLine, AnOutputThatIsAnInputIsRefusedAndTheInputKept) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const testing::TempDir here;
  const std::string book = here.write("book.txt", bytes_of(kStories));
  const std::string model = here.write("model.bin", bytes_of(kModel));
  const std::string tok = here.write("tok.bin", bytes_of(kTokenizer));
  ASSERT_EQ(::link(book.c_str(), here.file("hardlink.txt").c_str()), 0);
  const std::string run = "--model " + model + " --tokenizer " + tok + " --text " + book +
                          " --policy window --capacity 16 --chunks 1";
  expect_rejected(MSRNN_PERPLEXITY_BIN, run + " --csv " + book, "is also the --text input");
  expect_rejected(MSRNN_PERPLEXITY_BIN,
                  run + " --csv " + here.path() + "/./../" +
                      std::filesystem::path(here.path()).filename().string() + "/book.txt",
                  "is also the --text input");
  expect_rejected(MSRNN_PERPLEXITY_BIN, run + " --csv " + here.file("hardlink.txt"),
                  "is also the --text input");
  expect_rejected(MSRNN_PERPLEXITY_BIN, run + " --csv " + model, "is also the --model input");
  expect_rejected(MSRNN_PERPLEXITY_BIN, run + " --plot " + tok, "is also the --tokenizer input");
  expect_rejected(MSRNN_PERPLEXITY_BIN,
                  run + " --csv " + here.file("x.png") + " --plot " + here.file("x.png"),
                  "--csv and --plot name the same file");
  EXPECT_EQ(bytes_of(book), bytes_of(kStories));
  EXPECT_EQ(bytes_of(model), bytes_of(kModel));
  EXPECT_EQ(bytes_of(tok), bytes_of(kTokenizer));
}

// Issue 9, 1: a run that fails keeps the earlier CSV; one that succeeds replaces it whole, with
// the mode it had, and leaves no temporary file.
TEST(CommandLine, TheCsvIsReplacedOnlyByASuccessfulRun) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const testing::TempDir here;
  const std::string csv = here.write("ppl.csv", "an earlier result\n");
  ASSERT_EQ(::chmod(csv.c_str(), 0640), 0);
  const std::string files = "--model " + kModel + " --tokenizer " + kTokenizer + " --text " +
                            kStories + " --chunks 1 --chunk 64 --csv " + csv;
  // Fails after the outputs are checked (the capacity is checked with the models).
  expect_rejected(MSRNN_PERPLEXITY_BIN, files + " --policy sink --capacity 4", "sinks = 4");
  EXPECT_EQ(bytes_of(csv), "an earlier result\n");
  const Outcome ok = run_tool(MSRNN_PERPLEXITY_BIN, files + " --policy window --capacity 16");
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_EQ(bytes_of(csv).rfind("policy,capacity,tokens,nll,ppl,kv_type\nwindow,16,63,", 0), 0u)
      << bytes_of(csv);
  struct stat info {};
  ASSERT_EQ(::stat(csv.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0640u);
  EXPECT_TRUE(hidden_files(here.path()).empty());
}

// Issue 9, 2: no character of --plot reaches gnuplot, whose output '|cmd' would run cmd.
TEST(CommandLine, APlotPathCannotRunACommand) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const testing::TempDir here;
  const Outcome o = run_tool(MSRNN_PERPLEXITY_BIN,
                             "--model " + kModel + " --tokenizer " + kTokenizer + " --text " +
                                 kStories + " --chunks 1 --chunk 64 --policy window,tova" +
                                 " --capacity 8,16 --plot " + quoted("|touch pwned"),
                             "cd " + here.path() + " &&");
  EXPECT_FALSE(std::filesystem::exists(here.file("pwned"))) << "gnuplot ran the plot path";
  if (testing::running_in_ci() || o.status == 0) {
    ASSERT_EQ(o.status, 0) << o.err;
    // The image is where the name says, a file called "|touch pwned".
    EXPECT_EQ(bytes_of(here.file("|touch pwned")).substr(0, 4), "\x89PNG");
  } else {
    EXPECT_TRUE(mentions(o.err, "gnuplot is not installed")) << o.err;
  }
  EXPECT_TRUE(hidden_files(here.path()).empty());
}

// Both outputs are finished before either replaces anything: a gnuplot that fails (here a
// stand-in on $PATH that exits 1) leaves the earlier CSV and plot as they were; and --csv and
// --plot naming one new file by two spellings are refused.
TEST(CommandLine, AFailedPlotKeepsTheEarlierCsv) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const testing::TempDir here;
  const std::string fake = here.write("gnuplot", "#!/bin/sh\ncat > /dev/null\nexit 1\n");
  ASSERT_EQ(::chmod(fake.c_str(), 0755), 0);
  const std::string csv = here.write("ppl.csv", "an earlier result\n");
  const std::string png = here.write("ppl.png", "an earlier plot");
  const std::string run = "--model " + kModel + " --tokenizer " + kTokenizer + " --text " +
                          kStories + " --chunks 1 --chunk 64 --policy window --capacity 8";
  expect_rejected(MSRNN_PERPLEXITY_BIN, run + " --csv " + csv + " --plot " + png, "gnuplot failed",
                  "PATH=" + here.path() + ":$PATH");
  EXPECT_EQ(bytes_of(csv), "an earlier result\n");
  EXPECT_EQ(bytes_of(png), "an earlier plot");
  EXPECT_TRUE(hidden_files(here.path()).empty());
  expect_rejected(MSRNN_PERPLEXITY_BIN, run + " --csv new.dat --plot ./new.dat",
                  "--csv and --plot name the same file", "cd " + here.path() + " &&");
  EXPECT_FALSE(std::filesystem::exists(here.file("new.dat")));
}

// Issue 9, 2 and 4: impossible outputs are refused before any work (nothing on stdout), and a
// FIFO output, with or without a reader, does not hang the tool.
TEST(CommandLine, ImpossibleOutputsAreRefusedBeforeAnyWork) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const testing::TempDir here;
  ASSERT_EQ(::mkfifo(here.file("fifo.csv").c_str(), 0600), 0);
  ASSERT_EQ(::mkfifo(here.file("read.csv").c_str(), 0600), 0);
  const std::string run = "--model " + kModel + " --tokenizer " + kTokenizer + " --text " +
                          kStories + " --chunks 1 --policy window --capacity 16";
  for (const auto& [args, what] : std::vector<std::pair<std::string, std::string>>{
           {"--plot /nonexistent/dir/p.png", "its folder /nonexistent/dir does not exist"},
           {"--plot /dev/full", "/dev/full: is not a regular file"},
           {"--csv /dev/full", "/dev/full: is not a regular file"},
           {"--csv " + here.path(), "is not a regular file"},
           {"--csv " + here.file("fifo.csv"), "fifo.csv: is not a regular file"},
           {"--csv /nonexistent/x.csv", "does not exist"}}) {
    const Outcome o = run_tool(MSRNN_PERPLEXITY_BIN, run + " " + args, "timeout 60");
    EXPECT_EQ(o.status, 2) << args << "\n" << o.err;
    EXPECT_TRUE(mentions(o.err, what)) << args << "\n" << o.err;
    EXPECT_EQ(o.out, "") << "worked before refusing " << args;
  }
  // A reader waiting on the FIFO (it gives up after 10 s, so nothing is left running).
  const std::string reader = "(timeout 10 cat " + here.file("read.csv") + " > /dev/null 2>&1 &) ;";
  const Outcome o = run_tool(MSRNN_PERPLEXITY_BIN, run + " --csv " + here.file("read.csv"),
                             reader + " timeout 60");
  EXPECT_EQ(o.status, 2) << o.err;
  EXPECT_TRUE(mentions(o.err, "is not a regular file")) << o.err;
}

// Issue 9, 3: a model whose context is one token cannot make chunks; the tool says so.
TEST(CommandLine, AModelWithSeqLenOneNeedsAChunkFlag) {
  REQUIRE_SHARED_FILE(kTokenizer);
  LlamaConfig c;
  c.dim = 16;
  c.hidden_dim = 32;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.vocab_size = 512;
  c.seq_len = 1;
  const testing::TempDir here;
  const std::string model = here.write("seq1.bin", checkpoint_bytes(random_weights(c, 3)));
  const std::string text = here.write("t.txt", "One day a cat sat.\n");
  const std::string run = "--model " + model + " --tokenizer " + kTokenizer + " --text " + text +
                          " --policy window --capacity 4";
  expect_rejected(MSRNN_PERPLEXITY_BIN, run, "the model's seq_len is 1");
  const Outcome o = run_tool(MSRNN_PERPLEXITY_BIN, run + " --chunk 8");
  EXPECT_EQ(o.status, 0) << o.err;
  EXPECT_TRUE(mentions(o.out, "window")) << o.out;
}

// Issue 9, 4: a FIFO where the tools look for the model or tokenizer is not opened.
TEST(CommandLine, AFifoInTheModelFolderDoesNotHang) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kTokenizer);
  for (const std::string fifo : {"stories260K.bin", "tok512.bin"}) {
    const testing::TempDir models;
    for (const std::string name : {"stories260K.bin", "tok512.bin"}) {
      if (name == fifo) {
        ASSERT_EQ(::mkfifo(models.file(name).c_str(), 0600), 0);
      } else {
        models.write(name, bytes_of(name == "tok512.bin" ? kTokenizer : kModel));
      }
    }
    expect_rejected(MSRNN_GENERATE_BIN, "--steps 3", models.file(fifo) + ": is not a regular file",
                    "MSRNN_MODEL_DIR=" + models.path() + " timeout 60");
  }
}

// Issue 9, 5: output that cannot be written is an error, on stdout as in files.
TEST(CommandLine, LostWritesToStdoutAreErrors) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const std::string files = "--model " + kModel + " --tokenizer " + kTokenizer;
  for (const auto& [tool, args] : std::vector<std::pair<std::string, std::string>>{
           {MSRNN_GENERATE_BIN, files + " --steps 20 --seed 1"},
           {MSRNN_GENERATE_BIN, files + " --steps 20 --seed 1 --policy window --capacity 8"},
           {MSRNN_PERPLEXITY_BIN,
            files + " --text " + kStories + " --chunks 1 --policy window --capacity 8"}}) {
    const Outcome o = run_tool(tool, args, "", "/dev/full");
    EXPECT_EQ(o.status, 2) << args << "\n" << o.err;
    EXPECT_TRUE(mentions(o.err, "error: stdout: cannot write the output")) << o.err;
  }
}

// Issue 9, 8: a KV state larger than the machine is refused before anything is allocated.
TEST(CommandLine, AKvStateLargerThanTheMachineIsRefusedUpFront) {
  REQUIRE_SHARED_FILE(kModel);
  expect_rejected(MSRNN_GENERATE_BIN,
                  "--model " + kModel + " --tokenizer " + kTokenizer +
                      " --policy window --capacity 100000000000 --steps 100000000000",
                  "more than this machine's");
}

// Issue 9, 9: flags a policy ignores are warned about; --flag=value is accepted; a prompt
// longer than --steps says so.
TEST(CommandLine, IgnoredFlagsWarnAndFlagEqualsValueWorks) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const std::string files = "--model " + kModel + " --tokenizer " + kTokenizer;
  const Outcome recent = run_tool(
      MSRNN_GENERATE_BIN, files + " --steps 5 --seed 1 --policy tova --capacity 8 --recent 2");
  EXPECT_EQ(recent.status, 0);
  EXPECT_TRUE(mentions(recent.err, "warning: --recent is only used by h2o; ignored")) << recent.err;
  const Outcome sinks = run_tool(MSRNN_GENERATE_BIN,
                                 files + " --steps 5 --seed 1 --policy h2o --capacity 8 --sinks 2");
  EXPECT_TRUE(mentions(sinks.err, "warning: --sinks is only used by sink, tova_sink; ignored"))
      << sinks.err;
  const Outcome capacity = run_tool(MSRNN_GENERATE_BIN, files + " --steps 5 --seed 1 --capacity 8");
  EXPECT_TRUE(mentions(capacity.err, "warning: --capacity is ignored by full")) << capacity.err;
  const Outcome quiet = run_tool(
      MSRNN_GENERATE_BIN, files + " --steps 5 --seed 1 --policy h2o --capacity 8 --recent 2");
  EXPECT_FALSE(mentions(quiet.err, "warning")) << quiet.err;
  const Outcome ppl =
      run_tool(MSRNN_PERPLEXITY_BIN, files + " --text " + kStories +
                                         " --chunks 1 --policy window,tova --sinks 2 --capacity 8");
  EXPECT_TRUE(mentions(ppl.err, "warning: --sinks is only used by sink, tova_sink; ignored"))
      << ppl.err;

  const std::string greedy = " --temperature 0 --policy tova --capacity 16 --steps 40";
  const Outcome spaced = run_tool(MSRNN_GENERATE_BIN, files + greedy);
  const Outcome equals =
      run_tool(MSRNN_GENERATE_BIN, "--model=" + kModel + " --tokenizer=" + kTokenizer +
                                       " --temperature=0 --policy=tova --capacity=16 --steps=40");
  ASSERT_EQ(spaced.status, 0) << spaced.err;
  ASSERT_EQ(equals.status, 0) << equals.err;
  EXPECT_EQ(equals.out, spaced.out);
  EXPECT_FALSE(spaced.out.empty());
  expect_rejected(MSRNN_GENERATE_BIN, files + " --steps=", "--steps: empty value");

  const Outcome prompt = run_tool(
      MSRNN_GENERATE_BIN, files + " --steps 3 --prompt " + quoted("Once upon a time there"));
  EXPECT_EQ(prompt.status, 0);
  EXPECT_TRUE(mentions(prompt.err,
                       "warning: the prompt has 6 tokens (BOS included), more than "
                       "--steps 3"))
      << prompt.err;
}

}  // namespace
}  // namespace engine

#include "cli.hpp"

namespace engine {
namespace {

TEST(CommandLine, AMissingModelSaysWhereToPutIt) {
  EXPECT_EXIT(
      std::exit(cli::guarded_main([] {
        cli::find_model_file("no_such_model.bin", "--model");
        return 0;
      })),
      ::testing::ExitedWithCode(2),
      "error: cannot find no_such_model.bin \\(looked in .*shared/models, .*/models\\); put "
      "it in one of them, set MSRNN_MODEL_DIR, or pass --model");
}

// --save-state / --load-state: N steps, saved, then M more from the state print, together, the
// text of one run of N + M steps, greedy and sampled, for policies that evict (H2O's scores
// included), in both position modes, with a prompt that outlasts the first run.
TEST(CommandLine, ASavedSequenceResumedGoesOnAsOneRun) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string files = "--model " + kModel + " --tokenizer " + kTokenizer;
  const std::string state = dir().file("sequence.state");
  struct Case {
    const char* cache;
    const char* sampler;
    const char* prompt;
  };
  const Case cases[] = {
      {"--policy h2o --capacity 20", "--temperature 0", "Once upon a time"},
      {"--policy tova --capacity 16 --positions in_cache --kv-type f16", "--temperature 0", ""},
      {"--policy sink --capacity 12 --kv-type q8", "--temperature 1 --seed 7", "Lily and Ben"},
      {"--policy full", "--temperature 0.8 --topp 0.9 --seed 3", "The cat"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.cache) + " " + c.sampler);
    const std::string base =
        files + " " + c.cache + " " + c.sampler + " --prompt " + quoted(c.prompt);
    const Outcome whole = run_tool(MSRNN_GENERATE_BIN, base + " --steps 90");
    ASSERT_EQ(whole.status, 0) << whole.err;
    // First 3 steps (the prompt still pending), then 40, then the rest from each saved state.
    std::string text;
    Outcome part = run_tool(MSRNN_GENERATE_BIN, base + " --steps 3 --save-state " + state);
    ASSERT_EQ(part.status, 0) << part.err;
    text += part.out.substr(0, part.out.size() - 1);  // without the final newline
    for (int steps : {40, 47}) {
      part = run_tool(MSRNN_GENERATE_BIN, files + " --steps " + std::to_string(steps) +
                                              " --load-state " + state + " --save-state " + state);
      ASSERT_EQ(part.status, 0) << part.err;
      text += part.out.substr(0, part.out.size() - 1);
    }
    EXPECT_EQ(text + "\n", whole.out);
    EXPECT_GT(whole.out.size(), 60u);
  }
}

// A sequence that ended (BOS came next) and was saved stays ended when resumed, as one longer run
// does: nothing more is printed. (Greedy tova C = 64 ends the story after 190 tokens.)
TEST(CommandLine, ASavedSequenceThatEndedStaysEnded) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string files = "--model " + kModel + " --tokenizer " + kTokenizer;
  const std::string run = files + " --policy tova --capacity 64 --temperature 0";
  const std::string state = dir().file("ended.state");
  const Outcome first = run_tool(MSRNN_GENERATE_BIN, run + " --steps 250 --save-state " + state);
  ASSERT_EQ(first.status, 0) << first.err;
  ASSERT_TRUE(mentions(first.err, "(190 tokens")) << first.err;  // ended by BOS before 250
  const Outcome longer = run_tool(MSRNN_GENERATE_BIN, run + " --steps 300");
  EXPECT_EQ(longer.out, first.out);
  const Outcome resumed = run_tool(MSRNN_GENERATE_BIN, files + " --steps 20 --load-state " + state);
  ASSERT_EQ(resumed.status, 0) << resumed.err;
  EXPECT_EQ(resumed.out, "\n");
  EXPECT_TRUE(mentions(resumed.err, "had ended")) << resumed.err;
}

// A state file that is damaged, truncated, not a state, or of another model is refused with one
// error line and status 2.
TEST(CommandLine, ABadStateFileIsRefused) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string files = "--model " + kModel + " --tokenizer " + kTokenizer;
  const std::string state = dir().file("good.state");
  const Outcome saved = run_tool(MSRNN_GENERATE_BIN, files + " --steps 20 --policy window" +
                                                         " --capacity 8 --save-state " + state);
  ASSERT_EQ(saved.status, 0) << saved.err;
  const std::string bytes = bytes_of(state);
  ASSERT_GT(bytes.size(), 100u);
  std::string flipped = bytes;
  flipped[bytes.size() / 2] = static_cast<char>(flipped[bytes.size() / 2] ^ 1);
  const std::string resume = files + " --steps 5 --load-state ";
  expect_rejected(MSRNN_GENERATE_BIN, resume + write_temp("flipped.state", flipped),
                  "checksum mismatch");
  expect_rejected(MSRNN_GENERATE_BIN, resume + write_temp("cut.state", bytes.substr(0, 60)),
                  "truncated");
  expect_rejected(MSRNN_GENERATE_BIN, resume + write_temp("text.state", "hello, world\n"),
                  "not a saved msrnn sequence");
  expect_rejected(MSRNN_GENERATE_BIN, resume + dir().file("missing.state"), "does not exist");
  const std::string austen = shared_path("models/austen2.5M.bin");
  if (std::filesystem::exists(austen)) {
    expect_rejected(MSRNN_GENERATE_BIN,
                    "--model " + austen + " --tokenizer " + kTokenizer + " --steps 5" +
                        " --load-state " + state,
                    "another model");
  }
  expect_rejected(MSRNN_GENERATE_BIN, resume + state + " --prompt hi", "--prompt and --load-state");
}

// --prompts: one JSON object a line, in prompt order, that a real JSON parser reads back: prompts
// with quotes, backslashes, control characters and invalid UTF-8 (which comes back as U+FFFD),
// an empty line (BOS only); each completion is the text of that prompt decoded alone; the batch
// does not change any text (sampled, too: each sequence has its own generator).
TEST(CommandLine, PromptsGiveOneJsonLineEachInOrder) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string files = "--model " + kModel + " --tokenizer " + kTokenizer;
  const std::vector<std::string> prompts = {"Once upon a time", "",
                                            "The \"dog\" said \\ hi\tthere\x01",
                                            "Lily \xff\xfe and \xc3(", "Tom"};
  std::string text;
  for (const std::string& p : prompts) text += p + "\n";
  const std::string path = write_temp("prompts.txt", text);
  const std::string cache = " --policy tova --capacity 16 --steps 50";
  std::string outputs[2];
  for (int b = 0; b < 2; ++b) {
    const Outcome o = run_tool(MSRNN_GENERATE_BIN, files + cache + " --temperature 0 --prompts " +
                                                       path + " --batch " + (b ? "3" : "1"));
    ASSERT_EQ(o.status, 0) << o.err;
    EXPECT_TRUE(mentions(o.err, "5 sequences")) << o.err;
    EXPECT_TRUE(mentions(o.err, b ? "peak batch 3 of 3" : "peak batch 1 of 1")) << o.err;
    outputs[b] = o.out;
  }
  EXPECT_EQ(outputs[0], outputs[1]);
  std::istringstream lines(outputs[1]);
  std::string line;
  std::size_t index = 0;
  while (std::getline(lines, line)) {
    SCOPED_TRACE(line);
    ASSERT_LT(index, prompts.size());
    const nlohmann::json object = nlohmann::json::parse(line);  // throws on invalid JSON or UTF-8
    ASSERT_TRUE(object.is_object());
    EXPECT_EQ(object.size(), 4u);
    EXPECT_EQ(object.at("index").get<long long>(), static_cast<long long>(index));
    const std::string prompt = object.at("prompt").get<std::string>();
    if (index == 3) {
      EXPECT_EQ(prompt, "Lily \xef\xbf\xbd\xef\xbf\xbd and \xef\xbf\xbd(");
    } else {
      EXPECT_EQ(prompt, prompts[index]);
    }
    const std::string completion = object.at("completion").get<std::string>();
    const long long tokens = object.at("tokens").get<long long>();
    EXPECT_GT(tokens, 0);
    EXPECT_LE(tokens, 50);
    // Decoded alone, the prompt prints its own pieces and then this completion.
    const Outcome alone = run_tool(MSRNN_GENERATE_BIN, files + cache + " --temperature 0" +
                                                           " --prompt " + quoted(prompts[index]));
    ASSERT_EQ(alone.status, 0) << alone.err;
    if (index != 3) {  // (invalid UTF-8 is replaced in JSON, not in the plain text)
      ASSERT_GE(alone.out.size(), completion.size() + 1);
      EXPECT_EQ(alone.out.substr(alone.out.size() - completion.size() - 1), completion + "\n");
    }
    ++index;
  }
  EXPECT_EQ(index, prompts.size());
  // Sampled: the batch changes nothing either.
  const std::string sampled = files + cache + " --temperature 1 --seed 11 --prompts " + path;
  const Outcome one = run_tool(MSRNN_GENERATE_BIN, sampled + " --batch 1");
  const Outcome four = run_tool(MSRNN_GENERATE_BIN, sampled + " --batch 4");
  ASSERT_EQ(one.status, 0) << one.err;
  EXPECT_EQ(one.out, four.out);
  EXPECT_NE(one.out, outputs[0]);
}

// --kv-budget admits sequences by their KV bytes: Full reserves --steps tokens, a bounded
// policy C + 1 slots, so the same budget holds more bounded sequences; one that cannot fit alone
// is an error.
TEST(CommandLine, KvBudgetDecidesTheBatch) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string files = "--model " + kModel + " --tokenizer " + kTokenizer;
  std::string text;
  for (int i = 0; i < 8; ++i) text += "Once\n";
  const std::string path = write_temp("eight.txt", text);
  // stories260K: 5 layers, 4 KV heads, head_dim 8: 1,280 bytes a slot in f32.
  const std::string run = files + " --temperature 0 --steps 64 --batch 8 --prompts " + path;
  const Outcome full = run_tool(MSRNN_GENERATE_BIN, run + " --policy full --kv-budget 200K");
  ASSERT_EQ(full.status, 0) << full.err;
  EXPECT_TRUE(mentions(full.err, "81920 per sequence")) << full.err;  // 64 slots
  EXPECT_TRUE(mentions(full.err, "peak batch 2 of 8")) << full.err;
  const Outcome tova =
      run_tool(MSRNN_GENERATE_BIN, run + " --policy tova --capacity 15 --kv-budget 200K");
  ASSERT_EQ(tova.status, 0) << tova.err;
  EXPECT_TRUE(mentions(tova.err, "20480 per sequence")) << tova.err;  // 16 slots
  EXPECT_TRUE(mentions(tova.err, "peak batch 8 of 8")) << tova.err;
  expect_rejected(MSRNN_GENERATE_BIN, run + " --policy full --kv-budget 64K",
                  "needs 81920 bytes of KV state");
  expect_rejected(MSRNN_GENERATE_BIN, run + " --kv-budget 12X", "--kv-budget");
}

}  // namespace
}  // namespace engine
