// A program written against the installed poolmap package: defines its own task and maps it over
// an embedded pool. Prints "consumer ok <sum>" on success.
#include <poolmap/poolmap.hpp>

#include <cstdio>
#include <numeric>

inline constexpr poolmap::Task<std::int64_t(std::int64_t)> cube{"consumer.cube"};
POOLMAP_TASK(cube, [](std::int64_t x) { return x * x * x; });

int main(int argc, char** argv) {
  poolmap::init(argc, argv);
  poolmap::Pool pool({.processes = 2});
  std::vector<std::int64_t> inputs(1000);
  std::iota(inputs.begin(), inputs.end(), 1);
  const auto cubes = pool.map(cube, inputs);
  const std::int64_t sum = std::accumulate(cubes.begin(), cubes.end(), std::int64_t{0});
  const std::int64_t expected = 1000LL * 1000 * 1001 * 1001 / 4;  // (n(n+1)/2)^2
  std::printf("consumer %s %lld\n", sum == expected ? "ok" : "WRONG", static_cast<long long>(sum));
  return sum == expected ? 0 : 1;
}
