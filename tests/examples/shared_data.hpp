// Where the tests find ../shared (models and texts), and what they do when it is missing.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>

#ifndef MSRNN_SOURCE_DIR
#error "MSRNN_SOURCE_DIR must be defined by the build"
#endif

namespace engine::testing {

// ../shared/<relative> beside the repository, or $MSRNN_MODEL_DIR/<file> for models.
inline std::string shared_path(const std::string& relative) {
  if (relative.rfind("models/", 0) == 0) {
    if (const char* dir = std::getenv("MSRNN_MODEL_DIR"); dir && *dir) {
      const std::string path = std::string(dir) + "/" + relative.substr(7);
      if (std::ifstream(path).good()) return path;
    }
  }
  return std::string(MSRNN_SOURCE_DIR) + "/../shared/" + relative;
}

inline bool running_in_ci() {
  const char* ci = std::getenv("CI");
  return ci && *ci && std::string(ci) != "false";
}

}  // namespace engine::testing

// Skips the test (outside CI) or fails it (in CI, where ../shared must exist) when a file of
// ../shared is missing, naming it.
#define REQUIRE_SHARED_FILE(path)                                                            \
  do {                                                                                       \
    if (!std::ifstream(path).good()) {                                                       \
      if (::engine::testing::running_in_ci()) FAIL() << "missing " << (path) << " in CI";    \
      GTEST_SKIP() << "needs " << (path) << " (the ../shared folder beside the repository)"; \
    }                                                                                        \
  } while (false)
