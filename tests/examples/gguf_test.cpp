// The GGUF reader (examples/gguf.hpp) and the llama model it gives (gguf_model.hpp) on files built
// byte by byte: every value type is read back, and every kind of damage is an error that names the
// file and the problem, never a crash.
#include "gguf.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gguf_bytes.hpp"
#include "gguf_model.hpp"
#include "temp_dir.hpp"
#include "tool_runner.hpp"

namespace engine {
namespace {

using testing::GgufBytes;
using testing::mentions;

const unsigned char* bytes_ptr(const std::string& s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

gguf::File parse(const std::string& bytes) {
  return gguf::File::parse(bytes_ptr(bytes), bytes.size(), "test.gguf");
}

// The message of the FileError that parsing `bytes` throws ("" if none).
std::string parse_error(const std::string& bytes) {
  try {
    parse(bytes);
  } catch (const FileError& e) {
    return e.what();
  }
  return "";
}

// A file holding one value of every type, nested arrays, general.alignment 64 and two tensors.
GgufBytes every_type() {
  GgufBytes g;
  g.key("u8", 0).u(200, 1);
  g.key("i8", 1).u(static_cast<std::uint8_t>(-5), 1);
  g.key("u16", 2).u(60000, 2);
  g.key("i16", 3).u(static_cast<std::uint16_t>(-300), 2);
  g.kv_u32("u32", 4000000000u);
  g.key("i32", 5).u(static_cast<std::uint32_t>(-7), 4);
  g.kv_f32("f32", 1.5f);
  g.key("bool", 7).u(1, 1);
  g.kv_str("string", "caf\xC3\xA9");
  g.key("u64", 10).u(std::uint64_t{1} << 40, 8);
  g.key("i64", 11).u(static_cast<std::uint64_t>(-(std::int64_t{1} << 40)), 8);
  double quarter = 0.25;
  std::uint64_t bits;
  std::memcpy(&bits, &quarter, 8);
  g.key("f64", 12).u(bits, 8);
  g.key("bytes", 9).u(0, 4).u(3, 8).u(1, 1).u(2, 1).u(3, 1);
  g.kv_strings("strings", {"a", "", "bc"});
  // [[1, 2], [], [3]] as arrays of i32
  g.key("nested", 9).u(9, 4).u(3, 8);
  g.u(5, 4).u(2, 8).u(1, 4).u(2, 4);
  g.u(5, 4).u(0, 8);
  g.u(5, 4).u(1, 8).u(3, 4);
  g.kv_u32("general.alignment", 64);
  g.tensor("vector", {4}, 0, 0);
  g.tensor("matrix", {32, 2}, 8, 64);
  g.align(64);
  std::string data(64 + 68, '\0');
  const float v[4] = {1, 2, 3, 4};
  std::memcpy(data.data(), v, 16);
  data[64 + 2] = 9;  // the first quant of the Q8_0 matrix
  g.raw(data);
  return g;
}

TEST(GgufReader, ReadsEveryValueTypeNestedArraysAndTheTensors) {
  const std::string bytes = every_type().bytes();
  const gguf::File f = parse(bytes);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.metadata().size(), 16u);
  EXPECT_EQ(f.integer("u8"), 200u);
  EXPECT_EQ(f.integer("u16"), 60000u);
  EXPECT_EQ(f.integer("u32"), 4000000000u);
  EXPECT_EQ(f.integer("u64"), std::uint64_t{1} << 40);
  EXPECT_EQ(f.number("i8"), -5.0);
  EXPECT_EQ(f.number("i16"), -300.0);
  EXPECT_EQ(f.number("i32"), -7.0);
  EXPECT_EQ(f.number("i64"), -std::ldexp(1.0, 40));
  EXPECT_EQ(f.number("f32"), 1.5);
  EXPECT_EQ(f.number("f64"), 0.25);
  EXPECT_EQ(f.find("bool")->bits, 1u);
  EXPECT_EQ(f.string("string"), "caf\xC3\xA9");
  const gguf::Value* b = f.array("bytes", gguf::ValueType::u8);
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(b->count, 3u);
  EXPECT_EQ(b->raw[2], 3);
  const gguf::Value* s = f.array("strings", gguf::ValueType::string);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->strings, (std::vector<std::string_view>{"a", "", "bc"}));
  const gguf::Value* nested = f.array("nested", gguf::ValueType::array);
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->arrays.size(), 3u);
  EXPECT_EQ(nested->arrays[0].count, 2u);
  EXPECT_EQ(nested->arrays[1].count, 0u);
  EXPECT_EQ(nested->arrays[2].raw[0], 3);
  // Negative integers are not counts; strings are not numbers; a missing key is named.
  auto error_of = [&](auto&& f_) {
    try {
      f_();
    } catch (const FileError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_TRUE(
      mentions(error_of([&] { f.integer("i8"); }), "test.gguf: metadata i8 = -5 is negative"));
  EXPECT_TRUE(mentions(error_of([&] { f.integer("string"); }), "is a string, not an integer"));
  EXPECT_TRUE(mentions(error_of([&] { f.integer("absent"); }), "metadata absent is missing"));
  EXPECT_TRUE(mentions(error_of([&] { f.array("strings", gguf::ValueType::f32); }),
                       "is an array of string, not an array of f32"));

  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  ASSERT_EQ(f.tensors().size(), 2u);
  const gguf::Tensor* m = f.tensor("matrix");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->dims, (std::vector<std::uint64_t>{32, 2}));
  EXPECT_EQ(m->bytes, 68u);
  EXPECT_EQ(m->data, bytes_ptr(bytes) + f.data_offset() + 64);
  EXPECT_EQ(m->data[2], 9);
  const gguf::Tensor* v = f.tensor("vector");
  ASSERT_NE(v, nullptr);
  float first;
  std::memcpy(&first, v->data, 4);
  EXPECT_EQ(first, 1.0f);
  EXPECT_EQ(f.tensor("absent"), nullptr);
}

TEST(GgufReader, ReadsVersion2) {
  GgufBytes g(2);
  g.kv_str("general.architecture", "llama");
  EXPECT_EQ(parse(g.bytes()).version(), 2u);
}

TEST(GgufReader, EveryTruncationOfAValidFileIsAnErrorNotACrash) {
  const std::string bytes = every_type().bytes();
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    const std::string message = parse_error(bytes.substr(0, n));
    ASSERT_EQ(message.rfind("test.gguf: ", 0), 0u) << n << " bytes: " << message;
  }
}

