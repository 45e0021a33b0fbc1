// Continuous batching (batch.hpp) and the batched forward pass (Transformer): every sequence of a
// batch decodes as it does alone, on the real stories260K model and on a random one, for every
// kind of policy; the KV budget bounds the batch.
#include "batch.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "model.hpp"
#include "sampler.hpp"
#include "shared_data.hpp"
#include "small_model.hpp"
#include "tokenizer.hpp"

namespace engine {
namespace {

using testing::shared_path;

const std::string kModel = shared_path("models/stories260K.bin");

LlamaWeights random_model() { return testing::small_random_model(7); }

CacheSettings settings(const std::string& policy, Index capacity,
                       msrnn::PositionMode positions = msrnn::PositionMode::absolute,
                       msrnn::KvType kv_type = msrnn::KvType::f32) {
  CacheSettings s;
  s.policy.name = policy;
  s.policy.sinks = 2;
  s.capacity = capacity;
  s.positions = positions;
  s.kv_type = kv_type;
  return s;
}

// The kinds of cache every comparison runs: each policy, and in_cache positions for one.
std::vector<std::pair<std::string, CacheSettings>> cache_cases() {
  return {{"full", settings("full", -1)},
          {"window", settings("window", 8)},
          {"h2o", settings("h2o", 8)},
          {"tova", settings("tova", 8)},
          {"tova in_cache", settings("tova", 8, msrnn::PositionMode::in_cache)}};
}

// Six requests of different prompt lengths and lengths in all (one prompt longer than its
// max_tokens: only its first max_tokens tokens are read), BOS first, fixed token ids.
std::vector<Request> requests(Index vocab, bool sampled) {
  const std::vector<std::pair<Index, Index>> shapes = {{1, 20}, {4, 33},  {9, 14},
                                                       {2, 41}, {12, 10}, {6, 27}};
  std::vector<Request> out;
  std::uint64_t state = 12345;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    Request r;
    r.prompt.push_back(kBos);
    for (Index t = 1; t < shapes[i].first; ++t) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      r.prompt.push_back(3 +
                         static_cast<int>((state >> 33) % static_cast<std::uint64_t>(vocab - 3)));
    }
    r.max_tokens = shapes[i].second;
    r.temperature = sampled ? 1.0f : 0.0f;
    r.topp = 0.9f;
    r.seed = 1000 + i;
    out.push_back(r);
  }
  return out;
}

// A sequence decoded alone, as msrnn-generate does: LlamaModel::forward a token at a time.
struct Alone {
  std::vector<int> generated;
  Index tokens = 0;
  bool ended_by_bos = false;
  std::vector<RowVector> logits;  // (tokens) (vocab) each step's
};

Alone decode_alone(const LlamaWeights& weights, const CacheSettings& s, const Request& r) {
  LlamaModel model(weights, s);
  Sampler sampler(r.temperature, r.topp, r.seed);
  Alone alone;
  int token = r.prompt[0];
  for (Index pos = 0; pos < r.max_tokens; ++pos) {
    const RowVector& logits = model.forward(token);
    alone.logits.push_back(logits);
    const int next = pos + 1 < static_cast<Index>(r.prompt.size())
                         ? r.prompt[static_cast<std::size_t>(pos + 1)]
                         : sampler.sample(logits);
    ++alone.tokens;
    if (next == kBos) {
      alone.ended_by_bos = true;
      break;
    }
    if (pos + 1 >= static_cast<Index>(r.prompt.size())) alone.generated.push_back(next);
    token = next;
  }
  return alone;
}

// max |a - b| / max |b|: the logits' difference relative to their scale.
double relative_difference(const Eigen::Map<const RowVector>& a, const RowVector& b) {
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) /
         std::max(1e-30, static_cast<double>(b.cwiseAbs().maxCoeff()));
}

