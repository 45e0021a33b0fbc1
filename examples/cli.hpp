// What the engine's tools share beyond flags.hpp: finding and loading the model, the cache flags,
// building the model with a bounded cache.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <msrnn/msrnn.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <variant>
#include <vector>

#include "flags.hpp"
#include "gguf_model.hpp"
#include "machine.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

#ifndef MSRNN_SOURCE_DIR
#define MSRNN_SOURCE_DIR "."
#endif

namespace engine::cli {

/// The file `name` from $MSRNN_MODEL_DIR, then ../shared/models beside the repository, then
/// models/ in the repository; an error that says where to put it when none has it.
inline std::string find_model_file(const std::string& name, const char* flag) {
  std::vector<std::string> places;
  if (const char* dir = std::getenv("MSRNN_MODEL_DIR"); dir && *dir) places.push_back(dir);
  places.push_back(std::string(MSRNN_SOURCE_DIR) + "/../shared/models");
  places.push_back(std::string(MSRNN_SOURCE_DIR) + "/models");
  std::string looked;
  for (const std::string& place : places) {
    const std::string path = place + "/" + name;
    // Looks without opening: a FIFO of that name would block an open. The loader then says what
    // is wrong with whatever is there.
    std::error_code error;
    if (std::filesystem::exists(std::filesystem::status(path, error))) return path;
    looked += (looked.empty() ? "" : ", ") + place;
  }
  fail("cannot find " + name + " (looked in " + looked + "); put it in one of them, set " +
       "MSRNN_MODEL_DIR, or pass " + flag + " (README, \"Run the example decoder\", says where " +
       "to download it)");
}

/// Warns when weights are NaN or infinite (the run goes on; its outputs will be too).
inline void warn_non_finite(const LlamaWeights& weights, const std::string& path) {
  std::size_t bad = 0;
  weights.for_each_tensor([&](Part p, Index, const float* x, std::size_t n) {
    if (p == Part::classifier && weights.config.shared_classifier) return;  // the embedding
    for (std::size_t i = 0; i < n; ++i) bad += std::isfinite(x[i]) ? 0 : 1;
  });
  if (bad > 0) {
    std::fprintf(stderr, "warning: %s: %zu weights are NaN or infinite; outputs will be too\n",
                 path.c_str(), bad);
  }
}

/// Loads the weights and tokenizer, turning a bad file into "error: <file>: <what>".
inline LlamaWeights load_weights(const std::string& path) {
  try {
    LlamaWeights weights = load_checkpoint(path);
    warn_non_finite(weights, path);
    return weights;
  } catch (const FileError& e) {
    fail(e.what());
  } catch (const std::bad_alloc&) {
    fail(path + ": not enough memory for its weights");
  }
}

/// Loads a GGUF model file (weights and the tokenizer it carries), errors as load_weights.
inline GgufModel load_gguf(const std::string& path) {
  try {
    GgufModel model = load_gguf_model(path);
    warn_non_finite(model.weights, path);
    return model;
  } catch (const FileError& e) {
    fail(e.what());
  } catch (const std::bad_alloc&) {
    fail(path + ": not enough memory to load it (its metadata, tokenizer or converted weights)");
  }
}

inline Tokenizer load_tokenizer(const std::string& path, Index vocab_size) {
  try {
    return Tokenizer(path, vocab_size);
  } catch (const FileError& e) {
    fail(e.what());
  }
}

/// A loaded model and its tokenizer.
struct ModelFiles {
  std::string model_path;
  LlamaWeights weights;
  Tokenizer tokenizer;
};

/// The flags both tools take: --model, --tokenizer, and for the cache --sinks, --recent,
/// --positions, --threads, --kv-type (one type; msrnn-perplexity takes a list itself).
struct CommonFlags {
  std::string model_path;      // empty: stories260K.bin, found by find_model_file
  std::string tokenizer_path;  // empty: tok512.bin, likewise
  Index sinks = msrnn::PolicyOptions{}.sinks;
  Index recent = msrnn::PolicyOptions{}.recent;
  msrnn::PositionMode positions = msrnn::PositionMode::absolute;
  Index threads = 1;  // threads sharing a layer's KV heads (CacheConfig::threads)
  msrnn::KvType kv_type = msrnn::KvType::f32;  // CacheConfig::kv_type
  bool sinks_given = false;
  bool recent_given = false;
  bool positions_given = false;
  bool kv_type_given = false;