struct Damage {
  const char* what;
  std::string bytes;
  const char* message;
};

std::vector<Damage> damaged_files() {
  std::vector<Damage> d;
  auto with = [](auto&& build) {
    GgufBytes g;
    build(g);
    return g.bytes();
  };
  d.push_back({"empty", "", "the model file is empty"});
  d.push_back({"magic", "GGML" + std::string(20, '\0'), "not a GGUF file"});
  d.push_back({"version 1", GgufBytes(1).bytes(), "GGUF version 1 is not supported"});
  d.push_back({"version 4", GgufBytes(4).bytes(), "GGUF version 4 is not supported"});
  d.push_back({"big-endian", GgufBytes(0x03000000).bytes(), "looks big-endian"});
  d.push_back({"short header", std::string("GGUF\x03\0\0\0", 8), "truncated: the tensor count"});
  d.push_back({"kv count", GgufBytes().with_counts(0, 1000), "counts 1000 metadata entries"});
  d.push_back(
      {"tensor count", GgufBytes().with_counts(std::uint64_t{1} << 60, 0), "tensors, more than"});
  GgufBytes long_key;
  long_key.u(1000, 8).u(0, 8);
  d.push_back(
      {"key length", long_key.with_counts(0, 1), "a metadata key at byte 24 is 1000 bytes long"});
  d.push_back({"value type", with([](GgufBytes& g) { g.key("k", 13).u(0, 8); }),
               "metadata k has unknown value type 13"});
  d.push_back({"element type", with([](GgufBytes& g) { g.key("k", 9).u(99, 4).u(0, 8); }),
               "metadata k is an array of unknown value type 99"});
  d.push_back({"array count", with([](GgufBytes& g) { g.key("k", 9).u(4, 4).u(1000, 8); }),
               "metadata k is an array of 1000 u32, more than"});
  d.push_back({"nesting", with([](GgufBytes& g) {
                 g.key("k", 9);
                 for (int i = 0; i < 9; ++i) g.u(9, 4).u(1, 8);
                 g.u(0, 8);
               }),
               "nests arrays deeper than 8"});
  d.push_back(
      {"bool", with([](GgufBytes& g) { g.key("k", 7).u(2, 1); }), "holds a bool of value 2"});
  d.push_back({"string past end", with([](GgufBytes& g) { g.key("k", 8).u(100, 8); }),
               "a string value at byte"});
  d.push_back({"string array count",
               with([](GgufBytes& g) { g.key("k", 9).u(8, 4).u(1000, 8).u(0, 8); }),
               "metadata k is an array of 1000 string, more than the 8 bytes left"});
  d.push_back({"nested array count",
               with([](GgufBytes& g) { g.key("k", 9).u(9, 4).u(1000, 8).u(0, 8); }),
               "metadata k is an array of 1000 array, more than"});
  GgufBytes long_name;
  long_name.u(5000, 8).raw(std::string(24, '\0'));
  d.push_back({"tensor name length", long_name.with_counts(1, 0),
               "a tensor name at byte 24 is 5000 bytes long"});
  d.push_back({"data section past end",
               [] {
                 GgufBytes g;
                 g.kv_u32("general.alignment", 1024).tensor("t", {1}, 0, 0);
                 return g.bytes();
               }(),
               "the data section would start at byte 1024"});
  d.push_back({"duplicate key", with([](GgufBytes& g) { g.kv_u32("k", 1).kv_u32("k", 2); }),
               "metadata k appears twice"});
  d.push_back({"alignment type",
               with([](GgufBytes& g) { g.key("general.alignment", 10).u(32, 8); }),
               "general.alignment is a u64, not a u32"});
  d.push_back({"alignment value", with([](GgufBytes& g) { g.kv_u32("general.alignment", 48); }),
               "general.alignment = 48 is not a power of two"});
  d.push_back({"alignment zero", with([](GgufBytes& g) { g.kv_u32("general.alignment", 0); }),
               "general.alignment = 0 is not a power of two"});
  auto one_tensor = [&](std::vector<std::uint64_t> dims, std::uint32_t type, std::uint64_t offset,
                        std::size_t data) {
    return with([&](GgufBytes& g) {
      g.tensor("t", dims, type, offset).align().raw(std::string(data, '\0'));
    });
  };
  d.push_back({"no dims", one_tensor({}, 0, 0, 64), "tensor t has 0 dimensions"});
  d.push_back({"five dims", one_tensor({1, 1, 1, 1, 1}, 0, 0, 64), "tensor t has 5 dimensions"});
  d.push_back({"zero dim", one_tensor({4, 0}, 0, 0, 64), "dimension 1 = 0"});
  d.push_back(
      {"huge dims", one_tensor({1u << 31, 1u << 31, 1u << 31}, 0, 0, 64), "too many elements"});
  d.push_back({"tensor type", one_tensor({4}, 77, 0, 64), "tensor t has unknown element type 77"});
  d.push_back({"block", one_tensor({20}, 8, 0, 64), "rows of 20 elements, not a multiple"});
  d.push_back({"unaligned", one_tensor({4}, 0, 8, 64), "starts at offset 8, not a multiple"});
  d.push_back({"past end", one_tensor({64}, 0, 0, 255), "ends past the data section's 255"});
  d.push_back({"offset past end", one_tensor({4}, 0, std::uint64_t{1} << 62, 64),
               "ends past the data section"});
  d.push_back(
      {"overlap", with([](GgufBytes& g) {
         g.tensor("a", {16}, 0, 0).tensor("b", {16}, 0, 32).align().raw(std::string(96, '\0'));
       }),
       "tensors a and b overlap"});
  d.push_back(
      {"duplicate tensor", with([](GgufBytes& g) {
         g.tensor("a", {4}, 0, 0).tensor("a", {4}, 0, 32).align().raw(std::string(64, '\0'));
       }),
       "tensor a appears twice"});
  return d;
}

