// The tools' records: --trace (a row per state a cache held), --per-token (a row per prediction)
// and --stream (the text as one sequence), read back and checked against what each policy must
// keep and against the tools' own tables.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "shared_data.hpp"
#include "temp_dir.hpp"
#include "tool_runner.hpp"

namespace engine {
namespace {

using testing::bytes_of;
using testing::expect_rejected;
using testing::mentions;
using testing::Outcome;
using testing::run_tool;
using testing::shared_path;

const std::string kModel = shared_path("models/stories260K.bin");
const std::string kTokenizer = shared_path("models/tok512.bin");
const std::string kStories = shared_path("texts/TinyStories-valid.head30k.txt");
const std::string kFiles = "--model " + kModel + " --tokenizer " + kTokenizer;

const testing::TempDir& dir() { return testing::process_temp_dir(); }

// A CSV file of the tools (no quoted fields in these): its header line and its rows' fields.
struct Table {
  std::string header;
  std::vector<std::vector<std::string>> rows;
};

Table read_table(const std::string& path) {
  std::istringstream in(bytes_of(path));
  Table t;
  std::getline(in, t.header);
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> fields;
    std::size_t at = 0;
    for (std::size_t comma; (comma = line.find(',', at)) != std::string::npos; at = comma + 1) {
      fields.push_back(line.substr(at, comma - at));
    }
    fields.push_back(line.substr(at));
    t.rows.push_back(fields);
  }
  return t;
}

const char* const kTraceHeader =
    "policy,capacity,layer,kv_head,position,token,evicted_at,positions,kv_type,sequence";
const char* const kPerTokenHeader = "policy,capacity,positions,kv_type,index,token,nll";

// A trace row's fields by name.
struct TraceRow {
  std::string policy;
  long long capacity, layer, head, position;
  std::string token, evicted_at;  // empty: unknown / still kept
  long long sequence;
};

std::vector<TraceRow> read_trace(const std::string& path) {
  const Table t = read_table(path);
  EXPECT_EQ(t.header, kTraceHeader);
  std::vector<TraceRow> rows;
  for (const auto& f : t.rows) {
    EXPECT_EQ(f.size(), 10u);
    if (f.size() != 10u) continue;
    rows.push_back({f[0], std::stoll(f[1]), std::stoll(f[2]), std::stoll(f[3]), std::stoll(f[4]),
                    f[5], f[6], std::stoll(f[9])});
  }
  return rows;
}

// The first `lines` lines of the TinyStories sample, as a text file of the test's own.
std::string text_head(int lines, const std::string& name) {
  std::ifstream in(kStories);
  std::string text, line;
  for (int i = 0; i < lines && std::getline(in, line); ++i) text += line + "\n";
  return testing::write_temp(name, text);
}

// Perplexity's trace: every state of every chunk, layer and KV head has one row, the tokens
// are the text's, window and sink evict exactly when their rule says, full never; the
// per-token losses are the text's tokens and average to the table's nll.
TEST(Traces, PerplexityTracesEveryStateAndRecordsEveryLoss) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const std::string trace = dir().file("ppl_trace.csv");
  const std::string losses = dir().file("ppl_losses.csv");
  const std::string csv = dir().file("ppl_table.csv");
  constexpr long long kChunk = 100, kC = 16;
  const Outcome o =
      run_tool(MSRNN_PERPLEXITY_BIN, kFiles + " --text " + kStories + " --chunk 100 --chunks 2" +
                                         " --policy window,sink,full --capacity 16 --trace " +
                                         trace + " --per-token " + losses + " --csv " + csv);
  ASSERT_EQ(o.status, 0) << o.err;

  // The losses: a row per prediction, indexed over both chunks, averaging to the table's nll.
  const Table per_token = read_table(losses);
  EXPECT_EQ(per_token.header, kPerTokenHeader);
  ASSERT_EQ(per_token.rows.size(), 3u * 2 * (kChunk - 1));
  std::map<std::string, std::pair<double, long long>> sums;  // policy -> (sum, count)
  std::vector<std::string> predicted;                        // window's, by index
  for (const auto& f : per_token.rows) {
    ASSERT_EQ(f.size(), 7u);
    EXPECT_EQ(f[2], "absolute");
    EXPECT_EQ(f[3], "f32");
    EXPECT_EQ(std::stoll(f[4]), sums[f[0]].second) << "index";
    sums[f[0]].first += std::stod(f[6]);
    ++sums[f[0]].second;
    if (f[0] == "window") predicted.push_back(f[5]);
  }
  const Table table = read_table(csv);
  ASSERT_EQ(table.rows.size(), 3u);
  for (const auto& f : table.rows) {  // policy,capacity,tokens,nll,ppl,kv_type
    EXPECT_EQ(std::stoll(f[2]), sums[f[0]].second) << f[0];
    EXPECT_NEAR(std::stod(f[3]), sums[f[0]].first / static_cast<double>(sums[f[0]].second), 1e-8)
        << f[0];
  }

