// Plots through gnuplot without a shell: the script goes to its stdin, the image comes back on
// its stdout into an output file, so no file name ever reaches gnuplot (whose `set output`
// treats a leading '|' as a command to run).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "checkpoint.hpp"  // FileError
#include "output_file.hpp"

extern char** environ;

namespace engine {

/// True when an executable `gnuplot` is on $PATH (looked up without a shell).
inline bool gnuplot_installed() {
  const char* path = std::getenv("PATH");
  std::string_view dirs = path && *path ? path : "/usr/bin:/bin";
  while (!dirs.empty()) {
    const std::size_t colon = dirs.find(':');
    std::string dir(dirs.substr(0, colon));
    dirs = colon == std::string_view::npos ? std::string_view() : dirs.substr(colon + 1);
    if (dir.empty()) dir = ".";
    const std::string candidate = dir + "/gnuplot";
    struct stat info {};
    if (::stat(candidate.c_str(), &info) == 0 && S_ISREG(info.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return true;
    }
  }
  return false;
}

/// `text` with every character that could mean something to gnuplot inside a '...' string or
/// its enhanced-text mode replaced by '_': letters, digits, space and . , _ - + ( ) / = : stay.
inline std::string gnuplot_text(std::string text) {
  for (char& c : text) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       std::strchr(" .,_-+()/=:", c) != nullptr;
    if (!plain || c == '\0') c = '_';
  }
  return text;
}

/// Runs gnuplot on `script`, which must not `set output`: the terminal writes the image to
/// gnuplot's stdout, which is `out`'s temporary file. Throws FileError("<path>: ...") when gnuplot
/// cannot start, fails, or writes nothing; the caller then does not commit `out`.
inline void run_gnuplot(const std::string& script, const AtomicOutput& out,
                        const std::string& path) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) throw FileError(path + ": cannot start gnuplot (no pipe)");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out.fd(), STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, pipe_fds[1]);
  char name[] = "gnuplot";
  char* argv[] = {name, nullptr};
  pid_t child = 0;
  const int spawned = ::posix_spawnp(&child, "gnuplot", &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipe_fds[0]);
  if (spawned != 0) {
    ::close(pipe_fds[1]);
    throw FileError(path + ": cannot start gnuplot (" + std::strerror(spawned) + ")");
  }
  // A gnuplot that dies early must not kill this process with SIGPIPE: the write fails instead.
  struct sigaction ignore {
  }, old{};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &old);
  bool sent = true;
  for (std::size_t at = 0; at < script.size();) {
    const ssize_t n = ::write(pipe_fds[1], script.data() + at, script.size() - at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      sent = false;
      break;
    }
    at += static_cast<std::size_t>(n);
  }
  ::close(pipe_fds[1]);
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  ::sigaction(SIGPIPE, &old, nullptr);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw FileError(path + ": gnuplot failed (exit status " +
                    std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ")");
  }
  struct stat info {};
  if (!sent || ::fstat(out.fd(), &info) != 0 || info.st_size == 0) {
    throw FileError(path + ": gnuplot wrote no image");
  }
}

}  // namespace engine
