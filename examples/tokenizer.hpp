// llama2.c tokenizer files: loading, sentencepiece-style BPE encoding, decoding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <istream>
#include <limits>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "checkpoint.hpp"  // FileError, Index

namespace engine {

inline constexpr int kBos = 1;
inline constexpr int kFirstByteToken = 3;  // <0x00>..<0xFF> are ids 3..258

class Tokenizer {
 public:
  /// Reads a llama2.c tokenizer file for a model of `vocab_size` pieces: int32
  /// max_token_length, then per piece float score, int32 length, bytes. Throws
  /// FileError("<path>: <what>") for an empty, truncated or inconsistent file. Streams the file:
  /// memory is that of at most `vocab_size` pieces, whatever the file's size.
  Tokenizer(const std::string& path, Index vocab_size) {
    require_regular_file(path, "tokenizer");
    std::ifstream file(path, std::ios::binary | std::ios::ate);
    if (!file) throw FileError(path + ": cannot open the tokenizer file");
    const std::streamoff size = file.tellg();
    if (size < 0) throw FileError(path + ": cannot read the tokenizer file");
    file.seekg(0);
    parse(file, static_cast<std::uint64_t>(size), vocab_size, path);
  }

  /// The tokenizer in `bytes` (the contents of a tokenizer file, named `name` in errors).
  Tokenizer(const std::vector<char>& bytes, Index vocab_size, const std::string& name) {
    std::istringstream in(std::string(bytes.begin(), bytes.end()));
    parse(in, bytes.size(), vocab_size, name);
  }

  /// The tokenizer of a vocabulary given as pieces and their merge scores (a GGUF file's, whose
  /// "▁" the caller has turned into spaces) and its end-of-text id `eos` (-1: none), named `name`
  /// in errors. The same checks as a file's: at least 259 pieces, finite scores, <0x00>..<0xFF> at
  /// ids 3..258.
  Tokenizer(std::vector<std::string> pieces, std::vector<float> scores, int eos,
            const std::string& name)
      : eos_(eos) {
    auto fail = [&](const std::string& what) -> void { throw FileError(name + ": " + what); };
    if (pieces.size() != scores.size()) {
      fail("the tokenizer has " + std::to_string(pieces.size()) + " pieces but " +
           std::to_string(scores.size()) + " scores");
    }
    if (pieces.size() < static_cast<std::size_t>(kFirstByteToken + 256)) {
      fail("the tokenizer has " + std::to_string(pieces.size()) +
           " pieces, too few for byte fallback (259)");
    }
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      if (!std::isfinite(scores[i])) {
        fail("piece " + std::to_string(i) + " has a score that is not finite");
      }
      ids_.emplace(pieces[i], static_cast<int>(i));  // the first of equal pieces wins
    }
    pieces_ = std::move(pieces);
    scores_ = std::move(scores);
    check_byte_pieces(fail);
  }

  /// The end-of-text token besides BOS: a GGUF file's EOS; -1 for a llama2.c tokenizer, whose
  /// texts end at BOS only (as run.c's).
  int eos() const { return eos_; }
  /// True if `token` ends a generated text (BOS, or eos()).
  bool ends_text(int token) const { return token == kBos || (eos_ >= 0 && token == eos_); }

  Index vocab_size() const { return static_cast<Index>(pieces_.size()); }
  const std::string& piece(int id) const { return pieces_[static_cast<std::size_t>(id)]; }
  /// The merge score of piece `id` (higher merges first).
  float score(int id) const { return scores_[static_cast<std::size_t>(id)]; }

