// Hidden temporary files of unfinished outputs, and the signal handlers that remove them: a user's
// Ctrl-C or kill must not leave ".NAME.XXXXXX" files behind.
#pragma once

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <string>

namespace engine {

namespace detail {

// Temporary files a signal must not leave behind: fixed slots written before a file is created
// and cleared once it is renamed or removed, read by the handler with async-signal-safe calls.
struct TempFiles {
  static constexpr int kSlots = 16;
  static constexpr std::size_t kPath = 4096;
  char path[kSlots][kPath];
  std::atomic<bool> used[kSlots];
};
// Zero-initialized at compile time: no guard a handler could wait on.
inline TempFiles temp_files_slots{};
inline TempFiles& temp_files() { return temp_files_slots; }
static_assert(std::atomic<bool>::is_always_lock_free, "the handler reads the flags");

// The signals whose default ends the process and that remove the temporary files first.
inline constexpr int kCleanedSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE};

// Blocks kCleanedSignals while it lives: a file is created and noted in its slot (or renamed and
// forgotten) as one step for the handler.
class SignalsHeld {
 public:
  SignalsHeld() {
    sigset_t set;
    sigemptyset(&set);
    for (int signal : kCleanedSignals) sigaddset(&set, signal);
    ::pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  SignalsHeld(const SignalsHeld&) = delete;
  SignalsHeld& operator=(const SignalsHeld&) = delete;
  ~SignalsHeld() { ::pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_;
};

// Notes `path` in a free slot (call with the signals held); returns it, or -1 when none is free
// or the path is too long (the file is then only not removed on a signal).
inline int hold_temp(const std::string& path) {
  TempFiles& t = temp_files();
  if (path.size() >= TempFiles::kPath) return -1;
  for (int i = 0; i < TempFiles::kSlots; ++i) {
    bool free = false;
    if (t.used[i].compare_exchange_strong(free, true)) {
      // (the handler cannot run here: the signals are held)
      std::memcpy(t.path[i], path.c_str(), path.size() + 1);
      return i;
    }
  }
  return -1;
}
inline void release_temp(int slot) {
  if (slot >= 0) temp_files().used[slot].store(false);
}

inline void remove_temps_and_die(int signal) {
  TempFiles& t = temp_files();
  for (int i = 0; i < TempFiles::kSlots; ++i) {
    if (t.used[i].load()) ::unlink(t.path[i]);
  }
  ::signal(signal, SIG_DFL);
  ::raise(signal);
}

}  // namespace detail

/// Makes the signals a user sends (SIGINT, SIGTERM, SIGHUP, SIGQUIT) and a closed pipe (SIGPIPE)
/// remove the temporary files of unfinished outputs before they end the process, as they would
/// have; a signal the process was started with ignored (nohup, a script's `&`) stays ignored. A
/// file past the size limit (SIGXFSZ) becomes a write error, reported like a full disk. What no
/// handler sees (SIGKILL, a crash) leaves the hidden ".NAME.XXXXXX" files beside the outputs. The
/// tools call it once, first (guarded_main).
inline void remove_temporary_files_on_signals() {
  struct sigaction action {};
  action.sa_handler = detail::remove_temps_and_die;
  sigemptyset(&action.sa_mask);
  for (int signal : detail::kCleanedSignals) {
    struct sigaction old {};
    if (::sigaction(signal, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    ::sigaction(signal, &action, nullptr);
  }
  ::signal(SIGXFSZ, SIG_IGN);
}

}  // namespace engine
