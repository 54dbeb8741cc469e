// The tasks the benchmarks run (bench/README in docs/BENCHMARKS.md): the same work as the Python
// peers in bench/peers.py. Loaded into poolmap-worker with --tasks libpoolmap_bench_tasks.so, and
// linked into poolmap-bench for the embedded Pool.
#pragma once

#include <cstdint>
#include <vector>

#include "poolmap/task.hpp"

namespace poolmap::bench {

// x * x: the smallest useful work, so what is measured is the pool.
inline constexpr Task<std::int64_t(std::int64_t)> square{"bench.square"};
// The bytes back unchanged: what is measured is moving them.
inline constexpr Task<std::vector<std::uint8_t>(std::vector<std::uint8_t>)> identity{"bench.identity"};
// Sleeps `ms` milliseconds, returns it.
inline constexpr Task<std::int64_t(std::int64_t)> sleep_ms{"bench.sleep_ms"};
// Monte Carlo: of kPiSamples points drawn from std::mt19937_64(seed), how many fall in the quarter
// circle. Pure compute, no I/O.
inline constexpr std::uint64_t kPiSamples = 2'000'000;
inline constexpr Task<std::uint64_t(std::uint64_t)> pi_hits{"bench.pi_hits"};

// The failover benchmark's item (bench/failover_bench.cpp): as it starts, appends a line "INDEX
// START_NS" (steady clock) to the file POOLMAP_BENCH_RUN_LOG names (when set), so that every
// execution is counted and can be placed in time;
// then sleeps `sleep_us` and returns the index, a hash of it (hash_index: a lost, duplicated or
// misplaced result is caught) and when it finished on the steady clock (CLOCK_MONOTONIC, the same
// clock for every process of a host), so that the client knows which results were computed after
// a moment it recorded.
struct LoggedItem {
  std::int64_t index = 0;
  std::int32_t sleep_us = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(index, sleep_us);
  }
};
struct LoggedResult {
  std::int64_t index = 0;
  std::uint64_t hash = 0;
  std::int64_t finished_ns = 0;  // std::chrono::steady_clock, nanoseconds since its epoch
  template <class Archive>
  void serialize(Archive& ar) {
    ar(index, hash, finished_ns);
  }
};
constexpr std::uint64_t hash_index(std::int64_t index) {
  std::uint64_t x = static_cast<std::uint64_t>(index) + 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
inline constexpr Task<LoggedResult(LoggedItem)> logged_hash{"bench.logged_hash"};

}  // namespace poolmap::bench