  /// Encodes like llama2.c / sentencepiece: optional BOS, a dummy-prefix space, UTF-8 code points
  /// looked up as pieces (byte fallback otherwise), then repeatedly the adjacent pair whose merged
  /// piece scores best is merged (the leftmost on equal scores). O(n log n): a heap of pairs.
  std::vector<int> encode(std::string_view text, bool bos) const {
    if (text.size() >= std::numeric_limits<std::uint32_t>::max() - 2) {
      throw std::length_error("a line of " + std::to_string(text.size()) +
                              " bytes is too long to encode (at most 4 GiB)");
    }
    std::vector<int> symbols;
    symbols.reserve(text.size() + 2);
    if (!text.empty()) symbols.push_back(id_of(" "));
    for (std::size_t i = 0; i < text.size();) {
      const std::size_t n = code_point_length(text, i);
      const auto found = ids_.find(std::string(text.substr(i, n)));
      if (found != ids_.end()) {
        symbols.push_back(found->second);
      } else {
        for (std::size_t b = 0; b < n; ++b) {
          symbols.push_back(kFirstByteToken + static_cast<unsigned char>(text[i + b]));
        }
      }
      i += n;
    }
    merge(symbols);
    if (bos) symbols.insert(symbols.begin(), kBos);
    return symbols;
  }

  /// The text of `token` following `previous`: byte pieces become their byte, and the leading
  /// space of the first piece after BOS is dropped (the dummy prefix).
  std::string decode(int previous, int token) const {
    const std::string& p = piece(token);
    if (token >= kFirstByteToken && token < kFirstByteToken + 256) {
      return std::string(1, static_cast<char>(token - kFirstByteToken));
    }
    if (previous == kBos && !p.empty() && p[0] == ' ') return p.substr(1);
    return p;
  }

 private:
  // Reads the pieces and scores from the `size` bytes of a tokenizer file, checking every length
  // before it is used. Pieces past `vocab_size` are counted and skipped, not stored, so that a
  // mismatch can name both sizes.
  void parse(std::istream& in, std::uint64_t size, Index vocab_size, const std::string& path) {
    auto fail = [&](const std::string& what) -> void { throw FileError(path + ": " + what); };
    if (size == 0) fail("the tokenizer file is empty");
    std::uint64_t at = 0;
    auto take = [&](void* out, std::uint64_t n, const char* what) {
      if (size - at < n) {
        fail(std::string("truncated at byte ") + std::to_string(at) + " (" + what + ")");
      }
      if (out) {
        in.read(static_cast<char*>(out), static_cast<std::streamsize>(n));
      } else {
        in.seekg(static_cast<std::streamoff>(n), std::ios::cur);
      }
      if (!in) fail("cannot read byte " + std::to_string(at) + " (" + what + ")");
      at += n;
    };
    std::int32_t max_length = 0;
    take(&max_length, 4, "max_token_length");
    if (max_length <= 0 || max_length > 1024) {
      fail("max_token_length = " + std::to_string(max_length) + " is not in 1..1024");
    }
    if (vocab_size < kFirstByteToken + 256) {
      fail("the model's vocab_size " + std::to_string(vocab_size) +
           " is too small for byte fallback (259)");
    }
    const auto wanted = static_cast<std::uint64_t>(vocab_size);
    std::uint64_t count = 0;
    // (`take` moves `at` on; a plain while, which clang's loop analysis cannot see into.)
    while (at < size) {
      float score = 0.0f;
      std::int32_t length = 0;
      take(&score, 4, "a piece's score");
      take(&length, 4, "a piece's length");
      if (!std::isfinite(score))
        fail("piece " + std::to_string(count) + " has a score that is not finite");
      if (length < 0 || length > max_length) {
        fail("piece " + std::to_string(count) + " has length " + std::to_string(length) +
             ", outside 0..max_token_length (" + std::to_string(max_length) + ")");
      }
      if (count >= wanted) {
        take(nullptr, static_cast<std::uint64_t>(length), "a piece's bytes");
      } else {
        std::string piece(static_cast<std::size_t>(length), '\0');
        take(piece.data(), static_cast<std::uint64_t>(length), "a piece's bytes");
        ids_.emplace(piece, static_cast<int>(count));  // the first of equal pieces wins
        pieces_.push_back(std::move(piece));
        scores_.push_back(score);
      }
      ++count;
    }
    if (count != wanted) {
      fail("the tokenizer has " + std::to_string(count) +
           " pieces, but the model's vocab_size is " + std::to_string(vocab_size) +
           ": they do not belong together");
    }
    check_byte_pieces(fail);
  }

