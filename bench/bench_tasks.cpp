#include "bench_tasks.hpp"

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

namespace poolmap::bench {

POOLMAP_TASK(square, [](std::int64_t x) { return x * x; });

POOLMAP_TASK(identity, [](const std::vector<std::uint8_t>& bytes) { return bytes; });

POOLMAP_TASK(sleep_ms, [](std::int64_t ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(std::max<std::int64_t>(ms, 0)));
  return ms;
});

POOLMAP_TASK(pi_hits, [](std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uint64_t hits = 0;
  for (std::uint64_t i = 0; i < kPiSamples; ++i) {
    const double x = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    const double y = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    hits += (x * x + y * y <= 1.0) ? 1 : 0;
  }
  return hits;
});

}  // namespace poolmap::bench
