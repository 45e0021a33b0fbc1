// Command-line flags and errors of the tools, without the engine: "--flag value" and
// "--flag=value", numbers and lists that name the flag when they are wrong, and one line
// "error: ..." with exit status 2 for every failure (attention_layer.cpp uses it alone).
#pragma once

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <msrnn/msrnn.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "temp_files.hpp"

namespace engine::cli {

/// What `fail` throws: `guarded_main` prints it as "error: <message>" and returns status 2.
/// (An exception, not exit(): unwinding removes the temporary files of unfinished outputs.)
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Ends the tool with "error: <message>" and status 2 (through `guarded_main`).
[[noreturn]] inline void fail(const std::string& message) { throw Failure(message); }

/// `message` as one line: control characters (a newline or escape sequence in a path or in a
/// string no file escaped) written as \xNN. Strings from files are escaped where they are put in
/// a message (msrnn::printable); this keeps every message one line whatever reaches it.
inline std::string one_line(const std::string& message) {
  std::string out;
  for (char c : message) {
    const auto b = static_cast<unsigned char>(c);
    if (b < 0x20 || b == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[b >> 4];
      out += kHex[b & 15];
    } else {
      out += c;
    }
  }
  return out;
}

/// Prints "warning: <message>" on stderr; the run goes on.
inline void warn(const std::string& message) {
  std::fprintf(stderr, "warning: %s\n", one_line(message).c_str());
}

/// Flushes stdout and fails ("error: stdout: ...") if anything written to it was lost: a full
/// disk, /dev/full, a closed pipe. Tools call it after their last output and whenever they
/// flush.
inline void check_stdout() {
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    const int error = errno;
    std::clearerr(stdout);
    fail(std::string("stdout: cannot write the output (") + std::strerror(error) + ")");
  }
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

/// A policy's name, checked: one of msrnn::kPolicyNames.
inline std::string parse_policy(const std::string& name) {
  try {
    msrnn::require_policy_name(name);
  } catch (const std::invalid_argument&) {
    fail("--policy: unknown policy '" + name + "' (expected " + msrnn::policy_list() + ")");
  }
  return name;
}

/// Every policy's name (the tools' default list).
inline std::vector<std::string> all_policies() {
  return {msrnn::kPolicyNames.begin(), msrnn::kPolicyNames.end()};
}

inline msrnn::PositionMode parse_positions(const std::string& text) {
  if (text == "absolute") return msrnn::PositionMode::absolute;
  if (text == "in_cache") return msrnn::PositionMode::in_cache;
  fail("--positions: '" + text + "' is not absolute or in_cache");
}

inline msrnn::KvType parse_kv_type(const std::string& text) {
  for (msrnn::KvType type :
       {msrnn::KvType::f32, msrnn::KvType::f16, msrnn::KvType::bf16, msrnn::KvType::q8}) {
    if (text == msrnn::to_string(type)) return type;
  }
  fail("--kv-type: '" + text + "' is not f32, f16, bf16 or q8");
}

/// `usage` with "{policies}" replaced by every policy's name, comma-separated, and
/// "{policy_list}" by the same as a phrase ("full, window, ... or tova_sink"): the tools' help
/// never lists the policies by hand.
inline std::string usage_text(std::string usage) {
  std::string names;
  for (std::string_view name : msrnn::kPolicyNames) {
    names += (names.empty() ? "" : ",") + std::string(name);
  }
  for (const auto& [key, value] : {std::pair<std::string, std::string>{"{policies}", names},
                                   {"{policy_list}", msrnn::policy_list()}}) {
    for (std::size_t at = usage.find(key); at != std::string::npos; at = usage.find(key, at)) {
      usage.replace(at, key.size(), value);
      at += value.size();
    }
  }
  return usage;
}

/// True for the flags whose value names a file (their empty value is an "empty file name").
inline bool names_a_file(std::string_view flag) {
  for (std::string_view f : {"--model", "--tokenizer", "--text", "--csv", "--plot", "--per-token",
                             "--trace", "--save-state", "--load-state", "--prompts"}) {
    if (flag == f) return true;
  }
  return false;
}

/// Walks "--flag value" and "--flag=value" pairs: --help prints `usage` (usage_text) and exits 0;
/// a flag without a value, with an empty one but --prompt's (an unset shell variable must not
/// silently mean "not given"), or one that `take(flag, value)` does not know (returns false), is an
/// error. The `switches` take no value (`take` gets an empty one): "--stream", not "--stream=1".
template <class Take>
void parse_flags(int argc, char** argv, const char* usage,
                 std::initializer_list<std::string_view> switches, Take&& take) {
  for (int i = 1; i < argc; ++i) {
    std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(usage_text(usage).c_str(), stdout);
      check_stdout();
      std::exit(0);
    }
    std::string value;
    const std::size_t equals = flag.find('=');
    const bool is_switch =
        std::find(switches.begin(), switches.end(), flag.substr(0, equals)) != switches.end();
    if (is_switch) {
      if (equals != std::string_view::npos) {
        fail(std::string(flag.substr(0, equals)) + " takes no value (see --help)");
      }
    } else if (flag.rfind("--", 0) == 0 && equals != std::string_view::npos) {
      value = std::string(flag.substr(equals + 1));
      flag = flag.substr(0, equals);
    } else {
      if (i + 1 >= argc) fail(std::string(flag) + " needs a value (see --help)");
      value = argv[++i];
    }
    // (--prompt "" is the empty text, from BOS: a text like any other, as an empty line of a
    // --prompts file is)
    if (!is_switch && value.empty() && flag != "--prompt") {
      fail(std::string(flag) + (names_a_file(flag) ? ": empty file name" : ": empty value") +
           " (omit the flag for its default)");
    }
    if (!take(flag, value)) fail("unknown flag '" + std::string(flag) + "' (see --help)");
  }
}