TEST(GgufReader, DamagedFilesAreErrorsThatNameTheProblem) {
  for (const Damage& d : damaged_files()) {
    const std::string message = parse_error(d.bytes);
    EXPECT_EQ(message.rfind("test.gguf: ", 0), 0u) << d.what << ": " << message;
    EXPECT_TRUE(mentions(message, d.message)) << d.what << ": " << message;
  }
}

// A tiny llama model as GGUF: dim 8, 1 block, 2 heads sharing 1 KV head, hidden 16, 260 tokens
// (<unk>, <s>, </s>, the 256 bytes, "\u2581a"). Tensor k of the list holds k + 1 + i / 1000 at
// element i, so a tensor loaded into the wrong part shows. The fields change one thing each.
struct TinyLlama {
  std::string architecture = "llama";
  std::string tokenizer = "llama";
  std::uint32_t rotary = 4;
  std::uint32_t heads = 2;
  std::uint32_t blocks = 1;  // llama.block_count (the file holds block 0's tensors)
  bool with_eps = true;
  std::uint32_t q_type = 0;
  std::uint64_t q_rows = 8;
  bool down_transposed = false;  // ffn_down as {8, 16}, the shape of ffn_up
  bool extra_tensor = false;
  std::uint64_t tokens = 260;
  float score_259 = 0.0f;
  std::uint32_t alignment = 32;  // written as general.alignment when not 32
  bool eos_model = false;        // weights whose greedy choice is always EOS (token 2)
  std::function<void(GgufBytes&)> extra_metadata;  // more keys, written after the others

