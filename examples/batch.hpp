// Continuous batching: many sequences decoded together, one Transformer pass a step, each with its
// own cache and sampler; a finished sequence's place (and KV memory) goes to the next request.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <msrnn/msrnn.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "model.hpp"
#include "sampler.hpp"
#include "tokenizer.hpp"  // kBos

namespace engine {

/// One sequence to decode, as msrnn-generate decodes one: its prompt's tokens are forced one a
/// step, then each next token is sampled, until BOS or `max_tokens` steps.
struct Request {
  std::vector<int> prompt;   // token ids, BOS first (Tokenizer::encode(text, true)); not empty
  Index max_tokens = 256;    // tokens in all, prompt included (generate's --steps): forward steps
  float temperature = 1.0f;  // 0 is greedy
  float topp = 0.9f;         // top-p in (0, 1); otherwise the whole distribution
  std::uint64_t seed = 1;    // the sequence's own Sampler: its text is that of decoding it alone
  int end_token = -1;        // a token that ends the text besides BOS (a GGUF model's EOS); -1 none
};

/// How the requests share the batch.
struct BatchSettings {
  Index max_batch = 8;  // B: the most sequences decoded together
  /// Bytes of KV state (kv_state_bytes) the active sequences hold together at most. A request is
  /// admitted only when its own bytes fit beside theirs.
  std::size_t kv_budget = std::numeric_limits<std::size_t>::max();
  /// Every sequence's cache; `threads` is taken as 1 (the parallelism is across sequences) and
  /// `max_tokens` as the request's.
  CacheSettings cache;
};

/// What one request produced.
struct SequenceResult {
  std::vector<int> generated;  // the sampled tokens in order (not the BOS that ended it)
  Index tokens = 0;            // forward steps, prompt included (generate's token count)
  bool ended_by_bos = false;   // the next token was BOS (or end_token) before max_tokens steps
  std::size_t kv_bytes = 0;    // its cache's KV state, held from admission to its end
  Index first_step = 0;        // the batched steps it took part in: [first_step, last_step]
  Index last_step = 0;
};

/// The run as a whole.
struct BatchSummary {
  Index sequences = 0;
  Index tokens = 0;  // tokens decoded: forward rows of every sequence, prompts included
  Index steps = 0;   // batched forward passes
  double seconds = 0.0;
  Index peak_batch = 0;           // the most sequences in one step
  std::size_t peak_kv_bytes = 0;  // the most KV bytes the active sequences held at once

  double tokens_per_second() const {
    return seconds > 0.0 ? static_cast<double>(tokens) / seconds : 0.0;
  }
};

struct BatchResult {
  std::vector<SequenceResult> sequences;  // in request order
  BatchSummary summary;
};

/// One sequence's step, as it happens (e.g. to stream its text: `tokenizer.decode(token, next)`
/// when `next` is not BOS).
struct TokenEvent {
  std::size_t sequence;  // its request's index
  Index position;        // of `token` in the sequence
  int token;             // the token fed this step
  int next;              // what follows: the prompt's next token or a sampled one; BOS ends it
  bool sampled;          // `next` was sampled (the prompt is over)
  Eigen::Map<const RowVector> logits;  // (vocab) after `token`; valid during the call
};

/// One batched step, after its forward pass and before its finished sequences are freed: when
/// the KV memory in use is at its highest.
struct StepEvent {
  Index step;
  Index batch;           // sequences in the step
  std::size_t kv_bytes;  // KV bytes their caches hold
};

struct BatchCallbacks {
  std::function<void(const TokenEvent&)> on_token;  // every sequence's every step
  std::function<void(const StepEvent&)> on_step;    // every batched step
  /// A sequence's cache, when it is admitted (before its first step) and before it is freed
  /// (after its last step's callbacks): e.g. to observe its evictions. During the forward pass
  /// the caches step on the model's threads, one sequence on one thread at a time.
  std::function<void(std::size_t sequence, msrnn::AnyCache&)> on_start;
  std::function<void(std::size_t sequence, msrnn::AnyCache&)> on_end;
};

/// The cache of one sequence of at most `max_tokens` tokens in a batch: bounded as `settings`
/// says, one thread, and only the slots the sequence can fill (CacheConfig::max_tokens).
inline msrnn::CacheConfig sequence_cache_config(const LlamaConfig& model, CacheSettings settings,
                                                Index max_tokens) {
  settings.threads = 1;
  settings.max_tokens = max_tokens;
  return cache_config(model, settings);
}

/// Bytes of KV state that cache allocates, known before it exists: kv_state_bytes of the slots
/// its constructor gives it, min(C + 1, max_tokens) for a bounded policy, and for Full exactly
/// max_tokens (it must hold the whole sequence). Equals the cache's state_bytes() (checked at
/// admission). Throws std::invalid_argument for an unknown policy.
inline std::size_t sequence_kv_bytes(const LlamaConfig& model, const CacheSettings& settings,
                                     Index max_tokens) {
  const msrnn::CacheConfig config = sequence_cache_config(model, settings, max_tokens);
  return msrnn::kv_state_bytes(
      config, msrnn::initial_slots(config, msrnn::policy_evicts(settings.policy.name)));
}

namespace detail {

// An active sequence: its cache, its sampler, where it is.
struct Lane {
  Lane(std::size_t index, const Request& r, const msrnn::CacheConfig& config,
       const msrnn::PolicyOptions& policy)
      : request(index),
        cache(config, msrnn::make_policy(policy)),
        sampler(r.temperature, r.topp, r.seed),
        token(r.prompt.front()) {}

