// poolmap-example-sleeping: 24 tasks that each sleep 100 ms, on 8 workers, one task per chunk.
//
//   poolmap-example-sleeping [--tasks 24] [--ms 100] [--workers 8] [--serial] [--broker ...]
//
// The Pool tutorial that shows scheduling with idle waits: ideally 24 x 100 ms on 8 workers takes
// 3 rounds = 0.300 s. The serial loop would sleep 2.4 s, so by default the serial time is the ideal
// tasks x ms (marked "(ideal)"); --serial really sleeps through it.
#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "tasks.hpp"

int main(int argc, char** argv) {
  poolmap::init(argc, argv);  // first line: an embedded worker copy of this program stops here
  namespace ex = poolmap::examples;

  CLI::App app{"poolmap example: pool.map(sleep_ms, [100] * 24, chunksize=1) on 8 workers"};
  ex::CommonOptions options;
  ex::add_common_options(app, options, /*default_workers=*/8, /*default_chunksize=*/1);
  std::size_t tasks = 24;
  std::int64_t ms = 100;
  bool run_serial = false;
  app.add_option("--tasks", tasks, "number of naps")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--ms", ms, "milliseconds each nap lasts")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_flag("--serial", run_serial, "really run the serial loop (default: report the ideal tasks x ms)");
  CLI11_PARSE(app, argc, argv);

  return ex::run_example("sleeping", options, [&](poolmap::Pool& pool, const poolmap::MapOptions& map_options) {
    const std::vector<std::int64_t> naps(tasks, ms);
    ex::Measurement m;
    std::vector<std::int64_t> serial;
    if (run_serial) {
      m.serial_s = ex::seconds([&] {
        for (const std::int64_t nap : naps) serial.push_back(ex::serial::sleep_ms(nap));
      });
    } else {
      serial = naps;  // what sleep_ms returns
      m.serial_s = static_cast<double>(tasks) * static_cast<double>(ms) / 1000.0;
      m.serial_ideal = true;
    }
    std::vector<std::int64_t> parallel;
    m.parallel_s = ex::seconds([&] { parallel = pool.map(ex::sleep_ms, naps, map_options); });
    ex::compare_results(serial, parallel, m);
    m.result = std::to_string(tasks) + " x " + std::to_string(ms) + " ms naps";
    return m;
  });
}
