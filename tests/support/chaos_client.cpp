// The client of scripts/chaos (the operator's soak test; not part of ctest).
//
//   poolmap_chaos_client --broker EP --seconds T [--seed S] [--heartbeat-ms MS]
//                        [--reconnect-ms MS] [--wait-workers N]
//
// Maps test.slow_hash over random workloads until T seconds have passed (the map running then is
// finished): each map has 1,000..20,000 SlowItem{index, sleep_us 0..500} and a random chunk size
// (0 = the default, or 1..200). Each map's items start at a random index, so a result that belongs
// to another map (or to another client) is caught as well as a lost, duplicated or misplaced one.
// After each map it counts the items submitted and returned; a map that throws has all its items
// counted as lost, and its error is logged. One line per map goes to stderr; at the end ONE line
// goes to stdout:
//
//   chaos-client submitted=N returned=N lost=N wrong=N maps=N failed_maps=N seconds=S
//
// where seconds is the time spent inside map(). Exit status 0, or 1 when any item was lost or
// wrong, 2 for bad arguments, 3 when --wait-workers timed out.
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "poolmap/poolmap.hpp"
#include "test_tasks.hpp"

namespace {

namespace t = poolmap::test;
using Clock = std::chrono::steady_clock;

struct Arguments {
  std::string broker;
  double seconds = -1;
  std::uint64_t seed = 1;
  long heartbeat_ms = 200;
  long reconnect_ms = 30'000;
  long wait_workers = 0;
};

[[noreturn]] void usage(const char* program, const char* problem) {
  if (problem != nullptr) std::fprintf(stderr, "%s: %s\n", program, problem);
  std::fprintf(stderr,
               "usage: %s --broker EP --seconds T [--seed S] [--heartbeat-ms MS] [--reconnect-ms MS] "
               "[--wait-workers N]\n",
               program);
  std::exit(problem != nullptr ? 2 : 0);
}

bool parse_number(const char* text, double& out) {
  char* end = nullptr;
  out = std::strtod(text, &end);
  return end != text && *end == '\0';
}

Arguments parse(int argc, char** argv) {
  Arguments args;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") usage(argv[0], nullptr);
    if (i + 1 >= argc) usage(argv[0], ("missing value for " + flag).c_str());
    const char* value = argv[++i];
    double number = 0;
    if (flag == "--broker") {
      args.broker = value;
      continue;
    }
    if (!parse_number(value, number) || number < 0) usage(argv[0], ("bad value for " + flag).c_str());
    if (flag == "--seconds") {
      args.seconds = number;
    } else if (flag == "--seed") {
      args.seed = static_cast<std::uint64_t>(number);
    } else if (flag == "--heartbeat-ms" && number >= 1) {
      args.heartbeat_ms = static_cast<long>(number);
    } else if (flag == "--reconnect-ms" && number >= 1) {
      args.reconnect_ms = static_cast<long>(number);
    } else if (flag == "--wait-workers") {
      args.wait_workers = static_cast<long>(number);
    } else {
      usage(argv[0], ("unknown flag or bad value: " + flag).c_str());
    }
  }
  if (args.broker.empty()) usage(argv[0], "--broker is required");
  if (args.seconds < 0) usage(argv[0], "--seconds is required");
  return args;
}

