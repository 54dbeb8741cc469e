// The example task library: C++ twins of the classic Python multiprocessing.Pool tutorials.
//
// Built as libpoolmap_examples.so. A stock worker runs these tasks after
//   poolmap-worker --broker tcp://HOST:5556 --tasks libpoolmap_examples.so
// and the example programs (which link the library) run them in an embedded Pool too.
//
// Each task has two faces with the same name:
//   poolmap::examples::pi_samples            the Task handle, for pool.map(pi_samples, jobs)
//   poolmap::examples::serial::pi_samples    the plain function, for the serial reference loop
// The task registered in the library calls the plain function, so the serial loop and the workers
// run the very same code.
//
// Thread-safety: every function is safe to call from several threads at once.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "poolmap/task.hpp"

namespace poolmap::examples {

// ---- argument and result types ----

// pi_samples: `samples` random points in the unit square, drawn from std::mt19937_64 seeded with
// `seed` (so the result depends on the arguments only).
struct PiJob {
  std::uint64_t seed = 0;
  std::uint64_t samples = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(seed, samples);
  }
  friend bool operator==(const PiJob&, const PiJob&) = default;
};

// great_circle: two points on the Earth, in degrees.
struct GeoPair {
  double lat1 = 0;
  double lon1 = 0;
  double lat2 = 0;
  double lon2 = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(lat1, lon1, lat2, lon2);
  }
  friend bool operator==(const GeoPair&, const GeoPair&) = default;
};

// compare_lists: one row of five small integers (0..4).
inline constexpr std::size_t kRowWidth = 5;
struct Row {
  std::array<std::int32_t, kRowWidth> values{};
  template <class Archive>
  void serialize(Archive& ar) {
    ar(values);
  }
  friend bool operator==(const Row&, const Row&) = default;
};

// range_sum: the half-open range [begin, end).
struct Range {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(begin, end);
  }
  friend bool operator==(const Range&, const Range&) = default;
};

// ---- the plain functions (the serial reference) ----

namespace serial {

// x + 1.
std::int64_t addit(std::int64_t x);
// Sleeps `ms` milliseconds (negative counts as 0) and returns `ms`.
std::int64_t sleep_ms(std::int64_t ms);
// Number of the job's random points inside the quarter unit circle (x² + y² ≤ 1).
std::uint64_t pi_samples(const PiJob& job);
// Great-circle distance in km (haversine formula, mean Earth radius 6371.0088 km).
double great_circle(const GeoPair& pair);
// Number of rows of table B that equal `row`.
std::int64_t compare_lists(const Row& row);
// Σ (i mod 7) · i over [begin, end), in wrapping unsigned 64-bit arithmetic (a loop the compiler
// cannot replace with a closed form, so the work is real).
std::uint64_t range_sum(const Range& range);

}  // namespace serial

// ---- the task handles ----

inline constexpr Task<std::int64_t(std::int64_t)> addit{"examples.addit"};
inline constexpr Task<std::int64_t(std::int64_t)> sleep_ms{"examples.sleep_ms"};
inline constexpr Task<std::uint64_t(PiJob)> pi_samples{"examples.pi_samples"};
inline constexpr Task<double(GeoPair)> great_circle{"examples.great_circle"};
inline constexpr Task<std::int64_t(Row)> compare_lists{"examples.compare_lists"};
inline constexpr Task<std::uint64_t(Range)> range_sum{"examples.range_sum"};

// ---- deterministic inputs ----

inline constexpr std::size_t kTableRows = 20'000;
// Table A of the compare_lists example (kTableRows rows, seeded). Table B, which the task compares
// against, is generated inside the library once per process from another seed.
std::vector<Row> compare_lists_table_a();
const std::vector<Row>& compare_lists_table_b();
// `count` random point pairs, seeded.
std::vector<GeoPair> random_geo_pairs(std::size_t count, std::uint64_t seed);

}  // namespace poolmap::examples
