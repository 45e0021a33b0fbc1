// The fuzz targets' reader of their input: one byte at a time, zeros once it runs out.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fuzz {

struct Bytes {
  const std::uint8_t* data;
  std::size_t size;
  std::size_t at = 0;
  std::uint8_t next() { return at < size ? data[at++] : 0; }
  bool empty() const { return at >= size; }
  float value() { return (static_cast<float>(next()) - 127.5f) / 32.0f; }  // [-4, 4]
};

}  // namespace fuzz
