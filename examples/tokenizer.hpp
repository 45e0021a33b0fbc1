// llama2.c tokenizer files: loading, sentencepiece-style BPE encoding, decoding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <queue>
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
  /// FileError("<path>: <what>") for an empty, truncated or inconsistent file.
  Tokenizer(const std::string& path, Index vocab_size) {
    require_regular_file(path, "tokenizer");
    std::ifstream file(path, std::ios::binary | std::ios::ate);
    if (!file) throw FileError(path + ": cannot open the tokenizer file");
    const std::streamoff size = file.tellg();
    std::vector<char> bytes(static_cast<std::size_t>(std::max<std::streamoff>(size, 0)));
    file.seekg(0);
    file.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!file) throw FileError(path + ": cannot read the tokenizer file");
    parse(bytes, vocab_size, path);
  }

  /// The tokenizer in `bytes` (the contents of a tokenizer file, named `name` in errors).
  Tokenizer(const std::vector<char>& bytes, Index vocab_size, const std::string& name) {
    parse(bytes, vocab_size, name);
  }

  Index vocab_size() const { return static_cast<Index>(pieces_.size()); }
  const std::string& piece(int id) const { return pieces_[static_cast<std::size_t>(id)]; }

  /// Encodes like llama2.c / sentencepiece: optional BOS, a dummy-prefix space, UTF-8 code points
  /// looked up as pieces (byte fallback otherwise), then repeatedly the adjacent pair whose merged
  /// piece scores best is merged (the leftmost on equal scores). O(n log n): a heap of pairs.
  std::vector<int> encode(std::string_view text, bool bos) const {
    std::vector<int> symbols;
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
  // Reads the pieces and scores from the bytes of a tokenizer file, checking every length.
  void parse(const std::vector<char>& bytes, Index vocab_size, const std::string& path) {
    auto fail = [&](const std::string& what) -> void { throw FileError(path + ": " + what); };
    if (bytes.empty()) fail("the tokenizer file is empty");
    std::size_t at = 0;
    auto take = [&](void* out, std::size_t n, const char* what) {
      if (bytes.size() - at < n) {
        fail(std::string("truncated at byte ") + std::to_string(at) + " (" + what + ")");
      }
      std::memcpy(out, bytes.data() + at, n);
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
    pieces_.resize(static_cast<std::size_t>(vocab_size));
    scores_.resize(pieces_.size());
    for (std::size_t i = 0; i < pieces_.size(); ++i) {
      std::int32_t length = 0;
      take(&scores_[i], 4, "a piece's score");
      take(&length, 4, "a piece's length");
      if (!std::isfinite(scores_[i]))
        fail("piece " + std::to_string(i) + " has a score that is not finite");
      if (length < 0 || length > max_length) {
        fail("piece " + std::to_string(i) + " has length " + std::to_string(length) +
             ", outside 0..max_token_length (" + std::to_string(max_length) + ")");
      }
      pieces_[i].resize(static_cast<std::size_t>(length));
      take(pieces_[i].data(), static_cast<std::size_t>(length), "a piece's bytes");
      ids_.emplace(pieces_[i], static_cast<int>(i));  // the first of equal pieces wins
    }
    if (at != bytes.size()) {
      fail("has " + std::to_string(bytes.size() - at) + " bytes after piece " +
           std::to_string(vocab_size - 1) + ": it does not match a vocabulary of " +
           std::to_string(vocab_size));
    }
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

  // BPE merges over a linked list of symbols with a max-heap of candidate pairs. A heap entry is
  // stale when either symbol has changed since it was pushed.
  void merge(std::vector<int>& symbols) const {
    const std::size_t n = symbols.size();
    if (n < 2) return;
    std::vector<std::size_t> next(n), prev(n);
    std::vector<unsigned> version(n, 0);
    std::vector<bool> alive(n, true);
    for (std::size_t i = 0; i < n; ++i) {
      next[i] = i + 1;
      prev[i] = i == 0 ? n : i - 1;  // n: none
    }
    struct Pair {
      float score;
      std::size_t left, right;
      int merged;
      unsigned left_version, right_version;
    };
    auto worse = [](const Pair& a, const Pair& b) {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    std::priority_queue<Pair, std::vector<Pair>, decltype(worse)> heap(worse);
    std::string joined;
    auto push = [&](std::size_t left) {
      const std::size_t right = next[left];
      if (right >= n) return;
      joined = pieces_[static_cast<std::size_t>(symbols[left])];
      joined += pieces_[static_cast<std::size_t>(symbols[right])];
      const auto found = ids_.find(joined);
      if (found == ids_.end()) return;
      heap.push({scores_[static_cast<std::size_t>(found->second)], left, right, found->second,
                 version[left], version[right]});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      const Pair best = heap.top();
      heap.pop();
      const std::size_t right = next[best.left];
      if (!alive[best.left] || right != best.right || version[best.left] != best.left_version ||
          version[right] != best.right_version) {
        continue;
      }
      symbols[best.left] = best.merged;
      ++version[best.left];
      alive[right] = false;
      next[best.left] = next[right];
      if (next[right] < n) prev[next[right]] = best.left;
      if (prev[best.left] < n) push(prev[best.left]);
      push(best.left);
    }
    std::size_t out = 0;
    for (std::size_t i = 0; i < n; i = next[i]) symbols[out++] = symbols[i];
    symbols.resize(out);
  }

  std::vector<std::string> pieces_;  // (vocab)
  std::vector<float> scores_;        // (vocab)
  std::unordered_map<std::string, int> ids_;
};

}  // namespace engine
