// GGUF files (llama.cpp's model format, versions 2 and 3): the header, metadata of every value
// type, tensor infos and the data section, validated whole before anything is used; the file itself
// memory-mapped read-only. What the values mean (an architecture, a tokenizer) is gguf_model.hpp's.
//
// Layout (little-endian): "GGUF", u32 version, u64 tensor count, u64 metadata count; each metadata
// entry a string key, u32 value type, value; each tensor a string name, u32 dimension count, u64
// dimensions (innermost first), u32 element type, u64 offset in the data section; the data
// section at the next multiple of general.alignment (default 32). A string is u64 length + bytes;
// an array u32 element type + u64 count + elements.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <msrnn/byte_io.hpp>  // printable
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "files.hpp"

namespace engine::gguf {

inline constexpr std::string_view kMagic{"GGUF", 4};
inline constexpr std::uint64_t kDefaultAlignment = 32;
inline constexpr int kMaxDims = 4;        // ggml's GGML_MAX_DIMS
inline constexpr int kMaxArrayDepth = 8;  // arrays of arrays: deeper is rejected, not recursed
// Metadata values (entries, and the elements of arrays of arrays) and tensors a file may hold:
// each takes ~100 bytes parsed from as few as 12 in the file, so a file made of them would need
// ten times its size in memory. Models have hundreds of keys and at most a few thousand tensors.
inline constexpr std::uint64_t kMaxValues = std::uint64_t{1} << 20;
inline constexpr std::uint64_t kMaxTensors = std::uint64_t{1} << 20;

/// A metadata value's type, as stored.
enum class ValueType : std::uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};

/// The name of a value type ("u32", "array"), or "type N" for an unknown one.
inline std::string value_type_name(std::uint32_t t) {
  static const char* const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                      "bool", "string", "array", "u64", "i64", "f64"};
  return t < 13 ? names[t] : "type " + std::to_string(t);
}

/// Bytes of one scalar of type t (0 for string, array and unknown types).
inline std::uint64_t scalar_bytes(std::uint32_t t) {
  static const std::uint8_t bytes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  return t < 13 ? bytes[t] : 0;
}

/// One metadata value. Scalars keep their raw bits; strings and scalar arrays point into the file
/// (valid while the GgufFile lives); arrays of strings or arrays are unpacked one level a vector.
struct Value {
  ValueType type = ValueType::u8;
  std::uint64_t bits = 0;  // a scalar's little-endian bits, zero-extended
  std::string_view text;   // a string
  // An array: `count` elements of type `element`.
  ValueType element = ValueType::u8;
  std::uint64_t count = 0;
  const unsigned char* raw = nullptr;     // scalar elements: count * scalar_bytes(element) bytes
  std::vector<std::string_view> strings;  // string elements
  std::vector<Value> arrays;              // array elements
};

/// A tensor's element type (ggml's numbering) and its block: `block` elements in `block_bytes`.
struct TensorType {
  std::uint32_t id;
  const char* name;
  std::uint64_t block;
  std::uint64_t block_bytes;
};

