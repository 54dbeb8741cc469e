// Tasks used by the integration tests. Loaded into poolmap-worker with --tasks
// libpoolmap_test_tasks.so, and linked into the test program for the embedded Pool.
#pragma once

#include <cstdint>
#include <stdexcept>
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
// The fault tests' item: input {index, sleep microseconds}; output a hash of the index, so a
// lost, duplicated or misplaced item is caught. hash_index() is the expected value.
struct SlowItem {
  std::int64_t index = 0;
  std::int32_t sleep_us = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(index, sleep_us);
  }
};
constexpr std::uint64_t hash_index(std::int64_t index) {
  std::uint64_t x = static_cast<std::uint64_t>(index) + 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
inline constexpr Task<std::uint64_t(SlowItem)> slow_hash{"test.slow_hash"};
// Items 0..n-1, each sleeping `sleep_us`.
inline std::vector<SlowItem> slow_items(std::size_t n, std::int32_t sleep_us) {
  std::vector<SlowItem> items(n);
  for (std::size_t i = 0; i < n; ++i) items[i] = {static_cast<std::int64_t>(i), sleep_us};
  return items;
}
// Like slow_hash, and first appends the index and a newline to the file POOLMAP_TEST_RUN_LOG names
// (when set): a test counts how many times each item ran.
inline constexpr Task<std::uint64_t(SlowItem)> logged_hash{"test.logged_hash"};
// Like slow_hash, but the process dies of SIGSEGV on index 13, every time.
inline constexpr Task<std::uint64_t(SlowItem)> segfault_at_13{"test.segfault_at_13"};
// Like slow_hash, but index 7 never returns.
inline constexpr Task<std::uint64_t(SlowItem)> hang_at_7{"test.hang_at_7"};
// Sleeps `sleep_us`, returns the blob's size (for tests that move big payloads).
inline constexpr Task<std::uint64_t(std::vector<std::uint8_t>)> blob_size{"test.blob_size"};
// Two arguments, for starmap and submit.
inline constexpr Task<std::int64_t(std::int64_t, std::int64_t)> add{"test.add"};
inline constexpr Task<std::string(std::string, std::int32_t)> repeat{"test.repeat"};
// Throws std::runtime_error the first time a worker process sees an index, succeeds after.
inline constexpr Task<std::int64_t(std::int64_t)> flaky_once{"test.flaky_once"};
// "<init args joined by ','>|<times the initializer ran in this process>".
inline constexpr Task<std::string(std::int64_t)> init_report{"test.init_report"};
// Broadcast context: table[i % size] (pool.map(lookup.with(table), indices)).
inline constexpr Task<std::uint8_t(const std::vector<std::uint8_t>&, std::int64_t)> lookup{"test.lookup"};
// A result type whose save() throws for the value 13 (a result that cannot be encoded).
struct Unencodable {
  std::int64_t value = 0;
  template <class Archive>
  void save(Archive& ar) const {
    if (value == 13) throw std::runtime_error("Unencodable refuses to encode 13");
    ar(value);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(value);
  }
};
// An argument type whose load() throws for the value 7 (an argument that cannot be decoded).
struct Undecodable {
  std::int64_t value = 0;
  template <class Archive>
  void save(Archive& ar) const {
    ar(value);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(value);
    if (value == 7) throw std::runtime_error("Undecodable refuses to decode 7");
  }
};
// Returns {x}: fails to encode at x == 13.
inline constexpr Task<Unencodable(std::int64_t)> unencodable{"test.unencodable"};
// Returns x.value: fails to decode at x.value == 7.
inline constexpr Task<std::int64_t(Undecodable)> undecodable{"test.undecodable"};
// Registered by no worker.
inline constexpr Task<std::int64_t(std::int64_t)> not_registered{"test.not_registered"};
// Same name as `square`, other signature: the workers must refuse it.
inline constexpr Task<double(double)> square_as_double{"test.square"};

}  // namespace poolmap::test
