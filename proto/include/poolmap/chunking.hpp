// Chunk arithmetic shared by the client and the tests.
#pragma once

#include <cstddef>
#include <cstdint>

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

// The automatic window of a Pool (PoolOptions::max_chunks_in_flight = 0): how many chunks it may
// have sent and not yet answered, given the worker processes registered at its broker and the
// payload bytes of the chunks in flight. kWindowFloor always; more with many workers, so that each
// holds a few TASK batches' worth and never waits for work (kWindowPerWorker each, at most
// kWindowCeiling, which stays under the broker's default per-client quota of 4096 chunks), but the
// part past the floor only while the chunks in flight hold less than kWindowBytes.
inline constexpr std::size_t kWindowFloor = 512;
inline constexpr std::size_t kWindowPerWorker = 32;
inline constexpr std::size_t kWindowCeiling = 2048;
inline constexpr std::uint64_t kWindowBytes = 64ULL << 20;

constexpr std::size_t automatic_window(std::size_t workers, std::uint64_t payload_bytes_in_flight) noexcept {
  if (payload_bytes_in_flight >= kWindowBytes) return kWindowFloor;
  const std::size_t wanted = workers > kWindowCeiling / kWindowPerWorker ? kWindowCeiling : workers * kWindowPerWorker;
  return wanted > kWindowFloor ? wanted : kWindowFloor;
}

}  // namespace poolmap
