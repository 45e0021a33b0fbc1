// GGUF files no one here wrote (../shared/models: llama.cpp's own converter and quantizer) in the
// example engine, checked against the llama2.c checkpoints they came from; msrnn-convert's files
// against llama.cpp's, tensor by tensor, and read by llama.cpp itself (node-llama-cpp).
#include "gguf_model.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "checkpoint.hpp"
#include "gguf.hpp"
#include "model.hpp"
#include "naive_llama.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"
#include "tokenizer.hpp"
#include "tool_runner.hpp"

namespace engine {
namespace {

using testing::NaiveLlama;
using testing::Outcome;
using testing::quoted;
using testing::run_tool;
using testing::shared_path;

const std::string kTokenizer = shared_path("models/tok512.bin");
const std::string kStories = shared_path("models/stories260K.bin");
const std::string kAusten = shared_path("models/austen2.5M.bin");
std::string gguf_path(const std::string& name) { return shared_path("models/" + name + ".gguf"); }

CacheSettings full() {
  CacheSettings s;
  s.policy.name = "full";
  return s;
}

// Greedy decoding from BOS for `steps` tokens: the largest |difference| between the two models'
// logits at any step (both fed the first model's tokens), and the tokens.
double greedy_logit_gap(const LlamaWeights& a, const LlamaWeights& b, int steps,
                        std::vector<int>* tokens = nullptr) {
  LlamaModel ma(a, full()), mb(b, full());
  double worst = 0.0;
  int token = kBos;
  for (int t = 0; t < steps; ++t) {
    const RowVector la = ma.forward(token);
    const RowVector lb = mb.forward(token);
    worst = std::max(worst, static_cast<double>((la - lb).cwiseAbs().maxCoeff()));
    Index next = 0;
    la.maxCoeff(&next);
    token = static_cast<int>(next);
    if (tokens) tokens->push_back(token);
  }
  return worst;
}

TEST(GgufFiles, EachLoadsWithTheShapeOfItsCheckpoint) {
  REQUIRE_SHARED_FILE(kStories);
  REQUIRE_SHARED_FILE(kAusten);
  for (const char* name :
       {"stories260K", "stories260K-f16", "stories260K-bf16", "stories260K-q8_0", "austen2.5M"}) {
    REQUIRE_SHARED_FILE(gguf_path(name));
    ASSERT_TRUE(is_gguf_file(gguf_path(name)));
    const GgufModel g = load_gguf_model(gguf_path(name));
    const LlamaConfig want =
        load_checkpoint(std::string(name).rfind("austen", 0) == 0 ? kAusten : kStories).config;
    const LlamaConfig& got = g.weights.config;
    EXPECT_EQ(detail::describe(got), detail::describe(want)) << name;
    EXPECT_EQ(got.rope_theta, 10000.0) << name;
    EXPECT_FLOAT_EQ(got.rms_eps, 1e-5f) << name;
    EXPECT_FALSE(got.shared_classifier) << name << ": llama.cpp's converter writes output.weight";
    EXPECT_EQ(g.tokenizer.vocab_size(), 512) << name;
  }
  EXPECT_FALSE(is_gguf_file(kStories));
}

TEST(GgufFiles, F32FilesGiveTheirCheckpointsLogitsBitForBit) {
  for (const auto& [gguf, bin] : {std::pair{gguf_path("stories260K"), kStories},
                                  std::pair{gguf_path("austen2.5M"), kAusten}}) {
    REQUIRE_SHARED_FILE(gguf);
    REQUIRE_SHARED_FILE(bin);
    const GgufModel g = load_gguf_model(gguf);
    const LlamaWeights b = load_checkpoint(bin);
    EXPECT_EQ(greedy_logit_gap(g.weights, b, 120), 0.0) << gguf;
    // Every tensor used in place in the mapped file: nothing copied.
    EXPECT_TRUE(g.weights.data.empty()) << gguf;
    std::size_t all = 0;
    g.weights.for_each_tensor([&](Part, Index, const float*, std::size_t n) { all += n; });
    EXPECT_EQ(g.weights.floats_in_file(), all) << gguf;
    // The prompt path too.
    const std::vector<int> prompt = g.tokenizer.encode("Once upon a time, a dog ran.", true);
    LlamaModel mg(g.weights, full()), mb(b, full());
    const RowMatrix lg = mg.forward_chunk(prompt);
    const RowMatrix lb = mb.forward_chunk(prompt);
    EXPECT_EQ((lg - lb).cwiseAbs().maxCoeff(), 0.0f) << gguf;
  }
}

TEST(GgufFiles, WeightsKeepTheirFileMappedWhenTheLoaderIsGone) {
  REQUIRE_SHARED_FILE(gguf_path("stories260K"));
  LlamaWeights kept;
  {
    const GgufModel g = load_gguf_model(gguf_path("stories260K"));
    kept = g.weights;  // a copy shares the mapping
  }
  ASSERT_TRUE(kept.file);
  EXPECT_EQ(greedy_logit_gap(kept, load_checkpoint(kStories), 20), 0.0);
}

// ---- the reduced types: decoded here from the format's description, independently ------------

float f16_value(std::uint16_t h) {
  const int exponent = (h >> 10) & 31, mantissa = h & 1023;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exponent == 0) return static_cast<float>(sign * std::ldexp(mantissa, -24));
  if (exponent == 31) return mantissa ? NAN : static_cast<float>(sign * INFINITY);
  return static_cast<float>(sign * std::ldexp(1024 + mantissa, exponent - 25));
}

std::uint16_t u16_at(const unsigned char* p) {
  return static_cast<std::uint16_t>(p[0] | p[1] << 8);
}

// The elements of tensor t, decoded from its bytes.
std::vector<float> decode(const gguf::Tensor& t) {
  std::vector<float> out(static_cast<std::size_t>(t.elements));
  const unsigned char* p = t.data;
  const std::string type = t.type->name;
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (type == "F32") {
      std::memcpy(&out[i], p + 4 * i, 4);
    } else if (type == "F16") {
      out[i] = f16_value(u16_at(p + 2 * i));
    } else if (type == "BF16") {
      const std::uint32_t bits = std::uint32_t{u16_at(p + 2 * i)} << 16;
      std::memcpy(&out[i], &bits, 4);
    } else if (type == "Q8_0") {
      const unsigned char* block = p + i / 32 * 34;
      out[i] = f16_value(u16_at(block)) *
               static_cast<float>(static_cast<signed char>(block[2 + i % 32]));
    } else {
      ADD_FAILURE() << "unexpected type " << type;
      return out;
    }
  }
  return out;
}

