// What a hostile or careless input can make the tools do, and must not: memory that follows a
// number in a small file rather than the run, flags whose empty value silently means "not
// given", messages that carry a file's control characters, temporary files left by a signal, an
// output renamed over the tool's own stdout, a failure status after a file was replaced.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <msrnn/msrnn.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint.hpp"
#include "model.hpp"
#include "session.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"
#include "tool_runner.hpp"

namespace engine {
namespace {

using testing::bytes_of;
using testing::expect_rejected;
using testing::hidden_files;
using testing::mentions;
using testing::Outcome;
using testing::run_tool;
using testing::shared_path;
using testing::write_temp;

const std::string kModel = shared_path("models/stories260K.bin");
const std::string kTokenizer = shared_path("models/tok512.bin");
const std::string kStories = shared_path("texts/TinyStories-valid.head30k.txt");
const std::string kFiles = "--model " + kModel + " --tokenizer " + kTokenizer;

const testing::TempDir& dir() { return testing::process_temp_dir(); }

// Peak resident memory (KiB) of a tool run, measured by /usr/bin/time.
struct Measured {
  Outcome outcome;
  long long max_rss_kib;
};
Measured run_measured(const std::string& tool, const std::string& args) {
  const std::string rss = dir().file("max_rss.txt");
  std::remove(rss.c_str());
  Measured m{run_tool(tool, args, "/usr/bin/time -f %M -o " + rss), -1};
  std::istringstream(bytes_of(rss)) >> m.max_rss_kib;
  return m;
}

// A saved sequence of stories260K whose tova cache (C = 16) holds the 16 states before
// `position` with valid checksums: what a sequence that ran that long would have saved.
std::string session_at(Index position, const std::string& name) {
  const LlamaWeights weights = load_checkpoint(kModel);
  CacheSettings settings;
  settings.policy.name = "tova";
  settings.capacity = 16;
  msrnn::AnyCache cache(cache_config(weights.config, settings),
                        msrnn::make_policy(settings.policy));
  const Index width = weights.config.kv_dim();
  const msrnn::RowMatrix kv = msrnn::RowMatrix::Constant(16, width, 0.25f);
  std::vector<Index> positions;
  for (Index p = position - 16; p < position; ++p) positions.push_back(p);
  for (Index l = 0; l < weights.config.n_layers; ++l) cache.append(l, kv, kv, positions);
  SessionState at;
  at.token = 300;
  at.position = position;
  at.temperature = 0.0f;
  const std::string path = dir().file(name);
  save_session(path, weights, cache, at);
  return path;
}

// Memory of a resumed bounded sequence does not depend on how long it ran: a state at position
// 1e9 or 2^40 resumes in the memory of one at position 100 (with a trace, too), and one so near
// the position limit that --steps would pass it is refused, naming the file.
TEST(ToolLimits, AResumedSequencesMemoryDoesNotGrowWithItsPosition) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string near = session_at(100, "at_100.state");
  const Measured base =
      run_measured(MSRNN_GENERATE_BIN, kFiles + " --steps 3 --load-state " + near);
  ASSERT_EQ(base.outcome.status, 0) << base.outcome.err;
  ASSERT_GT(base.max_rss_kib, 0);
  for (Index position : {Index{1000000000}, Index{1} << 40}) {
    SCOPED_TRACE(position);
    const std::string far = session_at(position, "far.state");
    const std::string trace = dir().file("far_trace.csv");
    for (const std::string& extra : {std::string(), " --trace " + trace}) {
      const Measured m =
          run_measured(MSRNN_GENERATE_BIN, kFiles + " --steps 3 --load-state " + far + extra);
      ASSERT_EQ(m.outcome.status, 0) << m.outcome.err;
      EXPECT_LT(m.max_rss_kib, base.max_rss_kib + 16 * 1024) << extra;  // (1e9 took 3.9 GB)
    }
    // The resumed trace knows the new tokens only; the 16 saved states have none.
    std::istringstream rows(bytes_of(trace));
    std::string row;
    std::getline(rows, row);
    int unknown = 0, known = 0;
    while (std::getline(rows, row)) {
      std::size_t at = 0;  // the sixth field, token
      for (int comma = 0; comma < 5; ++comma) at = row.find(',', at) + 1;
      (row[at] == ',' ? unknown : known) += 1;
    }
    EXPECT_EQ(unknown + known, 5 * 4 * (16 + 3));  // layers x KV heads x states
    EXPECT_EQ(known, 5 * 4 * 3);
  }
  const std::string limit = session_at(msrnn::kMaxPosition - 2, "limit.state");
  expect_rejected(MSRNN_GENERATE_BIN, kFiles + " --steps 3 --load-state " + limit,
                  limit + ": the sequence is at position " +
                      std::to_string(msrnn::kMaxPosition - 2) +
                      "; --steps 3 would take it past kMaxPosition");
  EXPECT_EQ(run_tool(MSRNN_GENERATE_BIN, kFiles + " --steps 2 --load-state " + limit).status, 0);
}

// A state file is checked before it is read whole: a 3 GB file that is not a state, and a valid
// state with 3 GB after it, are refused at once in little memory (sparse files: no disk used);
// a header that announces more than the file holds is a truncation.
TEST(ToolLimits, AStateFileIsCheckedBeforeItIsReadWhole) {
  REQUIRE_SHARED_FILE(kModel);
  const std::uintmax_t huge = std::uintmax_t{3} << 30;
  const std::string text = write_temp("not_a_state.bin", "hello, world\n");
  std::filesystem::resize_file(text, huge);
  const std::string valid = session_at(100, "valid.state");
  const std::string bytes = bytes_of(valid);
  const std::string longer = write_temp("longer.state", bytes);
  std::filesystem::resize_file(longer, huge);
  struct Case {
    std::string path, message;
  };
  const Case cases[] = {
      {text, "not a saved msrnn sequence"},
      {longer, std::to_string(huge - bytes.size()) + " bytes follow the saved sequence"},
      {write_temp("short.state", bytes.substr(0, bytes.size() - 9)), "truncated or damaged"},
      {write_temp("cut.state", bytes.substr(0, 60)), "truncated: 60 bytes"},
  };
  for (const Case& c : cases) {
    const Measured m = run_measured(MSRNN_GENERATE_BIN, kFiles + " --load-state " + c.path);
    EXPECT_EQ(m.outcome.status, 2) << m.outcome.err;
    EXPECT_TRUE(mentions(m.outcome.err, c.path + ": " + c.message)) << m.outcome.err;
    EXPECT_LT(m.max_rss_kib, 256 * 1024) << c.path;
  }
  // A pending-prompt count past the file's end, found before anything is allocated for it.
  std::string counted = bytes;
  const std::uint32_t count = 0x7fffffff;
  std::memcpy(&counted[32], &count, 4);
  expect_rejected(MSRNN_GENERATE_BIN,
                  kFiles + " --load-state " + write_temp("counted.state", counted),
                  "truncated or damaged: the header announces 2147483647 pending prompt tokens");
}

// The options of a tool, as its --help lists them: "  --flag VALUE ..." (flags that take one).
std::vector<std::string> value_flags(const std::string& tool) {
  const Outcome help = run_tool(tool, "--help");
  std::vector<std::string> flags;
  const std::regex option(R"(^  (--[a-z-]+) [A-Z])");
  std::istringstream lines(help.out);
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (std::regex_search(line, m, option)) flags.push_back(m[1]);
  }
  return flags;
}

