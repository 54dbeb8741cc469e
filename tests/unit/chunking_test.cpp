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
