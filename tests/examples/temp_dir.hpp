// A folder of a test's own under the system's temporary folder, removed with everything in it
// when the object goes (the suite leaves nothing behind in /tmp).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <system_error>

#include "files.hpp"

namespace engine::testing {

class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "msrnn_test_XXXXXX";
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("cannot create " + pattern);
    path_ = pattern;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  // Only the process that made it removes it: a death test's child that exits runs the static
  // destructors too, and must not take the folder from the tests that follow.
  ~TempDir() {
    if (::getpid() != owner_) return;
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }

  const std::string& path() const { return path_; }
  /// The path of `name` inside the folder (nothing is created).
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  /// Writes `bytes` to `name` inside the folder; returns its path.
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string path = file(name);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    return path;
  }

 private:
  std::string path_;
  pid_t owner_ = ::getpid();
};

/// One folder for the whole test program, removed at its exit.
inline const TempDir& process_temp_dir() {
  static const TempDir dir;
  return dir;
}

/// Writes `bytes` to `name` in the program's folder; returns its path.
inline std::string write_temp(const std::string& name, const std::string& bytes) {
  return process_temp_dir().write(name, bytes);
}

/// The file's bytes (engine::read_file), or "" when there is none.
inline std::string bytes_of(const std::string& path) {
  try {
    return read_file(path);
  } catch (const FileError&) {
    return "";
  }
}

}  // namespace engine::testing
