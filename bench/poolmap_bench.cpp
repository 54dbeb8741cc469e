// poolmap-bench: one run of one benchmark workload with poolmap, printed as one JSON line.
//
//   poolmap-bench WORKLOAD [--broker EP] [--processes N] [--clients C] [--broker-pid PID]
//
// WORKLOAD is one of tiny, fine, payload, latency, sleep, pi, startup, uneven, memory, imap, scale
// (see docs/BENCHMARKS.md). Without --broker the Pool is embedded (N worker processes, default 2);
// with it, the Pool is remote and waits for N workers at that broker. imap and scale are remote
// only; with --broker-pid they also report the broker's peak RSS (imap) or its CPU time per chunk
// (scale), read from /proc. Every run checks its
// results, so a fast wrong answer fails (exit 1). scripts/bench runs this, the Python peers
// (bench/peers.py) and the raw ZeroMQ relay side by side and prints the table.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include <ranges>
#include <thread>

#include <unistd.h>

#include <CLI/CLI.hpp>

#include "bench_tasks.hpp"
#include "poolmap/poolmap.hpp"

namespace {

using Clock = std::chrono::steady_clock;
namespace bench = poolmap::bench;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

[[noreturn]] void wrong(const std::string& workload) {
  std::fprintf(stderr, "poolmap-bench: %s returned wrong results\n", workload.c_str());
  std::exit(1);
}

std::vector<std::int64_t> iota(std::size_t n) {
  std::vector<std::int64_t> items(n);
  std::iota(items.begin(), items.end(), 0);
  return items;
}

void check_squares(const std::string& workload, const std::vector<std::int64_t>& results) {
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto x = static_cast<std::int64_t>(i);
    if (results[i] != x * x) wrong(workload);
  }
}

struct Figure {
  double value = 0;
  const char* unit = "";
  double seconds = 0;  // wall time of the measured part
  std::string extra;   // more JSON fields, each starting with ", "
};

// Peak resident set (VmHWM) of process `pid` so far ("self": this one), KiB; -1 when it cannot be read.
long peak_rss_kib_of(const std::string& pid) {
  std::ifstream status("/proc/" + pid + "/status");
  std::string key;
  while (status >> key) {
    if (key == "VmHWM:") {
      long kib = 0;
      status >> kib;
      return kib;
    }
  }
  return -1;
}
long peak_rss_kib() { return peak_rss_kib_of("self"); }

