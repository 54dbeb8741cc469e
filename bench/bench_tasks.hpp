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

}  // namespace poolmap::bench
