#include "tasks.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numbers>
#include <random>
#include <thread>

namespace poolmap::examples {

namespace {

// A double in [0, 1) from the top 53 bits of one draw: the same on every platform, unlike
// std::uniform_real_distribution, whose algorithm the standard leaves open.
double unit_double(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

std::vector<Row> make_table(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Row> table(kTableRows);
  for (Row& row : table) {
    for (std::int32_t& value : row.values) value = static_cast<std::int32_t>(rng() % 5);
  }
  return table;
}

constexpr std::uint64_t kTableASeed = 20'240'601;
constexpr std::uint64_t kTableBSeed = 19'700'101;

}  // namespace

namespace serial {

std::int64_t addit(std::int64_t x) { return x + 1; }

std::int64_t sleep_ms(std::int64_t ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(std::max<std::int64_t>(ms, 0)));
  return ms;
}

std::uint64_t pi_samples(const PiJob& job) {
  std::mt19937_64 rng(job.seed);
  std::uint64_t hits = 0;
  for (std::uint64_t i = 0; i < job.samples; ++i) {
    const double x = unit_double(rng);
    const double y = unit_double(rng);
    hits += (x * x + y * y <= 1.0) ? 1 : 0;
  }
  return hits;
}

double great_circle(const GeoPair& pair) {
  constexpr double kEarthRadiusKm = 6371.0088;
  constexpr double kRadians = std::numbers::pi / 180.0;
  const double phi1 = pair.lat1 * kRadians;
  const double phi2 = pair.lat2 * kRadians;
  const double half_dphi = (pair.lat2 - pair.lat1) * kRadians / 2;
  const double half_dlambda = (pair.lon2 - pair.lon1) * kRadians / 2;
  const double a = std::sin(half_dphi) * std::sin(half_dphi) +
                   std::cos(phi1) * std::cos(phi2) * std::sin(half_dlambda) * std::sin(half_dlambda);
  return 2 * kEarthRadiusKm * std::asin(std::min(1.0, std::sqrt(a)));
}

std::int64_t compare_lists(const Row& row) {
  const std::vector<Row>& table_b = compare_lists_table_b();
  std::int64_t matches = 0;
  for (const Row& other : table_b) {
    bool equal = true;
    for (std::size_t k = 0; k < kRowWidth; ++k) {
      if (other.values[k] != row.values[k]) {
        equal = false;
        break;
      }
    }
    matches += equal ? 1 : 0;
  }
  return matches;
}

std::uint64_t range_sum(const Range& range) {
  std::uint64_t sum = 0;
  for (std::int64_t i = range.begin; i < range.end; ++i) {
    const auto u = static_cast<std::uint64_t>(i);
    sum += (u % 7) * u;
  }
  return sum;
}

}  // namespace serial

std::vector<Row> compare_lists_table_a() { return make_table(kTableASeed); }

const std::vector<Row>& compare_lists_table_b() {
  static const std::vector<Row> table = make_table(kTableBSeed);  // once per process, thread-safe
  return table;
}

std::vector<GeoPair> random_geo_pairs(std::size_t count, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<GeoPair> pairs(count);
  for (GeoPair& p : pairs) {
    p.lat1 = unit_double(rng) * 180.0 - 90.0;
    p.lon1 = unit_double(rng) * 360.0 - 180.0;
    p.lat2 = unit_double(rng) * 180.0 - 90.0;
    p.lon2 = unit_double(rng) * 360.0 - 180.0;
  }
  return pairs;
}

// ---- registration: the tasks a worker runs after loading this library ----

POOLMAP_TASK(addit, serial::addit);
POOLMAP_TASK(sleep_ms, serial::sleep_ms);
POOLMAP_TASK(pi_samples, serial::pi_samples);
POOLMAP_TASK(great_circle, serial::great_circle);
POOLMAP_TASK(compare_lists, serial::compare_lists);
POOLMAP_TASK(range_sum, serial::range_sum);

}  // namespace poolmap::examples