// An empty value (an unset shell variable) is an error in every tool and every flag that takes a
// value, in both spellings, but --prompt's (the empty text); the tools' help lists the flags.
TEST(ToolLimits, EveryFlagRefusesAnEmptyValue) {
  const std::string tools[] = {MSRNN_GENERATE_BIN, MSRNN_PERPLEXITY_BIN, MSRNN_CONVERT_BIN,
                               MSRNN_ATTENTION_LAYER_BIN};
  int checked = 0;
  for (const std::string& tool : tools) {
    const std::vector<std::string> flags = value_flags(tool);
    EXPECT_FALSE(flags.empty()) << tool;
    for (const std::string& flag : flags) {
      SCOPED_TRACE(tool + " " + flag);
      if (flag == "--prompt") {  // the empty text: from BOS, like an empty line of --prompts
        EXPECT_EQ(run_tool(tool, kFiles + " --steps 3 --prompt ''").status, 0);
        continue;
      }
      const bool file = flag == "--model" || flag == "--tokenizer" || flag == "--text" ||
                        flag == "--csv" || flag == "--plot" || flag == "--per-token" ||
                        flag == "--trace" || flag == "--save-state" || flag == "--load-state" ||
                        flag == "--prompts";
      const std::string what = flag + (file ? ": empty file name" : ": empty value");
      expect_rejected(tool, flag + " ''", what);
      expect_rejected(tool, flag + "=", what);
      ++checked;
    }
  }
  EXPECT_GE(checked, 35);  // (39 today: the help of each tool lists its own)
  for (int empty = 0; empty < 3; ++empty) {
    std::string args[] = {kModel, kTokenizer, dir().file("out.gguf")};
    args[empty].clear();
    const char* names[] = {"CHECKPOINT", "TOKENIZER", "OUT.gguf"};
    expect_rejected(
        MSRNN_CONVERT_BIN,
        testing::quoted(args[0]) + " " + testing::quoted(args[1]) + " " + testing::quoted(args[2]),
        std::string(names[empty]) + ": empty file name");
  }
}

