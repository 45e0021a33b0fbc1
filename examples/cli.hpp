// What the command-line tools share: errors, flag parsing, finding the model, cache flags.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <msrnn/msrnn.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "model.hpp"
#include "tokenizer.hpp"

#ifndef MSRNN_SOURCE_DIR
#define MSRNN_SOURCE_DIR "."
#endif

namespace engine::cli {

/// Prints "error: <message>" and exits with status 2.
[[noreturn]] inline void fail(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  std::exit(2);
}

/// A whole number in [least, most]; anything else (12abc, -3, empty) is an error naming the flag.
inline long long parse_int(std::string_view flag, const std::string& text, long long least,
                           long long most = 1LL << 40) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || end != text.c_str() + text.size() || errno != 0 || value < least ||
      value > most) {
    fail(std::string(flag) + ": '" + text + "' is not a whole number in [" + std::to_string(least) +
         ", " + std::to_string(most) + "]");
  }
  return value;
}

inline double parse_real(std::string_view flag, const std::string& text, double least,
                         double most) {
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || errno != 0 || !(value >= least) ||
      !(value <= most)) {
    fail(std::string(flag) + ": '" + text + "' is not a number in [" + std::to_string(least) +
         ", " + std::to_string(most) + "]");
  }
  return value;
}

inline msrnn::PolicyKind parse_policy(const std::string& name) {
  try {
    return msrnn::parse_policy_kind(name);
  } catch (const std::invalid_argument&) {
    fail("--policy: unknown policy '" + name + "' (expected full, window, sink, h2o or tova)");
  }
}

inline msrnn::PositionMode parse_positions(const std::string& text) {
  if (text == "absolute") return msrnn::PositionMode::absolute;
  if (text == "in_cache") return msrnn::PositionMode::in_cache;
  fail("--positions: '" + text + "' is not absolute or in_cache");
}

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
    if (std::ifstream(path).good()) return path;
    looked += (looked.empty() ? "" : ", ") + place;
  }
  fail("cannot find " + name + " (looked in " + looked + "); put it in one of them, set " +
       "MSRNN_MODEL_DIR, or pass " + flag + " (README, \"Run the example decoder\", says where " +
       "to download it)");
}

/// Loads the weights and tokenizer, turning a bad file into "error: <file>: <what>".
inline LlamaWeights load_weights(const std::string& path) {
  try {
    LlamaWeights weights = load_checkpoint(path);
    std::size_t bad = 0;
    for (float x : weights.data) bad += std::isfinite(x) ? 0 : 1;
    if (bad > 0) {
      std::fprintf(stderr, "warning: %s: %zu weights are NaN or infinite; outputs will be too\n",
                   path.c_str(), bad);
    }
    return weights;
  } catch (const FileError& e) {
    fail(e.what());
  } catch (const std::bad_alloc&) {
    fail(path + ": not enough memory for its weights");
  }
}

inline Tokenizer load_tokenizer(const std::string& path, Index vocab_size) {
  try {
    return Tokenizer(path, vocab_size);
  } catch (const FileError& e) {
    fail(e.what());
  }
}

/// A loaded checkpoint and its tokenizer.
struct ModelFiles {
  std::string model_path;
  LlamaWeights weights;
  Tokenizer tokenizer;
};

/// Walks "--flag value" pairs: --help prints `usage` and exits 0; a flag without a value, or one
/// that `take(flag, value)` does not know (returns false), is an error.
template <class Take>
void parse_flags(int argc, char** argv, const char* usage, Take&& take) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) fail(std::string(flag) + " needs a value (see --help)");
    const std::string value = argv[++i];
    if (!take(flag, value)) fail("unknown flag '" + std::string(flag) + "' (see --help)");
  }
}

/// The flags both tools take: --model, --tokenizer, and for the cache --sinks, --recent,
/// --positions.
struct CommonFlags {
  std::string model_path;      // empty: stories260K.bin, found by find_model_file
  std::string tokenizer_path;  // empty: tok512.bin, likewise
  Index sinks = msrnn::WindowPlusI{}.sinks;
  Index recent = msrnn::H2O::kHalfCapacity;
  msrnn::PositionMode positions = msrnn::PositionMode::absolute;

