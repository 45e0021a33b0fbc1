// Runs the command-line tools from a test: their exit status, stdout and stderr.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "temp_dir.hpp"

namespace engine::testing {

inline bool mentions(const std::string& message, const std::string& text) {
  return message.find(text) != std::string::npos;
}

// Single quotes for the shell.
inline std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct Outcome {
  int status;
  std::string out;
  std::string err;
};

// Runs `tool args` through the shell (args are shell words), with `prefix` before it (e.g.
// "cd X &&" or "timeout 20"), stdout to `stdout_to` (default: captured); its exit status and what
// it wrote.
inline Outcome run_tool(const std::string& tool, const std::string& args,
                        const std::string& prefix = "", const std::string& stdout_to = "") {
  const std::string out_path = process_temp_dir().file("tool_stdout.txt");
  const std::string err_path = process_temp_dir().file("tool_stderr.txt");
  const std::string command = prefix + " " + tool + " " + args + " > " +
                              (stdout_to.empty() ? out_path : stdout_to) + " 2> " + err_path;
  std::remove(out_path.c_str());
  const int raw = std::system(command.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, bytes_of(out_path), bytes_of(err_path)};
}

inline void expect_rejected(const std::string& tool, const std::string& args,
                            const std::string& what, const std::string& prefix = "") {
  const Outcome o = run_tool(tool, args, prefix);
  EXPECT_EQ(o.status, 2) << args << "\n" << o.err;
  EXPECT_EQ(o.err.rfind("error: ", 0), 0u) << args << "\n" << o.err;
  EXPECT_TRUE(mentions(o.err, what)) << args << "\n" << o.err;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << "one line: " << o.err;
}

// Names in `folder` that start with '.' (AtomicOutput's temporary files).
inline std::vector<std::string> hidden_files(const std::string& folder) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    const std::string name = entry.path().filename().string();
    if (name[0] == '.') names.push_back(name);
  }
  return names;
}

}  // namespace engine::testing
