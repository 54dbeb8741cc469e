// Mixed clusters: chunks go only to workers that announced the task with the same signature; a
// task no registered worker has fails at once with what the workers do have; and the worker-side
// Python behaviours (a result that cannot be encoded, max tasks per child).
#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "poolmap/poolmap.hpp"
#include "process.hpp"
#include "test_tasks.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;

namespace {

poolmap::PoolOptions remote(const t::Cluster& cluster) {
  return {.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()};
}

bool has_task(const poolmap::BrokerStatus::Worker& worker, const std::string& name) {
  return std::any_of(worker.tasks.begin(), worker.tasks.end(), [&](const auto& task) { return task.name == name; });
}

std::vector<std::int64_t> iota(std::int64_t n) {
  std::vector<std::int64_t> out(static_cast<std::size_t>(n));
  std::iota(out.begin(), out.end(), 0);
  return out;
}

// Runs `call`, which must throw poolmap::Error; returns its code and message.
template <class Call>
std::pair<poolmap::ErrorCode, std::string> error_of(Call call) {
  try {
    call();
  } catch (const poolmap::Error& e) {
    return {e.code(), e.what()};
  }
  return {poolmap::ErrorCode::kOk, "no error"};
}

}  // namespace

TEST_CASE("Routing.Capability.ChunksGoOnlyToWorkersThatHaveTheTask" * doctest::timeout(60)) {
  // One process with the test tasks, two with an unrelated library. Every chunk must run on the
  // capable one; before routing by capability, every map failed with "not registered".
  t::Cluster cluster({.workers = 1});
  cluster.add_workers(2, t::other_tasks_library());
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(3, 20s));
  const auto status = pool.status();
  std::set<std::int64_t> capable;
  for (const auto& worker : status.workers) {
    if (has_task(worker, "test.worker_pid")) capable.insert(worker.pid);
  }
  REQUIRE(capable.size() == 1);
  for (int round = 0; round < 3; ++round) {
    const auto pids = pool.map(t::worker_pid, iota(60), {.chunksize = 1});
    REQUIRE(pids.size() == 60);
    CHECK(std::all_of(pids.begin(), pids.end(), [&](std::int64_t pid) { return capable.contains(pid); }));
  }
  CHECK(pool.map(t::square, iota(1000)) == [] {
    std::vector<std::int64_t> squares;
    for (std::int64_t i = 0; i < 1000; ++i) squares.push_back(i * i);
    return squares;
  }());
}

TEST_CASE("Routing.Capability.TwoSignaturesOfOneNameEachGoToTheirWorkers" * doctest::timeout(60)) {
  // A rolling upgrade: one worker has test.square as i64(i64), another as double(double).
  t::Cluster cluster({.workers = 1});
  cluster.add_workers(1, t::variant_tasks_library());
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 20s));
  for (int round = 0; round < 3; ++round) {
    CHECK(pool.map(t::square, std::vector<std::int64_t>{1, 2, 3, 4}, {.chunksize = 1}) ==
          std::vector<std::int64_t>{1, 4, 9, 16});
    CHECK(pool.map(t::square_as_double, std::vector<double>{1.5, 2.5}, {.chunksize = 1}) ==
          std::vector<double>{2.25, 6.25});
  }
}

TEST_CASE("Routing.Capability.NoWorkerWithTheTaskFailsAtOnceSayingWhatTheyHave" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 0});
  cluster.add_workers(2, t::variant_tasks_library());
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 20s));
  // Fails, not waits: within a few liveness periods (the broker's grace for a worker being
  // replaced), far below the map's 30 s start timeout.
  const auto bound = 20 * t::heartbeat() + 2s;
  const auto started = std::chrono::steady_clock::now();
  const auto [code, message] = error_of([&] { (void)pool.map(t::square, iota(100), {.chunksize = 1}); });
  CHECK(code == poolmap::ErrorCode::kSignatureMismatch);
  CHECK(message.find("test.square") != std::string::npos);
  CHECK(message.find(poolmap::Task<double(double)>::signature()) != std::string::npos);  // what they have
  CHECK(message.find(poolmap::Task<std::int64_t(std::int64_t)>::signature()) != std::string::npos);
  const auto [unknown, unknown_message] = error_of([&] { (void)pool.map(t::not_registered, iota(10)); });
  CHECK(unknown == poolmap::ErrorCode::kUnknownTask);
  CHECK(unknown_message.find("test.not_registered") != std::string::npos);
  CHECK(unknown_message.find("other.cube") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - started < 2 * bound);
  // The workers are still fine for what they have.
  CHECK(pool.map(t::square_as_double, std::vector<double>{3}) == std::vector<double>{9});
}

