// poolmap-example-pi: Monte Carlo estimate of pi, 64 tasks of seeded random samples.
//
//   poolmap-example-pi [--tasks 64] [--samples 2000000] [--seed 1] [--broker ...] [--workers N]
//
// The compute-bound Pool tutorial: each task counts how many of its random points in the unit square
// fall inside the quarter circle; 4 x hits / samples approaches pi. Task i draws from
// std::mt19937_64 seeded with seed + i, so the serial loop and the pool count the same points.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common.hpp"
#include "tasks.hpp"

int main(int argc, char** argv) {
  poolmap::init(argc, argv);  // first line: an embedded worker copy of this program stops here
  namespace ex = poolmap::examples;

  CLI::App app{"poolmap example: Monte Carlo pi, pool.map(pi_samples, jobs)"};
  ex::CommonOptions options;
  ex::add_common_options(app, options);
  std::size_t tasks = 64;
  std::uint64_t samples = 2'000'000;
  std::uint64_t seed = 1;
  app.add_option("--tasks", tasks, "number of tasks")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--samples", samples, "random points per task")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed of task 0 (task i uses seed + i)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  return ex::run_example("pi", options, [&](poolmap::Pool& pool, const poolmap::MapOptions& map_options) {
    std::vector<ex::PiJob> jobs(tasks);
    for (std::size_t i = 0; i < tasks; ++i) jobs[i] = {.seed = seed + i, .samples = samples};
    ex::Measurement m;
    std::vector<std::uint64_t> serial;
    m.serial_s = ex::seconds([&] {
      for (const ex::PiJob& job : jobs) serial.push_back(ex::serial::pi_samples(job));
    });
    std::vector<std::uint64_t> parallel;
    m.parallel_s = ex::seconds([&] { parallel = pool.map(ex::pi_samples, jobs, map_options); });
    ex::compare_results(serial, parallel, m);
    std::uint64_t hits = 0;
    for (const std::uint64_t h : parallel) hits += h;
    const double pi = 4.0 * static_cast<double>(hits) / (static_cast<double>(samples) * static_cast<double>(tasks));
    char text[64];
    std::snprintf(text, sizeof(text), "pi ~ %.6f (%zu tasks)", pi, tasks);
    m.result = text;
    return m;
  });
}
