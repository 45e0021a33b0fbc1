// The example engine on the real stories260K model: logits, greedy text, and per-policy losses
// against the naive forward pass with the mask-simulated reference as its attention.
#include "model.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "naive_llama.hpp"
#include "perplexity.hpp"
#include "reference/masked_reference.hpp"
#include "shared_data.hpp"
#include "tokenizer.hpp"

namespace engine {
namespace {

using testing::NaiveLlama;
using testing::shared_path;

const std::string kModel = shared_path("models/stories260K.bin");
const std::string kTokenizer = shared_path("models/tok512.bin");

CacheSettings settings(const std::string& kind, Index capacity,
                       msrnn::PositionMode positions = msrnn::PositionMode::absolute) {
  CacheSettings s;
  s.policy.name = std::string(kind);
  s.policy.sinks = 2;
  s.capacity = capacity;
  s.positions = positions;
  return s;
}

TEST(LlamaModel, FullCacheLogitsEqualANaiveForwardWithoutCache) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kTokenizer);
  const LlamaWeights weights = load_checkpoint(kModel);
  const Tokenizer tokenizer(kTokenizer, weights.config.vocab_size);
  const std::vector<int> tokens = tokenizer.encode("Once upon a time, a little dog", true);
  ASSERT_GT(tokens.size(), 6u);
  LlamaModel model(weights, settings("full", -1));
  const NaiveLlama naive(weights);
  // Token by token (the decode path) and all at once (the prompt path).
  LlamaModel chunked(weights, settings("full", -1));
  const RowMatrix all = chunked.forward_chunk(tokens);
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    const RowVector logits = model.forward(tokens[t]);
    const std::vector<double> want = naive.logits_of_prefix(
        std::vector<int>(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(t) + 1));
    for (Index v = 0; v < logits.size(); ++v) {
      ASSERT_NEAR(logits(v), want[static_cast<std::size_t>(v)], 1e-4)
          << "token " << t << " logit " << v;
      ASSERT_NEAR(all(static_cast<Index>(t), v), want[static_cast<std::size_t>(v)], 1e-4)
          << "chunk, token " << t;
    }
  }
}

TEST(LlamaModel, GreedyDecodingFromBosGivesTheDocumentedSample) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kTokenizer);
  const LlamaWeights weights = load_checkpoint(kModel);
  const Tokenizer tokenizer(kTokenizer, weights.config.vocab_size);
  LlamaModel model(weights, settings("full", -1));
  std::string text;
  int token = kBos;
  for (int step = 0; step < 60; ++step) {
    Index next = 0;
    model.forward(token).maxCoeff(&next);
    text += tokenizer.decode(token, static_cast<int>(next));
    token = static_cast<int>(next);
  }
  const std::string sample =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "park. One day, she saw a big, red ball.";
  EXPECT_EQ(text.substr(0, sample.size()), sample);
}

// Every policy: the engine's per-token losses (prompt path: step_chunk, then token by token once
// the cache is full) equal those of the naive forward pass whose attention is the reference.
TEST(LlamaModel, PerTokenLossesOfEveryPolicyEqualTheMaskSimulatedReference) {
  REQUIRE_SHARED_FILE(kModel);
  REQUIRE_SHARED_FILE(kTokenizer);
  const std::string text_path = shared_path("texts/TinyStories-valid.head30k.txt");
  REQUIRE_SHARED_FILE(text_path);
  const LlamaWeights weights = load_checkpoint(kModel);
  const Tokenizer tokenizer(kTokenizer, weights.config.vocab_size);
  std::ifstream file(text_path);
  std::string line;
  std::getline(file, line);
  const std::vector<int> stream = encode_stream(tokenizer, line);
  const std::vector<int> tokens = chunk_tokens(stream, 48, 0);
  ASSERT_EQ(tokens.size(), 48u);
  const NaiveLlama naive(weights);
  const Index capacity = 8;
  for (msrnn::PositionMode positions :
       {msrnn::PositionMode::absolute, msrnn::PositionMode::in_cache}) {
    for (std::string_view name : msrnn::kPolicyNames) {
      const std::string kind(name);
      SCOPED_TRACE(kind + " " + msrnn::to_string(positions));
      const CacheSettings s = settings(kind, capacity, positions);
      LlamaModel model(weights, s);
      const std::vector<double> got = token_losses(model, tokens);  // prompt path
      std::vector<double> decoded;  // decode path: one token at a time, as msrnn-generate
      model.reset();
      for (std::size_t t = 0; t + 1 < tokens.size(); ++t) {
        const RowVector& logits = model.forward(tokens[t]);
        const double top = logits.maxCoeff();
        double sum = 0.0;
        for (Index v = 0; v < logits.size(); ++v) sum += std::exp(double{logits(v)} - top);
        decoded.push_back(top + std::log(sum) - logits(tokens[t + 1]));
      }

      msrnn::CacheConfig config;
      config.n_layers = weights.config.n_layers;
      config.n_q_heads = weights.config.n_heads;
      config.n_kv_heads = weights.config.n_kv_heads;
      config.head_dim = weights.config.head_dim();
      config.capacity = capacity;
      config.rope = msrnn::Rope(config.head_dim);
      config.positions = positions;
      msrnn::testing::MaskedReference reference(config, s.policy);
      auto attend = [&](Index layer, const std::vector<float>& q, const std::vector<float>& k,
                        const std::vector<float>& v) {
        return reference.step(layer, q.data(), k.data(), v.data());
      };
      ASSERT_EQ(got.size(), tokens.size() - 1);
      for (std::size_t t = 0; t + 1 < tokens.size(); ++t) {
        const std::vector<double> logits = naive.step(tokens[t], attend);
        double top = -1e300, sum = 0.0;
        for (double x : logits) top = std::max(top, x);
        for (double x : logits) sum += std::exp(x - top);
        const double want = top + std::log(sum) - logits[static_cast<std::size_t>(tokens[t + 1])];
        ASSERT_NEAR(got[t], want, 2e-4) << "token " << t + 1;
        ASSERT_NEAR(decoded[t], want, 2e-4) << "decode path, token " << t + 1;
      }
    }
  }
}

}  // namespace
}  // namespace engine