// Full stops at the model's context: --steps far beyond it is capped before the state is sized.
TEST(ToolLimits, FullSizesItsStateByTheContextNotBySteps) {
  REQUIRE_SHARED_FILE(kModel);
  const Outcome context = run_tool(MSRNN_GENERATE_BIN, kFiles + " --steps 512 --seed 1");
  ASSERT_EQ(context.status, 0) << context.err;
  for (const char* steps : {"10000000", "100000000"}) {
    const Outcome o = run_tool(MSRNN_GENERATE_BIN, kFiles + " --steps " + steps + " --seed 1");
    ASSERT_EQ(o.status, 0) << o.err;
    EXPECT_EQ(o.out, context.out);
    const auto kv = [](const std::string& err) {
      const std::size_t at = err.find("KV state: ");
      return at == std::string::npos ? "(no KV state line) " + err : err.substr(at);
    };
    EXPECT_EQ(kv(o.err), kv(context.err));
  }
}

// With --load-state the state sets the cache: the flags that would set it are neither used nor
// checked (--capacity 0 is no error), and one warning names them and what the state holds.
TEST(ToolLimits, LoadStateNamesTheCacheFlagsItIgnores) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string state = dir().file("ignored.state");
  ASSERT_EQ(run_tool(MSRNN_GENERATE_BIN, kFiles + " --policy tova --capacity 16 --steps 20 " +
                                             "--temperature 0 --save-state " + state)
                .status,
            0);
  const Outcome plain = run_tool(MSRNN_GENERATE_BIN, kFiles + " --steps 10 --load-state " + state);
  ASSERT_EQ(plain.status, 0) << plain.err;
  EXPECT_FALSE(mentions(plain.err, "warning")) << plain.err;
  const Outcome flagged =
      run_tool(MSRNN_GENERATE_BIN, kFiles + " --steps 10 --load-state " + state +
                                       " --policy window --capacity 0 --sinks 3 --kv-type q8");
  ASSERT_EQ(flagged.status, 0) << flagged.err;
  EXPECT_EQ(flagged.out, plain.out);
  EXPECT_TRUE(mentions(flagged.err,
                       "warning: --load-state: --policy, --capacity, --sinks, --kv-type ignored: "
                       "the state sets its own cache (tova, capacity 16, f32, absolute positions)"))
      << flagged.err;
  EXPECT_EQ(std::count(flagged.err.begin(), flagged.err.end(), '\n'), 3) << flagged.err;
}