  std::string bytes() const {
    GgufBytes g;
    g.kv_str("general.architecture", architecture);
    const std::string a = architecture + ".";
    g.kv_u32(a + "context_length", 64).kv_u32(a + "embedding_length", 8);
    g.kv_u32(a + "block_count", blocks).kv_u32(a + "feed_forward_length", 16);
    g.kv_u32(a + "attention.head_count", heads).kv_u32(a + "attention.head_count_kv", 1);
    g.kv_u32(a + "rope.dimension_count", rotary);
    if (with_eps) g.kv_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
    if (alignment != 32) g.kv_u32("general.alignment", alignment);
    g.kv_str("tokenizer.ggml.model", tokenizer);
    std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      pieces.push_back(name);
    }
    pieces.push_back(
        "\xE2\x96\x81"
        "a");
    pieces.resize(tokens, "x");
    g.kv_strings("tokenizer.ggml.tokens", pieces);
    std::vector<float> scores(pieces.size(), 0.0f);
    scores[259] = score_259;
    g.kv_f32s("tokenizer.ggml.scores", scores);
    if (extra_metadata) extra_metadata(g);
    for (const Tensor& t : tensors()) {
      g.tensor(t.name, t.dims, t.type, t.offset);
    }
    g.align(alignment);
    for (const Tensor& t : tensors()) {
      std::string payload(t.elements * 4, '\0');  // F32 or I32
      for (std::uint64_t i = 0; t.type == 0 && i < t.elements; ++i) {
        const float x = value(t, i);
        std::memcpy(payload.data() + 4 * i, &x, 4);
      }
      g.raw(payload).align(alignment);
    }
    return g.bytes();
  }

  struct Tensor {
    std::string name;
    std::vector<std::uint64_t> dims;
    std::uint32_t type = 0;
    std::size_t index = 0;
    std::uint64_t elements = 0, offset = 0;
  };
  std::vector<Tensor> tensors() const {
    std::vector<Tensor> ts = {{"token_embd.weight", {8, 260}}, {"output_norm.weight", {8}}};
    for (const char* n : {"attn_norm", "ffn_norm"}) {
      ts.push_back({std::string("blk.0.") + n + ".weight", {8}});
    }
    ts.push_back({"blk.0.attn_q.weight", {8, q_rows}, q_type});
    ts.push_back({"blk.0.attn_k.weight", {8, 4}});
    ts.push_back({"blk.0.attn_v.weight", {8, 4}});
    ts.push_back({"blk.0.attn_output.weight", {8, 8}});
    ts.push_back({"blk.0.ffn_gate.weight", {8, 16}});
    ts.push_back({"blk.0.ffn_up.weight", {8, 16}});
    ts.push_back({"blk.0.ffn_down.weight", down_transposed ? std::vector<std::uint64_t>{8, 16}
                                                           : std::vector<std::uint64_t>{16, 8}});
    if (extra_tensor) ts.push_back({"rope_freqs.weight", {2}});
    std::uint64_t offset = 0;
    for (std::size_t k = 0; k < ts.size(); ++k) {
      ts[k].index = k;
      ts[k].elements = 1;
      for (std::uint64_t d : ts[k].dims) ts[k].elements *= d;
      ts[k].offset = offset;
      offset += (ts[k].elements * 4 + alignment - 1) / alignment * alignment;
    }
    return ts;
  }

  float value(const Tensor& t, std::uint64_t i) const {
    if (!eos_model) return static_cast<float>(t.index + 1) + static_cast<float>(i) / 1000.0f;
    // Every matrix 0 and every norm 1: the residual stays the input's embedding, and the logits
    // are its products with the embedding rows; rows 1 (BOS) and 2 (EOS) are ones and twos, the
    // rest 0, so from BOS or EOS the best next token is EOS.
    if (t.dims.size() == 1) return 1.0f;
    if (t.name == "token_embd.weight") return i / 8 == 1 ? 1.0f : i / 8 == 2 ? 2.0f : 0.0f;
    return 0.0f;
  }
};

