// libFuzzer target: the llama2.c checkpoint reader on arbitrary bytes. It may reject them
// (FileError); it must never crash, read out of bounds or allocate more than the input implies.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  try {
    const engine::LlamaWeights w = engine::read_checkpoint(in, size, "fuzz.bin");
    // Accepted: every offset must lie inside the payload.
    const std::size_t floats = w.data.size();
    if (w.classifier >= floats || w.rms_final >= floats || w.embedding >= floats) __builtin_trap();
  } catch (const engine::FileError&) {
  }
  return 0;
}
