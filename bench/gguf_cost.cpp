// bench_gguf: what reading a model from GGUF costs, per tensor type, against the llama2.c
// checkpoint of the same weights: load time, the memory the weights take (owned: converted
// floats; mapped: file pages the step has touched), and decode speed.
//
//   bench_gguf [--dim 768] [--layers 12] [--rounds 5] [--tokens 32] [--csv FILE]
//
// A random model (stories110M's shape with tok512's 512 pieces by default: 85M parameters) is
// written once as a checkpoint and as GGUF F32, F16 and Q8_0 (msrnn-convert's writer) in a
// temporary folder. Each round loads every format in turn (interleaved, so a slow phase of the
// machine hits them alike), measures its memory, then decodes --tokens greedily from BOS with
// TOVA at C = 256; the median over rounds is reported. The files are in the page cache (warm):
// the load time is the engine's work, not the disk's.
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "gguf_export.hpp"
#include "gguf_model.hpp"
#include "median.hpp"
#include "model.hpp"
#include "output_file.hpp"
#include "read_rate.hpp"

namespace {

using namespace engine;

const char* const kUsage = R"(usage: bench_gguf [options]
Load time, weight memory and decode speed of a model read from GGUF (F32, F16, Q8_0) against
its llama2.c checkpoint, median over interleaved rounds.
  --dim N        model width (default 768; 12 heads, 4 KV heads, hidden 8/3 dim rounded to 32)
  --layers N     blocks (default 12)
  --rounds N     interleaved rounds (default 5)
  --tokens N     tokens decoded greedily from BOS per round (default 32)
  --csv FILE     write format,file_mb,load_ms,owned_mb,mapped_mb,tokens_per_s
)";

// Resident kilobytes of the process: anonymous (owned) and file-backed (mapped) pages.
struct Rss {
  double anon_kb = 0, file_kb = 0;
};
Rss rss() {
  Rss r;
  std::ifstream status("/proc/self/status");
  std::string key;
  double kb = 0;
  std::string unit;
  while (status >> key) {
    if (key == "RssAnon:") {
      status >> kb >> unit;
      r.anon_kb = kb;
    } else if (key == "RssFile:") {
      status >> kb >> unit;
      r.file_kb = kb;
    } else {
      status.ignore(1 << 20, '\n');
    }
  }
  return r;
}

struct Format {
  std::string name, path;
  std::vector<double> load_ms, owned_mb, mapped_mb, tokens_per_s;
};