std::string model_error(const TinyLlama& t) {
  const std::string bytes = t.bytes();
  try {
    const gguf::File f = gguf::File::parse(bytes_ptr(bytes), bytes.size(), "tiny.gguf");
    const LlamaConfig c = gguf_llama_config(f);
    gguf_tokenizer(f, c.vocab_size);
    gguf_llama_weights(f, c);
  } catch (const FileError& e) {
    return e.what();
  }
  return "";
}

TEST(GgufModel, ATinyLlamaLoadsEveryTensorIntoItsPart) {
  const TinyLlama tiny;
  ASSERT_EQ(model_error(tiny), "");
  const std::string bytes = tiny.bytes();
  const gguf::File f = gguf::File::parse(bytes_ptr(bytes), bytes.size(), "tiny.gguf");
  const LlamaConfig c = gguf_llama_config(f);
  EXPECT_EQ(c.dim, 8);
  EXPECT_EQ(c.n_layers, 1);
  EXPECT_EQ(c.n_heads, 2);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.hidden_dim, 16);
  EXPECT_EQ(c.seq_len, 64);
  EXPECT_EQ(c.vocab_size, 260);
  EXPECT_TRUE(c.shared_classifier);  // no output.weight: tied to the embedding
  EXPECT_EQ(c.rope_theta, 10000.0);  // rope.freq_base absent: llama's default
  const LlamaWeights w = gguf_llama_weights(f, c);
  EXPECT_EQ(w.tensor(Part::classifier), w.tensor(Part::embedding));
  EXPECT_EQ(w.data.size(), 0u);  // all F32: used in place
  for (const TinyLlama::Tensor& t : tiny.tensors()) {
    const GgufTensorName* name = nullptr;
    const std::vector<GgufTensorName> names = llama_tensor_names(c);
    for (const GgufTensorName& n : names) name = n.name == t.name ? &n : name;
    ASSERT_NE(name, nullptr) << t.name;
    const float* got = w.tensor(name->part, name->layer);
    EXPECT_TRUE(w.in_file(name->part, name->layer)) << t.name;
    for (std::uint64_t i = 0; i < t.elements; ++i) {
      ASSERT_EQ(got[i], tiny.value(t, i)) << t.name << " [" << i << "]";
    }
  }
  const Tokenizer tok = gguf_tokenizer(f, c.vocab_size);
  EXPECT_EQ(tok.piece(259), " a");  // SentencePiece's space is a space
  EXPECT_EQ(tok.piece(3 + 'a'), "<0x61>");
  EXPECT_EQ(tok.eos(), 2);
  EXPECT_TRUE(tok.ends_text(2));
}

