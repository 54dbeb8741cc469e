// A pair of brokers (poolmap-broker --ha primary / --ha backup) against real faults: the active one
// killed (again and again, alternating), frozen and woken after the other took over, and the link
// between the two cut while clients and workers still reach the active one. Every map is exact, in
// input order; every item runs once (only brokers die here); at most one broker is active.
//
// Items are test.logged_hash: each run appends its index to a file, so a test counts how many
// times each item ran, and its output is a hash of the index, so a lost, duplicated or misplaced
// result shows at its position.
#include <doctest/doctest.h>

#include <signal.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "poolmap/poolmap.hpp"
#include "process.hpp"
#include "test_tasks.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;
using poolmap::test::slow_items;
using Clock = std::chrono::steady_clock;

namespace {

void check_hashes(const std::vector<std::uint64_t>& results, std::size_t n) {
  REQUIRE(results.size() == n);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) wrong += results[i] != t::hash_index(static_cast<std::int64_t>(i));
  CHECK(wrong == 0);
}

// The file test.logged_hash appends to, removed at the end.
class RunLog {
 public:
  RunLog() : path_(std::filesystem::temp_directory_path() / ("poolmap-runs-" + std::to_string(::getpid()))) {
    std::filesystem::remove(path_);
  }
  ~RunLog() { std::filesystem::remove(path_); }
  std::string env() const { return "POOLMAP_TEST_RUN_LOG=" + path_.string(); }
  void clear() const { std::filesystem::remove(path_); }
  // How many times each index ran.
  std::map<std::int64_t, int> runs() const {
    std::map<std::int64_t, int> out;
    std::ifstream in(path_);
    std::int64_t index = 0;
    while (in >> index) ++out[index];
    return out;
  }
  std::size_t lines() const {
    std::size_t n = 0;
    for (const auto& [index, count] : runs()) n += static_cast<std::size_t>(count);
    return n;
  }

 private:
  std::filesystem::path path_;
};

// Items of `n` that ran more than once, described.
std::string ran_twice(const RunLog& log, std::size_t n, std::size_t& missing) {
  std::string twice;
  missing = 0;
  const auto runs = log.runs();
  for (std::size_t i = 0; i < n; ++i) {
    const auto found = runs.find(static_cast<std::int64_t>(i));
    if (found == runs.end()) {
      ++missing;
    } else if (found->second > 1) {
      twice += std::to_string(i) + " (" + std::to_string(found->second) + "x) ";
    }
  }
  return twice;
}

// Every item of 0..n-1 ran, and none ran twice.
void check_each_ran_once(const RunLog& log, std::size_t n) {
  std::size_t missing = 0;
  const std::string twice = ran_twice(log, n, missing);
  CHECK(missing == 0);
  CHECK_MESSAGE(twice.empty(), "items that ran twice: " << twice);
}

struct MapRun {
  std::optional<std::vector<std::uint64_t>> results;
  std::optional<poolmap::ErrorCode> code;
  std::thread thread;
  void start(poolmap::Pool& pool, std::vector<t::SlowItem> items, std::size_t chunksize) {
    thread = std::thread([this, &pool, items = std::move(items), chunksize] {
      try {
        results = pool.map(t::logged_hash, items, {.chunksize = chunksize});
      } catch (const poolmap::Error& e) {
        code = e.code();
        MESSAGE("map failed: " << e.what());
      }
    });
  }
  void join() {
    if (thread.joinable()) thread.join();
  }
  ~MapRun() { join(); }
};

}  // namespace

