// poolmap-example-compare_lists: for each row of table A, count the equal rows of table B.
//
//   poolmap-example-compare_lists [--rows 20000] [--broker ...] [--workers N]
//
// The "compare two lists" Pool tutorial: two tables of 20,000 rows x 5 small integers (0..4). Only
// the row of A travels with each task; table B is generated (seeded) inside the task library once
// per process, so every worker compares against the same B.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "tasks.hpp"

int main(int argc, char** argv) {
  poolmap::init(argc, argv);  // first line: an embedded worker copy of this program stops here
  namespace ex = poolmap::examples;

  CLI::App app{"poolmap example: pool.map(compare_lists, table_a), matches of each row in table B"};
  ex::CommonOptions options;
  ex::add_common_options(app, options);
  std::size_t rows = ex::kTableRows;
  app.add_option("--rows", rows, "rows of table A to compare (at most 20000)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, ex::kTableRows));
  CLI11_PARSE(app, argc, argv);

  return ex::run_example("compare_lists", options, [&](poolmap::Pool& pool, const poolmap::MapOptions& map_options) {
    std::vector<ex::Row> table_a = ex::compare_lists_table_a();
    table_a.resize(std::min(rows, table_a.size()));
    ex::compare_lists_table_b();  // built before the clock starts, as it is in a warm worker
    ex::Measurement m;
    std::vector<std::int64_t> serial;
    m.serial_s = ex::seconds([&] {
      serial.reserve(table_a.size());
      for (const ex::Row& row : table_a) serial.push_back(ex::serial::compare_lists(row));
    });
    std::vector<std::int64_t> parallel;
    m.parallel_s = ex::seconds([&] { parallel = pool.map(ex::compare_lists, table_a, map_options); });
    ex::compare_results(serial, parallel, m);
    std::int64_t matches = 0;
    for (const std::int64_t n : parallel) matches += n;
    m.result = std::to_string(matches) + " equal row pairs";
    return m;
  });
}