TEST(GgufModel, AnUnalignedF32TensorIsConvertedNotUsedInPlace) {
  // general.alignment 1 and a header of odd length: the data section starts at an odd address.
  for (int odd = 0; odd < 4; ++odd) {
    TinyLlama tiny;
    tiny.alignment = 1;
    tiny.extra_metadata = [odd](GgufBytes& g) {
      g.kv_str("pad", std::string(static_cast<std::size_t>(odd), 'x'));
    };
    const std::string bytes = tiny.bytes();
    const gguf::File f = gguf::File::parse(bytes_ptr(bytes), bytes.size(), "tiny.gguf");
    const LlamaWeights w = gguf_llama_weights(f, gguf_llama_config(f));
    const bool aligned =
        reinterpret_cast<std::uintptr_t>(f.tensor("blk.0.attn_q.weight")->data) % 4 == 0;
    EXPECT_EQ(w.in_file(Part::wq), aligned) << odd;
    for (std::uint64_t i = 0; i < 64; ++i) {
      ASSERT_EQ(w.tensor(Part::wq)[i], tiny.value(tiny.tensors()[4], i)) << odd;
    }
  }
}

TEST(GgufModel, WhatTheEngineCannotRunIsAnErrorNamingIt) {
  struct Case {
    const char* what;
    TinyLlama t;
    const char* message;
  };
  std::vector<Case> cases;
  auto add = [&](const char* what, auto&& edit, const char* message) {
    TinyLlama t;
    edit(t);
    cases.push_back({what, t, message});
  };
  auto with_key = [](std::function<void(GgufBytes&)> f) {
    return [f](TinyLlama& t) { t.extra_metadata = f; };
  };
  add(
      "architecture", [](TinyLlama& t) { t.architecture = "gpt2"; },
      "architecture 'gpt2' is not supported");
  add(
      "tokenizer", [](TinyLlama& t) { t.tokenizer = "gpt2"; },
      "tokenizer.ggml.model = 'gpt2' is not supported");
  add(
      "rotary", [](TinyLlama& t) { t.rotary = 2; }, "partial rotary embeddings are not supported");
  add(
      "eps", [](TinyLlama& t) { t.with_eps = false; },
      "metadata llama.attention.layer_norm_rms_epsilon is missing");
  add(
      "heads", [](TinyLlama& t) { t.heads = 3; },
      "llama.embedding_length = 8 is not a multiple of llama.attention.head_count = 3");
  add(
      "odd head", [](TinyLlama& t) { t.heads = 8; }, "the head size 1 is odd");
  add(
      "blocks", [](TinyLlama& t) { t.blocks = 2000000000; },
      "llama.block_count = 2000000000, but the file has 11 tensors");
  add(
      "block missing", [](TinyLlama& t) { t.blocks = 2; },
      "llama.block_count = 2, but the file has 11 tensors (a block has 9)");
  add(
      "shape", [](TinyLlama& t) { t.q_rows = 7; }, "tensor blk.0.attn_q.weight has shape [8, 7]");
  add(
      "transposed", [](TinyLlama& t) { t.down_transposed = true; },
      "tensor blk.0.ffn_down.weight has shape [8, 16]; the metadata");
  add(
      "type", [](TinyLlama& t) { t.q_type = 26; },
      "tensor blk.0.attn_q.weight has type I32, which the engine does not read");
  add(
      "extra", [](TinyLlama& t) { t.extra_tensor = true; },
      "tensor rope_freqs.weight [2] is not one of a llama model's");
  add(
      "vocabulary", [](TinyLlama& t) { t.tokens = 261; },
      "the tokenizer has 261 tokens and 261 scores, but the model's vocabulary is 260");
  add(
      "score", [](TinyLlama& t) { t.score_259 = NAN; }, "piece 259 has a score that is not finite");
  add("bos", with_key([](GgufBytes& g) { g.kv_u32("tokenizer.ggml.bos_token_id", 0); }),
      "tokenizer.ggml.bos_token_id = 0; the engine needs 1");
  add("eos", with_key([](GgufBytes& g) { g.kv_u32("tokenizer.ggml.eos_token_id", 7); }),
      "tokenizer.ggml.eos_token_id = 7; the engine needs 2");
  add("token types",
      with_key([](GgufBytes& g) { g.key("tokenizer.ggml.token_type", 9).u(5, 4).u(1, 8).u(1, 4); }),
      "tokenizer.ggml.token_type has 1 entries for 260 tokens");
  add("scaling", with_key([](GgufBytes& g) { g.kv_str("llama.rope.scaling.type", "yarn"); }),
      "llama.rope.scaling.type = 'yarn': RoPE scaling is not supported");
  add("experts", with_key([](GgufBytes& g) { g.kv_u32("llama.expert_count", 8); }),
      "llama.expert_count = 8: mixture-of-experts models are not supported");
  add("vocab size", with_key([](GgufBytes& g) { g.kv_u32("llama.vocab_size", 300); }),
      "llama.vocab_size = 300 differs from token_embd's 260 rows");
  add("key length", with_key([](GgufBytes& g) { g.kv_u32("llama.attention.key_length", 8); }),
      "llama.attention.key_length = 8 differs from the head size 4");
  add("theta", with_key([](GgufBytes& g) { g.kv_f32("llama.rope.freq_base", -1.0f); }),
      "llama.rope.freq_base = -1.000000 is not a finite number above 1");
  add("theta type", with_key([](GgufBytes& g) { g.kv_str("llama.rope.freq_base", "big"); }), "");
  cases.back().message = "metadata llama.rope.freq_base is a string, not an integer";
  for (const Case& c : cases) {
    const std::string message = model_error(c.t);
    EXPECT_EQ(message.rfind("tiny.gguf: ", 0), 0u) << c.what << ": " << message;
    EXPECT_TRUE(mentions(message, c.message)) << c.what << ": " << message;
  }
}