  // The trace: one row per (chunk, layer, KV head, position), the token at that position.
  const std::vector<TraceRow> rows = read_trace(trace);
  constexpr long long kLayers = 5, kHeads = 4;  // stories260K
  ASSERT_EQ(rows.size(), static_cast<std::size_t>(3 * 2 * kLayers * kHeads * kChunk));
  std::set<std::tuple<std::string, long long, long long, long long, long long>> seen;
  for (const TraceRow& r : rows) {
    SCOPED_TRACE(r.policy + " chunk " + std::to_string(r.sequence) + " layer " +
                 std::to_string(r.layer) + " head " + std::to_string(r.head) + " position " +
                 std::to_string(r.position));
    EXPECT_TRUE(seen.insert({r.policy, r.sequence, r.layer, r.head, r.position}).second);
    ASSERT_TRUE(r.position >= 0 && r.position < kChunk);
    const std::size_t index = static_cast<std::size_t>(r.sequence * (kChunk - 1) + r.position - 1);
    EXPECT_EQ(r.token, r.position == 0 ? "1" : predicted[index]) << "the text's token";
    // What each policy must do: window evicts position p at step p + C, sink (4 sinks) keeps
    // positions 0..3 and evicts p at p + C - 4, full keeps all.
    std::string want;
    if (r.policy == "window" && r.position + kC < kChunk) want = std::to_string(r.position + kC);
    if (r.policy == "sink" && r.position >= 4 && r.position + kC - 4 < kChunk) {
      want = std::to_string(r.position + kC - 4);
    }
    EXPECT_EQ(r.evicted_at, want);
    EXPECT_EQ(r.capacity, r.policy == "full" ? kChunk : kC);
  }
}

// TOVA's trace: each state leaves at most once, at or after it came, and C stay at the end.
TEST(Traces, TovaLifetimesAreConsistentAndCStatesStay) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const std::string trace = dir().file("tova_trace.csv");
  const Outcome o =
      run_tool(MSRNN_PERPLEXITY_BIN, kFiles + " --text " + kStories +
                                         " --chunk 200 --chunks 1 --policy tova,h2o --capacity 24" +
                                         " --positions in_cache --trace " + trace);
  ASSERT_EQ(o.status, 0) << o.err;
  std::map<std::tuple<std::string, long long, long long>, long long> kept;  // at the end
  std::map<std::tuple<std::string, long long, long long, long long>, long long> evictions_at;
  for (const TraceRow& r : read_trace(trace)) {
    if (r.evicted_at.empty()) {
      ++kept[{r.policy, r.layer, r.head}];
      continue;
    }
    const long long at = std::stoll(r.evicted_at);
    EXPECT_GE(at, r.position);
    EXPECT_LT(at, 200);
    ++evictions_at[{r.policy, r.layer, r.head, at}];
  }
  EXPECT_EQ(kept.size(), 2u * 5 * 4);
  for (const auto& [key, count] : kept) EXPECT_EQ(count, 24);
  // One eviction per step once full: steps 24..199.
  EXPECT_EQ(evictions_at.size(), 2u * 5 * 4 * (200 - 24));
  for (const auto& [key, count] : evictions_at) EXPECT_EQ(count, 1);
}

