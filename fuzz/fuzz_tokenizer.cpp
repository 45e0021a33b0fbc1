// libFuzzer target: the tokenizer-file reader on arbitrary bytes, for a vocabulary size taken
// from the first byte. It may reject them (FileError); it must never crash.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const engine::Index vocab = 259 + data[0] % 8;
  const std::vector<char> bytes(data + 1, data + size);
  try {
    const engine::Tokenizer tokenizer(bytes, vocab, "fuzz.bin");
    if (tokenizer.vocab_size() != vocab) __builtin_trap();
  } catch (const engine::FileError&) {
  }
  return 0;
}