TEST(GgufModel, AQuantTypeItDoesNotReadIsParsedAndNamed) {
  // A Q4_K tensor parses (its block size is known) and is named by its type.
  GgufBytes g;
  g.tensor("t", {256, 1}, 12, 0).align().raw(std::string(144, '\0'));
  const std::string bytes = g.bytes();
  const gguf::File f = parse(bytes);
  EXPECT_STREQ(f.tensor("t")->type->name, "Q4_K");
  EXPECT_EQ(f.tensor("t")->bytes, 144u);
  EXPECT_FALSE(ggml::readable(12));
}

TEST(GgufModel, TheToolsRejectADamagedGgufWithOneErrorLine) {
  using testing::expect_rejected;
  using testing::quoted;
  using testing::write_temp;
  const std::string good = TinyLlama{}.bytes();
  const std::string truncated = write_temp("truncated.gguf", good.substr(0, good.size() - 100));
  TinyLlama gpt2;
  gpt2.architecture = "gpt2";
  const std::string other = write_temp("other.gguf", gpt2.bytes());
  const std::string text = write_temp("gguf_text.txt", "a a a a\n");
  for (const char* tool : {MSRNN_GENERATE_BIN, MSRNN_PERPLEXITY_BIN}) {
    const std::string extra = std::string(tool) == MSRNN_PERPLEXITY_BIN ? " --text " + text : "";
    expect_rejected(tool, "--model " + quoted(truncated) + extra,
                    truncated + ": tensor blk.0.ffn_down.weight");
    expect_rejected(tool, "--model " + quoted(other) + extra,
                    other + ": architecture 'gpt2' is not supported");
  }
  // A tiny model runs, with its own tokenizer (no --tokenizer).
  const std::string tiny = write_temp("tiny.gguf", good);
  const testing::Outcome o =
      testing::run_tool(MSRNN_GENERATE_BIN, "--model " + quoted(tiny) + " --steps 5");
  EXPECT_EQ(o.status, 0) << o.err;
}

}  // namespace
}  // namespace engine

