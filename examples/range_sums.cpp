// poolmap-example-range_sums: sums over 64 ranges of 10,000,000 integers.
//
//   poolmap-example-range_sums [--ranges 64] [--size 10000000] [--broker ...] [--workers N]
//
// The "sum a big range in pieces" Pool tutorial: range i is [i x size, (i + 1) x size) and each task
// loops over it adding (k mod 7) x k, which no compiler turns into a closed form.
#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "tasks.hpp"

int main(int argc, char** argv) {
  poolmap::init(argc, argv);  // first line: an embedded worker copy of this program stops here
  namespace ex = poolmap::examples;

  CLI::App app{"poolmap example: pool.map(range_sum, ranges), 64 ranges of 10,000,000"};
  ex::CommonOptions options;
  ex::add_common_options(app, options);
  std::size_t ranges = 64;
  std::int64_t size = 10'000'000;
  app.add_option("--ranges", ranges, "number of ranges (tasks)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--size", size, "integers per range")->capture_default_str()->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  return ex::run_example("range_sums", options, [&](poolmap::Pool& pool, const poolmap::MapOptions& map_options) {
    std::vector<ex::Range> work(ranges);
    for (std::size_t i = 0; i < ranges; ++i) {
      const auto begin = static_cast<std::int64_t>(i) * size;
      work[i] = {.begin = begin, .end = begin + size};
    }
    ex::Measurement m;
    std::vector<std::uint64_t> serial;
    m.serial_s = ex::seconds([&] {
      for (const ex::Range& r : work) serial.push_back(ex::serial::range_sum(r));
    });
    std::vector<std::uint64_t> parallel;
    m.parallel_s = ex::seconds([&] { parallel = pool.map(ex::range_sum, work, map_options); });
    ex::compare_results(serial, parallel, m);
    std::uint64_t sum = 0;
    for (const std::uint64_t s : parallel) sum += s;
    m.result = "sum " + std::to_string(sum);
    return m;
  });
}
