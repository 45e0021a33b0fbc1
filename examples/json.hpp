// JSON output of the tools: one object a line (JSON Lines), written by hand because the engine
// depends on nothing beyond Eigen. Prompts and completions come from a byte-level tokenizer, so a
// completion cut at a token boundary may end inside a UTF-8 sequence; the writer repairs such bytes
// rather than emit a line that a strict reader rejects.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace engine {

namespace json_detail {

// Length of the valid UTF-8 sequence starting at text[i], or 0 if the bytes there are not one;
// `subpart` receives how many bytes from i form the longest prefix of some valid sequence (at least
// 1), which is what one U+FFFD replaces. The ranges are the table of well-formed byte sequences in
// the Unicode Standard (section 3.9, table 3-7): they exclude overlongs, surrogates and code points
// above U+10FFFF by the second byte, so a bad sequence is known no later than there.
inline std::size_t utf8_sequence(std::string_view text, std::size_t i, std::size_t& subpart) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned lead = byte(i);
  std::size_t length = 0;
  unsigned second_low = 0x80, second_high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) second_low = 0xA0;   // below: overlong
    if (lead == 0xED) second_high = 0x9F;  // above: surrogates U+D800..DFFF
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) second_low = 0x90;   // below: overlong
    if (lead == 0xF4) second_high = 0x8F;  // above: beyond U+10FFFF
  }
  subpart = 1;
  if (length == 0) return 0;  // C0, C1, F5..FF never appear; 80..BF cannot start a sequence
  for (std::size_t k = 1; k < length; ++k) {
    if (i + k >= text.size()) return 0;
    const unsigned next = byte(i + k);
    const unsigned low = k == 1 ? second_low : 0x80u;
    const unsigned high = k == 1 ? second_high : 0xBFu;
    if (next < low || next > high) return 0;
    subpart = k + 1;
  }
  return length;
}

}  // namespace json_detail

/// `text` as a JSON string literal, quotes included; the result is always valid UTF-8 and valid
/// JSON, whatever the bytes of `text`.
///
///   json_string("say \"hi\"\n")  // "say \"hi\"\n" with the quote and the newline escaped
///   json_string("caf\xC3\xA9")   // "café": valid UTF-8 passes through unchanged
///   json_string("ab\xE4\xB8")    // "ab\uFFFD" (written as the bytes EF BF BD)
///
/// `"` and `\` are escaped; \b \f \n \r \t get their short escapes; every other control character
/// (U+0000..U+001F, and U+007F, which JSON allows raw but terminals do not) becomes \u00xx.
/// Invalid UTF-8 becomes U+FFFD by maximal subparts (the Unicode Standard's recommended practice,
/// as in WHATWG's decoder and Python's "replace"): one U+FFFD for each longest prefix of a valid
/// sequence that is cut short (E4 B8 followed by 'x', or at the end: one), and one for each byte
/// that can start no such prefix: stray continuation bytes, C0, C1, F5..FF, and the bytes of
/// overlongs, surrogates and code points above U+10FFFF (C0 80: two; ED A0 80: three).
inline std::string json_string(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      std::size_t subpart = 0;
      if (const std::size_t length = json_detail::utf8_sequence(text, i, subpart)) {
        out.append(text.substr(i, length));
        i += length;
      } else {
        out += kReplacement;
        i += subpart;
      }
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
  return out;
}

/// One JSON object on one line, fields in the order added (a JSON Lines record).
///
///   JsonLine line;
///   line.field("index", 0).field("prompt", "Once").field("completion", " upon").field("tokens",
///   12); line.str()  // {"index": 0, "prompt": "Once", "completion": " upon", "tokens": 12}
///
/// Keys and strings go through json_string, so any bytes are safe. No trailing newline: the caller
/// owns line ends. Adding a key twice writes it twice (readers then keep either), so don't.
class JsonLine {
 public:
  JsonLine& field(std::string_view key, std::string_view string_value) {
    start_field(key);
    body_ += json_string(string_value);
    return *this;
  }

  JsonLine& field(std::string_view key, long long number) {
    start_field(key);
    body_ += std::to_string(number);
    return *this;
  }

  /// The object so far, braces included; `{}` when no field was added.
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void start_field(std::string_view key) {
    if (!body_.empty()) body_ += ", ";
    body_ += json_string(key);
    body_ += ": ";
  }

  std::string body_;  // the fields, without the braces
};

}  // namespace engine
