// What the machine has: its physical memory, which the loaders and tools check a run against
// before they allocate.
#pragma once

#include <unistd.h>

namespace engine {

/// The machine's memory in bytes (0 if unknown).
inline double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

}  // namespace engine