TEST(GgufFiles, ReducedTypesDequantizeAsTheFormatSaysAndNearTheF32Weights) {
  REQUIRE_SHARED_FILE(gguf_path("stories260K"));
  const GgufModel f32 = load_gguf_model(gguf_path("stories260K"));
  // Worst relative error of a weight against the F32 file's, by type: f16 and bf16 round to
  // 11 and 8 significant bits; Q8_0 to half a step of max|block| / 127 (bounded per block below).
  for (const char* name : {"stories260K-f16", "stories260K-bf16", "stories260K-q8_0"}) {
    REQUIRE_SHARED_FILE(gguf_path(name));
    const gguf::File file = gguf::File::open(gguf_path(name));
    const GgufModel g = load_gguf_model(gguf_path(name));
    for (const GgufTensorName& place : llama_tensor_names(g.weights.config)) {
      const std::string& tensor = place.name;
      const gguf::Tensor* t = file.tensor(tensor);
      ASSERT_NE(t, nullptr) << tensor;
      const std::vector<float> want = decode(*t);
      const std::size_t count = part_elements(g.weights.config, place.part);
      ASSERT_EQ(want.size(), count) << tensor;
      const float* got = g.weights.tensor(place.part, place.layer);
      const float* exact = f32.weights.tensor(place.part, place.layer);
      const std::string type = t->type->name;
      // F32 tensors (the norms) are used in place, the others converted.
      EXPECT_EQ(g.weights.in_file(place.part, place.layer), type == "F32") << tensor;
      for (std::size_t i = 0; i < count; ++i) {
        ASSERT_EQ(got[i], want[i]) << name << " " << tensor << " [" << i << "] " << type;
        double bound = 0.0;
        if (type == "F16") bound = std::fabs(exact[i]) * 0x1p-11 + 0x1p-25;
        if (type == "BF16") bound = std::fabs(exact[i]) * 0x1p-8;
        if (type == "Q8_0") {
          float amax = 0.0f;
          for (std::size_t j = i / 32 * 32; j < i / 32 * 32 + 32; ++j)
            amax = std::max(amax, std::fabs(exact[j]));
          bound = amax / 127.0 * (0.5 + 0x1p-10) + amax * 0x1p-10;  // the step and d's f16 rounding
        }
        ASSERT_LE(std::fabs(static_cast<double>(got[i]) - exact[i]), bound)
            << name << " " << tensor << " [" << i << "] " << type;
      }
    }
    if (std::string(name) == "stories260K-q8_0") {  // mixed types, as llama-quantize leaves them
      EXPECT_STREQ(file.tensor("blk.0.attn_q.weight")->type->name, "Q8_0");
      EXPECT_STREQ(file.tensor("blk.0.ffn_down.weight")->type->name, "F16");  // rows of 172
      EXPECT_STREQ(file.tensor("blk.0.attn_norm.weight")->type->name, "F32");
    }
  }
}

