// libFuzzer target: the encoder on arbitrary text with the real tok512.bin (from ../shared, or
// $MSRNN_MODEL_DIR). Decoding what it encodes must give the text back, byte for byte.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "tokenizer.hpp"

namespace {

const engine::Tokenizer& tokenizer() {
  static const std::unique_ptr<engine::Tokenizer> instance = [] {
    const char* dir = std::getenv("MSRNN_MODEL_DIR");
    const std::string path =
        std::string(dir && *dir ? dir : MSRNN_SOURCE_DIR "/../shared/models") + "/tok512.bin";
    try {
      return std::make_unique<engine::Tokenizer>(path, 512);
    } catch (const engine::FileError& e) {
      std::fprintf(stderr, "fuzz_encode needs tok512.bin: %s\n", e.what());
      std::exit(2);
    }
  }();
  return *instance;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<int> tokens = tokenizer().encode(text, /*bos=*/true);
  std::string decoded;
  for (std::size_t i = 1; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= 512) __builtin_trap();
    decoded += tokenizer().decode(tokens[i - 1], tokens[i]);
  }
  if (decoded != text) __builtin_trap();
  return 0;
}
