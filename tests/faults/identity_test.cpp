// Worker identity in containers: two supervisors in separate pid namespaces on one host (as two
// worker containers with host networking) run processes with the same host name and the same
// pid. The broker tells them apart by instance id: killing the worker in one namespace
// re-dispatches only that worker's chunks, and the other namespace's worker keeps working.
// Needs `unshare --pid` (root or user namespaces); elsewhere the test says it is skipped.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "poolmap/poolmap.hpp"
#include "process.hpp"
#include "test_tasks.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;

namespace {

std::vector<pid_t> children_of(pid_t parent) {
  std::ifstream in("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children");
  std::vector<pid_t> out;
  pid_t pid = 0;
  while (in >> pid) out.push_back(pid);
  return out;
}

bool pid_namespaces_work() {
  t::ChildProcess probe({"unshare", "--pid", "--fork", "--kill-child", "true"});
  const auto status = probe.wait(10s);
  return status && WIFEXITED(*status) && WEXITSTATUS(*status) == 0;
}

// A worker supervisor with one process, in a pid namespace of its own.
t::ChildProcess contained_worker(const t::Cluster& cluster) {
  const std::string heartbeat = std::to_string(t::heartbeat().count());
  return t::ChildProcess({"unshare", "--pid", "--fork", "--kill-child", t::worker_binary(), "--broker",
                          cluster.worker_endpoint(), "--processes", "1", "--tasks", t::test_tasks_library(),
                          "--heartbeat-ms", heartbeat, "--log-level", "debug"});
}

// The host pid of the one worker process under an `unshare` launcher (unshare → supervisor → worker).
std::optional<pid_t> worker_process_of(const t::ChildProcess& launcher) {
  for (const pid_t supervisor : children_of(launcher.pid())) {
    const auto workers = children_of(supervisor);
    if (workers.size() == 1) return workers.front();
  }
  return std::nullopt;
}

const poolmap::BrokerStatus::Worker* find_instance(const std::vector<poolmap::BrokerStatus::Worker>& workers,
                                                   std::uint64_t instance) {
  const auto found = std::find_if(workers.begin(), workers.end(), [&](const auto& w) { return w.instance == instance; });
  return found == workers.end() ? nullptr : &*found;
}

}  // namespace

TEST_CASE("Faults.Identity.SamePidInTwoPidNamespacesAreTwoWorkers" * doctest::timeout(90)) {
  if (!pid_namespaces_work()) {
    MESSAGE("skipped: `unshare --pid --fork` is not permitted here (needs root or user namespaces)");
    return;
  }
  t::Cluster cluster({.workers = 0});
  auto first = contained_worker(cluster);
  auto second = contained_worker(cluster);
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(2, 20s));
  const auto before = pool.status().workers;
  REQUIRE(before.size() == 2);
  // Same host, same pid (each is the first child of its namespace's pid 1), two instances.
  CHECK(before[0].host == before[1].host);
  CHECK(before[0].pid == before[1].pid);
  REQUIRE(before[0].instance != before[1].instance);
  CHECK(before[0].supervisor != before[1].supervisor);

  const auto victim = worker_process_of(first);
  REQUIRE(victim.has_value());
  // Which registration is the first namespace's? Its supervisor replaces it after the kill; the
  // other one must stay registered, untouched, the whole time.
  std::vector<t::SlowItem> items(200);
  for (std::size_t i = 0; i < items.size(); ++i) items[i] = {static_cast<std::int64_t>(i), 5000};
  auto running = pool.map_async(t::slow_hash, items, {.chunksize = 1});
  REQUIRE(t::eventually([&] { return pool.status().chunks_done >= 20; }, 30s));
  REQUIRE(::kill(*victim, SIGKILL) == 0);
  const auto results = running.get(60s);
  REQUIRE(results.size() == items.size());
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < results.size(); ++i) wrong += results[i] != t::hash_index(static_cast<std::int64_t>(i));
  CHECK(wrong == 0);

  REQUIRE(t::eventually([&] { return pool.status().workers.size() == 2; }, 20s));
  const auto after = pool.status().workers;
  const bool first_survived = find_instance(after, before[0].instance) != nullptr;
  const bool second_survived = find_instance(after, before[1].instance) != nullptr;
  CHECK(first_survived != second_survived);  // exactly one was replaced: the killed one
  const std::string broker_log = cluster.broker().stderr_text();
  // The exit report named the killed instance, and the survivor was never declared lost.
  const auto survivor = first_survived ? before[0].instance : before[1].instance;
  const auto killed = first_survived ? before[1].instance : before[0].instance;
  char survivor_id[9];
  char killed_id[9];
  std::snprintf(survivor_id, sizeof(survivor_id), "%08llx", static_cast<unsigned long long>(survivor >> 32));
  std::snprintf(killed_id, sizeof(killed_id), "%08llx", static_cast<unsigned long long>(killed >> 32));
  CHECK(broker_log.find(std::string("id=") + killed_id + " chunks=") != std::string::npos);
  CHECK(broker_log.find(std::string("id=") + survivor_id + " chunks=") == std::string::npos);
  CHECK(broker_log.find("signal 9") != std::string::npos);  // from the supervisor's report, not a timeout
  // The survivor kept working after the kill.
  const auto* survivor_now = find_instance(after, survivor);
  REQUIRE(survivor_now != nullptr);
  CHECK(pool.map(t::square, std::vector<std::int64_t>{1, 2, 3}, {.chunksize = 1}) ==
        std::vector<std::int64_t>{1, 4, 9});
}