TEST(GgufFiles, ReducedTypesLogitsEqualANaiveForwardOverTheirWeights) {
  REQUIRE_SHARED_FILE(kTokenizer);
  for (const char* name : {"stories260K-f16", "stories260K-bf16", "stories260K-q8_0"}) {
    REQUIRE_SHARED_FILE(gguf_path(name));
    const GgufModel g = load_gguf_model(gguf_path(name));
    const NaiveLlama naive(g.weights);
    const std::vector<int> tokens = g.tokenizer.encode("Once upon a time, Lily saw a cat", true);
    LlamaModel model(g.weights, full());
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      const RowVector logits = model.forward(tokens[t]);
      const std::vector<double> want = naive.logits_of_prefix(
          std::vector<int>(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(t) + 1));
      for (Index v = 0; v < logits.size(); ++v) {
        ASSERT_NEAR(logits(v), want[static_cast<std::size_t>(v)], 1e-4)
            << name << " token " << t << " logit " << v;
      }
    }
  }
}

TEST(GgufFiles, TheFilesTokenizerEncodesEveryTextAsTok512) {
  REQUIRE_SHARED_FILE(kTokenizer);
  REQUIRE_SHARED_FILE(gguf_path("stories260K"));
  const Tokenizer tok512(kTokenizer, 512);
  const GgufModel g = load_gguf_model(gguf_path("stories260K"));
  for (int id = kFirstByteToken; id < 512; ++id) {
    ASSERT_EQ(g.tokenizer.piece(id), tok512.piece(id)) << id;
    ASSERT_EQ(g.tokenizer.score(id), tok512.score(id)) << id;
  }
  const std::string folder = shared_path("texts");
  REQUIRE_SHARED_FILE(folder + "/emma.txt");
  int texts = 0;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    const std::string text = read_file(entry.path().string(), "text");
    const std::vector<int> want = tok512.encode(text, true);
    EXPECT_EQ(g.tokenizer.encode(text, true), want) << entry.path();
    EXPECT_GT(want.size(), 1000u) << entry.path();
    ++texts;
  }
  EXPECT_GE(texts, 7);
}

// ---- msrnn-convert ---------------------------------------------------------------------------

const testing::TempDir& dir() {
  static const testing::TempDir d;
  return d;
}