// --stream is the text as one sequence: what a chunk longer than the text gave before, fed in
// pieces (flat memory), to float tolerance; full stops at twice the model's context.
TEST(Traces, StreamEqualsOneChunkLongerThanTheText) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const std::string text = text_head(12, "stream_text.txt");
  const std::string as_stream = dir().file("stream_losses.csv");
  const std::string as_chunk = dir().file("chunk_losses.csv");
  const std::string policies = " --policy tova,h2o,sink --capacity 32 --positions in_cache";
  const Outcome s = run_tool(MSRNN_PERPLEXITY_BIN, kFiles + " --text " + text + " --stream" +
                                                       policies + " --per-token " + as_stream);
  ASSERT_EQ(s.status, 0) << s.err;
  const Outcome c = run_tool(MSRNN_PERPLEXITY_BIN, kFiles + " --text " + text + " --chunk 100000" +
                                                       policies + " --per-token " + as_chunk);
  ASSERT_EQ(c.status, 0) << c.err;
  const Table a = read_table(as_stream), b = read_table(as_chunk);
  ASSERT_EQ(a.rows.size(), b.rows.size());
  ASSERT_GT(a.rows.size(), 3u * 1100) << "long enough for several pieces of 512";
  for (std::size_t i = 0; i < a.rows.size(); ++i) {
    ASSERT_EQ(a.rows[i][4], b.rows[i][4]);
    ASSERT_EQ(a.rows[i][5], b.rows[i][5]) << "row " << i;
    ASSERT_NEAR(std::stod(a.rows[i][6]), std::stod(b.rows[i][6]), 1e-4) << "row " << i;
  }
  // Full along the stream: the first 2 * 512 tokens, BOS included.
  const Outcome f =
      run_tool(MSRNN_PERPLEXITY_BIN,
               kFiles + " --text " + text + " --stream --policy full,window --capacity 64");
  ASSERT_EQ(f.status, 0) << f.err;
  EXPECT_TRUE(mentions(f.out, "full           1024      1023")) << f.out;
  EXPECT_TRUE(mentions(f.err, "full reads the first 1024")) << f.err;
}

TEST(Traces, BadRecordFlagsAreRefused) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kStories);
  const std::string text = " --text " + kStories;
  expect_rejected(MSRNN_PERPLEXITY_BIN, kFiles + text + " --stream --chunk 64",
                  "--stream evaluates the text as one sequence");
  expect_rejected(MSRNN_PERPLEXITY_BIN, kFiles + text + " --stream --chunks 2", "--chunks");
  expect_rejected(MSRNN_PERPLEXITY_BIN, kFiles + text + " --stream=yes", "takes no value");
  expect_rejected(MSRNN_PERPLEXITY_BIN, kFiles + text + " --trace /nonexistent/t.csv",
                  "does not exist");
  expect_rejected(MSRNN_PERPLEXITY_BIN, kFiles + text + " --per-token " + dir().path(),
                  "not a regular file");
  const std::string same = dir().file("same.csv");
  expect_rejected(MSRNN_PERPLEXITY_BIN, kFiles + text + " --csv " + same + " --trace " + same,
                  "name the same file");
  expect_rejected(MSRNN_PERPLEXITY_BIN, kFiles + text + " --trace " + kStories,
                  "is also the --text input");
  expect_rejected(MSRNN_GENERATE_BIN, kFiles + " --trace /nonexistent/t.csv", "does not exist");
  const std::string state = dir().file("same_state.bin");
  expect_rejected(MSRNN_GENERATE_BIN, kFiles + " --save-state " + state + " --trace " + state,
                  "name the same file");
  EXPECT_TRUE(testing::hidden_files(dir().path()).empty()) << "no temporary file left";

  // A batch that fails as it goes (its stdout lost) leaves its traces without touching the
  // caches it freed (the sanitizer build would see it), and no trace file.
  const std::string prompts = testing::write_temp("failing_prompts.txt", "Once upon\nThe dog\n");
  const std::string lost = dir().file("lost_trace.csv");
  const Outcome o =
      run_tool(MSRNN_GENERATE_BIN,
               kFiles + " --prompts " + prompts + " --batch 2 --policy tova --capacity 8" +
                   " --steps 60 --trace " + lost,
               "", "/dev/full");
  EXPECT_EQ(o.status, 2) << o.err;
  EXPECT_EQ(o.err.rfind("error: ", 0), 0u) << o.err;
  EXPECT_FALSE(std::ifstream(lost).good());
}