  template <class Fail>
  void check_byte_pieces(const Fail& fail) const {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      if (pieces_[static_cast<std::size_t>(kFirstByteToken + b)] != name) {
        fail(std::string("piece ") + std::to_string(kFirstByteToken + b) + " is not " + name +
             ": not a byte-fallback vocabulary");
      }
    }
  }

  int id_of(const std::string& s) const {
    const auto found = ids_.find(s);
    return found == ids_.end() ? kFirstByteToken + static_cast<unsigned char>(s[0]) : found->second;
  }

  // Bytes of the "code point" starting at i, grouped as llama2.c does: one byte, then the
  // continuation bytes (10xxxxxx) that follow it, four bytes at most. Valid UTF-8 gives code
  // points; anything else falls back to its bytes when the group is not a piece.
  static std::size_t code_point_length(std::string_view text, std::size_t i) {
    std::size_t n = 1;
    while (n < 4 && i + n < text.size() &&
           (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) {
      ++n;
    }
    return n;
  }

  // BPE merges over a linked list of symbols with a max-heap of candidate pairs. A pair is known
  // by its left symbol and that symbol's version, which changes whenever the pair starting there
  // does (the symbol or its right neighbour is merged, or it dies): a heap entry whose version is
  // out of date is stale. 16 bytes an entry and 12 per symbol besides the symbol itself: encoding
  // a line of n bytes of English peaks at about 21 n bytes (52 n with 64-bit links and both
  // versions in every entry; README, "Limits").
  void merge(std::vector<int>& symbols) const {
    const std::size_t n = symbols.size();
    if (n < 2) return;
    using Link = std::uint32_t;  // lines of up to 2^32 - 2 symbols (encode checks)
    const Link none = std::numeric_limits<Link>::max();
    std::vector<Link> next(n), prev(n);
    std::vector<std::uint32_t> version(n, 0);
    for (std::size_t i = 0; i < n; ++i) {
      next[i] = i + 1 < n ? static_cast<Link>(i + 1) : none;
      prev[i] = i == 0 ? none : static_cast<Link>(i - 1);
    }
    struct Pair {
      float score;
      Link left;
      std::uint32_t version;
      int merged;
    };
    auto worse = [](const Pair& a, const Pair& b) {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    std::vector<Pair> storage;
    storage.reserve(n);
    std::priority_queue<Pair, std::vector<Pair>, decltype(worse)> heap(worse, std::move(storage));
    std::string joined;
    auto push = [&](Link left) {
      const Link right = next[left];
      if (right == none) return;
      joined = pieces_[static_cast<std::size_t>(symbols[left])];
      joined += pieces_[static_cast<std::size_t>(symbols[right])];
      const auto found = ids_.find(joined);
      if (found == ids_.end()) return;
      heap.push(
          {scores_[static_cast<std::size_t>(found->second)], left, version[left], found->second});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push(static_cast<Link>(i));
    while (!heap.empty()) {
      const Pair best = heap.top();
      heap.pop();
      if (version[best.left] != best.version) continue;
      const Link left = best.left;
      const Link right = next[left];
      symbols[left] = best.merged;
      ++version[left];
      ++version[right];  // dead: no pair starts there any more
      next[left] = next[right];
      if (next[right] != none) prev[next[right]] = left;
      if (prev[left] != none) {
        ++version[prev[left]];  // its right neighbour changed
        push(prev[left]);
      }
      push(left);
    }
    std::size_t out = 0;
    for (Link i = 0; i != none; i = next[i]) symbols[out++] = symbols[i];
    symbols.resize(out);
  }

  std::vector<std::string> pieces_;  // (vocab)
  std::vector<float> scores_;        // (vocab)
  std::unordered_map<std::string, int> ids_;
  int eos_ = -1;
};

}  // namespace engine