// Converts stories260K.bin to `type` with the tool; the path of the file.
std::string converted(const std::string& type) {
  const std::string out = dir().file("stories260K-" + type + ".gguf");
  if (!std::filesystem::exists(out)) {
    const Outcome o = run_tool(MSRNN_CONVERT_BIN, quoted(kStories) + " " + quoted(kTokenizer) +
                                                      " " + quoted(out) + " --type " + type);
    EXPECT_EQ(o.status, 0) << o.err;
  }
  return out;
}

TEST(Convert, WritesTheTensorsLlamaCppsOwnToolsWrite) {
  REQUIRE_SHARED_FILE(kStories);
  // llama.cpp's converter and llama-quantize made ../shared's files from the same checkpoint:
  // ours hold the same tensors, byte for byte, but output.weight (the checkpoint shares its
  // classifier with the embedding; we leave it tied, llama.cpp's converter writes a copy).
  for (const auto& [type, theirs] :
       {std::pair{"f32", "stories260K"}, std::pair{"f16", "stories260K-f16"},
        std::pair{"q8_0", "stories260K-q8_0"}}) {
    REQUIRE_SHARED_FILE(gguf_path(theirs));
    const gguf::File ours = gguf::File::open(converted(type));
    const gguf::File llama = gguf::File::open(gguf_path(theirs));
    EXPECT_EQ(ours.tensors().size() + 1, llama.tensors().size()) << type;
    for (const gguf::Tensor& t : ours.tensors()) {
      const gguf::Tensor* u = llama.tensor(t.name);
      ASSERT_NE(u, nullptr) << t.name;
      EXPECT_EQ(t.dims, u->dims) << t.name;
      EXPECT_STREQ(t.type->name, u->type->name) << type << " " << t.name;
      ASSERT_EQ(t.bytes, u->bytes) << t.name;
      EXPECT_EQ(std::memcmp(t.data, u->data, t.bytes), 0) << type << " " << t.name;
    }
    EXPECT_EQ(ours.tensor("output.weight"), nullptr);
    for (const char* key : {"general.architecture", "tokenizer.ggml.model"}) {
      EXPECT_EQ(ours.string(key), llama.string(key)) << key;
    }
    // The tokenizer as llama.cpp's converter writes it (ids 0..2 by SentencePiece's names).
    EXPECT_EQ(ours.array("tokenizer.ggml.tokens", gguf::ValueType::string)->strings,
              llama.array("tokenizer.ggml.tokens", gguf::ValueType::string)->strings);
    const gguf::Value* types = ours.array("tokenizer.ggml.token_type", gguf::ValueType::i32);
    const gguf::Value* theirs_types =
        llama.array("tokenizer.ggml.token_type", gguf::ValueType::i32);
    ASSERT_NE(types, nullptr);
    ASSERT_NE(theirs_types, nullptr);
    ASSERT_EQ(types->count, theirs_types->count);
    EXPECT_EQ(std::memcmp(types->raw, theirs_types->raw, 4 * types->count), 0);
    // Laid out as llama.cpp lays a file out: each tensor, the last too, padded to 32 bytes.
    std::uint64_t end = ours.data_offset();
    for (const gguf::Tensor& t : ours.tensors()) {
      end = std::max(end, ours.data_offset() + (t.offset + t.bytes + 31) / 32 * 32);
    }
    EXPECT_EQ(std::filesystem::file_size(converted(type)), end) << type;
  }
}

