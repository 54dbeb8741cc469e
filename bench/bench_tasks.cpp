#include "bench_tasks.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <random>
#include <string>
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

POOLMAP_TASK(logged_hash, [](const LoggedItem& item) {
  if (const char* path = std::getenv("POOLMAP_BENCH_RUN_LOG"); path != nullptr) {
    const int fd = ::open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
      const auto started = std::chrono::steady_clock::now().time_since_epoch();
      std::string line = std::to_string(item.index);
      line += ' ';
      line += std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(started).count());
      line += '\n';  // one write: O_APPEND keeps lines whole
      [[maybe_unused]] const auto written = ::write(fd, line.data(), line.size());
      ::close(fd);
    }
  }
  std::this_thread::sleep_for(std::chrono::microseconds(std::max<std::int32_t>(item.sleep_us, 0)));
  const auto finished = std::chrono::steady_clock::now().time_since_epoch();
  return LoggedResult{item.index, hash_index(item.index),
                      std::chrono::duration_cast<std::chrono::nanoseconds>(finished).count()};
});

}  // namespace poolmap::bench