// User + system CPU time of process `pid` so far, seconds; -1 when it cannot be read.
double cpu_seconds_of(long pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return -1;
  const auto close = line.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return -1;
  std::istringstream fields(line.substr(close + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {  // fields 14 and 15: utime, stime
    if (i >= 14) ticks += std::stod(field);
  }
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

}  // namespace

int main(int argc, char** argv) {
  poolmap::init(argc, argv);  // an embedded worker copy of this program stops here
  CLI::App app{"poolmap-bench: one run of one benchmark workload"};
  std::string workload;
  std::string broker;
  std::size_t processes = 2;
  std::size_t clients = 8;
  long broker_pid = 0;
  app.add_option("WORKLOAD", workload,
                 "tiny, fine, payload, latency, sleep, pi, startup, uneven, memory, imap or scale")
      ->required();
  app.add_option("--clients", clients, "scale: clients mapping at once (one Pool each)")->capture_default_str();
  app.add_option("--broker-pid", broker_pid, "imap, scale: the broker's pid, for its memory and CPU time");
  app.add_option("--broker", broker, "remote mode: the broker's client endpoint");
  app.add_option("--processes", processes, "worker processes (embedded) or workers to wait for (remote)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto open = [&] {
    if (broker.empty()) return std::make_unique<poolmap::Pool>(poolmap::PoolOptions{.processes = processes});
    auto pool = std::make_unique<poolmap::Pool>(poolmap::PoolOptions{.broker = broker});
    if (!pool->wait_for_workers(processes, std::chrono::seconds(60))) {
      std::fprintf(stderr, "poolmap-bench: fewer than %zu workers at %s\n", processes, broker.c_str());
      std::exit(1);
    }
    return pool;
  };

  Figure figure;
  try {
    if (workload == "startup") {
      // Pool up, one result, Pool down: what a short script pays.
      const auto start = Clock::now();
      {
        poolmap::Pool pool(poolmap::PoolOptions{.processes = processes});
        if (pool.submit(bench::square, std::int64_t{7}).get() != 49) wrong(workload);
      }
      figure.seconds = seconds_since(start);
      figure.value = figure.seconds * 1e3;
      figure.unit = "ms";
    } else {
      auto pool = open();
      check_squares("warm-up", pool->map(bench::square, iota(1000)));  // workers up and connected
      if (workload == "tiny") {
        const auto items = iota(1'000'000);
        const auto start_map = Clock::now();
        const auto results = pool->map(bench::square, items);
        figure.seconds = seconds_since(start_map);
        check_squares(workload, results);
        figure.value = static_cast<double>(items.size()) / figure.seconds;
        figure.unit = "items/s";
      } else if (workload == "fine") {
        const auto items = iota(50'000);
        const auto start_map = Clock::now();
        const auto results = pool->map(bench::square, items, {.chunksize = 1});
        figure.seconds = seconds_since(start_map);
        check_squares(workload, results);
        figure.value = static_cast<double>(items.size()) / figure.seconds;
        figure.unit = "items/s";
      } else if (workload == "payload") {
        std::vector<std::vector<std::uint8_t>> items(64, std::vector<std::uint8_t>(4 << 20));
        for (std::size_t i = 0; i < items.size(); ++i) items[i][i] = static_cast<std::uint8_t>(i + 1);
        const auto start_map = Clock::now();
        const auto results = pool->map(bench::identity, items, {.chunksize = 1});
        figure.seconds = seconds_since(start_map);
        if (results != items) wrong(workload);
        figure.value = 2.0 * 64 * (4 << 20) / figure.seconds / 1e6;
        figure.unit = "MB/s";
      } else if (workload == "latency") {
        constexpr int kCalls = 2000;
        const auto start_calls = Clock::now();
        for (std::int64_t i = 0; i < kCalls; ++i) {
          if (pool->submit(bench::square, i).get() != i * i) wrong(workload);
        }
        figure.seconds = seconds_since(start_calls);
        figure.value = figure.seconds / kCalls * 1e6;
        figure.unit = "us/call";
      } else if (workload == "sleep") {
        const std::vector<std::int64_t> naps(24, 100);
        const auto start_map = Clock::now();
        const auto results = pool->map(bench::sleep_ms, naps, {.chunksize = 1});
        figure.seconds = seconds_since(start_map);
        if (results != naps) wrong(workload);
        figure.value = figure.seconds;
        figure.unit = "s";
      } else if (workload == "pi") {
        std::vector<std::uint64_t> seeds(64);
        std::iota(seeds.begin(), seeds.end(), 1);
        const auto start_map = Clock::now();
        const auto hits = pool->map(bench::pi_hits, seeds, {.chunksize = 1});
        figure.seconds = seconds_since(start_map);
        const double pi = 4.0 * static_cast<double>(std::accumulate(hits.begin(), hits.end(), std::uint64_t{0})) /
                          (64.0 * static_cast<double>(bench::kPiSamples));
        if (pi < 3.14 || pi > 3.143) wrong(workload);
        figure.value = figure.seconds;
        figure.unit = "s";
      } else if (workload == "uneven") {
        // One 1 s item first, then 199 of 10 ms, one item per chunk, on `processes` workers.
        std::vector<std::int64_t> naps(200, 10);
        naps[0] = 1000;
        const auto start_map = Clock::now();
        const auto results = pool->map(bench::sleep_ms, naps, {.chunksize = 1});
        figure.seconds = seconds_since(start_map);
        if (results != naps) wrong(workload);
        const double work = std::accumulate(naps.begin(), naps.end(), 0.0) / 1e3;
        const double ideal = std::max(1.0, work / static_cast<double>(processes));
        figure.value = figure.seconds / ideal;
        figure.unit = "x ideal";
      } else if (workload == "imap") {
        // imap over 10^8 items: memory stays bounded by the window, whatever the input's length.
        if (broker.empty()) throw std::invalid_argument("imap runs against a broker (--broker)");
        constexpr std::int64_t kItems = 100'000'000;
        std::int64_t sum = 0;
        std::int64_t count = 0;
        const auto start_map = Clock::now();
        for (const std::int64_t r : pool->imap(bench::square, std::views::iota(std::int64_t{0}, kItems))) {
          sum += r;
          ++count;
        }
        figure.seconds = seconds_since(start_map);
        // The sum of squares below 10^8, modulo 2^64 (it overflows int64, the same way each time).
        std::uint64_t expected = 0;
        for (std::uint64_t i = 0; i < static_cast<std::uint64_t>(kItems); ++i) expected += i * i;
        if (count != kItems || static_cast<std::uint64_t>(sum) != expected) wrong(workload);
        figure.value = static_cast<double>(peak_rss_kib()) / 1024;
        figure.unit = "MiB client peak";
        figure.extra = ", \"items_per_s\": " + std::to_string(static_cast<double>(kItems) / figure.seconds);
        if (broker_pid > 0) {
          figure.extra += ", \"broker_peak_rss_kib\": " + std::to_string(peak_rss_kib_of(std::to_string(broker_pid)));
        }
      } else if (workload == "scale") {
        // `clients` Pools at once, each mapping chunksize 1 over its own items, through one broker
        // to `processes` workers: chunks per second through the broker, and its CPU per chunk.
        if (broker.empty()) throw std::invalid_argument("scale runs against a broker (--broker)");
        constexpr std::size_t kItemsPerClient = 20'000;
        std::vector<std::unique_ptr<poolmap::Pool>> pools;
        for (std::size_t c = 0; c < clients; ++c) pools.push_back(open());
        for (auto& each : pools) check_squares("warm-up", each->map(bench::square, iota(100), {.chunksize = 1}));
        const double cpu_before = broker_pid > 0 ? cpu_seconds_of(broker_pid) : -1;
        std::vector<std::thread> threads;
        std::vector<int> right(clients, 0);
        const auto start_map = Clock::now();
        for (std::size_t c = 0; c < clients; ++c) {
          threads.emplace_back([&, c] {
            const auto results = pools[c]->map(bench::square, iota(kItemsPerClient), {.chunksize = 1});
            right[c] = results.size() == kItemsPerClient && results.back() == std::int64_t{kItemsPerClient - 1} *
                                                                                  std::int64_t{kItemsPerClient - 1};
          });
        }
        for (auto& thread : threads) thread.join();
        figure.seconds = seconds_since(start_map);
        if (std::count(right.begin(), right.end(), 1) != static_cast<std::ptrdiff_t>(clients)) wrong(workload);
        const double chunks = static_cast<double>(clients * kItemsPerClient);
        figure.value = chunks / figure.seconds;
        figure.unit = "chunks/s";
        figure.extra = ", \"clients\": " + std::to_string(clients);
        if (cpu_before >= 0) {
          figure.extra += ", \"broker_cpu_us_per_chunk\": " +
                          std::to_string((cpu_seconds_of(broker_pid) - cpu_before) / chunks * 1e6);
        }
      } else if (workload == "memory") {
        const auto items = iota(10'000'000);
        const auto start_map = Clock::now();
        const auto results = pool->map(bench::square, items);
        figure.seconds = seconds_since(start_map);
        check_squares(workload, results);
        const double data_bytes = 2.0 * 8 * static_cast<double>(items.size());  // input + output
        figure.value = static_cast<double>(peak_rss_kib()) * 1024 / data_bytes;
        figure.unit = "x data";
      } else {
        std::fprintf(stderr, "poolmap-bench: unknown workload '%s'\n", workload.c_str());
        return 2;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "poolmap-bench: %s failed: %s\n", workload.c_str(), e.what());
    return 1;
  }
  std::printf("{\"workload\": \"%s\", \"impl\": \"poolmap-%s\", \"processes\": %zu, \"value\": %.6g, \"unit\": \"%s\", "
              "\"seconds\": %.6g, \"peak_rss_kib\": %ld%s}\n",
              workload.c_str(), broker.empty() ? "embedded" : "remote", processes, figure.value, figure.unit,
              figure.seconds, peak_rss_kib(), figure.extra.c_str());
  return 0;
}