int run(int argc, char** argv) {
  Index dim = 768, layers = 12, rounds = 5, tokens = 32;
  std::string csv_path;
  cli::parse_flags(argc, argv, kUsage, [&](std::string_view flag, const std::string& value) {
    if (flag == "--dim") {
      dim = cli::parse_int(flag, value, 96, 8192);
    } else if (flag == "--layers") {
      layers = cli::parse_int(flag, value, 1, 256);
    } else if (flag == "--rounds") {
      rounds = cli::parse_int(flag, value, 1, 1000);
    } else if (flag == "--tokens") {
      tokens = cli::parse_int(flag, value, 1, 100000);
    } else if (flag == "--csv") {
      csv_path = value;
    } else {
      return false;
    }
    return true;
  });
  if (dim % 96 != 0) cli::fail("--dim: " + std::to_string(dim) + " is not a multiple of 96");
  LlamaConfig shape;
  shape.dim = dim;
  shape.hidden_dim = (dim * 8 / 3 + 31) / 32 * 32;
  shape.n_layers = layers;
  shape.n_heads = 12;
  shape.n_kv_heads = 4;
  shape.vocab_size = 512;
  shape.seq_len = 1024;
  const Tokenizer tokenizer =
      cli::load_tokenizer(cli::find_model_file("tok512.bin", "--tokenizer"), shape.vocab_size);

  std::string folder = std::filesystem::temp_directory_path().string() + "/bench_gguf_XXXXXX";
  if (!::mkdtemp(folder.data())) cli::fail("cannot create " + folder);
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  } cleanup{folder};

  std::vector<Format> formats = {{"checkpoint", folder + "/model.bin", {}, {}, {}, {}},
                                 {"gguf_f32", folder + "/f32.gguf", {}, {}, {}, {}},
                                 {"gguf_f16", folder + "/f16.gguf", {}, {}, {}, {}},
                                 {"gguf_q8_0", folder + "/q8_0.gguf", {}, {}, {}, {}}};
  {
    const LlamaWeights w = random_weights(shape, 7);
    std::ofstream bin(formats[0].path, std::ios::binary);
    const std::int32_t header[7] = {
        static_cast<std::int32_t>(shape.dim),        static_cast<std::int32_t>(shape.hidden_dim),
        static_cast<std::int32_t>(shape.n_layers),   static_cast<std::int32_t>(shape.n_heads),
        static_cast<std::int32_t>(shape.n_kv_heads), static_cast<std::int32_t>(shape.vocab_size),
        static_cast<std::int32_t>(shape.seq_len)};
    bin.write(reinterpret_cast<const char*>(header), sizeof header);
    bin.write(reinterpret_cast<const char*>(w.data.data()),
              static_cast<std::streamsize>(w.data.size() * sizeof(float)));
    if (!bin) cli::fail(formats[0].path + ": cannot write");
    const ExportType types[] = {ExportType::f32, ExportType::f16, ExportType::q8_0};
    for (int i = 0; i < 3; ++i) {
      AtomicOutput out(formats[static_cast<std::size_t>(i) + 1].path);
      if (!write_llama_gguf(out.file(), w, tokenizer, types[i], "random"))
        cli::fail("cannot write");
      out.commit();
    }
  }
  CacheSettings settings;
  settings.policy.name = "tova";
  settings.capacity = 256;
  std::vector<double> gbps;  // the read baseline, once a round, over the checkpoint's weights
  for (Index round = 0; round < rounds; ++round) {
    {
      const LlamaWeights w = load_checkpoint(formats[0].path);
      gbps.push_back(bench::read_gbps(w.data.data(), w.data.size()));
    }
    for (Format& f : formats) {
      const Rss before = rss();
      const auto start = std::chrono::steady_clock::now();
      const LlamaWeights w =
          f.name == "checkpoint" ? load_checkpoint(f.path) : load_gguf_model(f.path).weights;
      const auto loaded = std::chrono::steady_clock::now();
      f.load_ms.push_back(std::chrono::duration<double, std::milli>(loaded - start).count());
      LlamaModel model(w, settings);
      int token = kBos;
      const auto decode = std::chrono::steady_clock::now();
      for (Index i = 0; i < tokens; ++i) {
        Index best = 0;
        model.forward(token).maxCoeff(&best);
        token = static_cast<int>(best);
      }
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - decode).count();
      f.tokens_per_s.push_back(static_cast<double>(tokens) / seconds);
      const Rss after = rss();  // every weight has been read: its pages are resident
      f.owned_mb.push_back((after.anon_kb - before.anon_kb) / 1024.0);
      f.mapped_mb.push_back((after.file_kb - before.file_kb) / 1024.0);
    }
  }
  std::printf("random model: %s (%.1fM parameters), %lld rounds, %lld tokens, tova C=256\n",
              detail::describe(shape).c_str(),
              static_cast<double>(std::filesystem::file_size(formats[0].path)) / 4e6,
              static_cast<long long>(rounds), static_cast<long long>(tokens));
  std::printf("read baseline: %.1f GB/s (median over rounds; a batch-1 step reads every weight)\n",
              bench::median(gbps));
  std::printf("%-11s %9s %9s %9s %10s %9s %9s\n", "format", "file MB", "load ms", "owned MB",
              "mapped MB", "tok/s", "vs bin");
  std::string csv = "format,file_mb,load_ms,owned_mb,mapped_mb,tokens_per_s\n";
  const double base = bench::median(formats[0].tokens_per_s);
  for (const Format& f : formats) {
    const double file_mb = static_cast<double>(std::filesystem::file_size(f.path)) / 1048576.0;
    const double tps = bench::median(f.tokens_per_s);
    char line[256];
    std::snprintf(line, sizeof line, "%-11s %9.1f %9.1f %9.1f %10.1f %9.1f %9.3f\n", f.name.c_str(),
                  file_mb, bench::median(f.load_ms), bench::median(f.owned_mb),
                  bench::median(f.mapped_mb), tps, tps / base);
    std::fputs(line, stdout);
    std::snprintf(line, sizeof line, "%s,%.2f,%.3f,%.2f,%.2f,%.2f\n", f.name.c_str(), file_mb,
                  bench::median(f.load_ms), bench::median(f.owned_mb), bench::median(f.mapped_mb),
                  tps);
    csv += line;
  }
  if (!csv_path.empty()) {
    try {
      AtomicOutput out(csv_path);
      std::fputs(csv.c_str(), out.file());
      out.commit();
    } catch (const FileError& e) {
      cli::fail(e.what());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return engine::cli::guarded_main([&] { return run(argc, argv); });
}