TEST(Convert, RoundTripsToTheCheckpointsLogitsWithinTheTypesRounding) {
  REQUIRE_SHARED_FILE(kStories);
  const LlamaWeights bin = load_checkpoint(kStories);
  const Tokenizer tok512(kTokenizer, 512);
  std::vector<int> tokens;
  EXPECT_EQ(greedy_logit_gap(load_gguf_model(converted("f32")).weights, bin, 100, &tokens), 0.0);
  // The reduced types: within the error their rounding gives this model (measured 0.011 and
  // 0.27 for llama.cpp's own files over 100 steps; the files are the same, see above).
  EXPECT_LT(greedy_logit_gap(load_gguf_model(converted("f16")).weights, bin, 100), 0.05);
  EXPECT_LT(greedy_logit_gap(load_gguf_model(converted("q8_0")).weights, bin, 100), 0.5);
  EXPECT_GT(greedy_logit_gap(load_gguf_model(converted("q8_0")).weights, bin, 100), 0.0);
  const GgufModel g = load_gguf_model(converted("f32"));
  EXPECT_TRUE(g.weights.config.shared_classifier);
  const std::string text = "Once upon a time, Tom and Sue went to the park. \xE2\x9C\x93";
  EXPECT_EQ(g.tokenizer.encode(text, true), tok512.encode(text, true));
  for (int id = kFirstByteToken; id < 512; ++id) {
    ASSERT_EQ(g.tokenizer.piece(id), tok512.piece(id)) << id;
  }
  EXPECT_EQ(g.tokenizer.piece(kBos), "<s>");  // tok512's "\n<s>\n" is written by its name
}

TEST(Convert, RejectsBadArgumentsAndKeepsItsInputs) {
  REQUIRE_SHARED_FILE(kStories);
  using testing::expect_rejected;
  const std::string files = quoted(kStories) + " " + quoted(kTokenizer) + " ";
  expect_rejected(MSRNN_CONVERT_BIN, files, "expected CHECKPOINT TOKENIZER OUT.gguf, got 2");
  expect_rejected(MSRNN_CONVERT_BIN, files + dir().file("x.gguf") + " --type q4_k",
                  "--type: 'q4_k' is not f32, f16 or q8_0");
  expect_rejected(MSRNN_CONVERT_BIN, files + quoted(kStories),
                  "is also the CHECKPOINT input; OUT.gguf would overwrite it");
  expect_rejected(
      MSRNN_CONVERT_BIN,
      quoted(gguf_path("stories260K")) + " " + quoted(kTokenizer) + " " + dir().file("y.gguf"),
      "is a GGUF file already");
  const std::string truncated =
      testing::write_temp("convert_truncated.bin", testing::bytes_of(kStories).substr(0, 999));
  expect_rejected(MSRNN_CONVERT_BIN,
                  truncated + " " + quoted(kTokenizer) + " " + dir().file("z.gguf"),
                  truncated + ": the file has 999 bytes");
  EXPECT_FALSE(std::filesystem::exists(dir().file("z.gguf")));
  EXPECT_TRUE(testing::hidden_files(dir().path()).empty());
}

// ---- the tools on GGUF files -----------------------------------------------------------------