// Decodes `reqs` in batches of at most `max_batch` (threads: the Transformer's) and checks each
// sequence against decoding it alone: the same tokens, each step's logits within 1e-5 relative;
// that a step holds as many sequences as can be active (a finished one's place goes to the next
// request at the next step); and that the sequences start and end at different steps.
void expect_batch_equals_alone(const LlamaWeights& weights, const std::vector<Request>& reqs,
                               Index max_batch, Index threads) {
  for (const auto& [name, s] : cache_cases()) {
    SCOPED_TRACE(name);
    Transformer model(weights, threads);
    BatchSettings batch;
    batch.max_batch = max_batch;
    batch.cache = s;
    std::map<std::pair<std::size_t, Index>, RowVector> logits;  // (sequence, position) -> (vocab)
    std::vector<Index> batch_sizes;
    BatchCallbacks callbacks;
    callbacks.on_token = [&](const TokenEvent& e) { logits[{e.sequence, e.position}] = e.logits; };
    callbacks.on_step = [&](const StepEvent& e) {
      EXPECT_EQ(e.step, static_cast<Index>(batch_sizes.size()));
      batch_sizes.push_back(e.batch);
    };
    const BatchResult result = decode_batch(model, reqs, batch, callbacks);
    ASSERT_EQ(result.sequences.size(), reqs.size());

    Index tokens = 0;
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      SCOPED_TRACE("sequence " + std::to_string(i));
      const Alone alone = decode_alone(weights, s, reqs[i]);
      const SequenceResult& got = result.sequences[i];
      EXPECT_EQ(got.generated, alone.generated);
      EXPECT_EQ(got.tokens, alone.tokens);
      EXPECT_EQ(got.ended_by_bos, alone.ended_by_bos);
      EXPECT_EQ(got.last_step - got.first_step + 1, got.tokens);
      for (Index t = 0; t < alone.tokens; ++t) {
        const auto it = logits.find({i, t});
        ASSERT_NE(it, logits.end()) << "no logits at position " << t;
        const Eigen::Map<const RowVector> batched(it->second.data(), it->second.size());
        ASSERT_LE(relative_difference(batched, alone.logits[static_cast<std::size_t>(t)]), 1e-5)
            << "position " << t;
      }
      tokens += got.tokens;
    }
    EXPECT_EQ(result.summary.sequences, static_cast<Index>(reqs.size()));
    EXPECT_EQ(result.summary.tokens, tokens);
    EXPECT_EQ(result.summary.steps, static_cast<Index>(batch_sizes.size()));
    EXPECT_EQ(result.summary.peak_batch,
              std::min<Index>(max_batch, static_cast<Index>(reqs.size())));

    // Without a budget every step holds min(B, requests not finished before it).
    for (Index step = 0; step < static_cast<Index>(batch_sizes.size()); ++step) {
      Index unfinished = 0;
      for (const SequenceResult& r : result.sequences) unfinished += r.last_step >= step ? 1 : 0;
      EXPECT_EQ(batch_sizes[static_cast<std::size_t>(step)], std::min(max_batch, unfinished))
          << "step " << step;
    }
    std::vector<Index> firsts, lasts;
    for (const SequenceResult& r : result.sequences) {
      firsts.push_back(r.first_step);
      lasts.push_back(r.last_step);
    }
    std::sort(firsts.begin(), firsts.end());
    std::sort(lasts.begin(), lasts.end());
    EXPECT_GT(std::unique(firsts.begin(), firsts.end()) - firsts.begin(), 2);
    EXPECT_GT(std::unique(lasts.begin(), lasts.end()) - lasts.begin(), 2);
  }
}

TEST(BatchDecoding, GreedySequencesOfARandomModelEqualDecodingEachAlone) {
  const LlamaWeights weights = random_model();
  expect_batch_equals_alone(weights, requests(weights.config.vocab_size, false), 3, 2);
}

TEST(BatchDecoding, SampledSequencesOfARandomModelEqualDecodingEachAlone) {
  const LlamaWeights weights = random_model();
  expect_batch_equals_alone(weights, requests(weights.config.vocab_size, true), 3, 2);
}

TEST(BatchDecoding, GreedySequencesOfStories260KEqualDecodingEachAlone) {
  REQUIRE_SHARED_FILE(kModel);
  const LlamaWeights weights = load_checkpoint(kModel);
  expect_batch_equals_alone(weights, requests(weights.config.vocab_size, false), 3, 2);
}

TEST(BatchDecoding, SampledSequencesOfStories260KEqualDecodingEachAlone) {
  REQUIRE_SHARED_FILE(kModel);
  const LlamaWeights weights = load_checkpoint(kModel);
  expect_batch_equals_alone(weights, requests(weights.config.vocab_size, true), 3, 2);
}

TEST(BatchDecoding, OneThreadOrThreeGiveTheSameLogitsBitForBit) {
  const LlamaWeights weights = random_model();
  const std::vector<Request> reqs = requests(weights.config.vocab_size, true);
  auto run = [&](Index threads) {
    Transformer model(weights, threads);
    BatchSettings batch;
    batch.max_batch = 4;
    batch.cache = settings("tova", 8);
    std::vector<RowVector> logits;
    BatchCallbacks callbacks;
    callbacks.on_token = [&](const TokenEvent& e) { logits.push_back(e.logits); };
    decode_batch(model, reqs, batch, callbacks);
    return logits;
  };
  const std::vector<RowVector> one = run(1), three = run(3);
  ASSERT_EQ(one.size(), three.size());
  for (std::size_t i = 0; i < one.size(); ++i) ASSERT_EQ(one[i], three[i]) << "event " << i;
}

