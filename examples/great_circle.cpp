// poolmap-example-great_circle: great-circle distances (haversine) between random point pairs.
//
//   poolmap-example-great_circle [--items 1000000] [--seed 7] [--broker ...] [--workers N]
//
// The "distance between cities" Pool tutorial: pool.map(great_circle, pairs) with each pair four
// doubles (lat1, lon1, lat2, lon2 in degrees). A cheap task with a real payload: it shows how far
// the default chunking carries a task of a few tens of nanoseconds.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common.hpp"
#include "tasks.hpp"

int main(int argc, char** argv) {
  poolmap::init(argc, argv);  // first line: an embedded worker copy of this program stops here
  namespace ex = poolmap::examples;

  CLI::App app{"poolmap example: pool.map(great_circle, pairs), haversine distances in km"};
  ex::CommonOptions options;
  ex::add_common_options(app, options);
  std::size_t items = 1'000'000;
  std::uint64_t seed = 7;
  app.add_option("--items", items, "number of point pairs")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed of the random pairs")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  return ex::run_example("great_circle", options, [&](poolmap::Pool& pool, const poolmap::MapOptions& map_options) {
    const std::vector<ex::GeoPair> pairs = ex::random_geo_pairs(items, seed);
    ex::Measurement m;
    std::vector<double> serial;
    m.serial_s = ex::seconds([&] {
      serial.reserve(pairs.size());
      for (const ex::GeoPair& pair : pairs) serial.push_back(ex::serial::great_circle(pair));
    });
    std::vector<double> parallel;
    m.parallel_s = ex::seconds([&] { parallel = pool.map(ex::great_circle, pairs, map_options); });
    ex::compare_results(serial, parallel, m);
    double total = 0;
    for (const double km : parallel) total += km;
    char text[64];
    std::snprintf(text, sizeof(text), "mean %.1f km", total / static_cast<double>(items));
    m.result = text;
    return m;
  });
}
