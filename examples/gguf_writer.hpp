// Writing GGUF files (version 3): metadata, then tensor infos, then the tensors, each at a multiple
// of the alignment (32). msrnn-convert's half; the reader is gguf.hpp. Tensors are converted from
// float32 rows as they are written (quantize_row), so memory stays that of one row.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "ggml_types.hpp"
#include "gguf.hpp"

namespace engine::gguf {

///   gguf::Writer w;
///   w.add_string("general.architecture", "llama");
///   w.add_tensor("token_embd.weight", {dim, vocab}, ggml::F16, embedding);  // (vocab, dim) floats
///   w.write(file);
class Writer {
 public:
  void add_string(std::string_view key, std::string_view value) {
    entry(key, ValueType::string);
    put_string(metadata_, value);
  }
  void add_u32(std::string_view key, std::uint32_t value) {
    entry(key, ValueType::u32);
    put(metadata_, value, 4);
  }
  void add_f32(std::string_view key, float value) {
    entry(key, ValueType::f32);
    put_float(metadata_, value);
  }
  void add_strings(std::string_view key, const std::vector<std::string>& values) {
    array(key, ValueType::string, values.size());
    for (const std::string& v : values) put_string(metadata_, v);
  }
  void add_f32s(std::string_view key, const std::vector<float>& values) {
    array(key, ValueType::f32, values.size());
    for (float v : values) put_float(metadata_, v);
  }
  void add_i32s(std::string_view key, const std::vector<std::int32_t>& values) {
    array(key, ValueType::i32, values.size());
    for (std::int32_t v : values) put(metadata_, static_cast<std::uint32_t>(v), 4);
  }

  /// A tensor of dimensions `dims` (innermost first: {cols, rows} for a matrix) written as `type`
  /// (F32, F16 or Q8_0) from the row-major floats at `source`, which must stay valid until write.
  void add_tensor(std::string name, std::vector<std::uint64_t> dims, std::uint32_t type,
                  const float* source) {
    std::uint64_t elements = 1;
    for (std::uint64_t d : dims) elements *= d;
    const std::uint64_t bytes = ggml::row_bytes(type, dims[0]) * (elements / dims[0]);
    tensors_.push_back({std::move(name), std::move(dims), type, source, data_bytes_, bytes});
    data_bytes_ += (bytes + kDefaultAlignment - 1) / kDefaultAlignment * kDefaultAlignment;
  }

  /// Writes the file to `out`; false if a write failed.
  bool write(std::FILE* out) const {
    std::string head(kMagic);
    put(head, 3, 4);  // version
    put(head, tensors_.size(), 8);
    put(head, count_, 8);
    head += metadata_;
    for (const TensorInfo& t : tensors_) {
      put_string(head, t.name);
      put(head, t.dims.size(), 4);
      for (std::uint64_t d : t.dims) put(head, d, 8);
      put(head, t.type, 4);
      put(head, t.offset, 8);
    }
    head.resize((head.size() + kDefaultAlignment - 1) / kDefaultAlignment * kDefaultAlignment,
                '\0');
    bool ok = std::fwrite(head.data(), 1, head.size(), out) == head.size();
    std::vector<unsigned char> row;
    std::uint64_t at = 0;
    for (const TensorInfo& t : tensors_) {
      const std::string pad(static_cast<std::size_t>(t.offset - at), '\0');
      ok = ok && std::fwrite(pad.data(), 1, pad.size(), out) == pad.size();
      const std::uint64_t cols = t.dims[0], rows = t.bytes / ggml::row_bytes(t.type, cols);
      row.resize(static_cast<std::size_t>(ggml::row_bytes(t.type, cols)));
      for (std::uint64_t r = 0; r < rows && ok; ++r) {
        ggml::quantize_row(t.type, t.source + r * cols, row.data(), cols);
        ok = std::fwrite(row.data(), 1, row.size(), out) == row.size();
      }
      at = t.offset + t.bytes;
    }
    // The last tensor padded too: llama.cpp reads the data section as whole aligned blocks.
    const std::string pad(static_cast<std::size_t>(data_bytes_ - at), '\0');
    ok = ok && std::fwrite(pad.data(), 1, pad.size(), out) == pad.size();
    return ok;
  }

 private:
  struct TensorInfo {
    std::string name;
    std::vector<std::uint64_t> dims;
    std::uint32_t type;
    const float* source;
    std::uint64_t offset;  // in the data section
    std::uint64_t bytes;
  };

  static void put(std::string& out, std::uint64_t x, int bytes) {
    for (int i = 0; i < bytes; ++i) out += static_cast<char>((x >> (8 * i)) & 0xFF);
  }
  static void put_float(std::string& out, float f) {
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    put(out, bits, 4);
  }
  static void put_string(std::string& out, std::string_view s) {
    put(out, s.size(), 8);
    out += s;
  }
  void entry(std::string_view key, ValueType type) {
    put_string(metadata_, key);
    put(metadata_, static_cast<std::uint32_t>(type), 4);
    ++count_;
  }
  void array(std::string_view key, ValueType element, std::size_t n) {
    entry(key, ValueType::array);
    put(metadata_, static_cast<std::uint32_t>(element), 4);
    put(metadata_, n, 8);
  }

  std::string metadata_;
  std::uint64_t count_ = 0;
  std::vector<TensorInfo> tensors_;
  std::uint64_t data_bytes_ = 0;
};

}  // namespace engine::gguf
