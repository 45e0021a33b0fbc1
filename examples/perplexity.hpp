// Perplexity as msrnn defines it, so that numbers compare across tools (README, "Perplexity").
#pragma once

#include <algorithm>
#include <cmath>
#include <string_view>
#include <vector>

#include "model.hpp"
#include "tokenizer.hpp"

namespace engine {

/// The evaluation stream: the text split at '\n' (a final '\n' ends the last line), every
/// non-empty line encoded on its own (dummy prefix, merges, byte fallback), every line followed
/// by the newline byte token <0x0A>. No BOS.
inline std::vector<int> encode_stream(const Tokenizer& tokenizer, std::string_view text) {
  std::vector<int> stream;
  const int newline = kFirstByteToken + '\n';
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(start, end - start);
    if (!line.empty()) {
      const std::vector<int> tokens = tokenizer.encode(line, /*bos=*/false);
      stream.insert(stream.end(), tokens.begin(), tokens.end());
    }
    stream.push_back(newline);
    start = end + 1;
  }
  return stream;
}

/// Chunks of N tokens: chunk c is BOS then stream tokens [c (N-1), (c+1)(N-1)).
inline Index chunk_count(Index stream_size, Index chunk_len) {
  return (stream_size + chunk_len - 2) / (chunk_len - 1);
}

inline std::vector<int> chunk_tokens(const std::vector<int>& stream, Index chunk_len, Index c) {
  const auto begin = static_cast<std::size_t>(c * (chunk_len - 1));
  const auto end = std::min(stream.size(), begin + static_cast<std::size_t>(chunk_len - 1));
  std::vector<int> tokens = {kBos};
  tokens.insert(tokens.end(), stream.begin() + static_cast<std::ptrdiff_t>(begin),
                stream.begin() + static_cast<std::ptrdiff_t>(end));
  return tokens;
}

/// Negative log-likelihood (nats) of each token after BOS in `tokens`, from an empty cache.
inline std::vector<double> token_losses(LlamaModel& model, const std::vector<int>& tokens) {
  model.reset();
  const RowMatrix& logits = model.forward_chunk(tokens);  // (n, vocab)
  std::vector<double> losses;
  for (std::size_t t = 0; t + 1 < tokens.size(); ++t) {
    const auto row = static_cast<Index>(t);
    const double top = logits.row(row).maxCoeff();
    double sum = 0.0;
    for (Index v = 0; v < logits.cols(); ++v) sum += std::exp(double{logits(row, v)} - top);
    losses.push_back(top + std::log(sum) - logits(row, tokens[t + 1]));
  }
  return losses;
}

}  // namespace engine
