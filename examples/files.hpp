// Input files of the example engine: the one error type of its loaders, the regular-file check
// every loader makes before it opens anything, and reading a small file whole.
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <system_error>

namespace engine {

/// A file that cannot be used; what() is "<file>: <what is wrong>".
struct FileError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Throws FileError("<path>: ...") unless path names a regular file: checked without opening it,
/// so that a FIFO or a device never blocks or streams forever.
inline void require_regular_file(const std::string& path, const char* what) {
  std::error_code error;
  const auto status = std::filesystem::status(path, error);
  if (error || !std::filesystem::exists(status)) {
    throw FileError(path + ": cannot open the " + what + " file (it does not exist)");
  }
  if (!std::filesystem::is_regular_file(status)) {
    throw FileError(path + ": is not a regular file (a " + what + " file is expected)");
  }
}

/// The whole contents of the regular file `path` (`what` names it in errors: "text", ...).
inline std::string read_file(const std::string& path, const char* what = "input") {
  require_regular_file(path, what);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError(path + ": cannot open the " + std::string(what) + " file");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw FileError(path + ": cannot read the " + std::string(what) + " file");
  return bytes;
}

}  // namespace engine
