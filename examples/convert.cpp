// msrnn-convert: a llama2.c checkpoint and its tokenizer as a GGUF file (llama.cpp's format), which
// msrnn-generate, msrnn-perplexity and llama.cpp read.
//
//   msrnn-convert stories260K.bin tok512.bin stories260K.gguf --type q8_0
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli.hpp"
#include "gguf_export.hpp"
#include "output_file.hpp"

namespace {

using namespace engine;

constexpr const char* kUsage = R"(usage: msrnn-convert CHECKPOINT TOKENIZER OUT.gguf [--type TYPE]

Writes a llama2.c checkpoint and its tokenizer as one GGUF file (architecture llama, llama.cpp's
tensor names; the tokenizer as tokenizer.ggml.model llama).

  --type TYPE   f32, f16 or q8_0 (default f32): the matrices' type. Norms stay f32; under q8_0
                a matrix whose rows are not a multiple of 32 elements is f16, as llama.cpp's
                quantizer does
  --help        this text
)";

int run(int argc, char** argv) {
  std::vector<std::string> paths;
  ExportType type = ExportType::f32;
  std::vector<char*> flags = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("-", 0) == 0 && arg != "-") {
      flags.push_back(argv[i]);
      if (arg.find('=') == std::string::npos && i + 1 < argc && arg != "--help" && arg != "-h") {
        flags.push_back(argv[++i]);
      }
    } else {
      paths.push_back(arg);
    }
  }
  cli::parse_flags(static_cast<int>(flags.size()), flags.data(), kUsage,
                   [&](std::string_view flag, const std::string& value) {
                     if (flag != "--type") return false;
                     if (value == "f32") {
                       type = ExportType::f32;
                     } else if (value == "f16") {
                       type = ExportType::f16;
                     } else if (value == "q8_0") {
                       type = ExportType::q8_0;
                     } else {
                       cli::fail("--type: '" + value + "' is not f32, f16 or q8_0");
                     }
                     return true;
                   });
  if (paths.size() != 3) {
    cli::fail("expected CHECKPOINT TOKENIZER OUT.gguf, got " + std::to_string(paths.size()) +
              " paths (see --help)");
  }
  const char* const names[] = {"CHECKPOINT", "TOKENIZER", "OUT.gguf"};
  for (int i = 0; i < 3; ++i) {
    if (paths[static_cast<std::size_t>(i)].empty()) {
      cli::fail(std::string(names[i]) + ": empty file name");
    }
  }
  try {
    check_output_path("OUT.gguf", paths[2], {{"CHECKPOINT", paths[0]}, {"TOKENIZER", paths[1]}});
  } catch (const FileError& e) {
    cli::fail(e.what());
  }
  if (is_gguf_file(paths[0]))
    cli::fail(paths[0] + ": is a GGUF file already, not a llama2.c checkpoint");
  const LlamaWeights weights = cli::load_weights(paths[0]);
  const Tokenizer tokenizer = cli::load_tokenizer(paths[1], weights.config.vocab_size);
  std::string name = std::filesystem::path(paths[0]).stem().string();
  try {
    AtomicOutput out(paths[2]);
    if (!write_llama_gguf(out.file(), weights, tokenizer, type, name)) {
      cli::fail(paths[2] + ": cannot write");
    }
    // The report before the rename: a status of 2 (stdout lost, the file not moved) always
    // means that OUT was not replaced.
    std::printf("wrote %s: %s, %s\n", paths[2].c_str(), detail::describe(weights.config).c_str(),
                type == ExportType::f32   ? "f32"
                : type == ExportType::f16 ? "f16"
                                          : "q8_0");
    cli::check_stdout();
    out.commit();
  } catch (const FileError& e) {
    cli::fail(e.what());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return engine::cli::guarded_main([&] { return run(argc, argv); });
}
