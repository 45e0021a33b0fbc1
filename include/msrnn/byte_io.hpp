// Fixed-width little-endian fields in a byte string, a reader that names what it runs out in, and
// the checksum of a saved state: what state_file.hpp is written with, public for hosts that wrap
// a state in files of their own (the example engine's saved sequences).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace msrnn {

/// True on a little-endian machine, the byte order of a saved state (fields are copied as the
/// machine holds them, so another order is refused rather than converted).
inline bool little_endian() noexcept {
  const std::uint32_t one = 1;
  unsigned char first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

/// The checksum of a saved state's payload: FNV-1a over 64-bit little-endian words (offset basis
/// 0xcbf29ce484222325, prime 0x100000001b3) with h ^= h >> 29 after each word, the last n % 8
/// bytes one at a time as FNV-1a bytes, and h ^ (h >> 32) at the end. Each step is a bijection of
/// h for a given input, so a change in one word always changes the result. About 5 GB/s.
inline std::uint64_t state_checksum(const unsigned char* data, std::size_t size) noexcept {
  constexpr std::uint64_t kPrime = 0x100000001b3ULL;
  std::uint64_t h = 0xcbf29ce484222325ULL;
  std::size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    std::uint64_t word = 0;
    std::memcpy(&word, data + i, 8);
    h = (h ^ word) * kPrime;
    h ^= h >> 29;
  }
  for (; i < size; ++i) h = (h ^ data[i]) * kPrime;
  return h ^ (h >> 32);
}

/// `text` as it may appear in a one-line message although it came from a file: printable ASCII
/// kept, a backslash doubled, \n \r \t and every other byte outside 0x20..0x7e written as an
/// escape (\x1b), so no file can end a message's line or send a terminal a control sequence; cut
/// after `most` bytes ("...", and the full length).
inline std::string printable(std::string_view text, std::size_t most = 64) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  const std::size_t shown = std::min(text.size(), most);
  for (std::size_t i = 0; i < shown; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c > 0x7e) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (shown < text.size()) out += "... (" + std::to_string(text.size()) + " bytes)";
  return out;
}

/// Appends fields to a byte string in the machine's (little-endian) order.
class ByteWriter {
 public:
  explicit ByteWriter(std::string& out) : out_(out) {}
  template <class T>
  void put(T value) {
    static_assert(std::is_arithmetic_v<T>, "fields are numbers");
    const auto* bytes = reinterpret_cast<const char*>(&value);
    out_.append(bytes, sizeof value);
  }
  void put_bytes(const void* data, std::size_t size) {
    out_.append(static_cast<const char*>(data), size);
  }
  void put_string(std::string_view text) {
    put(static_cast<std::uint32_t>(text.size()));
    out_.append(text.data(), text.size());
  }

 private:
  std::string& out_;
};

/// Reads fields from a byte string; running out throws std::invalid_argument naming the field.
class ByteReader {
 public:
  /// `context` prefixes every message ("msrnn: saved state: ").
  ByteReader(std::string_view bytes, std::string context)
      : bytes_(bytes), context_(std::move(context)) {}

  template <class T>
  T get(const char* what) {
    static_assert(std::is_arithmetic_v<T>, "fields are numbers");
    T value{};
    std::memcpy(&value, take(sizeof value, what), sizeof value);
    return value;
  }
  /// The next `size` bytes (valid as long as the string read).
  const unsigned char* take(std::size_t size, const char* what) {
    if (size > bytes_.size() - at_) {
      fail(std::string("the payload ends inside ") + what + " (" +
           std::to_string(bytes_.size() - at_) + " bytes left, " + std::to_string(size) +
           " needed)");
    }
    const auto* p = reinterpret_cast<const unsigned char*>(bytes_.data()) + at_;
    at_ += size;
    return p;
  }
  std::string get_string(const char* what, std::size_t max_size) {
    const auto size = get<std::uint32_t>(what);
    if (size > max_size) {
      fail(std::string(what) + " is " + std::to_string(size) + " bytes long, more than " +
           std::to_string(max_size));
    }
    return std::string(reinterpret_cast<const char*>(take(size, what)), size);
  }
  std::size_t left() const noexcept { return bytes_.size() - at_; }

  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument(context_ + what);
  }

 private:
  std::string_view bytes_;
  std::size_t at_ = 0;
  std::string context_;
};

}  // namespace msrnn