// The byte figure a request is admitted by is the one its cache allocates, before and past C + 1
// tokens, for every policy, position mode and storage type.
TEST(BatchDecoding, SequenceKvBytesEqualTheStateBytesOfTheCache) {
  const LlamaWeights weights = random_model();
  for (std::string_view policy : msrnn::kPolicyNames) {
    for (msrnn::PositionMode positions :
         {msrnn::PositionMode::absolute, msrnn::PositionMode::in_cache}) {
      for (msrnn::KvType type :
           {msrnn::KvType::f32, msrnn::KvType::f16, msrnn::KvType::bf16, msrnn::KvType::q8}) {
        for (Index max_tokens : {1, 5, 9, 17, 40}) {
          const CacheSettings s = settings(std::string(policy), 8, positions, type);
          const msrnn::AnyCache cache(sequence_cache_config(weights.config, s, max_tokens),
                                      msrnn::make_policy(s.policy));
          EXPECT_EQ(sequence_kv_bytes(weights.config, s, max_tokens), cache.state_bytes())
              << policy << " " << msrnn::to_string(positions) << " " << msrnn::to_string(type)
              << " max_tokens " << max_tokens;
          EXPECT_EQ(cache.config().threads, 1);
        }
      }
    }
  }
}

// Same-sized requests under a budget of exactly two of them: never more than two active, even
// with room for four in the batch, and the tokens are still those of decoding alone.
TEST(BatchDecoding, ABudgetOfTwoSequencesKeepsTwoActive) {
  const LlamaWeights weights = random_model();
  std::vector<Request> reqs = requests(weights.config.vocab_size, false);
  for (Request& r : reqs) r.max_tokens = 24;
  for (const auto& [name, s] : cache_cases()) {
    SCOPED_TRACE(name);
    const std::size_t each = sequence_kv_bytes(weights.config, s, 24);
    Transformer model(weights, 2);
    BatchSettings batch;
    batch.max_batch = 4;
    batch.cache = s;
    batch.kv_budget = 2 * each;
    BatchCallbacks callbacks;
    callbacks.on_step = [&](const StepEvent& e) {
      EXPECT_LE(e.batch, 2);
      EXPECT_LE(e.kv_bytes, batch.kv_budget);
      EXPECT_EQ(e.kv_bytes, static_cast<std::size_t>(e.batch) * each);
    };
    const BatchResult result = decode_batch(model, reqs, batch, callbacks);
    EXPECT_EQ(result.summary.peak_batch, 2);
    EXPECT_LE(result.summary.peak_kv_bytes, batch.kv_budget);
    EXPECT_EQ(result.summary.peak_kv_bytes, 2 * each);
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(result.sequences[i].kv_bytes, each);
      EXPECT_EQ(result.sequences[i].generated, decode_alone(weights, s, reqs[i]).generated)
          << "sequence " << i;
    }
    // A byte less and the second never fits beside the first.
    batch.kv_budget = 2 * each - 1;
    EXPECT_EQ(decode_batch(model, reqs, batch).summary.peak_batch, 1);
  }
}

// Full reserves a sequence's whole length; a bounded policy C + 1 slots at most: a request that
// alone exceeds the budget is an error naming both figures, raised before anything runs.
TEST(BatchDecoding, ARequestLargerThanTheBudgetThrows) {
  const LlamaWeights weights = random_model();
  std::vector<Request> reqs = requests(weights.config.vocab_size, false);
  reqs[3].max_tokens = 60;  // the only one past 48 slots (keys and values go in blocks of 16)
  const CacheSettings full = settings("full", -1);
  const std::size_t need = sequence_kv_bytes(weights.config, full, reqs[3].max_tokens);
  Transformer model(weights);
  BatchSettings batch;
  batch.cache = full;
  batch.kv_budget = need - 1;
  int steps = 0;
  BatchCallbacks callbacks;
  callbacks.on_step = [&](const StepEvent&) { ++steps; };
  try {
    decode_batch(model, reqs, batch, callbacks);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("requests[3]"), std::string::npos) << what;
    EXPECT_NE(what.find(std::to_string(need)), std::string::npos) << what;
    EXPECT_NE(what.find("kv_budget = " + std::to_string(need - 1)), std::string::npos) << what;
  }
  EXPECT_EQ(steps, 0);
  // A bounded cache of C = 8 needs only 9 slots, whatever the length: it fits.
  batch.cache = settings("window", 8);
  batch.kv_budget = sequence_kv_bytes(weights.config, batch.cache, 9);
  for (Request& r : reqs) r.max_tokens = 60;
  EXPECT_EQ(decode_batch(model, reqs, batch).summary.peak_batch, 1);
}