namespace engine {
namespace {

// ggml's blocks decoded by hand: Q8_0 is d (f16) then 32 int8, x = d q; Q4_0 is d then 16 bytes
// whose low nibbles are elements 0..15 and high nibbles 16..31, x = d (nibble - 8).
TEST(GgmlTypes, BlocksDequantizeAsGgmlLaysThemOut) {
  unsigned char q8[34];
  q8[0] = 0x00;  // d = 0.5: f16 0x3800
  q8[1] = 0x38;
  for (int j = 0; j < 32; ++j)
    q8[2 + j] = static_cast<unsigned char>(static_cast<signed char>(j - 16));
  float out[32];
  ggml::dequantize_row(ggml::Q8_0, q8, out, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], 0.5f * static_cast<float>(j - 16)) << j;

  unsigned char q4[18];
  q4[0] = 0x00;  // d = 2: f16 0x4000
  q4[1] = 0x40;
  for (int j = 0; j < 16; ++j) q4[2 + j] = static_cast<unsigned char>((j & 15) | ((15 - j) << 4));
  ggml::dequantize_row(ggml::Q4_0, q4, out, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], 2.0f * static_cast<float>(j - 8)) << j;
    EXPECT_EQ(out[16 + j], 2.0f * static_cast<float>(7 - j)) << 16 + j;
  }

  const unsigned char bf16[4] = {0x80, 0x3F, 0x40, 0xC0};  // 1.0, -3.0
  ggml::dequantize_row(ggml::BF16, bf16, out, 2);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -3.0f);
  const unsigned char f16[4] = {0x00, 0x3C, 0x01, 0x00};  // 1.0, the smallest subnormal
  ggml::dequantize_row(ggml::F16, f16, out, 2);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], std::ldexp(1.0f, -24));
}

TEST(GgmlTypes, Q8_0QuantizesToTheNearestStepOfMaxOver127) {
  float in[32];
  for (int j = 0; j < 32; ++j) in[j] = std::sin(static_cast<float>(j)) * 3.0f;
  in[7] = -3.5f;  // max |x|: q = -127
  unsigned char q8[34];
  ggml::quantize_row(ggml::Q8_0, in, q8, 32);
  EXPECT_EQ(static_cast<signed char>(q8[2 + 7]), -127);
  float out[32];
  ggml::dequantize_row(ggml::Q8_0, q8, out, 32);
  const float d = 3.5f / 127.0f;
  for (int j = 0; j < 32; ++j) EXPECT_NEAR(out[j], in[j], d * 0.5f + 3.5f * 0x1p-10f) << j;
  const float zeros[32] = {};
  ggml::quantize_row(ggml::Q8_0, zeros, q8, 32);
  ggml::dequantize_row(ggml::Q8_0, q8, out, 32);
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

}  // namespace
}  // namespace engine
