// Chunk arithmetic: Python's Pool.map default chunksize.
#include <doctest/doctest.h>

#include "poolmap/chunking.hpp"

TEST_CASE("Chunking.DefaultChunksize.MatchesPython" * doctest::timeout(10)) {
  // Python: chunksize, extra = divmod(len(iterable), len(pool) * 4); if extra: chunksize += 1
  CHECK(poolmap::default_chunksize(100, 2) == 13);
  CHECK(poolmap::default_chunksize(96, 2) == 12);
  CHECK(poolmap::default_chunksize(1, 8) == 1);
  CHECK(poolmap::default_chunksize(1'000'000, 2) == 125'000);
  CHECK(poolmap::default_chunksize(0, 4) == 0);
}

TEST_CASE("Chunking.DefaultChunksize.ZeroWorkersCountAsOne" * doctest::timeout(10)) {
  CHECK(poolmap::default_chunksize(10, 0) == 3);
}

TEST_CASE("Chunking.ChunkCount.CoversEveryItem" * doctest::timeout(10)) {
  CHECK(poolmap::chunk_count(100, 13) == 8);
  CHECK(poolmap::chunk_count(100, 100) == 1);
  CHECK(poolmap::chunk_count(5, 1000) == 1);
  CHECK(poolmap::chunk_count(0, 10) == 0);
  CHECK(poolmap::chunk_count(7, 0) == 7);
  for (std::size_t items = 1; items < 200; ++items) {
    for (std::size_t size = 1; size < 20; ++size) {
      const auto chunks = poolmap::chunk_count(items, size);
      CHECK(chunks * size >= items);
      CHECK((chunks - 1) * size < items);
    }
  }
}

TEST_CASE("Chunking.AutomaticWindow.GrowsWithWorkersWithinItsBounds" * doctest::timeout(10)) {
  // A few workers: the floor, as before the window was automatic.
  CHECK(poolmap::automatic_window(0, 0) == 512);
  CHECK(poolmap::automatic_window(2, 0) == 512);
  CHECK(poolmap::automatic_window(16, 0) == 512);
  // Many: 32 chunks each, up to the ceiling, under the broker's default quota of 4096 per client.
  CHECK(poolmap::automatic_window(17, 0) == 544);
  CHECK(poolmap::automatic_window(64, 0) == 2048);
  CHECK(poolmap::automatic_window(10'000, 0) == 2048);
  CHECK(poolmap::automatic_window(std::size_t{1} << 62, 0) == 2048);  // no overflow
}

TEST_CASE("Chunking.AutomaticWindow.BigPayloadsKeepTheFloor" * doctest::timeout(10)) {
  CHECK(poolmap::automatic_window(64, (64ULL << 20) - 1) == 2048);
  CHECK(poolmap::automatic_window(64, 64ULL << 20) == 512);
  CHECK(poolmap::automatic_window(64, 1ULL << 40) == 512);
}
