#include "common.hpp"

#include <cstdio>
#include <exception>
#include <memory>

namespace poolmap::examples {

void add_common_options(CLI::App& app, CommonOptions& options, std::size_t default_workers,
                        std::size_t default_chunksize) {
  options.workers = default_workers;
  options.chunksize = default_chunksize;
  app.add_option("--broker", options.broker,
                 "broker client endpoint, e.g. tcp://127.0.0.1:5555 (default: embedded Pool on this machine)");
  app.add_option("--workers", options.workers,
                 "remote: wait until this many workers are registered before timing (0 = at least one); "
                 "embedded: worker processes to start (0 = physical cores)")
      ->capture_default_str();
  app.add_option("--chunksize", options.chunksize, "items per chunk (0 = Python's ceil(N / (4 x workers)))")
      ->capture_default_str();
  app.add_option("--wait", options.wait_seconds, "remote: seconds to wait for the workers")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_flag("--header", options.header, "print the table header before the row");
}

namespace {

void print_header() {
  std::printf("%-14s | %-26s | %10s | %16s | %8s\n", "example", "result", "parallel s", "serial s", "speed-up");
  std::printf("%s\n", "---------------+----------------------------+------------+------------------+---------");
}

void print_row(std::string_view name, const Measurement& m) {
  char serial[32];
  if (m.serial_ideal) {
    std::snprintf(serial, sizeof(serial), "%.3f (ideal)", m.serial_s);
  } else {
    std::snprintf(serial, sizeof(serial), "%.3f", m.serial_s);
  }
  const double speedup = m.parallel_s > 0 ? m.serial_s / m.parallel_s : 0.0;
  std::printf("%-14.*s | %-26s | %10.3f | %16s | %7.2fx\n", static_cast<int>(name.size()), name.data(),
              m.result.c_str(), m.parallel_s, serial, speedup);
}

std::unique_ptr<Pool> open_pool(const CommonOptions& options) {
  if (options.broker.empty()) {
    return std::make_unique<Pool>(PoolOptions{.processes = options.workers});
  }
  auto pool = std::make_unique<Pool>(PoolOptions{.broker = options.broker});
  const std::size_t wanted = options.workers == 0 ? 1 : options.workers;
  const auto timeout = std::chrono::milliseconds(static_cast<long long>(options.wait_seconds * 1000));
  if (!pool->wait_for_workers(wanted, timeout)) {
    char waited[32];
    std::snprintf(waited, sizeof(waited), "%g s", options.wait_seconds);
    bool broker_answers = true;
    try {
      pool->status(std::chrono::seconds(1));
    } catch (const Error&) {
      broker_answers = false;
    }
    if (!broker_answers) {
      throw Error(ErrorCode::kUnavailable, "no answer from a poolmap broker at " + options.broker + " within " +
                                               waited + " (is poolmap-broker running, with --clients on that endpoint?)");
    }
    throw Error(ErrorCode::kUnavailable,
                "only " + std::to_string(pool->workers()) + " of " + std::to_string(wanted) +
                    " workers registered at the broker " + options.broker + " within " + waited +
                    " (start more: poolmap-worker --broker <its worker endpoint> --tasks libpoolmap_examples.so)");
  }
  return pool;
}

}  // namespace

int run_example(std::string_view name, const CommonOptions& options,
                const std::function<Measurement(Pool& pool, const MapOptions& map_options)>& body) {
  if (options.header) {
    print_header();
    std::fflush(stdout);
  }
  try {
    const auto pool = open_pool(options);
    const Measurement m = body(*pool, MapOptions{.chunksize = options.chunksize});
    if (!m.agree) {
      std::fprintf(stderr, "poolmap-example-%.*s: serial and parallel results differ: %s\n",
                   static_cast<int>(name.size()), name.data(), m.mismatch.c_str());
      return 1;
    }
    print_row(name, m);
    std::fflush(stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "poolmap-example-%.*s: %s\n", static_cast<int>(name.size()), name.data(), e.what());
    return 1;
  }
}

}  // namespace poolmap::examples
