// Perplexity as msrnn defines it, so that numbers compare across tools (README, "Perplexity").
#pragma once

#include <algorithm>
#include <cmath>
#include <istream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "model.hpp"
#include "tokenizer.hpp"

namespace engine {

/// Appends one line of the evaluation stream (the line without its '\n'): its tokens when it
/// is not empty (dummy prefix, merges, byte fallback), then the newline byte token <0x0A>.
inline void encode_line(const Tokenizer& tokenizer, std::string_view line,
                        std::vector<int>& stream) {
  if (!line.empty()) {
    const std::vector<int> tokens = tokenizer.encode(line, /*bos=*/false);
    stream.insert(stream.end(), tokens.begin(), tokens.end());
  }
  stream.push_back(kFirstByteToken + '\n');
}

/// The evaluation stream: the text split at '\n' (a final '\n' ends the last line), every line
/// as `encode_line` gives it. No BOS.
inline std::vector<int> encode_stream(const Tokenizer& tokenizer, std::string_view text) {
  std::vector<int> stream;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    encode_line(tokenizer, text.substr(start, end - start), stream);
    start = end + 1;
  }
  return stream;
}

/// The same stream read line by line from `in`: only the longest line is ever held as text.
/// `on_line` sees each line before it is encoded (e.g. to check it is UTF-8).
template <class OnLine>
std::vector<int> encode_stream(const Tokenizer& tokenizer, std::istream& in, OnLine&& on_line) {
  std::vector<int> stream;
  std::string line;
  while (std::getline(in, line)) {
    on_line(line);
    encode_line(tokenizer, line, stream);
  }
  return stream;
}

/// Chunks of N tokens: chunk c is BOS then stream tokens [c (N-1), (c+1)(N-1)). N >= 2: a chunk
/// needs BOS and one token to predict.
inline Index chunk_count(Index stream_size, Index chunk_len) {
  if (chunk_len < 2) {
    throw std::invalid_argument("chunk length " + std::to_string(chunk_len) +
                                ": a chunk needs BOS and at least one token to predict");
  }
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

/// Feeds `tokens` (BOS first) to `model` from an empty cache, `piece` tokens per forward_chunk
/// (the last piece takes the rest), and calls `on_loss(t, nll)` for the prediction of
/// tokens[t + 1] after tokens[0..t]: its negative log-likelihood in nats, in double. After each
/// piece's predictions, `after_piece(fed)` with the tokens fed so far. Holds one piece's logits,
/// so a long stream costs no more memory than a short one (beyond its cache).
template <class OnLoss, class AfterPiece>
void sequence_losses(LlamaModel& model, const std::vector<int>& tokens, Index piece,
                     OnLoss&& on_loss, AfterPiece&& after_piece) {
  model.reset();
  const auto n = static_cast<Index>(tokens.size());
  std::vector<int> part;
  for (Index at = 0; at < n; at += piece) {
    const Index count = std::min(piece, n - at);
    part.assign(tokens.begin() + static_cast<std::ptrdiff_t>(at),
                tokens.begin() + static_cast<std::ptrdiff_t>(at + count));
    const RowMatrix& logits = model.forward_chunk(part);  // (count, vocab)
    for (Index i = 0; i < count && at + i + 1 < n; ++i) {
      const double top = logits.row(i).maxCoeff();
      double sum = 0.0;
      for (Index v = 0; v < logits.cols(); ++v) sum += std::exp(double{logits(i, v)} - top);
      const int next = tokens[static_cast<std::size_t>(at + i + 1)];
      on_loss(at + i, top + std::log(sum) - logits(i, next));
    }
    after_piece(at + count);
  }
}

/// Negative log-likelihood (nats) of each token after BOS in `tokens`, from an empty cache, the
/// whole sequence in one forward_chunk.
inline std::vector<double> token_losses(LlamaModel& model, const std::vector<int>& tokens) {
  std::vector<double> losses;
  sequence_losses(
      model, tokens, std::max<Index>(1, static_cast<Index>(tokens.size())),
      [&](Index, double loss) { losses.push_back(loss); }, [](Index) {});
  return losses;
}

}  // namespace engine
