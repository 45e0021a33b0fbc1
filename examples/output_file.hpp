// Output files of the tools: checked before any work, written beside their place under a
// temporary name and renamed into place only when complete, so that a failed run (or an output
// that names an input) never truncates a file that was there before.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "checkpoint.hpp"  // FileError
#include "temp_files.hpp"

namespace engine {

namespace detail {

inline std::string errno_text(int error) { return std::strerror(error); }

// The file `path` names once its symbolic links are resolved (where a rename must land), or the
// path as given when it does not exist yet and its folder cannot be resolved either.
inline std::filesystem::path resolved(const std::string& path) {
  std::error_code error;
  // (absolute first: weakly_canonical leaves a relative path whose first part does not exist as
  // it is, so "x" and "./x" would differ)
  std::filesystem::path real =
      std::filesystem::weakly_canonical(std::filesystem::absolute(path, error), error);
  return error ? std::filesystem::path(path) : real;
}

inline std::filesystem::path folder_of(const std::filesystem::path& path) {
  const std::filesystem::path parent = path.parent_path();
  return parent.empty() ? std::filesystem::path(".") : parent;
}

// mkstemp's pattern for a temporary file beside `target`: ".NAME.XXXXXX", NAME shortened so that
// the whole fits in a file name wherever the target's own name fits.
inline std::string temp_pattern(const std::filesystem::path& target) {
  const std::filesystem::path folder = folder_of(target);
  const long most = ::pathconf(folder.c_str(), _PC_NAME_MAX);
  const std::size_t limit = most > 16 ? static_cast<std::size_t>(most) : 255;
  std::string name = target.filename().string();
  if (name.size() + 8 > limit) name.resize(limit - 8);
  return (folder / ("." + name + ".XXXXXX")).string();
}

}  // namespace detail

/// True when `a` and `b` both exist and are the same file (same device and inode: a link or
/// another spelling of one path counts).
inline bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {
  }, sb{};
  if (::stat(a.c_str(), &sa) != 0 || ::stat(b.c_str(), &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/// True when two output paths land on the same file: the same existing file, or the same place
/// once links and "." / ".." are resolved (for files that do not exist yet).
inline bool same_output(const std::string& a, const std::string& b) {
  return same_file(a, b) || detail::resolved(a) == detail::resolved(b);
}

/// An input file of a run, named by the flag that gave it (for messages).
struct NamedPath {
  std::string flag;  // e.g. "--text"
  std::string path;
};

/// Checks, before any work, that `path` (given by `flag`) can be written as an output: it is none
/// of `inputs` (compared by identity, not by spelling), it is a regular file if it exists (not a
/// folder, FIFO or device), and its folder exists and is writable. Throws FileError("<path>: ...").
inline void check_output_path(const std::string& flag, const std::string& path,
                              const std::vector<NamedPath>& inputs) {
  auto fail = [&](const std::string& what) { throw FileError(path + ": " + what); };
  if (path.empty()) throw FileError(flag + ": empty file name");
  for (const NamedPath& input : inputs) {
    if (same_file(path, input.path)) {
      fail("is also the " + input.flag + " input; " + flag + " would overwrite it");
    }
  }
  // (/dev/stdout with stdout redirected to a file is that file: renaming over it would lose
  // what the tool prints there)
  struct stat out {};
  if (::stat(path.c_str(), &out) == 0) {
    for (int fd : {STDOUT_FILENO, STDERR_FILENO}) {
      struct stat own {};
      if (::fstat(fd, &own) == 0 && own.st_dev == out.st_dev && own.st_ino == out.st_ino) {
        fail(std::string("is the tool's own standard ") +
             (fd == STDOUT_FILENO ? "output" : "error") + "; " + flag + " needs a file of its own");
      }
    }
  }
  const std::filesystem::path target = detail::resolved(path);
  std::error_code error;
  const auto status = std::filesystem::status(target, error);
  if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
    fail("is not a regular file (" + flag + " writes a plain file)");
  }
  const std::filesystem::path folder = detail::folder_of(target);
  const long most = ::pathconf(folder.c_str(), _PC_NAME_MAX);
  const std::size_t length = target.filename().string().size();
  if (most > 0 && length > static_cast<std::size_t>(most)) {
    fail("its name has " + std::to_string(length) + " bytes, more than the " +
         std::to_string(most) + " a file name may have here");
  }
  if (!std::filesystem::is_directory(folder, error)) {
    fail("its folder " + folder.string() + " does not exist");
  }
  if (::access(folder.c_str(), W_OK | X_OK) != 0) {
    fail("cannot write in its folder " + folder.string() + " (" + detail::errno_text(errno) + ")");
  }
  // The temporary file it will be written under can be made (a name at the length limit, a full
  // folder): tried now, before the work, not after it.
  std::string probe = detail::temp_pattern(target);
  const detail::SignalsHeld held;  // (the probe exists only while they are)
  const int fd = ::mkstemp(probe.data());
  if (fd < 0) {
    fail("cannot create a temporary file beside it (" + detail::errno_text(errno) + ")");
  }
  ::close(fd);
  ::unlink(probe.c_str());
}

/// A file written under a temporary name in the folder of its final place, renamed over it by
/// `commit()`; destroyed without commit (a failed run), it removes the temporary file and the
/// final place keeps what it had.
///
///   AtomicOutput out(csv_path);
///   std::fputs("policy,ppl\n", out.file());
///   out.commit();  // throws FileError if any write failed
class AtomicOutput {
 public:
  explicit AtomicOutput(const std::string& path) : path_(path), target_(detail::resolved(path)) {
    std::string pattern = detail::temp_pattern(target_);
    int fd = -1;
    {
      const detail::SignalsHeld held;  // created and noted as one step for a signal
      fd = ::mkstemp(pattern.data());
      if (fd >= 0) slot_ = detail::hold_temp(pattern);
    }
    if (fd < 0) {
      throw FileError(path_ + ": cannot create a temporary file beside it (" +
                      detail::errno_text(errno) + ")");
    }
    temp_ = pattern;
    // The mode a newly created file would get (0666 less the umask), or the mode of the file it
    // replaces: mkstemp's 0600 must not leak into the result.
    struct stat old {};
    mode_t mode = 0;
    if (::stat(target_.c_str(), &old) == 0) {
      mode = old.st_mode & 07777;
    } else {
      const mode_t mask = ::umask(0);
      ::umask(mask);
      mode = 0666 & ~mask;
    }
    (void)::fchmod(fd, mode);
    file_ = ::fdopen(fd, "wb");
    if (!file_) {
      ::close(fd);
      ::unlink(temp_.c_str());
      detail::release_temp(slot_);
      throw FileError(path_ + ": cannot open a temporary file beside it");
    }
  }
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;
  ~AtomicOutput() {
    if (file_) std::fclose(file_);
    if (!temp_.empty()) ::unlink(temp_.c_str());
    detail::release_temp(slot_);
  }

  /// Where to write (buffered).
  std::FILE* file() const { return file_; }
  /// The temporary file's descriptor (for a child process that writes it).
  int fd() const { return ::fileno(file_); }

  /// Flushes, syncs and closes the temporary file: after it only the rename is left (`publish`).
  /// Throws FileError("<path>: cannot write (...)") when a write failed (a full disk, a file past
  /// the size limit); the final place then keeps what it had. Does nothing the second time.
  void finish() {
    if (!file_) return;
    const bool written = std::fflush(file_) == 0 && !std::ferror(file_);
    const int write_error = errno;
    const bool synced = written && ::fsync(::fileno(file_)) == 0;
    const bool closed = std::fclose(file_) == 0;
    file_ = nullptr;
    if (!written || !synced || !closed) {
      throw FileError(path_ + ": cannot write (" +
                      detail::errno_text(written ? errno : write_error) + ")");
    }
  }

  /// Renames the finished file into place (`finish` first if it was not). Throws FileError when
  /// the rename fails; the final place then keeps what it had.
  void commit() {
    finish();
    const detail::SignalsHeld held;  // renamed and forgotten as one step for a signal
    if (std::rename(temp_.c_str(), target_.c_str()) != 0) {
      throw FileError(path_ + ": cannot move the finished file into place (" +
                      detail::errno_text(errno) + ")");
    }
    temp_.clear();
    detail::release_temp(std::exchange(slot_, -1));
  }

 private:
  std::string path_;              // as the user gave it (messages)
  std::filesystem::path target_;  // where it lands, links resolved
  std::string temp_;              // the temporary file until commit
  std::FILE* file_ = nullptr;
  int slot_ = -1;  // its slot in detail::temp_files (removed on a signal)
};

/// Commits a run's outputs together: every one finished (written, synced: where a full disk
/// shows) before any is renamed into place, so that a failed write replaces none of them.
inline void commit_all(std::initializer_list<AtomicOutput*> outputs) {
  for (AtomicOutput* out : outputs) {
    if (out) out->finish();
  }
  for (AtomicOutput* out : outputs) {
    if (out) out->commit();
  }
}

}  // namespace engine
