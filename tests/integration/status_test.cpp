// What a user sees of a running cluster: item-level progress, `poolmap status` (per-worker errors
// and last-seen times, jobs per client) and the CLI's progress bar.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <algorithm>
#include <map>
#include <atomic>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "poolmap/poolmap.hpp"
#include "process.hpp"
#include "test_tasks.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;

namespace {

poolmap::PoolOptions remote(const t::Cluster& cluster) {
  return {.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()};
}

}  // namespace

TEST_CASE("Status.Progress.ItemLevelCountsArriveWhileALongChunkRuns" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 1});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 20s));
  // One chunk of 20 items of 40 ms: before, only the chunk's end moved the count (0, then 20).
  std::vector<std::size_t> seen;
  const auto results = pool.map(t::sleep_ms, std::vector<std::int64_t>(20, 40),
                                {.chunksize = 20,
                                 .progress = [&](std::size_t done, std::size_t total) {
                                   CHECK(total == 20);
                                   seen.push_back(done);
                                 },
                                 .progress_interval = 20ms});
  CHECK(results.size() == 20);
  REQUIRE(!seen.empty());
  CHECK(seen.back() == 20);
  CHECK(std::is_sorted(seen.begin(), seen.end()));
  const auto within = std::count_if(seen.begin(), seen.end(), [](std::size_t done) { return done > 0 && done < 20; });
  CHECK(within >= 2);  // several counts between the start and the end of the one chunk
}

TEST_CASE("Status.Cli.WorkersErrorsLastSeenAndTheJobsOfEachClient" * doctest::timeout(120)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 20s));
  std::vector<std::int64_t> to_twenty(20);
  std::iota(to_twenty.begin(), to_twenty.end(), 1);
  CHECK_THROWS_AS((void)pool.map(t::fail_at_13, to_twenty, {.chunksize = 20}), poolmap::TaskError);

  // A second client with a map that takes a while: 40 items of 250 ms in chunks of 20, 5 s on the
  // two workers, so that the CLI (slow to start in a sanitizer build) finds it still running.
  std::thread slow([&] {
    poolmap::Pool other(remote(cluster));
    CHECK(other.map(t::sleep_ms, std::vector<std::int64_t>(40, 250), {.chunksize = 20}).size() == 40);
  });
  struct JoinOnExit {
    std::thread& thread;
    ~JoinOnExit() { thread.join(); }
  } join{slow};

  poolmap::BrokerStatus status;
  REQUIRE(t::eventually(
      [&] {
        status = pool.status();
        return status.jobs.size() == 1 && status.jobs.front().items_done > 0;
      },
      20s));
  const auto& job = status.jobs.front();
  CHECK(job.task == "test.sleep_ms");
  CHECK(job.items_total == 40);
  CHECK(job.items_done < 40);
  CHECK(job.chunks_in_flight == 2);
  CHECK(job.client_pid == static_cast<std::uint32_t>(::getpid()));
  std::uint64_t failed = 0;
  for (const auto& worker : status.workers) {
    failed += worker.chunks_failed;
    CHECK(worker.last_seen < t::heartbeat() * 3);  // a live worker was heard within a liveness period
  }
  CHECK(failed == 1);

  t::ChildProcess table({t::cli_binary(), "status", "--broker", cluster.client_endpoint()});
  const std::string out = table.read_all(10s);
  CHECK(table.wait(10s).has_value());
  CHECK(out.find("FAILED") != std::string::npos);
  CHECK(out.find("LAST SEEN") != std::string::npos);
  CHECK(out.find("test.sleep_ms") != std::string::npos);
  CHECK(out.find("/40") != std::string::npos);

  t::ChildProcess json({t::cli_binary(), "status", "--json", "--broker", cluster.client_endpoint()});
  const std::string object = json.read_all(10s);
  CHECK(json.wait(10s).has_value());
  CHECK(object.find("\"task\":\"test.sleep_ms\"") != std::string::npos);
  CHECK(object.find("\"items_total\":40") != std::string::npos);
  CHECK(object.find("\"chunks_failed\":1") != std::string::npos);

  // A job whose items are all done leaves the list (a liveness period later).
  slow.join();
  slow = std::thread([] {});
  CHECK(t::eventually([&] { return pool.status().jobs.empty(); }, 10s));
}

