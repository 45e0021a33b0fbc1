// GGUF files byte by byte for the tests, written here from the format's description (not with the
// project's gguf::Writer), so a reader bug and a writer bug cannot hide each other.
#pragma once

#include <cassert>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace engine::testing {

class GgufBytes {
 public:
  explicit GgufBytes(std::uint32_t version = 3) {
    out_ = "GGUF";
    u(version, 4);
    counts_at_ = out_.size();
    u(0, 8);  // tensors, patched by tensor_count()
    u(0, 8);  // metadata entries, patched by kv_count()
  }

  // Raw writers: the low `bytes` (at most 8) bytes of x, little-endian.
  GgufBytes& u(std::uint64_t x, int bytes) {
    assert(bytes >= 1 && bytes <= 8);
    for (int i = 0; i < bytes; ++i) out_ += static_cast<char>((x >> (8 * i)) & 0xFF);
    return *this;
  }
  GgufBytes& f32(float f) {
    std::uint32_t b;
    std::memcpy(&b, &f, 4);
    return u(b, 4);
  }
  GgufBytes& str(const std::string& s) {
    u(s.size(), 8);
    out_ += s;
    return *this;
  }

  // A metadata key and its type; the caller writes the value.
  GgufBytes& key(const std::string& k, std::uint32_t type) {
    ++kv_;
    str(k);
    return u(type, 4);
  }
  GgufBytes& kv_u32(const std::string& k, std::uint32_t x) { return key(k, 4).u(x, 4); }
  GgufBytes& kv_f32(const std::string& k, float x) { return key(k, 6).f32(x); }
  GgufBytes& kv_str(const std::string& k, const std::string& s) { return key(k, 8).str(s); }
  GgufBytes& kv_strings(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9).u(8, 4).u(v.size(), 8);
    for (const std::string& s : v) str(s);
    return *this;
  }
  GgufBytes& kv_f32s(const std::string& k, const std::vector<float>& v) {
    key(k, 9).u(6, 4).u(v.size(), 8);
    for (float x : v) f32(x);
    return *this;
  }

  // A tensor info: dims innermost first, type, offset in the data section.
  GgufBytes& tensor(const std::string& name, const std::vector<std::uint64_t>& dims,
                    std::uint32_t type, std::uint64_t offset) {
    ++tensors_;
    str(name).u(dims.size(), 4);
    for (std::uint64_t d : dims) u(d, 8);
    return u(type, 4).u(offset, 8);
  }

  // Pads to the alignment: the data section starts here.
  GgufBytes& align(std::uint64_t alignment = 32) {
    while (out_.size() % alignment != 0) out_ += '\0';
    return *this;
  }
  GgufBytes& raw(const std::string& bytes) {
    out_ += bytes;
    return *this;
  }

  std::size_t size() const { return out_.size(); }
  // The file with its counts filled in (or as given, to lie about them).
  std::string bytes() const { return with_counts(tensors_, kv_); }
  std::string with_counts(std::uint64_t tensors, std::uint64_t kv) const {
    std::string s = out_;
    for (int i = 0; i < 8; ++i) {
      s[counts_at_ + static_cast<std::size_t>(i)] = static_cast<char>((tensors >> (8 * i)) & 0xFF);
      s[counts_at_ + 8 + static_cast<std::size_t>(i)] = static_cast<char>((kv >> (8 * i)) & 0xFF);
    }
    return s;
  }

 private:
  std::string out_;
  std::size_t counts_at_ = 0;
  std::uint64_t tensors_ = 0;
  std::uint64_t kv_ = 0;
};

}  // namespace engine::testing
