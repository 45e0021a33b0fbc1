#include "tokenizer.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "perplexity.hpp"
#include "shared_data.hpp"

namespace engine {
namespace {

using testing::shared_path;

const std::string kTokenizer = shared_path("models/tok512.bin");
const Index kVocab = 512;

std::string decode_all(const Tokenizer& tokenizer, const std::vector<int>& tokens) {
  std::string text;
  for (std::size_t i = 1; i < tokens.size(); ++i)
    text += tokenizer.decode(tokens[i - 1], tokens[i]);
  return text;
}

// llama2.c's encoder as written there: rescan every adjacent pair, merge the best (leftmost on
// equal scores), until no pair merges. O(n^2): the reference for the heap-based encoder.
std::vector<int> naive_encode(const Tokenizer& tok, const std::string& text) {
  std::vector<int> ids;
  std::map<std::string, int> index;
  for (int i = static_cast<int>(tok.vocab_size()) - 1; i >= 0; --i) index[tok.piece(i)] = i;
  auto find = [&](const std::string& s) {
    const auto found = index.find(s);
    return found == index.end() ? -1 : found->second;
  };
  if (!text.empty()) ids.push_back(find(" "));
  for (std::size_t i = 0; i < text.size();) {
    std::size_t n = 1;
    while (i + n < text.size() && n < 4 && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80)
      ++n;
    const int id = find(text.substr(i, n));
    if (id >= 0) {
      ids.push_back(id);
    } else {
      for (std::size_t b = 0; b < n; ++b)
        ids.push_back(kFirstByteToken + static_cast<unsigned char>(text[i + b]));
    }
    i += n;
  }
  std::vector<float> scores(static_cast<std::size_t>(tok.vocab_size()));
  {
    std::ifstream in(kTokenizer, std::ios::binary);
    in.seekg(4);
    for (float& s : scores) {
      std::int32_t len = 0;
      in.read(reinterpret_cast<char*>(&s), 4);
      in.read(reinterpret_cast<char*>(&len), 4);
      in.seekg(len, std::ios::cur);
    }
  }
  while (true) {
    float best = -1e30f;
    int best_id = -1;
    std::size_t best_at = 0;
    for (std::size_t i = 0; i + 1 < ids.size(); ++i) {
      const int id = find(tok.piece(ids[i]) + tok.piece(ids[i + 1]));
      if (id >= 0 && scores[static_cast<std::size_t>(id)] > best) {
        best = scores[static_cast<std::size_t>(id)];
        best_id = id;
        best_at = i;
      }
    }
    if (best_id < 0) break;
    ids[best_at] = best_id;
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best_at) + 1);
  }
  return ids;
}

TEST(Tokenizer, EncodesLikeLlama2csQuadraticMergeLoop) {
  REQUIRE_SHARED_FILE(kTokenizer);
  const std::string text_path = shared_path("texts/TinyStories-valid.head30k.txt");
  REQUIRE_SHARED_FILE(text_path);
  const Tokenizer tokenizer(kTokenizer, kVocab);
  std::ifstream in(text_path);
  std::string line;
  int lines = 0;
  while (std::getline(in, line) && lines < 12) {
    if (line.empty()) continue;
    EXPECT_EQ(tokenizer.encode(line, false), naive_encode(tokenizer, line)) << line;
    ++lines;
  }
  EXPECT_EQ(tokenizer.encode("héllo, wörld… 日本", false),
            naive_encode(tokenizer, "héllo, wörld… 日本"));
  // Random bytes, invalid UTF-8 included, biased towards letters so that merges happen.
  std::uint32_t state = 7;
  for (int trial = 0; trial < 40; ++trial) {
    std::string text;
    for (int i = 0; i < 40; ++i) {
      state = state * 1664525u + 1013904223u;
      const unsigned r = state >> 24;
      text += r < 160 ? static_cast<char>('a' + r % 26) : r < 200 ? ' ' : static_cast<char>(r);
    }
    EXPECT_EQ(tokenizer.encode(text, false), naive_encode(tokenizer, text)) << trial;
    EXPECT_EQ(decode_all(tokenizer, tokenizer.encode(text, true)), text) << trial;
  }
}

