// A "newer version" of the test library: test.square takes and returns double (another
// signature under the same name), as in a rolling upgrade where half the workers run it.
#include <cstdint>

#include "poolmap/task.hpp"

namespace {
inline constexpr poolmap::Task<double(double)> square_as_double{"test.square"};
inline constexpr poolmap::Task<std::int64_t(std::int64_t)> cube{"other.cube"};
}  // namespace

POOLMAP_TASK(square_as_double, [](double x) { return x * x; });
POOLMAP_TASK(cube, [](std::int64_t x) { return x * x * x; });