  /// Takes the flag if it is one of these.
  bool take(std::string_view flag, const std::string& value) {
    if (flag == "--model") {
      model_path = value;
    } else if (flag == "--tokenizer") {
      tokenizer_path = value;
    } else if (flag == "--sinks") {
      sinks = parse_int(flag, value, 0);
    } else if (flag == "--recent") {
      recent = parse_int(flag, value, 0);
    } else if (flag == "--positions") {
      positions = parse_positions(value);
    } else {
      return false;
    }
    return true;
  }

  /// The checkpoint and tokenizer the flags name (or the defaults, found by find_model_file).
  ModelFiles load_model_files() const {
    const std::string model =
        model_path.empty() ? find_model_file("stories260K.bin", "--model") : model_path;
    const std::string tok =
        tokenizer_path.empty() ? find_model_file("tok512.bin", "--tokenizer") : tokenizer_path;
    LlamaWeights weights = load_weights(model);
    Tokenizer tokenizer = load_tokenizer(tok, weights.config.vocab_size);
    return {model, std::move(weights), std::move(tokenizer)};
  }

  CacheSettings settings(msrnn::PolicyKind kind, Index capacity) const {
    CacheSettings s;
    s.policy.kind = kind;
    s.policy.sinks = sinks;
    s.policy.recent = recent;
    s.capacity = capacity;
    s.positions = positions;
    return s;
  }
};

/// Builds the model for sequences of at most `max_tokens` tokens, turning a bad cache option
/// into "error: ...". The options are checked against the requested capacity C, but the cache
/// holds at most max_tokens states: with C at least the sequence length nothing is ever evicted,
/// so the results are exactly those of C, without allocating states that can never arrive.
inline LlamaModel make_model(const LlamaWeights& weights, CacheSettings settings,
                             Index max_tokens) {
  const std::string name = msrnn::policy_name(settings.policy.kind);
  const Index requested = settings.capacity >= 0 ? settings.capacity : weights.config.seq_len;
  try {
    if (requested > max_tokens) {
      msrnn::AnyPolicy policy = msrnn::make_policy(settings.policy);
      std::visit([&](auto& p) { p.prepare(requested); }, policy);  // throws on bad options
      const Index recent = settings.policy.recent == msrnn::H2O::kHalfCapacity
                               ? requested / 2
                               : settings.policy.recent;
      settings.capacity = max_tokens;
      settings.policy.sinks = std::min(settings.policy.sinks, max_tokens - 1);
      settings.policy.recent = std::min(recent, max_tokens - 1);
    }
    return LlamaModel(weights, settings);
  } catch (const std::invalid_argument& e) {
    std::string what = e.what();
    if (what.rfind("msrnn: ", 0) == 0) what = what.substr(7);
    fail(name + ": " + what);
  } catch (const std::bad_alloc&) {
    fail(name + ": not enough memory for a KV state of capacity " + std::to_string(requested));
  }
}

/// Runs a tool's main, turning any exception that escapes into "error: ..." and status 2.
template <class F>
int guarded_main(F&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    fail("out of memory");
  } catch (const std::exception& e) {
    fail(e.what());
  }
}

/// Items of a comma-separated flag value: none empty, duplicates dropped.
inline std::vector<std::string> parse_list(std::string_view flag, const std::string& text) {
  std::vector<std::string> items;
  std::string item;
  std::stringstream in(text + ",");
  std::size_t count = 0;
  while (std::getline(in, item, ',')) {
    if (item.empty()) fail(std::string(flag) + ": empty item in '" + text + "'");
    if (std::find(items.begin(), items.end(), item) == items.end()) items.push_back(item);
    ++count;
  }
  if (count == 0) fail(std::string(flag) + ": empty list");
  return items;
}

}  // namespace engine::cli