// stories260K as GGUF (msrnn-convert) with its declared context changed to `context`.
std::string gguf_with_context(std::uint32_t context, const std::string& name) {
  const std::string path = dir().file(name);
  const Outcome o = run_tool(MSRNN_CONVERT_BIN, kModel + " " + kTokenizer + " " + path);
  EXPECT_EQ(o.status, 0) << o.err;
  std::string bytes = bytes_of(path);
  const std::string key = "llama.context_length";
  const std::size_t at = bytes.find(key);
  EXPECT_NE(at, std::string::npos);
  std::uint32_t type = 0;
  std::memcpy(&type, &bytes[at + key.size()], 4);
  EXPECT_EQ(type, 4u);  // u32
  std::memcpy(&bytes[at + key.size() + 4], &context, 4);
  return write_temp(name, bytes);
}

// A model that declares an enormous context makes the whole text one chunk: it is fed in pieces,
// so its memory stays that of an ordinary chunk (window, C = 16).
TEST(ToolLimits, PerplexityMemoryDoesNotFollowADeclaredContext) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const std::string run = " --text " + kStories + " --policy window --capacity 16";
  const Measured usual =
      run_measured(MSRNN_PERPLEXITY_BIN, "--model " + gguf_with_context(512, "c512.gguf") + run);
  ASSERT_EQ(usual.outcome.status, 0) << usual.outcome.err;
  const Measured vast = run_measured(MSRNN_PERPLEXITY_BIN,
                                     "--model " + gguf_with_context(0x7fffffff, "cmax.gguf") + run);
  ASSERT_EQ(vast.outcome.status, 0) << vast.outcome.err;
  // Whole, the 15.5k-token chunk's scratch would take ~105 MB more.
  EXPECT_LT(vast.max_rss_kib, usual.max_rss_kib + 40 * 1024);
}

// A string from a file reaches a message escaped: one line, no control sequence.
TEST(ToolLimits, FileStringsInMessagesAreEscaped) {
  REQUIRE_SHARED_FILE(kModel);
  std::string bytes = bytes_of(gguf_with_context(512, "arch.gguf"));
  const std::size_t at = bytes.find("llama", bytes.find("general.architecture") + 20);
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 5, "\n\x1b[1m");
  const Outcome o =
      run_tool(MSRNN_GENERATE_BIN, "--model " + write_temp("arch.gguf", bytes) + " --steps 2");
  EXPECT_EQ(o.status, 2);
  EXPECT_EQ(o.err.find('\x1b'), std::string::npos) << o.err;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
  EXPECT_TRUE(mentions(o.err, "architecture '\\n\\x1b[1m' is not supported")) << o.err;
}

// A thread that cannot start (here: a stack limit no thread's stack can meet) is named, with
// the way out; each tool that starts threads.
TEST(ToolLimits, AThreadThatCannotStartIsNamed) {
  REQUIRE_SHARED_FILE(kModel);
  if (bytes_of("/proc/sys/vm/overcommit_memory").rfind('1', 0) == 0) {
    GTEST_SKIP() << "memory overcommit is 'always': a 1 TB thread stack would be granted";
  }
  const std::string limit = "ulimit -S -s 1073741824 &&";  // KiB: 1 TB stacks
  if (run_tool("true", "", limit).status != 0) {
    GTEST_SKIP() << "the hard stack limit is below 1 TB: the soft one cannot be raised to it";
  }
  const std::string prompts = write_temp("thread_prompts.txt", "Once\nThe\n");
  const std::string state = dir().file("thread.state");
  ASSERT_EQ(run_tool(MSRNN_GENERATE_BIN,
                     kFiles + " --steps 5 --policy window --capacity 8 " + "--save-state " + state)
                .status,
            0);
  const std::string runs[] = {
      MSRNN_GENERATE_BIN + std::string(" ") + kFiles + " --steps 5 --threads 2 --load-state " +
          state,
      MSRNN_GENERATE_BIN + std::string(" ") + kFiles + " --steps 5 --threads 2",
      MSRNN_GENERATE_BIN + std::string(" ") + kFiles + " --steps 5 --threads 2 --prompts " +
          prompts,
      MSRNN_PERPLEXITY_BIN + std::string(" ") + kFiles + " --text " + kStories +
          " --chunks 1 --policy window --capacity 8 --threads 2",
  };
  for (const std::string& run : runs) {
    expect_rejected(run, "", "cannot start the threads of --threads 2 (", limit);
    expect_rejected(run, "", "lower --threads (--threads 1 starts none)", limit);
  }
}