  /// Takes the flag if it is one of these.
  bool take(std::string_view flag, const std::string& value) {
    if (flag == "--model") {
      model_path = value;
    } else if (flag == "--tokenizer") {
      tokenizer_path = value;
    } else if (flag == "--sinks") {
      sinks = parse_int(flag, value, 0);
      sinks_given = true;
    } else if (flag == "--recent") {
      recent = parse_int(flag, value, 0);
      recent_given = true;
    } else if (flag == "--positions") {
      positions = parse_positions(value);
      positions_given = true;
    } else if (flag == "--threads") {
      threads = parse_int(flag, value, 1, 1024);
    } else if (flag == "--kv-type") {
      kv_type = parse_kv_type(value);
      kv_type_given = true;
    } else {
      return false;
    }
    return true;
  }

  /// Resolves the default model and tokenizer (find_model_file), so that outputs can be checked
  /// against them before anything is loaded. A GGUF model (told by its magic, not its name)
  /// carries its tokenizer: --tokenizer is then not needed, and ignored with a warning if given.
  void resolve_paths() {
    if (model_path.empty()) model_path = find_model_file("stories260K.bin", "--model");
    if (is_gguf_file(model_path)) {
      if (!tokenizer_path.empty()) {
        warn("--tokenizer is ignored: the GGUF model " + model_path + " carries its own");
      }
      tokenizer_path.clear();
      return;
    }
    if (tokenizer_path.empty()) tokenizer_path = find_model_file("tok512.bin", "--tokenizer");
  }

  /// The model and tokenizer the flags name (or the defaults, found by find_model_file): a
  /// llama2.c checkpoint and its tokenizer file, or a GGUF file holding both.
  ModelFiles load_model_files() {
    resolve_paths();
    if (tokenizer_path.empty()) {
      GgufModel model = load_gguf(model_path);
      return {model_path, std::move(model.weights), std::move(model.tokenizer)};
    }
    LlamaWeights weights = load_weights(model_path);
    Tokenizer tokenizer = load_tokenizer(tokenizer_path, weights.config.vocab_size);
    return {model_path, std::move(weights), std::move(tokenizer)};
  }

  /// Warns about cache flags that none of `policies` uses (each policy's kOptions says what it
  /// reads): --sinks, --recent, and (when `capacity_given`) --capacity with only policies that
  /// never evict.
  void warn_unused(const std::vector<std::string>& policies, bool capacity_given) const {
    auto warn_option = [&](bool given, const char* flag, const char* option) {
      if (!given) return;
      std::string users;
      for (std::string_view name : msrnn::kPolicyNames) {
        if (msrnn::policy_uses(name, option))
          users += (users.empty() ? "" : ", ") + std::string(name);
      }
      for (const std::string& name : policies) {
        if (msrnn::policy_uses(name, option)) return;
      }
      warn(std::string(flag) + " is only used by " + users + "; ignored");
    };
    warn_option(sinks_given, "--sinks", "sinks");
    warn_option(recent_given, "--recent", "recent");
    const bool none_evicts =
        std::none_of(policies.begin(), policies.end(),
                     [](const std::string& name) { return msrnn::policy_evicts(name); });
    if (capacity_given && none_evicts) {
      warn("--capacity is ignored by full, which keeps every state");
    }
  }

