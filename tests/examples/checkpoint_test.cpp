// Model and tokenizer files: good ones load, bad ones are rejected with a message naming the file
// and the problem, by the loaders and by the command-line tools (exit status 2).
#include "checkpoint.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>
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
#include "temp_dir.hpp"
#include "tokenizer.hpp"

namespace engine {
namespace {

using testing::shared_path;

const std::string kModel = shared_path("models/stories260K.bin");
const std::string kTokenizer = shared_path("models/tok512.bin");

using testing::bytes_of;
using testing::write_temp;

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
  EXPECT_EQ(w.tensor(Part::classifier), w.tensor(Part::embedding));
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
  EXPECT_NE(w.tensor(Part::classifier), w.tensor(Part::embedding));
  for (std::size_t i = 0; i < classifier.size(); i += 997) {
    EXPECT_EQ(w.tensor(Part::classifier)[i], classifier[i]) << i;
    EXPECT_EQ(w.tensor(Part::embedding)[i] * 2.0f, classifier[i]) << i;
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
  // A vocabulary mismatch names both sizes.
  EXPECT_TRUE(mentions(error_for("tok_wrong_vocab.bin", good, 400),
                       "the tokenizer has 512 pieces, but the model's vocab_size is 400"));
  EXPECT_TRUE(mentions(error_for("tok_too_big_vocab.bin", good, 600),
                       "the tokenizer has 512 pieces, but the model's vocab_size is 600"));
  std::string nan_score = good;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(&nan_score[4], &nan, 4);  // piece 0's score
  EXPECT_TRUE(
      mentions(error_for("tok_nan.bin", nan_score), "piece 0 has a score that is not finite"));
  EXPECT_TRUE(mentions(file_error([] { Tokenizer t(::testing::TempDir(), 512); }),
                       "is not a regular file"));
}

// Issue 9, 8: the file is checked as it is read, not read whole first: a 1 GiB tokenizer file
// (sparse: no disk) whose piece 512 is bad is refused without taking memory.
TEST(Tokenizer, AHugeFileIsRefusedWithoutReadingItWhole) {
  REQUIRE_SHARED_FILE(kTokenizer);
  std::string bytes = bytes_of(kTokenizer);
  const float score = 0.0f;
  const std::int32_t length = 5000;
  bytes.append(reinterpret_cast<const char*>(&score), 4);
  bytes.append(reinterpret_cast<const char*>(&length), 4);
  const std::string path = write_temp("tok_huge.bin", bytes);
  ASSERT_EQ(::truncate(path.c_str(), std::int64_t{1} << 30), 0);
  struct rusage before {
  }, after{};
  ::getrusage(RUSAGE_SELF, &before);
  const std::string message = file_error([&] { Tokenizer tokenizer(path, 512); });
  ::getrusage(RUSAGE_SELF, &after);
  EXPECT_TRUE(mentions(message, "piece 512 has length 5000")) << message;
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 64 * 1024) << "KiB of peak memory grew";
  std::remove(path.c_str());
}

}  // namespace
}  // namespace engine