TEST(GgufTools, GenerateAndPerplexityGiveTheCheckpointsResults) {
  REQUIRE_SHARED_FILE(kStories);
  REQUIRE_SHARED_FILE(gguf_path("stories260K"));
  const std::string text = shared_path("texts/TinyStories-valid.head30k.txt");
  REQUIRE_SHARED_FILE(text);
  const std::string bin = "--model " + quoted(kStories) + " --tokenizer " + quoted(kTokenizer);
  const std::string gguf = "--model " + quoted(gguf_path("stories260K"));
  const std::string gen = " --temperature 0 --steps 150 --policy tova --capacity 32";
  const Outcome a = run_tool(MSRNN_GENERATE_BIN, bin + gen);
  const Outcome b = run_tool(MSRNN_GENERATE_BIN, gguf + gen);
  ASSERT_EQ(a.status, 0) << a.err;
  ASSERT_EQ(b.status, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_GT(a.out.size(), 300u);
  const std::string ppl =
      " --text " + quoted(text) + " --chunks 2 --policy window,h2o --capacity 32";
  const Outcome pa = run_tool(MSRNN_PERPLEXITY_BIN, bin + ppl + " --csv " + dir().file("a.csv"));
  const Outcome pb = run_tool(MSRNN_PERPLEXITY_BIN, gguf + ppl + " --csv " + dir().file("b.csv"));
  ASSERT_EQ(pa.status, 0) << pa.err;
  ASSERT_EQ(pb.status, 0) << pb.err;
  EXPECT_EQ(testing::bytes_of(dir().file("a.csv")), testing::bytes_of(dir().file("b.csv")));
  // --tokenizer is not needed, and ignored with a warning when given.
  const Outcome c = run_tool(MSRNN_GENERATE_BIN, gguf + " --tokenizer " + quoted(kTokenizer) + gen);
  EXPECT_EQ(c.out, b.out);
  EXPECT_TRUE(testing::mentions(c.err, "warning: --tokenizer is ignored"));
}

// ---- llama.cpp itself reads what msrnn-convert writes --------------------------------------

// Where scripts/setup.sh installs node-llama-cpp (the npm package that ships a prebuilt llama.cpp):
// $MSRNN_NODE_LLAMA_CPP, else build/node-llama-cpp in the repository.
std::string node_llama_cpp_dir() {
  if (const char* d = std::getenv("MSRNN_NODE_LLAMA_CPP"); d && *d) return d;
  return std::string(MSRNN_SOURCE_DIR) + "/build/node-llama-cpp";
}

TEST(LlamaCpp, GreedyTextOnConvertsFilesEqualsMsrnnGenerates) {
  REQUIRE_SHARED_FILE(kStories);
  const std::string node_dir = node_llama_cpp_dir();
  const std::string package = node_dir + "/node_modules/node-llama-cpp/package.json";
  if (!std::filesystem::exists(package) || std::system("node --version > /dev/null 2>&1") != 0) {
    if (testing::running_in_ci()) FAIL() << "missing node or " << package << " in CI";
    GTEST_SKIP() << "needs node and node-llama-cpp in " << node_dir << " (scripts/setup.sh)";
  }
  const std::string script = std::string(MSRNN_SOURCE_DIR) + "/tests/llama_cpp/greedy.mjs";
  // One node process for the three files (its start takes seconds): a line of JSON each.
  struct Case {
    std::string type;
    int steps;
  };
  const std::vector<Case> cases = {{"f32", 200}, {"f16", 60}, {"q8_0", 60}};
  std::string args = quoted(node_dir);
  for (const Case& c : cases)
    args += " " + quoted(converted(c.type)) + " " + std::to_string(c.steps);
  const Outcome llama = run_tool("node " + quoted(script), args);
  ASSERT_EQ(llama.status, 0) << llama.err;
  std::vector<std::string> lines;
  for (std::size_t at = 0, end; (end = llama.out.find('\n', at)) != std::string::npos;
       at = end + 1) {
    lines.push_back(llama.out.substr(at, end - at));
  }
  ASSERT_EQ(lines.size(), cases.size()) << llama.out << llama.err;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Outcome ours = run_tool(MSRNN_GENERATE_BIN,
                                  "--model " + quoted(converted(cases[i].type)) +
                                      " --temperature 0 --steps " + std::to_string(cases[i].steps));
    ASSERT_EQ(ours.status, 0) << ours.err;
    // The script prints each text as a JSON string; ours is plain text (ASCII here).
    std::string text = ours.out;
    ASSERT_FALSE(text.empty());
    ASSERT_EQ(text.back(), '\n');  // msrnn-generate ends its text with a newline
    text.pop_back();
    std::string json = "\"";
    for (char ch : text) {
      if (ch == '\n')
        json += "\\n";
      else if (ch == '"')
        json += "\\\"";
      else if (ch == '\\')
        json += "\\\\";
      else
        json += ch;
    }
    json += "\"";
    EXPECT_EQ(lines[i], json) << cases[i].type;
    EXPECT_GT(text.size(), static_cast<std::size_t>(cases[i].steps * 2)) << cases[i].type;
  }
}

}  // namespace
}  // namespace engine
