// What the example programs share: their common command-line flags, opening the Pool (embedded or
// remote), timing, and the one table row each program prints.
//
//   name           | result                     | parallel s |         serial s | speed-up
//
// Every program runs the serial loop and pool.map over the same inputs, checks that they agree
// (exit status 1 if not) and prints one row on stdout; --header prints the header line first.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <functional>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <CLI/CLI.hpp>

#include "poolmap/pool.hpp"

namespace poolmap::examples {

struct CommonOptions {
  std::string broker;          // "" = embedded Pool
  std::size_t workers = 0;     // remote: workers to wait for; embedded: PoolOptions::processes
  std::size_t chunksize = 0;   // MapOptions::chunksize (0 = Python's default)
  double wait_seconds = 30;    // remote: how long to wait for the workers
  bool header = false;
};

// Adds --broker, --workers, --chunksize, --wait and --header to `app`, with the given defaults.
void add_common_options(CLI::App& app, CommonOptions& options, std::size_t default_workers = 0,
                        std::size_t default_chunksize = 0);

// What one example measured.
struct Measurement {
  std::string result;         // short, e.g. "pi ~ 3.141593"
  double parallel_s = 0;      // pool.map
  double serial_s = 0;        // the serial loop
  bool serial_ideal = false;  // serial_s was computed, not measured
  bool agree = true;          // serial and parallel results are the same
  std::string mismatch;       // why not, when !agree
};

// Seconds `f` takes.
template <class F>
double seconds(F&& f) {
  const auto start = std::chrono::steady_clock::now();
  std::forward<F>(f)();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Compares the serial and the parallel results; floating-point values within a relative 1e-12
// (workers on other hosts may have another libm). Fills `m.agree` and `m.mismatch`.
template <class T>
void compare_results(const std::vector<T>& serial, const std::vector<T>& parallel, Measurement& m) {
  m.agree = true;
  if (serial.size() != parallel.size()) {
    m.agree = false;
    m.mismatch = std::to_string(serial.size()) + " serial results, " + std::to_string(parallel.size()) + " parallel";
    return;
  }
  for (std::size_t i = 0; i < serial.size(); ++i) {
    bool same = false;
    if constexpr (std::is_floating_point_v<T>) {
      same = std::abs(serial[i] - parallel[i]) <= 1e-12 * std::max(std::abs(serial[i]), std::abs(parallel[i]));
    } else {
      same = serial[i] == parallel[i];
    }
    if (!same) {
      std::ostringstream why;
      why.precision(17);
      why << "item " << i << ": serial " << serial[i] << ", parallel " << parallel[i];
      m.agree = false;
      m.mismatch = why.str();
      return;
    }
  }
}

// Opens the Pool the options describe (in remote mode: waits until `workers` workers, at least one,
// are registered), runs `body` on it and prints the row. Returns the exit status of the program:
// 0, or 1 (with a message on stderr) when the results disagree or poolmap fails.
int run_example(std::string_view name, const CommonOptions& options,
                const std::function<Measurement(Pool& pool, const MapOptions& map_options)>& body);

}  // namespace poolmap::examples