// An output name as long as a file name may be works: its hidden temporary name fits too.
TEST(ToolLimits, OutputNamesAtTheLengthLimitWork) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string folder = dir().file("long_names");
  std::filesystem::create_directories(folder);
  const std::string name = folder + "/" + std::string(250, 'n');
  const Outcome saved =
      run_tool(MSRNN_GENERATE_BIN, kFiles + " --steps 5 --seed 1 --save-state " + name + "s");
  EXPECT_EQ(saved.status, 0) << saved.err;
  const Outcome csv = run_tool(MSRNN_PERPLEXITY_BIN, kFiles + " --text " + kStories +
                                                         " --chunks 1 --policy window " +
                                                         "--capacity 8 --csv " + name + "c");
  EXPECT_EQ(csv.status, 0) << csv.err;
  const Outcome gguf = run_tool(MSRNN_CONVERT_BIN, kModel + " " + kTokenizer + " " + name + "g");
  EXPECT_EQ(gguf.status, 0) << gguf.err;
  for (const char* suffix : {"s", "c", "g"}) {
    EXPECT_TRUE(std::filesystem::exists(name + suffix)) << suffix;
  }
  EXPECT_TRUE(hidden_files(folder).empty());
  // A name longer than a file name may be: refused before any work.
  expect_rejected(MSRNN_CONVERT_BIN,
                  kModel + " " + kTokenizer + " " + folder + "/" + std::string(256, 'n'),
                  "its name has 256 bytes, more than the 255 a file name may have here");
}

// msrnn-convert's status 2 means the output was not replaced: a report lost on a full stdout
// fails before the rename.
TEST(ToolLimits, ConvertFailsBeforeReplacingWhenItsReportIsLost) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string folder = dir().file("convert_full");
  std::filesystem::create_directories(folder);
  const std::string out = write_temp("convert_full/out.gguf", "earlier result");
  const Outcome o =
      run_tool(MSRNN_CONVERT_BIN, kModel + " " + kTokenizer + " " + out, "", "/dev/full");
  EXPECT_EQ(o.status, 2) << o.err;
  EXPECT_TRUE(mentions(o.err, "stdout")) << o.err;
  EXPECT_EQ(bytes_of(out), "earlier result");
  EXPECT_TRUE(hidden_files(folder).empty());
}

// Starts `command` (a shell command line) in its own process and sends it `signal` once a hidden
// temporary file appears in `folder` (then `then`, if the process is still running a second
// later); returns the wait status.
int run_until_hidden_file_then(const std::string& command, const std::string& folder, int signal,
                               int then = 0) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", ("exec " + command + " >/dev/null 2>&1").c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (hidden_files(folder).empty() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // into the run
  ::kill(pid, signal);
  int status = 0;
  if (then != 0) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;  // it did not ignore `signal`
    ::kill(pid, then);
  }
  ::waitpid(pid, &status, 0);
  return status;
}

