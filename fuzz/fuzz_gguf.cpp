// libFuzzer target: the GGUF reader and the llama model and tokenizer it gives, on arbitrary
// bytes. They may reject them (FileError); they must never crash, read outside the input or
// allocate more than the input implies.
#include <cstddef>
#include <cstdint>
#include <string>

#include "gguf.hpp"
#include "gguf_model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const engine::gguf::File f = engine::gguf::File::parse(data, size, "fuzz.gguf");
    // Accepted: every tensor lies inside the input, after the header.
    for (const engine::gguf::Tensor& t : f.tensors()) {
      if (t.data < data + f.data_offset() || t.bytes > size || t.data + t.bytes > data + size) {
        __builtin_trap();
      }
    }
    const engine::LlamaConfig c = engine::gguf_llama_config(f);
    const engine::Tokenizer tokenizer = engine::gguf_tokenizer(f, c.vocab_size);
    const engine::LlamaWeights w = engine::gguf_llama_weights(f, c);
    // Every tensor lies inside the input (in place) or the converted floats.
    w.for_each_tensor([&](engine::Part, engine::Index, const float* p, std::size_t n) {
      const auto* b = reinterpret_cast<const std::uint8_t*>(p);
      const bool in_input =
          b >= data && b <= data + size && n * 4 <= static_cast<std::size_t>(data + size - b);
      const bool in_owned =
          p >= w.data.data() && n <= static_cast<std::size_t>(w.data.data() + w.data.size() - p);
      if (!in_input && !in_owned) __builtin_trap();
    });
    if (tokenizer.vocab_size() != c.vocab_size) __builtin_trap();
    tokenizer.encode("Once upon a time", true);
  } catch (const engine::FileError&) {
  }
  return 0;
}