TEST_CASE("Faults.Pair.KillingTheActiveAgainAndAgainLosesNothingAndRunsNothingTwice" * doctest::timeout(110)) {
  constexpr int kProcesses = 4;
  constexpr std::size_t kItems = 600;
  t::BrokerPair pair({.workers = kProcesses});
  RunLog log;
  pair.add_workers(kProcesses, {log.env()});
  poolmap::Pool pool({.broker = pair.client_endpoints(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(kProcesses, 20s));
  REQUIRE(pair.active() == 0);  // both passive at first; the first client turned to the primary
  for (int round = 0; round < 4; ++round) {
    CAPTURE(round);
    const int active = pair.active();
    REQUIRE(active >= 0);
    MapRun run;
    run.start(pool, slow_items(kItems, 2'000), 2);
    // Killed in the middle of the map: a good part of it has run, and a good part has not.
    REQUIRE(t::eventually([&] { return log.lines() >= kItems / 3; }, 30s));
    const auto killed_at = Clock::now();
    pair.kill(active);
    run.join();
    MESSAGE("round " << round << ": broker " << active << " killed; the map finished "
                     << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed_at).count()
                     << " ms later");
    REQUIRE_FALSE(run.code.has_value());
    REQUIRE(run.results.has_value());
    check_hashes(*run.results, kItems);
    check_each_ran_once(log, kItems);
    log.clear();  // each round counts its own map's runs
    // Back as the passive one: the next round kills the other.
    pair.start(active);
    REQUIRE(t::eventually([&] { return pair.role(active) == "passive"; }, 10s));
    REQUIRE(pair.active() == 1 - active);
  }
}

TEST_CASE("Faults.Pair.AFrozenActiveThatWakesAfterTheFailoverStepsDownAndDeliversNothing" * doctest::timeout(90)) {
  constexpr int kProcesses = 2;
  constexpr std::size_t kItems = 400;
  t::BrokerPair pair({.workers = kProcesses});
  RunLog log;
  pair.add_workers(kProcesses, {log.env()});
  poolmap::Pool pool({.broker = pair.client_endpoints(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(kProcesses, 20s));
  REQUIRE(pair.active() == 0);
  MapRun run;
  run.start(pool, slow_items(kItems, 5'000), 2);
  REQUIRE(t::eventually([&] { return log.lines() >= kItems / 4; }, 30s));
  REQUIRE(::kill(pair.broker(0).pid(), SIGSTOP) == 0);
  // The backup takes over (the clients and workers turn to it), and the map goes on there.
  const bool took_over = t::eventually([&] { return pair.role(1, 1s) == "active"; }, 30s);
  const std::size_t ran_at_takeover = log.lines();
  REQUIRE(::kill(pair.broker(0).pid(), SIGCONT) == 0);
  REQUIRE(took_over);
  run.join();
  REQUIRE_FALSE(run.code.has_value());
  REQUIRE(run.results.has_value());
  check_hashes(*run.results, kItems);
  CHECK(log.lines() > ran_at_takeover);  // the standby served work
  // The woken broker learned of the newer epoch and stepped down; one active remains.
  CHECK(t::eventually([&] { return pair.role(0) == "passive"; }, 10s));
  CHECK(pair.role(1) == "active");
  check_each_ran_once(log, kItems);
  CHECK(pair.broker(0).stderr_text().find("is now PASSIVE") != std::string::npos);
}

TEST_CASE("Faults.Pair.CuttingOnlyThePeerLinkMakesNoSecondActive" * doctest::timeout(90)) {
  constexpr int kProcesses = 2;
  constexpr std::size_t kItems = 300;
  t::BrokerPair pair({.workers = kProcesses});
  pair.add_workers(kProcesses);
  poolmap::Pool pool({.broker = pair.client_endpoints(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(kProcesses, 20s));
  REQUIRE(pair.active() == 0);
  pair.cut_peer_link();
  // The backup hears nothing from the primary for several liveness periods, while the map runs on
  // the primary: no client or worker turns to the backup, so it stays passive.
  MapRun run;
  run.start(pool, slow_items(kItems, 5'000), 1);
  const auto until = Clock::now() + 6 * 3 * t::heartbeat();
  bool second_active = false;
  while (Clock::now() < until) second_active = second_active || pair.role(1, 2s) == "active";
  run.join();
  CHECK_FALSE(second_active);
  REQUIRE(run.results.has_value());
  check_hashes(*run.results, kItems);
  CHECK(pair.role(0) == "active");
  pair.heal_peer_link();
  CHECK(t::eventually([&] { return pair.broker(1).stderr_text().find("the peer is active") != std::string::npos ||
                                   pair.role(1) == "passive"; },
                      10s));
  CHECK(pair.role(1) == "passive");
}

TEST_CASE("Faults.Pair.StatusShowsEachBrokersRoleEpochAndPeer" * doctest::timeout(60)) {
  t::BrokerPair pair({.workers = 1});
  pair.add_workers(1);
  poolmap::Pool pool({.broker = pair.client_endpoints(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(1, 20s));
  const auto status_json = [&](const std::string& brokers) {
    t::ChildProcess cli({t::cli_binary(), "status", "--broker", brokers, "--json", "--timeout-ms", "2000"});
    return cli.read_all(20s);
  };
  // The pair: the active one's status, with each broker's role.
  std::string both = status_json(pair.client_endpoints());
  CAPTURE(both);
  CHECK(both.find("\"broker\":\"" + pair.client_endpoint(0) + "\",\"role\":\"active\",\"epoch\":1,\"peer\":\"passive\"") !=
        std::string::npos);
  CHECK(both.find("{\"endpoint\":\"" + pair.client_endpoint(1) + "\",\"role\":\"passive\",\"epoch\":1,\"peer\":\"active\"") !=
        std::string::npos);
  // The passive one alone answers too.
  const std::string backup = status_json(pair.client_endpoint(1));
  CAPTURE(backup);
  CHECK(backup.find("\"role\":\"passive\"") != std::string::npos);
  // The primary gone, the backup is active at a newer epoch and shows its peer silent; the status
  // of the pair says the primary is unreachable.
  pair.kill(0);
  REQUIRE(t::eventually([&] { return pair.role(1, 1s) == "active"; }, 20s));
  both = status_json(pair.client_endpoints());
  CHECK(both.find("\"broker\":\"" + pair.client_endpoint(1) + "\",\"role\":\"active\",\"epoch\":2,\"peer\":\"silent\"") !=
        std::string::npos);
  CHECK(both.find("{\"endpoint\":\"" + pair.client_endpoint(0) + "\",\"role\":\"unreachable\"") != std::string::npos);
}

TEST_CASE("Faults.Pair.FailingBackWithSigusr1MovesTheWorkAtOnceAndRunsNothingTwice" * doctest::timeout(90)) {
  constexpr int kProcesses = 2;
  constexpr std::size_t kItems = 400;
  t::BrokerPair pair({.workers = kProcesses});
  RunLog log;
  pair.add_workers(kProcesses, {log.env()});
  poolmap::Pool pool({.broker = pair.client_endpoints(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(kProcesses, 20s));
  REQUIRE(pair.active() == 0);
  // The primary fails; the backup takes over; the primary comes back, passive.
  pair.kill(0);
  REQUIRE(t::eventually([&] { return pair.role(1, 1s) == "active"; }, 20s));
  pair.start(0);
  REQUIRE(t::eventually([&] { return pair.role(0) == "passive"; }, 10s));
  CHECK(t::eventually([&] { return pair.broker(0).stderr_text().find("starts PASSIVE") != std::string::npos; }, 5s));
  // Failing back in the middle of a map: SIGUSR1 to the active backup.
  MapRun run;
  run.start(pool, slow_items(kItems, 5'000), 2);
  REQUIRE(t::eventually([&] { return log.lines() >= kItems / 4; }, 30s));
  REQUIRE(::kill(pair.broker(1).pid(), SIGUSR1) == 0);
  REQUIRE(t::eventually([&] { return pair.role(0, 1s) == "active"; }, 10s));
  run.join();
  REQUIRE_FALSE(run.code.has_value());
  REQUIRE(run.results.has_value());
  check_hashes(*run.results, kItems);
  check_each_ran_once(log, kItems);
  CHECK(pair.role(1) == "passive");
  CHECK(pair.broker(1).stderr_text().find("handed the work over to the peer (SIGUSR1)") != std::string::npos);
  CHECK(pair.broker(0).stderr_text().find("the peer handed the work over") != std::string::npos);
}

TEST_CASE("Faults.Pair.AClientStartedWhileTheFirstBrokerOfItsListIsDeadFindsTheOther" * doctest::timeout(60)) {
  // The Pool waits for a WELCOME before it makes its first job (the chunk size depends on the
  // workers): it must not wait for it from a dead broker.
  t::BrokerPair pair({.workers = 2});
  pair.add_workers(2);
  {
    poolmap::Pool first({.broker = pair.client_endpoints(), .heartbeat_interval = t::heartbeat()});
    REQUIRE(first.wait_for_workers(2, 20s));
  }
  pair.kill(0);
  REQUIRE(t::eventually([&] { return pair.role(1, 1s) == "active"; }, 20s));
  poolmap::Pool pool({.broker = pair.client_endpoints(), .heartbeat_interval = t::heartbeat()});
  const auto results = pool.map(t::slow_hash, slow_items(100, 1'000));
  check_hashes(results, 100);
}