// The signals a user sends end a run as they would, without its hidden temporary files; a file
// past the size limit (SIGXFSZ) is a write error like a full disk, with status 2.
TEST(ToolLimits, SignalsLeaveNoTemporaryFiles) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string folder = dir().file("signalled");
  std::filesystem::create_directories(folder);
  const std::string run = std::string(MSRNN_PERPLEXITY_BIN) + " " + kFiles + " --text " + kStories +
                          " --csv " + folder + "/t.csv --trace " + folder + "/tr.csv --per-token " +
                          folder + "/pt.csv";
  for (int signal : {SIGTERM, SIGINT, SIGHUP}) {
    SCOPED_TRACE(signal);
    const int status = run_until_hidden_file_then(run, folder, signal);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == signal) << status;
    EXPECT_TRUE(hidden_files(folder).empty());
  }
  // A signal the tool was started with ignored (nohup) stays ignored.
  const int ignored = run_until_hidden_file_then("sh -c \"trap '' HUP; exec " + run + "\"", folder,
                                                 SIGHUP, SIGTERM);
  EXPECT_TRUE(WIFSIGNALED(ignored) && WTERMSIG(ignored) == SIGTERM) << ignored;
  EXPECT_TRUE(hidden_files(folder).empty());
  // Past the size limit: the trace cannot be written, and the table (written fine) does not
  // replace its earlier version either: a run's outputs are finished before any is renamed.
  const std::string table = write_temp("signalled/table.csv", "earlier table\n");
  const Outcome big =
      run_tool(MSRNN_PERPLEXITY_BIN,
               kFiles + " --text " + kStories + " --chunks 4 --policy window --capacity 8 --csv " +
                   table + " --trace " + folder + "/big.csv",
               "ulimit -f 64 &&");  // 32 or 64 KiB (512- or 1024-byte blocks)
  EXPECT_EQ(big.status, 2) << big.err;
  EXPECT_TRUE(mentions(big.err, "big.csv: cannot write (File too large)")) << big.err;
  EXPECT_TRUE(hidden_files(folder).empty());
  EXPECT_FALSE(std::filesystem::exists(folder + "/big.csv"));
  EXPECT_EQ(bytes_of(table), "earlier table\n");
}

// An output that is the tool's own stdout (or stderr) is refused: renaming over it would lose
// what the tool prints there.
TEST(ToolLimits, AnOutputThatIsTheToolsOwnStdoutIsRefused) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string printed = dir().file("printed.txt");
  const std::string run =
      kFiles + " --text " + kStories + " --chunks 1 --policy window --capacity 8 --trace ";
  const Outcome o = run_tool(MSRNN_PERPLEXITY_BIN, run + "/dev/stdout", "", printed);
  EXPECT_EQ(o.status, 2);
  EXPECT_TRUE(mentions(o.err, "is the tool's own standard output; --trace needs a file of its own"))
      << o.err;
  const Outcome e = run_tool(MSRNN_PERPLEXITY_BIN, run + "/dev/stderr");
  EXPECT_EQ(e.status, 2);
  EXPECT_TRUE(mentions(e.err, "is the tool's own standard error")) << e.err;
}

// --prompts: a prompt longer than --steps is read in part and generates nothing: a warning for
// each, and the count in the summary.
TEST(ToolLimits, PromptsLongerThanStepsAreNamed) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string prompts =
      write_temp("long_prompts.txt", "Once upon a time there was a big dog\nHi\nThe sun was hot\n");
  const Outcome o =
      run_tool(MSRNN_GENERATE_BIN, kFiles + " --steps 4 --temperature 0 --prompts " + prompts);
  ASSERT_EQ(o.status, 0) << o.err;
  EXPECT_TRUE(mentions(o.err, "warning: prompt 0 has ")) << o.err;
  EXPECT_TRUE(mentions(o.err, "warning: prompt 2 has ")) << o.err;
  EXPECT_FALSE(mentions(o.err, "warning: prompt 1 ")) << o.err;
  EXPECT_TRUE(mentions(o.err, "2 of 3 prompts were longer than --steps 4")) << o.err;
}

}  // namespace
}  // namespace engine