template <class Take>
void parse_flags(int argc, char** argv, const char* usage, Take&& take) {
  parse_flags(argc, argv, usage, {}, std::forward<Take>(take));
}

/// Runs a tool's main, turning `fail` and any exception that escapes into one line
/// "error: ..." on stderr and status 2. A body that returns 0 has its stdout checked first.
template <class F>
int guarded_main(F&& body) {
  remove_temporary_files_on_signals();
  auto report = [](const char* message) {
    std::fprintf(stderr, "error: %s\n", one_line(message).c_str());
    return 2;
  };
  try {
    const int status = body();
    if (status == 0) check_stdout();
    return status;
  } catch (const std::bad_alloc&) {
    return report("out of memory");
  } catch (const std::exception& e) {
    return report(e.what());
  }
}

/// A size in bytes: digits with an optional suffix K, M or G (binary: 2^10, 2^20, 2^30), at least
/// 1 and below 2^60; anything else is an error naming the flag.
inline std::size_t parse_bytes(std::string_view flag, const std::string& text) {
  std::string digits = text;
  long long unit = 1;
  if (!digits.empty()) {
    const char last = digits.back();
    const std::string suffixes = "KMG";
    const std::size_t which =
        suffixes.find(static_cast<char>(std::toupper(static_cast<unsigned char>(last))));
    if (which != std::string::npos) {
      unit = 1LL << (10 * (which + 1));
      digits.pop_back();
    }
  }
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(digits.c_str(), &end, 10);
  const bool plain = !digits.empty() && std::isdigit(static_cast<unsigned char>(digits[0]));
  if (!plain || end != digits.c_str() + digits.size() || errno != 0 || value < 1 ||
      value >= (1LL << 60) / unit) {
    fail(std::string(flag) + ": expected a size in bytes, such as 512M or 2G (suffixes K, M, G), " +
         "got '" + text + "'");
  }
  return static_cast<std::size_t>(value * unit);
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