// "2026-11-21T11:31:10.615", like the daemons' logs, so the lines can be merged with theirs.
std::string timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm local{};
  ::localtime_r(&seconds, &local);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &local);
  char out[48];
  std::snprintf(out, sizeof(out), "%s.%03d", text, static_cast<int>(ms));
  return out;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  poolmap::init(argc, argv);
  const Arguments args = parse(argc, argv);
  const int pid = static_cast<int>(::getpid());

  poolmap::Pool pool({.broker = args.broker,
                      .heartbeat_interval = std::chrono::milliseconds(args.heartbeat_ms),
                      .reconnect_timeout = std::chrono::milliseconds(args.reconnect_ms)});
  if (args.wait_workers > 0 &&
      !pool.wait_for_workers(static_cast<std::size_t>(args.wait_workers), std::chrono::seconds(30))) {
    std::fprintf(stderr, "%s chaos-client[%d] %zu of %ld worker processes registered within 30 s\n",
                 timestamp().c_str(), pid, pool.workers(), args.wait_workers);
    return 3;
  }

  std::mt19937_64 random(args.seed);
  std::uniform_int_distribution<std::size_t> item_count(1'000, 20'000);
  std::uniform_int_distribution<std::size_t> chunk_choice(0, 200);  // 0 = the default chunk size
  std::uniform_int_distribution<std::int32_t> sleep_us(0, 500);
  std::uniform_int_distribution<std::int64_t> first_index(0, std::int64_t{1} << 40);

  std::uint64_t submitted = 0;
  std::uint64_t returned = 0;
  std::uint64_t lost = 0;
  std::uint64_t wrong = 0;
  std::uint64_t maps = 0;
  std::uint64_t failed_maps = 0;
  double map_seconds = 0;

  const auto start = Clock::now();
  std::vector<t::SlowItem> items;
  while (seconds_since(start) < args.seconds) {
    const std::size_t n = item_count(random);
    const std::size_t chunksize = chunk_choice(random);
    const std::int64_t base = first_index(random);
    items.resize(n);
    for (std::size_t i = 0; i < n; ++i) items[i] = {base + static_cast<std::int64_t>(i), sleep_us(random)};
    ++maps;
    submitted += n;
    std::fprintf(stderr, "%s chaos-client[%d] map %" PRIu64 " start: %zu items from %" PRId64 ", chunksize %zu\n",
                 timestamp().c_str(), pid, maps, n, base, chunksize);

    const auto map_start = Clock::now();
    std::vector<std::uint64_t> results;
    std::string error;
    try {
      results = pool.map(t::slow_hash, items, {.chunksize = chunksize});
    } catch (const poolmap::Error& e) {
      error = std::string(poolmap::to_string(e.code())) + ": " + e.what();
    } catch (const std::exception& e) {
      error = std::string("exception: ") + e.what();
    }
    const double took = seconds_since(map_start);
    map_seconds += took;

    if (!error.empty()) {
      // The map failed: none of its results reached the caller.
      ++failed_maps;
      lost += n;
      std::fprintf(stderr, "%s chaos-client[%d] map %" PRIu64 " FAILED after %.3f s, %zu items lost: %s\n",
                   timestamp().c_str(), pid, maps, took, n, error.c_str());
      continue;
    }
    // Positions past the end are missing (lost); extra results are duplicates (wrong).
    const std::size_t common = results.size() < n ? results.size() : n;
    std::uint64_t map_wrong = 0;
    std::size_t first_wrong = n;
    for (std::size_t i = 0; i < common; ++i) {
      if (results[i] != t::hash_index(items[i].index)) {
        if (first_wrong == n) first_wrong = i;
        ++map_wrong;
      }
    }
    const std::uint64_t map_lost = n - common;
    map_wrong += results.size() - common;
    returned += results.size();
    lost += map_lost;
    wrong += map_wrong;
    if (map_lost > 0 || map_wrong > 0) {
      std::fprintf(stderr,
                   "%s chaos-client[%d] map %" PRIu64 " BAD after %.3f s: %zu results for %zu items, %" PRIu64
                   " lost, %" PRIu64 " wrong (first wrong position %zu)\n",
                   timestamp().c_str(), pid, maps, took, results.size(), n, map_lost, map_wrong, first_wrong);
    } else {
      std::fprintf(stderr, "%s chaos-client[%d] map %" PRIu64 " ok in %.3f s\n", timestamp().c_str(), pid, maps,
                   took);
    }
  }

  std::printf("chaos-client submitted=%" PRIu64 " returned=%" PRIu64 " lost=%" PRIu64 " wrong=%" PRIu64
              " maps=%" PRIu64 " failed_maps=%" PRIu64 " seconds=%.3f\n",
              submitted, returned, lost, wrong, maps, failed_maps, map_seconds);
  std::fflush(stdout);
  return lost > 0 || wrong > 0 ? 1 : 0;
}