TEST(Tokenizer, RoundTripsEveryText) {
  REQUIRE_SHARED_FILE(kTokenizer);
  const Tokenizer tokenizer(kTokenizer, kVocab);
  for (const char* name :
       {"TinyStories-valid.head30k.txt", "emma.txt", "mansfieldpark.txt", "northangerabbey.txt",
        "prideprejudice.txt", "sensesensibility.txt", "tinyshakespeare_input.txt"}) {
    const std::string path = shared_path(std::string("texts/") + name);
    REQUIRE_SHARED_FILE(path);
    const std::string text = read_file(path);
    const std::vector<int> tokens = tokenizer.encode(text, true);
    ASSERT_EQ(tokens[0], kBos);
    EXPECT_LT(tokens.size() * 3, text.size() * 2) << name;  // merges: over 1.5 bytes a token
    EXPECT_TRUE(decode_all(tokenizer, tokens) == text) << name;
  }
}

// Issue 9, 8: one long line (a text without newlines) is encoded in bounded memory: 16-byte heap
// entries and 32-bit links, about 21 bytes per input byte (it was 52). The test program runs this
// test alone (ctest), so the peak before is this test's own.
TEST(Tokenizer, ALongLineIsEncodedInAboutTwentyBytesPerByte) {
  REQUIRE_SHARED_FILE(kTokenizer);
  const std::string text_path = shared_path("texts/emma.txt");
  REQUIRE_SHARED_FILE(text_path);
  const Tokenizer tokenizer(kTokenizer, kVocab);
  std::string line = read_file(text_path).substr(0, 1 << 20);
  std::replace(line.begin(), line.end(), '\n', ' ');
  line += line;  // 2 MiB
  struct rusage before {
  }, after{};
  ::getrusage(RUSAGE_SELF, &before);
  const std::vector<int> tokens = tokenizer.encode(line, true);
  ::getrusage(RUSAGE_SELF, &after);
  const double per_byte = static_cast<double>(after.ru_maxrss - before.ru_maxrss) * 1024.0 /
                          static_cast<double>(line.size());
  EXPECT_LT(per_byte, 32.0) << "bytes of peak memory per byte of the line";
  EXPECT_TRUE(decode_all(tokenizer, tokens) == line);
}

TEST(Tokenizer, ByteFallbackRoundTripsInvalidUtf8) {
  REQUIRE_SHARED_FILE(kTokenizer);
  const Tokenizer tokenizer(kTokenizer, kVocab);
  const std::string text = "ok \xff\xfe broken \xe2\x82 end\n";
  EXPECT_EQ(decode_all(tokenizer, tokenizer.encode(text, true)), text);
}

TEST(Tokenizer, DecodeTurnsBytePiecesIntoBytesAndStripsTheSpaceAfterBos) {
  REQUIRE_SHARED_FILE(kTokenizer);
  const Tokenizer tokenizer(kTokenizer, kVocab);
  EXPECT_EQ(tokenizer.piece(kFirstByteToken + 0x0A), "<0x0A>");
  EXPECT_EQ(tokenizer.decode(5, kFirstByteToken + 0x0A), "\n");
  const std::vector<int> once = tokenizer.encode("Once", false);
  ASSERT_EQ(tokenizer.piece(once[0])[0], ' ');  // the dummy prefix
  EXPECT_EQ(tokenizer.decode(kBos, once[0])[0], 'O');
  EXPECT_EQ(tokenizer.decode(5, once[0])[0], ' ');
}

TEST(PerplexityStream, EachLineIsEncodedAloneAndEndsWithANewline) {
  REQUIRE_SHARED_FILE(kTokenizer);
  const Tokenizer tokenizer(kTokenizer, kVocab);
  const int newline = kFirstByteToken + '\n';
  std::vector<int> want = tokenizer.encode("One day", false);
  want.push_back(newline);
  want.push_back(newline);  // the empty line
  const std::vector<int> two = tokenizer.encode("a cat", false);
  want.insert(want.end(), two.begin(), two.end());
  want.push_back(newline);
  EXPECT_EQ(encode_stream(tokenizer, "One day\n\na cat\n"), want);
  EXPECT_EQ(encode_stream(tokenizer, "One day\n\na cat"), want);  // the last line ends alike
  // Chunks: BOS + N-1 stream tokens each, tiling the stream.
  std::vector<int> stream(10);
  for (int i = 0; i < 10; ++i) stream[static_cast<std::size_t>(i)] = 100 + i;
  EXPECT_EQ(chunk_count(10, 4), 4);
  EXPECT_EQ(chunk_tokens(stream, 4, 1), (std::vector<int>{kBos, 103, 104, 105}));
  EXPECT_EQ(chunk_tokens(stream, 4, 3), (std::vector<int>{kBos, 109}));
}

}  // namespace
}  // namespace engine