/// The element types whose sizes this reader knows (ggml's ids). Others are rejected as unknown:
/// without its size a tensor's extent cannot be checked.
inline const TensorType* tensor_type(std::uint32_t id) {
  static const TensorType types[] = {
      {0, "F32", 1, 4},         {1, "F16", 1, 2},       {2, "Q4_0", 32, 18},
      {3, "Q4_1", 32, 20},      {6, "Q5_0", 32, 22},    {7, "Q5_1", 32, 24},
      {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 36},    {10, "Q2_K", 256, 84},
      {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176},
      {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292}, {20, "IQ4_NL", 32, 18},
      {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},       {25, "I16", 1, 2},
      {26, "I32", 1, 4},        {27, "I64", 1, 8},      {28, "F64", 1, 8},
      {30, "BF16", 1, 2},
  };
  for (const TensorType& t : types) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

/// One tensor: its dimensions innermost first (ggml's ne: a matrix of R rows of C is {C, R}).
struct Tensor {
  std::string_view name;
  std::vector<std::uint64_t> dims;
  const TensorType* type = nullptr;
  std::uint64_t offset = 0;  // in the data section
  std::uint64_t elements = 0;
  std::uint64_t bytes = 0;
  const unsigned char* data = nullptr;  // in the mapping

  std::string shape() const {
    std::string s = "[";
    for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + "]";
  }
};

/// A read-only memory mapping of a whole regular file. (Tensors used in place are read through it
/// for the model's life: a file truncated on disk meanwhile ends the process with SIGBUS.)
class MappedFile {
 public:
  /// Throws FileError("<path>: ...") when the file cannot be opened or mapped, or is empty.
  explicit MappedFile(const std::string& path) {
    require_regular_file(path, "model");
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      throw FileError(path + ": cannot open the model file (" + std::strerror(errno) + ")");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || st.st_size < 0) {
      ::close(fd);
      throw FileError(path + ": cannot read the model file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ == 0) {
      ::close(fd);
      throw FileError(path + ": the model file is empty");
    }
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);  // the mapping keeps the file
    if (p == MAP_FAILED) {
      throw FileError(path + ": cannot map the model file (" + std::strerror(errno) + ")");
    }
    data_ = static_cast<const unsigned char*>(p);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() { ::munmap(const_cast<unsigned char*>(data_), size_); }

  const unsigned char* data() const { return data_; }
  std::size_t size() const { return size_; }

  /// Tells the kernel the `n` bytes at `p` (inside the mapping) will not be read again: their
  /// whole pages leave the process's resident memory (they stay in the page cache, and would be
  /// read back from the file if touched). For tensors converted at load.
  void release(const unsigned char* p, std::size_t n) const {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t begin = static_cast<std::size_t>(p - data_);
    const std::size_t first = (begin + page - 1) / page * page;
    const std::size_t last = (begin + n) / page * page;
    if (last > first) {
      ::madvise(const_cast<unsigned char*>(data_) + first, last - first, MADV_DONTNEED);
    }
  }

 private:
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
};

/// True if the bytes start with GGUF's magic (how the tools tell a GGUF file from a llama2.c one).
inline bool has_magic(const unsigned char* data, std::size_t size) {
  return size >= 4 && std::memcmp(data, kMagic.data(), 4) == 0;
}

/// A parsed GGUF file. Every count, length, type, offset and extent has been checked against the
/// file (overflow-safe); tensors do not overlap and names and keys are unique.
///
///   const gguf::File file = gguf::File::open("model.gguf");
///   const gguf::Tensor* t = file.tensor("token_embd.weight");  // null if absent
class File {
 public:
  /// Maps and parses `path`; throws FileError("<path>: <what>") for a file that is not valid GGUF.
  static File open(const std::string& path) {
    auto mapping = std::make_shared<MappedFile>(path);
    File f = parse(mapping->data(), mapping->size(), path);
    f.mapping_ = std::move(mapping);
    return f;
  }

  /// Parses `size` bytes at `data` (named `name` in errors); they must outlive the File.
  static File parse(const unsigned char* data, std::size_t size, const std::string& name) {
    File f;
    f.name_ = name;
    Reader r{data, size, 0, name};
    r.parse_into(f);
    return f;
  }

  const std::string& name() const { return name_; }
  std::uint32_t version() const { return version_; }
  std::uint64_t alignment() const { return alignment_; }
  std::uint64_t data_offset() const { return data_offset_; }  // of the data section in the file
  const std::vector<std::pair<std::string_view, Value>>& metadata() const { return metadata_; }
  const std::vector<Tensor>& tensors() const { return tensors_; }
  /// What keeps the bytes of an opened file mapped (null for one parsed from memory).
  std::shared_ptr<const void> mapping() const { return mapping_; }
  /// MappedFile::release for tensor t's bytes (nothing for a file parsed from memory).
  void release(const Tensor& t) const {
    if (mapping_) mapping_->release(t.data, static_cast<std::size_t>(t.bytes));
  }

  /// The value of `key`, or null.
  const Value* find(std::string_view key) const {
    const auto it = keys_.find(key);
    return it == keys_.end() ? nullptr : &metadata_[it->second].second;
  }
  const Tensor* tensor(std::string_view name) const {
    const auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
  }

  /// `key` as a non-negative integer of any integer type; throws FileError naming the key if it is
  /// missing (and `fallback` is negative), of another type, negative or above `max`.
  std::uint64_t integer(std::string_view key, std::int64_t fallback = -1,
                        std::uint64_t max = UINT64_MAX) const {
    const Value* v = find(key);
    if (!v) {
      if (fallback < 0) fail("metadata " + std::string(key) + " is missing");
      return static_cast<std::uint64_t>(fallback);
    }
    std::uint64_t x = v->bits;
    switch (v->type) {
      case ValueType::i8:
        x = static_cast<std::uint64_t>(static_cast<std::int8_t>(x));
        break;
      case ValueType::i16:
        x = static_cast<std::uint64_t>(static_cast<std::int16_t>(x));
        break;
      case ValueType::i32:
        x = static_cast<std::uint64_t>(static_cast<std::int32_t>(x));
        break;
      case ValueType::u8:
      case ValueType::u16:
      case ValueType::u32:
      case ValueType::u64:
      case ValueType::i64:
        break;
      default:
        fail("metadata " + std::string(key) + " is a " +
             value_type_name(static_cast<std::uint32_t>(v->type)) + ", not an integer");
    }
    const bool is_signed = v->type == ValueType::i8 || v->type == ValueType::i16 ||
                           v->type == ValueType::i32 || v->type == ValueType::i64;
    if (is_signed && static_cast<std::int64_t>(x) < 0) {
      fail("metadata " + std::string(key) + " = " + std::to_string(static_cast<std::int64_t>(x)) +
           " is negative");
    }
    if (x > max) {
      fail("metadata " + std::string(key) + " = " + std::to_string(x) + " is larger than " +
           std::to_string(max));
    }
    return x;
  }

  /// `key` as a number (a float or an integer type); `fallback` when missing and given.
  double number(std::string_view key, const double* fallback = nullptr) const {
    const Value* v = find(key);
    if (!v) {
      if (!fallback) fail("metadata " + std::string(key) + " is missing");
      return *fallback;
    }
    if (v->type == ValueType::f32) {
      float f;
      const auto b = static_cast<std::uint32_t>(v->bits);
      std::memcpy(&f, &b, 4);
      return f;
    }
    if (v->type == ValueType::f64) {
      double d;
      std::memcpy(&d, &v->bits, 8);
      return d;
    }
    switch (v->type) {  // a signed integer, sign-extended
      case ValueType::i8:
        return static_cast<std::int8_t>(v->bits);
      case ValueType::i16:
        return static_cast<std::int16_t>(v->bits);
      case ValueType::i32:
        return static_cast<std::int32_t>(v->bits);
      case ValueType::i64:
        return static_cast<double>(static_cast<std::int64_t>(v->bits));
      default:
        return static_cast<double>(integer(key));
    }
  }

  /// `key` as a string; `fallback` when missing (null: required).
  std::string_view string(std::string_view key, const char* fallback = nullptr) const {
    const Value* v = find(key);
    if (!v) {
      if (!fallback) fail("metadata " + std::string(key) + " is missing");
      return fallback;
    }
    if (v->type != ValueType::string) {
      fail("metadata " + std::string(key) + " is a " +
           value_type_name(static_cast<std::uint32_t>(v->type)) + ", not a string");
    }
    return v->text;
  }

  /// `key` as an array of `element`s (null when missing); throws if it is another type.
  const Value* array(std::string_view key, ValueType element) const {
    const Value* v = find(key);
    if (!v) return nullptr;
    if (v->type != ValueType::array || v->element != element) {
      const std::string got =
          v->type == ValueType::array
              ? "an array of " + value_type_name(static_cast<std::uint32_t>(v->element))
              : "a " + value_type_name(static_cast<std::uint32_t>(v->type));
      fail("metadata " + std::string(key) + " is " + got + ", not an array of " +
           value_type_name(static_cast<std::uint32_t>(element)));
    }
    return v;
  }

  [[noreturn]] void fail(const std::string& what) const { throw FileError(name_ + ": " + what); }

 private:
  // Reads the file front to back; every read is checked against the bytes left first.
  struct Reader {
    const unsigned char* data;
    std::size_t size;
    std::uint64_t at;
    const std::string& name;
    std::uint64_t values = 0;  // metadata values parsed so far (kMaxValues)

    [[noreturn]] void fail(const std::string& what) const { throw FileError(name + ": " + what); }

    const unsigned char* take(std::uint64_t n, const char* what) {
      if (size - at < n) {
        fail("truncated: " + std::string(what) + " at byte " + std::to_string(at) + " needs " +
             std::to_string(n) + " bytes, " + std::to_string(size - at) + " are left");
      }
      const unsigned char* p = data + at;
      at += n;
      return p;
    }
    std::uint64_t uint(unsigned bytes, const char* what) {
      const unsigned char* p = take(bytes, what);
      std::uint64_t x = 0;
      for (unsigned i = 0; i < bytes; ++i) x |= std::uint64_t{p[i]} << (8 * i);
      return x;
    }
    std::string_view string(const char* what) {
      const std::uint64_t n = uint(8, what);
      if (n > size - at) {
        fail("truncated: " + std::string(what) + " at byte " + std::to_string(at - 8) + " is " +
             std::to_string(n) + " bytes long, " + std::to_string(size - at) + " are left");
      }
      return {reinterpret_cast<const char*>(take(n, what)), static_cast<std::size_t>(n)};
    }

    Value value(std::uint32_t type, int depth, const std::string& key) {
      if (++values > kMaxValues) {
        fail("metadata " + key + ": more than " + std::to_string(kMaxValues) +
             " values (entries and the elements of arrays of arrays); not a model's metadata");
      }
      Value v;
      if (type > 12) fail("metadata " + key + " has unknown value type " + std::to_string(type));
      v.type = static_cast<ValueType>(type);
      if (v.type == ValueType::string) {
        v.text = string("a string value");
      } else if (v.type == ValueType::array) {
        if (depth >= kMaxArrayDepth) {
          fail("metadata " + key + " nests arrays deeper than " + std::to_string(kMaxArrayDepth));
        }
        const auto element = static_cast<std::uint32_t>(uint(4, "an array's element type"));
        if (element > 12) {
          fail("metadata " + key + " is an array of unknown value type " + std::to_string(element));
        }
        v.element = static_cast<ValueType>(element);
        v.count = uint(8, "an array's length");
        // Every element takes at least one byte (strings and arrays 8 or 12): a count larger
        // than the bytes left is a damaged file, found before anything is allocated.
        const std::uint64_t least =
            std::max<std::uint64_t>(scalar_bytes(element), v.element == ValueType::string  ? 8
                                                           : v.element == ValueType::array ? 12
                                                                                           : 1);
        if (v.count > (size - at) / least) {
          fail("truncated: metadata " + key + " is an array of " + std::to_string(v.count) + " " +
               value_type_name(element) + ", more than the " + std::to_string(size - at) +
               " bytes left can hold");
        }
        if (v.element == ValueType::string) {
          v.strings.reserve(static_cast<std::size_t>(v.count));
          for (std::uint64_t i = 0; i < v.count; ++i) v.strings.push_back(string("a string"));
        } else if (v.element == ValueType::array) {
          for (std::uint64_t i = 0; i < v.count; ++i) {
            v.arrays.push_back(value(element, depth + 1, key));
          }
        } else {
          v.raw = take(v.count * scalar_bytes(element), "an array's elements");
          if (v.element == ValueType::boolean) {
            for (std::uint64_t i = 0; i < v.count; ++i) check_bool(v.raw[i], key);
          }
        }
      } else {
        v.bits = uint(static_cast<unsigned>(scalar_bytes(type)), "a value");
        if (v.type == ValueType::boolean) check_bool(static_cast<unsigned char>(v.bits), key);
      }
      return v;
    }
    void check_bool(unsigned char b, const std::string& key) const {
      if (b > 1) fail("metadata " + key + " holds a bool of value " + std::to_string(b));
    }

    void parse_into(File& f) {
      if (size == 0) fail("the model file is empty");
      if (!has_magic(data, size)) fail("not a GGUF file (its first bytes are not \"GGUF\")");
      at = 4;
      f.version_ = static_cast<std::uint32_t>(uint(4, "the version"));
      if (f.version_ == 1) {
        fail("GGUF version 1 is not supported (its counts are 32-bit); versions 2 and 3 are");
      }
      if (f.version_ != 2 && f.version_ != 3) {
        const bool swapped = (f.version_ & 0xFFFFu) == 0 && f.version_ != 0;
        fail("GGUF version " + std::to_string(f.version_) + " is not supported (2 and 3 are)" +
             (swapped ? "; the file looks big-endian, which is not read" : ""));
      }
      const std::uint64_t n_tensors = uint(8, "the tensor count");
      const std::uint64_t n_kv = uint(8, "the metadata count");
      // A metadata entry takes at least 8 + 4 + 1 bytes and a tensor info 8 + 4 + 4 + 8.
      if (n_kv > (size - at) / 13) {
        fail("the header counts " + std::to_string(n_kv) + " metadata entries, more than the " +
             std::to_string(size) + "-byte file can hold");
      }
      if (n_tensors > (size - at) / 24) {
        fail("the header counts " + std::to_string(n_tensors) + " tensors, more than the " +
             std::to_string(size) + "-byte file can hold");
      }
      for (std::uint64_t i = 0; i < n_kv; ++i) {
        const std::string_view key = string("a metadata key");
        const std::string k = msrnn::printable(key);  // for messages
        if (f.keys_.count(key)) fail("metadata " + k + " appears twice");
        const auto type = static_cast<std::uint32_t>(uint(4, "a value type"));
        f.metadata_.emplace_back(key, value(type, 0, k));
        f.keys_.emplace(key, f.metadata_.size() - 1);
      }
      if (const Value* a = f.find("general.alignment")) {
        if (a->type != ValueType::u32) {
          fail("metadata general.alignment is a " +
               value_type_name(static_cast<std::uint32_t>(a->type)) + ", not a u32");
        }
        if (a->bits == 0 || (a->bits & (a->bits - 1)) != 0) {
          fail("general.alignment = " + std::to_string(a->bits) + " is not a power of two");
        }
        f.alignment_ = a->bits;
      }
      if (n_tensors > kMaxTensors) {
        fail("the header counts " + std::to_string(n_tensors) + " tensors, more than the " +
             std::to_string(kMaxTensors) + " any model has");
      }
      for (std::uint64_t i = 0; i < n_tensors; ++i) {
        Tensor t;
        t.name = string("a tensor name");
        const std::string tn = msrnn::printable(t.name);  // for messages
        if (f.tensor_index_.count(t.name)) fail("tensor " + tn + " appears twice");
        const std::uint64_t n_dims = uint(4, "a tensor's dimension count");
        if (n_dims < 1 || n_dims > kMaxDims) {
          fail("tensor " + tn + " has " + std::to_string(n_dims) + " dimensions (1 to " +
               std::to_string(kMaxDims) + " are allowed)");
        }
        t.elements = 1;
        for (std::uint64_t d = 0; d < n_dims; ++d) {
          const std::uint64_t n = uint(8, "a tensor's dimension");
          if (n == 0 || n > (std::uint64_t{1} << 62) || t.elements > UINT64_MAX / n) {
            fail("tensor " + tn + " has dimension " + std::to_string(d) + " = " +
                 std::to_string(n) + ": empty, or too many elements");
          }
          t.dims.push_back(n);
          t.elements *= n;
        }
        const auto type = static_cast<std::uint32_t>(uint(4, "a tensor's type"));
        t.type = tensor_type(type);
        if (!t.type) fail("tensor " + tn + " has unknown element type " + std::to_string(type));
        if (t.dims[0] % t.type->block != 0) {
          fail("tensor " + tn + " of type " + t.type->name + " has rows of " +
               std::to_string(t.dims[0]) + " elements, not a multiple of its block of " +
               std::to_string(t.type->block));
        }
        const std::uint64_t blocks = t.elements / t.type->block;
        if (blocks > UINT64_MAX / t.type->block_bytes) fail("tensor " + tn + " is too large");
        t.bytes = blocks * t.type->block_bytes;
        t.offset = uint(8, "a tensor's offset");
        if (t.offset % f.alignment_ != 0) {
          fail("tensor " + tn + " starts at offset " + std::to_string(t.offset) +
               ", not a multiple of the alignment " + std::to_string(f.alignment_));
        }
        f.tensors_.push_back(std::move(t));
        f.tensor_index_.emplace(f.tensors_.back().name, f.tensors_.size() - 1);
      }
      // The data section starts at the next multiple of the alignment.
      const std::uint64_t pad = (f.alignment_ - at % f.alignment_) % f.alignment_;
      if (!f.tensors_.empty() && pad > size - at) {
        fail("truncated: the data section would start at byte " + std::to_string(at + pad) +
             ", past the end of the " + std::to_string(size) + "-byte file");
      }
      f.data_offset_ = std::min<std::uint64_t>(at + pad, size);
      const std::uint64_t data_bytes = size - f.data_offset_;
      std::vector<const Tensor*> by_offset;
      by_offset.reserve(f.tensors_.size());
      for (Tensor& t : f.tensors_) {
        if (t.offset > data_bytes || t.bytes > data_bytes - t.offset) {
          fail("tensor " + msrnn::printable(t.name) + " (" + t.type->name + " " + t.shape() + ", " +
               std::to_string(t.bytes) + " bytes at offset " + std::to_string(t.offset) +
               ") ends past the data section's " + std::to_string(data_bytes) +
               " bytes: truncated");
        }
        t.data = data + f.data_offset_ + t.offset;
        by_offset.push_back(&t);
      }
      std::sort(by_offset.begin(), by_offset.end(),
                [](const Tensor* a, const Tensor* b) { return a->offset < b->offset; });
      for (std::size_t i = 1; i < by_offset.size(); ++i) {
        const Tensor& a = *by_offset[i - 1];
        const Tensor& b = *by_offset[i];
        if (a.offset + a.bytes > b.offset) {
          fail("tensors " + msrnn::printable(a.name) + " and " + msrnn::printable(b.name) +
               " overlap");
        }
      }
    }
  };

  std::string name_;
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = kDefaultAlignment;
  std::uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string_view, Value>> metadata_;
  std::unordered_map<std::string_view, std::size_t> keys_;
  std::vector<Tensor> tensors_;
  std::unordered_map<std::string_view, std::size_t> tensor_index_;
  std::shared_ptr<const MappedFile> mapping_;  // null when parsed from memory
};

}  // namespace engine::gguf