TEST(BatchDecoding, BadRequestsAndSettingsThrowBeforeDecoding) {
  const LlamaWeights weights = random_model();
  Transformer model(weights);
  BatchSettings batch;
  batch.cache = settings("tova", 8);
  std::vector<Request> reqs = requests(weights.config.vocab_size, false);
  std::vector<Request> bad = reqs;
  bad[2].prompt.clear();
  EXPECT_THROW(decode_batch(model, bad, batch), std::invalid_argument);
  bad = reqs;
  bad[1].max_tokens = 0;
  EXPECT_THROW(decode_batch(model, bad, batch), std::invalid_argument);
  bad = reqs;
  bad[4].prompt[1] = static_cast<int>(weights.config.vocab_size);
  EXPECT_THROW(decode_batch(model, bad, batch), std::out_of_range);
  BatchSettings zero = batch;
  zero.max_batch = 0;
  EXPECT_THROW(decode_batch(model, reqs, zero), std::invalid_argument);
  BatchSettings sinks = batch;
  sinks.cache.policy.name = "sink";
  sinks.cache.policy.sinks = 8;  // must be below C = 8
  EXPECT_THROW(decode_batch(model, reqs, sinks), std::invalid_argument);
  EXPECT_EQ(decode_batch(model, {}, batch).summary.steps, 0);
}

TEST(BatchDecoding, ForwardBatchRejectsSharedNullAndMisshapenCaches) {
  const LlamaWeights weights = random_model();
  Transformer model(weights, 2);
  const msrnn::CacheConfig config = cache_config(weights.config, settings("window", 8));
  msrnn::AnyCache a(config, msrnn::make_policy(settings("window", 8).policy));
  msrnn::AnyCache b = a.copy();
  msrnn::CacheConfig other = config;
  other.n_layers = weights.config.n_layers + 1;
  msrnn::AnyCache deeper(other, msrnn::make_policy(settings("window", 8).policy));
  EXPECT_THROW(model.forward_batch({3, 4}, {&a, &a}), std::invalid_argument);
  EXPECT_THROW(model.forward_batch({3, 4}, {&a, nullptr}), std::invalid_argument);
  EXPECT_THROW(model.forward_batch({3, 4}, {&a}), std::invalid_argument);
  EXPECT_THROW(model.forward_batch({3, 4}, {&a, &deeper}), std::invalid_argument);
  EXPECT_THROW(model.forward_batch({3, -1}, {&a, &b}), std::out_of_range);
  EXPECT_EQ(a.tokens_seen(0), 0);  // nothing ran
  const ConstRowMap logits = model.forward_batch({3, 4}, {&a, &b});
  EXPECT_EQ(logits.rows(), 2);
  EXPECT_EQ(logits.cols(), weights.config.vocab_size);
  EXPECT_EQ(a.tokens_seen(0), 1);
  EXPECT_EQ(b.tokens_seen(weights.config.n_layers - 1), 1);
}

// The single-sequence path is the batch of one: LlamaModel::forward and forward_batch with one
// row give the same logits bit for bit.
TEST(BatchDecoding, ABatchOfOneIsLlamaModelForwardBitForBit) {
  const LlamaWeights weights = random_model();
  const CacheSettings s = settings("h2o", 8);
  LlamaModel alone(weights, s);
  Transformer model(weights);
  msrnn::AnyCache cache(cache_config(weights.config, s), msrnn::make_policy(s.policy));
  for (int t = 0; t < 20; ++t) {
    const int token = 3 + (t * 17) % 90;
    const RowVector want = alone.forward(token);
    const RowVector got = model.forward_batch({token}, {&cache}).row(0);
    ASSERT_EQ(got, want) << "token " << t;
  }
}

}  // namespace
}  // namespace engine

namespace engine {
namespace {

// A request's end_token (a GGUF model's EOS) ends its text as BOS does, before the token.
TEST(BatchDecoding, AnEndTokenEndsTheTextLikeBos) {
  const LlamaWeights weights = testing::small_random_model(13);
  Transformer model(weights);
  BatchSettings batch;
  batch.cache.policy.name = "full";
  Request r;
  r.prompt = {kBos};
  r.max_tokens = 40;
  std::vector<int> all;
  for (r.seed = 1; r.seed < 50 && all.size() <= 10; ++r.seed) {  // a text that BOS does not end
    all = decode_batch(model, {r}, batch).sequences[0].generated;
  }
  --r.seed;
  ASSERT_GT(all.size(), 10u);
  int end = -1;
  std::size_t first = 0;
  for (std::size_t i = 3; i < all.size() && end < 0; ++i) {  // a token first seen at i >= 3
    if (std::find(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(i), all[i]) ==
        all.begin() + static_cast<std::ptrdiff_t>(i)) {
      end = all[i];
      first = i;
    }
  }
  ASSERT_GE(end, 0);
  r.end_token = end;
  const SequenceResult cut = decode_batch(model, {r}, batch).sequences[0];
  EXPECT_TRUE(cut.ended_by_bos);
  EXPECT_EQ(cut.generated,
            std::vector<int>(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(first)));
}

}  // namespace
}  // namespace engine