  std::size_t request;
  msrnn::AnyCache cache;
  Sampler sampler;
  int token;           // fed at the next step
  Index position = 0;  // of `token`
  bool done = false;   // ended this step: freed after the step's callbacks
};

}  // namespace detail

/// Decodes every request with continuous batching: each step admits waiting requests in order
/// while fewer than max_batch are active and the next one's KV bytes (sequence_kv_bytes) fit in
/// kv_budget beside the active ones', then runs one `forward_batch` over all active sequences; a
/// sequence ends when its next token is BOS or after max_tokens steps, and its cache is destroyed
/// so that a waiting request takes its place at the next step. Each sequence's tokens are those
/// of decoding it alone (msrnn-generate's loop with LlamaModel::forward), its logits the same to
/// float rounding (the batched weight products round differently).
///
///   engine::Transformer model(weights, /*threads=*/2);
///   engine::BatchSettings settings;
///   settings.max_batch = 8;
///   settings.kv_budget = 64 << 20;
///   settings.cache.policy.name = "tova";
///   settings.cache.capacity = 64;
///   engine::BatchResult result = engine::decode_batch(model, requests, settings);
///
/// Throws std::invalid_argument, before decoding anything, for max_batch < 1, a request with an
/// empty prompt, max_tokens < 1 or a token outside the vocabulary (std::out_of_range), a bad
/// cache setting, or a request whose KV bytes alone exceed kv_budget (naming both). Allocates per
/// sequence (its cache, its result), not per token, besides what the callbacks do.
inline BatchResult decode_batch(Transformer& model, const std::vector<Request>& requests,
                                const BatchSettings& settings,
                                const BatchCallbacks& callbacks = {}) {
  const LlamaConfig& c = model.config();
  if (settings.max_batch < 1) {
    throw std::invalid_argument("max_batch = " + std::to_string(settings.max_batch) +
                                ": must be at least 1");
  }
  const std::size_t n = requests.size();
  if (n > 0) {  // a bad cache setting fails now, not at the first admission
    const msrnn::AnyCache probe(sequence_cache_config(c, settings.cache, 1),
                                msrnn::make_policy(settings.cache.policy));
  }
  std::vector<std::size_t> need(n);  // (requests) KV bytes of each
  for (std::size_t i = 0; i < n; ++i) {
    const Request& r = requests[i];
    const std::string name = "requests[" + std::to_string(i) + "]";
    if (r.prompt.empty()) {
      throw std::invalid_argument(name + ".prompt: empty; it must start with BOS");
    }
    if (r.max_tokens < 1) {
      throw std::invalid_argument(name + ".max_tokens = " + std::to_string(r.max_tokens) +
                                  ": must be at least 1");
    }
    for (int token : r.prompt) {
      if (token < 0 || token >= c.vocab_size) {
        throw std::out_of_range(name + ".prompt: token " + std::to_string(token) +
                                " is not in [0, " + std::to_string(c.vocab_size) + ")");
      }
    }
    need[i] = sequence_kv_bytes(c, settings.cache, r.max_tokens);
    if (need[i] > settings.kv_budget) {
      throw std::invalid_argument(name + " needs " + std::to_string(need[i]) +
                                  " bytes of KV state (max_tokens " + std::to_string(r.max_tokens) +
                                  ", policy " + settings.cache.policy.name +
                                  "), more than kv_budget = " + std::to_string(settings.kv_budget));
    }
  }

  BatchResult result;
  result.sequences.resize(n);
  BatchSummary& summary = result.summary;
  summary.sequences = static_cast<Index>(n);
  const std::size_t width = std::min(static_cast<std::size_t>(settings.max_batch), n);
  model.reserve(static_cast<Index>(width));
  std::vector<std::optional<detail::Lane>> lanes(width);  // (width) a free lane is empty
  std::vector<int> tokens;                                // (batch) fed this step
  std::vector<msrnn::AnyCache*> caches;                   // (batch)
  std::vector<std::size_t> lane_of;                       // (batch) the lane of each row
  tokens.reserve(width);
  caches.reserve(width);
  lane_of.reserve(width);
  RowVector row(c.vocab_size);  // (vocab) the logits a sampler reads
  std::size_t next = 0;         // the first waiting request
  std::size_t in_use = 0;       // KV bytes of the active sequences
  std::size_t active = 0;       // occupied lanes
  const auto start = std::chrono::steady_clock::now();
  for (Index step = 0; next < n || active > 0; ++step) {
    // Admission, in order: a request that does not fit yet waits for the ones ahead to end.
    for (std::size_t l = 0; l < width && next < n; ++l) {
      if (lanes[l]) continue;
      if (need[next] > settings.kv_budget - in_use) break;
      const Request& r = requests[next];
      detail::Lane& lane = lanes[l].emplace(
          next, r, sequence_cache_config(c, settings.cache, r.max_tokens), settings.cache.policy);
      if (lane.cache.state_bytes() != need[next]) {  // sequence_kv_bytes and the cache disagree
        throw std::logic_error("the cache of requests[" + std::to_string(next) + "] holds " +
                               std::to_string(lane.cache.state_bytes()) + " bytes, not the " +
                               std::to_string(need[next]) + " of sequence_kv_bytes");
      }
      SequenceResult& out = result.sequences[next];
      out.kv_bytes = need[next];
      out.first_step = step;
      const auto samples = r.max_tokens - static_cast<Index>(r.prompt.size()) + 1;
      out.generated.reserve(static_cast<std::size_t>(std::max<Index>(samples, 0)));
      in_use += need[next];
      ++active;
      if (callbacks.on_start) callbacks.on_start(next, lane.cache);
      ++next;
    }
    tokens.clear();
    caches.clear();
    lane_of.clear();
    for (std::size_t l = 0; l < width; ++l) {
      if (!lanes[l]) continue;
      tokens.push_back(lanes[l]->token);
      caches.push_back(&lanes[l]->cache);
      lane_of.push_back(l);
    }
    const Index batch = static_cast<Index>(tokens.size());
    summary.peak_batch = std::max(summary.peak_batch, batch);
    summary.peak_kv_bytes = std::max(summary.peak_kv_bytes, in_use);

    const ConstRowMap logits = model.forward_batch(tokens, caches);  // (batch, vocab)
    ++summary.steps;
    summary.tokens += batch;
    for (Index b = 0; b < batch; ++b) {
      detail::Lane& lane = *lanes[lane_of[static_cast<std::size_t>(b)]];
      const std::vector<int>& prompt = requests[lane.request].prompt;
      SequenceResult& out = result.sequences[lane.request];
      // As generate.cpp: the prompt's tokens are forced, then each next token is sampled.
      const bool sampled = lane.position + 1 >= static_cast<Index>(prompt.size());
      int token = 0;
      if (sampled) {
        row = logits.row(b);
        token = lane.sampler.sample(row);
      } else {
        token = prompt[static_cast<std::size_t>(lane.position + 1)];
      }
      ++out.tokens;
      if (callbacks.on_token) {
        callbacks.on_token(
            TokenEvent{lane.request, lane.position, lane.token, token, sampled,
                       Eigen::Map<const RowVector>(logits.row(b).data(), c.vocab_size)});
      }
      if (token == kBos || token == requests[lane.request].end_token) {
        out.ended_by_bos = true;
        lane.done = true;
        continue;
      }
      if (sampled) out.generated.push_back(token);
      lane.token = token;
      lane.done = ++lane.position == requests[lane.request].max_tokens;
    }
    if (callbacks.on_step) callbacks.on_step(StepEvent{step, batch, in_use});
    for (std::optional<detail::Lane>& lane : lanes) {
      if (!lane || !lane->done) continue;
      result.sequences[lane->request].last_step = step;
      if (callbacks.on_end) callbacks.on_end(lane->request, lane->cache);
      in_use -= need[lane->request];
      --active;
      lane.reset();  // frees its KV state for the next request
    }
  }
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace engine
