// Chunk arithmetic shared by the client and the tests.
#pragma once

#include <cstddef>

namespace poolmap {

// Python's Pool.map default: ceil(items / (4 × workers)); 0 items → 0; workers 0 counts as 1.
constexpr std::size_t default_chunksize(std::size_t items, std::size_t workers) noexcept {
  const std::size_t divisor = 4 * (workers == 0 ? 1 : workers);
  return items / divisor + (items % divisor != 0 ? 1 : 0);
}

// Number of chunks of at most `chunksize` items (chunksize 0 counts as 1).
constexpr std::size_t chunk_count(std::size_t items, std::size_t chunksize) noexcept {
  const std::size_t size = chunksize == 0 ? 1 : chunksize;
  return items / size + (items % size != 0 ? 1 : 0);
}

}  // namespace poolmap