TEST_CASE("Status.Cli.MapShowsAProgressBarOnATerminalOnly" * doctest::timeout(120)) {
  t::Cluster cluster({.workers = 2});
  {
    poolmap::Pool pool(remote(cluster));
    REQUIRE(pool.wait_for_workers(2, 20s));
  }
  // `script` gives the command a terminal; its output is what the terminal showed.
  const std::string command = "yes 30 | head -40 | " + t::cli_binary() + " map test.sleep_ms --chunksize 10 --broker " +
                              cluster.client_endpoint();
  t::ChildProcess terminal({"/usr/bin/script", "-qfec", command, "/dev/null"});
  const std::string shown = terminal.read_all(60s);
  const auto status = terminal.wait(10s);
  REQUIRE(status.has_value());
  CHECK(WEXITSTATUS(*status) == 0);
  CHECK(shown.find("] 100% 40/40 items") != std::string::npos);
  CHECK(shown.find("30\r\n") != std::string::npos);  // the results, after the bar

  t::ChildProcess piped({"/bin/sh", "-c", command});
  const std::string out = piped.read_all(60s);
  CHECK(piped.wait(10s).has_value());
  std::string forty_results;
  for (int i = 0; i < 40; ++i) forty_results += "30\n";
  CHECK(out == forty_results);
  CHECK(piped.stderr_text().find("items") == std::string::npos);
}

TEST_CASE("Status.Credit.PrefetchAdaptsToTheChunksUnlessFixed" * doctest::timeout(120)) {
  t::Cluster cluster({.workers = 2});
  cluster.add_workers(1, {}, {"--prefetch", "1"});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(3, 20s));
  auto by_supervisor = [&] {
    std::map<std::uint64_t, std::vector<std::uint32_t>> out;
    for (const auto& worker : pool.status().workers) out[worker.supervisor].push_back(worker.credit);
    return out;
  };
  // Before any work: 1 + prefetch 1 everywhere.
  for (const auto& [supervisor, list] : by_supervisor()) {
    for (const auto credit : list) CHECK(credit == 2);
  }
  // Chunks of microseconds: the adaptive workers take many at a time, the fixed one stays at 2.
  std::vector<std::int64_t> many(3000);
  std::iota(many.begin(), many.end(), 0);
  CHECK(pool.map(t::square, many, {.chunksize = 1}).size() == 3000);
  REQUIRE(t::eventually(
      [&] {
        const auto groups = by_supervisor();
        std::size_t raised = 0;
        std::size_t fixed_at_two = 0;
        for (const auto& [supervisor, list] : groups) {
          if (list.size() == 2) raised += static_cast<std::size_t>(std::count_if(list.begin(), list.end(), [](auto c) { return c > 16; }));
          if (list.size() == 1) fixed_at_two += list.front() == 2 ? 1 : 0;
        }
        return raised == 2 && fixed_at_two == 1;
      },
      10s));
  // Chunks of 30 ms: back to prefetch 1, so a slow chunk holds no queue of others behind it.
  CHECK(pool.map(t::sleep_ms, std::vector<std::int64_t>(12, 30), {.chunksize = 1}).size() == 12);
  CHECK(t::eventually(
      [&] {
        for (const auto& [supervisor, list] : by_supervisor()) {
          for (const auto credit : list) {
            if (credit != 2) return false;
          }
        }
        return true;
      },
      10s));
}

TEST_CASE("Status.Credit.ASlowChunkHandsTheChunksWaitingBehindItToAnIdleWorker" * doctest::timeout(120)) {
  t::Cluster cluster({.workers = 1});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 20s));
  // Tiny chunks first: the worker raises its credit and takes many chunks at a time.
  std::vector<std::int64_t> many(3000);
  std::iota(many.begin(), many.end(), 0);
  CHECK(pool.map(t::square, many, {.chunksize = 1}).size() == 3000);
  REQUIRE(t::eventually([&] { return pool.status().workers.front().credit > 16; }, 10s));
  const std::uint64_t first = pool.status().workers.front().instance;
  // Then one chunk of 3 s and 20 of 20 ms: all of them fit in the worker's credit. A second worker
  // comes while the long one runs; the first hands back what waits behind its long chunk (all but
  // one), so the newcomer runs the short ones instead of idling for 3 s.
  std::vector<std::int64_t> naps(21, 20);
  naps[0] = 3000;
  auto future = pool.map_async(t::sleep_ms, naps, {.chunksize = 1});
  cluster.add_workers(1);
  REQUIRE(pool.wait_for_workers(2, 20s));
  CHECK(future.get() == naps);
  std::uint64_t by_newcomer = 0;
  for (const auto& worker : pool.status().workers) {
    if (worker.instance != first) by_newcomer = worker.chunks_done;
  }
  CHECK(by_newcomer >= 15);  // of the 20 short chunks; without the hand-back it gets none
}