  CacheSettings settings(const std::string& policy, Index capacity) const {
    return settings(policy, capacity, kv_type);
  }
  CacheSettings settings(const std::string& policy, Index capacity, msrnn::KvType type) const {
    CacheSettings s;
    s.kv_type = type;
    s.policy.name = policy;
    s.policy.sinks = sinks;
    s.policy.recent = recent;
    s.capacity = capacity;
    s.positions = positions;
    s.threads = threads;
    return s;
  }
};

using engine::physical_memory_bytes;  // machine.hpp

/// Runs `start`, which starts `threads` threads (a cache's workers, a model's pool): a thread the
/// system refuses (std::system_error: a process limit, no memory for its stack) becomes one
/// error that says so and what to do.
template <class Start>
auto starting_threads(Index threads, Start&& start) -> decltype(start()) {
  try {
    return start();
  } catch (const std::system_error& e) {
    fail("cannot start the threads of --threads " + std::to_string(threads) + " (" +
         e.code().message() + "): lower --threads (--threads 1 starts none)");
  }
}

/// Bytes of the forward pass's scratch for `tokens` tokens at once: the Transformer's rows (the
/// residual stream, q k v, the attention output, the feed-forward's two hidden rows, the logits)
/// and LlamaModel's copy of the logits.
inline double forward_bytes(const LlamaConfig& c, Index tokens) {
  const double per_token =
      4.0 * static_cast<double>(4 * c.dim + 2 * c.kv_dim() + 2 * c.hidden_dim + 2 * c.vocab_size);
  return per_token * static_cast<double>(tokens);
}

/// Bytes of a model's weights as float32 (what it takes to hold them, whatever the file's type).
inline double weight_bytes(const LlamaConfig& c) {
  const double dim = static_cast<double>(c.dim), layers = static_cast<double>(c.n_layers);
  const double per_layer = 2.0 * dim * dim + 2.0 * dim * static_cast<double>(c.kv_dim()) +
                           3.0 * dim * static_cast<double>(c.hidden_dim) + 2.0 * dim;
  const double vocab = static_cast<double>(c.vocab_size) * dim;
  return 4.0 * (layers * per_layer + vocab * (c.shared_classifier ? 1.0 : 2.0) + dim);
}

/// The most tokens one forward pass takes (at least 1): as many as keep its scratch within the
/// model's own size, between 16 and 256 MiB. A longer chunk is fed in pieces of it, so neither a
/// declared context nor a vocabulary can make a small file take the machine's memory, and a
/// real model's pass stays large enough to read each weight once for hundreds of tokens.
inline Index forward_piece(const LlamaConfig& c) {
  const double budget = std::clamp(weight_bytes(c), 16.0 * 1048576.0, 256.0 * 1048576.0);
  return std::max<Index>(1, static_cast<Index>(budget / forward_bytes(c, 1)));
}

/// Builds the model for sequences of at most `max_tokens` tokens fed `piece` at a time, turning a
/// bad cache option into "error: ...". The cache is bounded at the requested C and allocates only
/// the states the run can hold (CacheConfig::max_tokens); that and the forward pass's scratch are
/// checked against the machine's memory first, the refusal naming the flags to lower (`lower`).
inline LlamaModel make_model(const LlamaWeights& weights, CacheSettings settings, Index max_tokens,
                             Index piece = 1, const char* lower = "--capacity or --steps") {
  const std::string name = settings.policy.name;
  settings.max_tokens = max_tokens;
  const msrnn::CacheConfig config = cache_config(weights.config, settings);
  // Keys and values of the slots the cache will allocate (initial_slots; the library's formula,
  // per slot from 16 of them: keys are stored in blocks of 16), plus at most 36 bytes of
  // bookkeeping per slot and KV head (position, score; in_cache's virtual positions).
  const Index slots = msrnn::initial_slots(config, msrnn::policy_evicts(name));
  const double kv_bytes =
      static_cast<double>(msrnn::kv_state_bytes(config, 16)) / 16.0 *
          static_cast<double>(slots + 16) +
      36.0 * static_cast<double>(config.n_layers * config.n_kv_heads) * static_cast<double>(slots);
  const double pass_bytes = forward_bytes(weights.config, piece);
  const double memory = physical_memory_bytes();
  if (memory > 0 && kv_bytes + pass_bytes > memory) {
    char what[256];
    std::snprintf(what, sizeof(what),
                  ": a KV state of %lld states (%.1f GiB) and the forward pass of %lld tokens "
                  "(%.1f GiB) need more than this machine's %.1f GiB",
                  static_cast<long long>(slots), kv_bytes / 1073741824.0,
                  static_cast<long long>(piece), pass_bytes / 1073741824.0, memory / 1073741824.0);
    fail(name + what + " (lower " + lower + ")");
  }
  try {
    return starting_threads(settings.threads, [&] { return LlamaModel(weights, settings); });
  } catch (const std::invalid_argument& e) {
    std::string what = e.what();
    if (what.rfind("msrnn: ", 0) == 0) what = what.substr(7);
    fail(name + ": " + what);
  } catch (const std::bad_alloc&) {
    fail(name + ": not enough memory for a KV state of capacity " +
         std::to_string(config.capacity));
  }
}

}  // namespace engine::cli
