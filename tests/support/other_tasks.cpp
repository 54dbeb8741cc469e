// A task library with nothing the test client calls: a worker loading only this one must never
// be given test.* chunks.
#include <cstdint>

#include "poolmap/task.hpp"

namespace {
inline constexpr poolmap::Task<std::int64_t(std::int64_t)> cube{"other.cube"};
}  // namespace

POOLMAP_TASK(cube, [](std::int64_t x) { return x * x * x; });