TEST_CASE("Routing.Capability.AWorkerThatJoinsLaterUnblocksAWaitingMap" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 0});
  poolmap::Pool pool(remote(cluster));
  auto pending = pool.map_async(t::square, iota(50), {.chunksize = 5});
  // No worker at all: the chunks wait (bounded by the call's deadline and the timeouts).
  CHECK_FALSE(pending.wait_for(5 * t::heartbeat()));
  cluster.add_workers(1);
  const auto results = pending.get(20s);
  REQUIRE(results.size() == 50);
  CHECK(results[49] == 49 * 49);
}

TEST_CASE("Routing.Capability.ACapableWorkerBeingReplacedIsWaitedFor" * doctest::timeout(60)) {
  // The only capable process is replaced every 2 chunks (max tasks per child) while an unrelated
  // worker stays registered: in between, chunks wait for the replacement instead of failing.
  t::Cluster cluster({.workers = 0});
  cluster.add_workers(1, {}, {"--max-tasks-per-child", "2"});
  cluster.add_workers(1, t::other_tasks_library());
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 20s));
  const auto results = pool.map(t::square, iota(30), {.chunksize = 1});
  REQUIRE(results.size() == 30);
  CHECK(results[29] == 29 * 29);
}

TEST_CASE("Python.Worker.ResultThatCannotBeEncodedIsATaskErrorAndTheWorkerLives" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 20s));
  std::set<std::uint32_t> before;
  for (const auto& worker : pool.status().workers) before.insert(worker.pid);
  bool threw = false;
  try {
    (void)pool.map(t::unencodable, iota(20), {.chunksize = 4});
  } catch (const poolmap::TaskError& e) {
    threw = true;
    CHECK(e.index() == 13);
    CHECK(std::string(e.what()).find("cannot be encoded") != std::string::npos);
    CHECK(e.remote_message().find("refuses to encode 13") != std::string::npos);
  }
  CHECK(threw);
  threw = false;
  std::vector<t::Undecodable> arguments(10);
  for (std::size_t i = 0; i < arguments.size(); ++i) arguments[i].value = static_cast<std::int64_t>(i);
  try {
    (void)pool.map(t::undecodable, arguments, {.chunksize = 3});
  } catch (const poolmap::TaskError& e) {
    threw = true;
    CHECK(e.index() == 7);
    CHECK(std::string(e.what()).find("cannot be decoded") != std::string::npos);
  }
  CHECK(threw);
  // Same processes: none died, none was replaced.
  std::set<std::uint32_t> after;
  for (const auto& worker : pool.status().workers) after.insert(worker.pid);
  CHECK(after == before);
  CHECK(cluster.workers().stderr_text().find("exited") == std::string::npos);
  CHECK(pool.map(t::unencodable, iota(5)).size() == 5);
}

TEST_CASE("Python.Worker.MaxTasksPerChildReplacesProcessesAtOnce" * doctest::timeout(60)) {
  // Python's test_pool_maxtasksperchild: 3 processes, a limit of 10, 100 trivial tasks; all 3
  // processes are back within 5 s, and a planned exit is not logged as a crash.
  t::Cluster cluster({.workers = 0});
  cluster.add_workers(3, {}, {"--max-tasks-per-child", "10"});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(3, 20s));
  const auto results = pool.map(t::square, iota(100), {.chunksize = 1});
  CHECK(results.size() == 100);
  // Three processes running and registered, none of them one that was there before the map.
  const bool back = t::eventually(
      [&] {
        return cluster.worker_pids(0).size() == 3 && pool.status().workers.size() == 3;
      },
      5s);
  CHECK(back);
  const std::string log = cluster.workers().stderr_text();
  CHECK(log.find("max tasks per child") != std::string::npos);
  CHECK(log.find("exited (exit code 0)") == std::string::npos);  // not a warning about a crash
}