// Generate's trace: writing it changes no token; one row per state of every position fed, the
// tokens those the text shows; with --prompts each sequence's rows are those it has alone.
TEST(Traces, GenerateTracesEachSequenceAndChangesNoToken) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string trace = dir().file("gen_trace.csv");
  const std::string greedy = " --temperature 0 --steps 90 --policy tova --capacity 24";
  const Outcome plain = run_tool(MSRNN_GENERATE_BIN, kFiles + greedy);
  const Outcome traced = run_tool(MSRNN_GENERATE_BIN, kFiles + greedy + " --trace " + trace);
  ASSERT_EQ(traced.status, 0) << traced.err;
  EXPECT_EQ(plain.out, traced.out);
  std::map<std::pair<long long, long long>, std::set<long long>> positions;  // (layer, head)
  std::map<std::pair<long long, long long>, int> kept;
  for (const TraceRow& r : read_trace(trace)) {
    EXPECT_EQ(r.sequence, 0);
    EXPECT_TRUE(positions[std::make_pair(r.layer, r.head)].insert(r.position).second);
    if (r.evicted_at.empty()) ++kept[{r.layer, r.head}];
    if (r.position == 0) {
      EXPECT_EQ(r.token, "1");  // BOS
    }
    EXPECT_FALSE(r.token.empty());
  }
  ASSERT_EQ(positions.size(), 20u);
  for (const auto& [key, set] : positions) {
    EXPECT_EQ(set.size(), 90u);
    EXPECT_EQ(*set.rbegin(), 89);
    EXPECT_EQ(kept[key], 24);
  }

  // Three prompts, two at a time, against each decoded alone (greedy; sink evicts by position
  // alone, so the rows must be the same).
  const std::string prompts = testing::write_temp("trace_prompts.txt", "Once upon\n\nThe dog\n");
  const std::string batch_trace = dir().file("batch_trace.csv");
  const std::string settings = " --temperature 0 --steps 70 --policy sink --capacity 20";
  const Outcome b = run_tool(MSRNN_GENERATE_BIN, kFiles + settings + " --prompts " + prompts +
                                                     " --batch 2 --trace " + batch_trace);
  ASSERT_EQ(b.status, 0) << b.err;
  auto key = [](const TraceRow& r) {
    return std::make_tuple(r.layer, r.head, r.position, r.token, r.evicted_at);
  };
  std::map<long long,
           std::set<std::tuple<long long, long long, long long, std::string, std::string>>>
      by_sequence;
  for (const TraceRow& r : read_trace(batch_trace)) by_sequence[r.sequence].insert(key(r));
  ASSERT_EQ(by_sequence.size(), 3u);
  const char* const alone[] = {"Once upon", "", "The dog"};
  for (long long i = 0; i < 3; ++i) {
    const std::string one = dir().file("alone_trace.csv");
    const Outcome a =
        run_tool(MSRNN_GENERATE_BIN,
                 kFiles + settings + " --prompt " + testing::quoted(alone[i]) + " --trace " + one);
    ASSERT_EQ(a.status, 0) << a.err;
    std::set<std::tuple<long long, long long, long long, std::string, std::string>> want;
    for (const TraceRow& r : read_trace(one)) want.insert(key(r));
    EXPECT_EQ(by_sequence[i], want) << "sequence " << i;
  }
}

// A resumed sequence's trace: the states from before --load-state have no token, the new ones do.
TEST(Traces, AResumedSequenceTracesWhatItKnows) {
  REQUIRE_SHARED_FILE(kModel);
  const std::string state = dir().file("trace_resume.state");
  const std::string trace = dir().file("trace_resume.csv");
  const std::string settings = " --temperature 0 --policy window --capacity 16";
  ASSERT_EQ(
      run_tool(MSRNN_GENERATE_BIN, kFiles + settings + " --steps 40 --save-state " + state).status,
      0);
  const Outcome o = run_tool(MSRNN_GENERATE_BIN,
                             kFiles + " --load-state " + state + " --steps 30 --trace " + trace);
  ASSERT_EQ(o.status, 0) << o.err;
  int before = 0, after = 0;
  for (const TraceRow& r : read_trace(trace)) {
    EXPECT_EQ(r.token.empty(), r.position < 40) << r.position;
    (r.position < 40 ? before : after) += 1;
    if (!r.evicted_at.empty()) {
      EXPECT_EQ(std::stoll(r.evicted_at), r.position + 16);
    }
  }
  EXPECT_EQ(before, 16 * 20);  // the 16 kept at the save, each evicted after it
  EXPECT_EQ(after, 30 * 20);
}

}  // namespace
}  // namespace engine
