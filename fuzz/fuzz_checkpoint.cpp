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
    // Accepted: every tensor lies inside the payload.
    const float* begin = w.data.data();
    const float* end = begin + w.data.size();
    w.for_each_tensor([&](engine::Part, engine::Index, const float* p, std::size_t n) {
      if (p < begin || p > end || n > static_cast<std::size_t>(end - p)) __builtin_trap();
    });
  } catch (const engine::FileError&) {
  }
  return 0;
}
