// Tasks used by the integration tests. Loaded into poolmap-worker with --tasks
// libpoolmap_test_tasks.so, and linked into the test program for the embedded Pool.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "poolmap/task.hpp"

namespace poolmap::test {

struct Point {
  double x = 0;
  double y = 0;
  std::string label;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x, y, label);
  }
  friend bool operator==(const Point&, const Point&) = default;
};

// Output encodes the input: a lost, duplicated or reordered item is caught.
inline constexpr Task<std::int64_t(std::int64_t)> square{"test.square"};
// Throws std::invalid_argument("bad item 13") for x == 13, otherwise returns x.
inline constexpr Task<std::int64_t(std::int64_t)> fail_at_13{"test.fail_at_13"};
inline constexpr Task<std::string(std::string)> shout{"test.shout"};
inline constexpr Task<std::vector<double>(std::vector<double>)> prefix_sums{"test.prefix_sums"};
inline constexpr Task<Point(Point)> mirror{"test.mirror"};
// Returns the worker process's pid (to see that several workers took part).
inline constexpr Task<std::int64_t(std::int64_t)> worker_pid{"test.worker_pid"};
// Sleeps the given number of milliseconds, returns it.
inline constexpr Task<std::int64_t(std::int64_t)> sleep_ms{"test.sleep_ms"};
// Registered by no worker.
inline constexpr Task<std::int64_t(std::int64_t)> not_registered{"test.not_registered"};
// Same name as `square`, other signature: the workers must refuse it.
inline constexpr Task<double(double)> square_as_double{"test.square"};

}  // namespace poolmap::test
