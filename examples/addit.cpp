// poolmap-example-addit: the first Pool tutorial, `pool.map(addit, range(N))` with addit(x) = x + 1.
//
//   poolmap-example-addit [--items N] [--broker tcp://HOST:5555 --workers N] [--header]
//
// The task is nearly free, so this example measures poolmap's per-item overhead: expect the
// serial loop to win (as it does against Python's Pool), and chunking to decide the parallel time.
#include <cstdint>
#include <ranges>
#include <string>
#include <vector>

#include "common.hpp"
#include "tasks.hpp"

int main(int argc, char** argv) {
  poolmap::init(argc, argv);  // first line: an embedded worker copy of this program stops here
  namespace ex = poolmap::examples;

  CLI::App app{"poolmap example: pool.map(addit, range(N)), addit(x) = x + 1"};
  ex::CommonOptions options;
  ex::add_common_options(app, options);
  std::int64_t items = 1'000'000;
  app.add_option("--items", items, "N, the length of the range")->capture_default_str()->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  return ex::run_example("addit", options, [&](poolmap::Pool& pool, const poolmap::MapOptions& map_options) {
    const auto inputs = std::views::iota(std::int64_t{0}, items);
    ex::Measurement m;
    std::vector<std::int64_t> serial;
    m.serial_s = ex::seconds([&] {
      serial.reserve(static_cast<std::size_t>(items));
      for (const std::int64_t x : inputs) serial.push_back(ex::serial::addit(x));
    });
    std::vector<std::int64_t> parallel;
    m.parallel_s = ex::seconds([&] { parallel = pool.map(ex::addit, inputs, map_options); });
    ex::compare_results(serial, parallel, m);
    std::int64_t sum = 0;
    for (const std::int64_t y : parallel) sum += y;
    m.result = "sum " + std::to_string(sum);
    return m;
  });
}
