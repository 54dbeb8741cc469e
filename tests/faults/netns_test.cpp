// A worker behind a link that is cut and restored: two network namespaces made by this test (a
// "broker host" and a "worker host") joined by a veth pair; `iptables -j DROP` in the worker's
// namespace cuts the link. Traffic stays inside the namespaces this test creates. Needs root,
// iproute2 and iptables; elsewhere the test says it is skipped.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <thread>

#include "poolmap/poolmap.hpp"
#include "process.hpp"
#include "test_tasks.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;
using poolmap::test::slow_items;

namespace {

// Runs a command; returns its exit status (-1 when it cannot run).
int run_command(std::vector<std::string> argv) {
  t::ChildProcess child(std::move(argv));
  const auto status = child.wait(20s);
  if (!status || !WIFEXITED(*status)) return -1;
  return WEXITSTATUS(*status);
}

// Two namespaces and a veth pair between them, removed on destruction.
class TwoHosts {
 public:
  TwoHosts() {
    const std::string id = std::to_string(::getpid());
    broker_ns_ = "pmb" + id;
    worker_ns_ = "pmw" + id;
    const std::string broker_link = "pmvb" + id;
    const std::string worker_link = "pmvw" + id;
    ok_ = run({"ip", "netns", "add", broker_ns_}) && run({"ip", "netns", "add", worker_ns_}) &&
          run({"ip", "link", "add", broker_link, "netns", broker_ns_, "type", "veth", "peer", "name", worker_link,
               "netns", worker_ns_}) &&
          run(in_broker({"ip", "addr", "add", "10.213.0.1/30", "dev", broker_link})) &&
          run(in_worker({"ip", "addr", "add", "10.213.0.2/30", "dev", worker_link})) &&
          run(in_broker({"ip", "link", "set", broker_link, "up"})) &&
          run(in_worker({"ip", "link", "set", worker_link, "up"})) &&
          run(in_broker({"ip", "link", "set", "lo", "up"})) && run(in_worker({"ip", "link", "set", "lo", "up"})) &&
          run(in_worker({"iptables", "-L", "-n"}));
  }
  ~TwoHosts() {
    run({"ip", "netns", "del", worker_ns_});  // removes the veth pair too
    run({"ip", "netns", "del", broker_ns_});
  }
  bool ok() const { return ok_; }

  std::vector<std::string> in_broker(std::vector<std::string> argv) const { return in(broker_ns_, std::move(argv)); }
  std::vector<std::string> in_worker(std::vector<std::string> argv) const { return in(worker_ns_, std::move(argv)); }
  bool cut() const {
    return run(in_worker({"iptables", "-A", "INPUT", "-j", "DROP"})) &&
           run(in_worker({"iptables", "-A", "OUTPUT", "-j", "DROP"}));
  }
  bool restore() const { return run(in_worker({"iptables", "-F"})); }

 private:
  static std::vector<std::string> in(const std::string& ns, std::vector<std::string> argv) {
    std::vector<std::string> out{"/usr/sbin/ip", "netns", "exec", ns};
    out.insert(out.end(), argv.begin(), argv.end());
    return out;
  }
  static bool run(std::vector<std::string> argv) {
    if (argv[0] == "ip") argv[0] = "/usr/sbin/ip";
    return run_command(std::move(argv)) == 0;
  }

  std::string broker_ns_;
  std::string worker_ns_;
  bool ok_ = false;
};

}  // namespace

TEST_CASE("Faults.Network.CutLinkWorkerIsReplacedAndComesBack" * doctest::timeout(90)) {
  if (::geteuid() != 0 || ::access("/usr/sbin/ip", X_OK) != 0 || ::access("/usr/sbin/iptables", X_OK) != 0) {
    MESSAGE("SKIPPED Faults.Network.CutLinkWorkerIsReplacedAndComesBack: needs root, iproute2 and iptables");
    return;
  }
  TwoHosts hosts;
  if (!hosts.ok()) {
    MESSAGE("SKIPPED Faults.Network.CutLinkWorkerIsReplacedAndComesBack: network namespaces are not permitted here");
    return;
  }
  // The broker's client socket is an ipc:// file, so this test (outside the namespaces) can reach it.
  const std::string ipc = "ipc:///tmp/poolmap-netns-" + std::to_string(::getpid());
  // --insecure: the worker socket's address exists only inside this test's own namespaces.
  t::ChildProcess broker(hosts.in_broker({t::broker_binary(), "--clients", ipc, "--workers", "tcp://10.213.0.1:*",
                                          "--insecure", "--heartbeat-ms", std::to_string(t::heartbeat().count()),
                                          "--log-level", "debug"}));
  const auto ready = broker.read_line(10s);
  REQUIRE(ready.has_value());
  const std::string workers_endpoint = ready->substr(ready->find(" workers=") + 9);
  const std::vector<std::string> worker_flags{"--broker",       workers_endpoint,
                                              "--processes",    "1",
                                              "--heartbeat-ms", std::to_string(t::heartbeat().count()),
                                              "--tasks",        t::test_tasks_library()};
  auto local_argv = hosts.in_broker({t::worker_binary()});
  local_argv.insert(local_argv.end(), worker_flags.begin(), worker_flags.end());
  auto remote_argv = hosts.in_worker({t::worker_binary()});
  remote_argv.insert(remote_argv.end(), worker_flags.begin(), worker_flags.end());
  t::ChildProcess local_worker(local_argv);
  t::ChildProcess remote_worker(remote_argv);

  poolmap::Pool pool({.broker = ipc, .heartbeat_interval = t::heartbeat()});
  poolmap::Pool observer({.broker = ipc, .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(2, 10s));
  // The remote worker process: the one child of the supervisor in the worker namespace.
  std::uint32_t remote_pid = 0;
  REQUIRE(t::eventually(
      [&] {
        for (const auto& w : observer.status().workers) {
          std::ifstream parent("/proc/" + std::to_string(w.pid) + "/stat");
          std::string pid, name, state;
          pid_t ppid = 0;
          parent >> pid >> name >> state >> ppid;
          if (ppid == remote_worker.pid()) remote_pid = w.pid;
        }
        return remote_pid != 0;
      },
      10s));

  std::optional<std::vector<std::uint64_t>> results;
  std::thread mapper([&] { results = pool.map(t::slow_hash, slow_items(100, 20'000), {.chunksize = 1}); });
  auto remote_busy = [&] {
    for (const auto& w : observer.status().workers) {
      if (w.pid == remote_pid && w.chunks_in_flight > 0) return true;
    }
    return false;
  };
  REQUIRE(t::eventually(remote_busy, 10s));
  REQUIRE(hosts.cut());
  const bool dropped = t::eventually(
      [&] {
        const auto workers = observer.status().workers;
        return std::none_of(workers.begin(), workers.end(), [&](const auto& w) { return w.pid == remote_pid; });
      },
      10s);
  CHECK(dropped);
  mapper.join();  // the local worker finishes everything, the cut-off chunk included
  REQUIRE(results.has_value());
  REQUIRE(results->size() == 100);
  for (std::size_t i = 0; i < 100; ++i) CHECK((*results)[i] == t::hash_index(static_cast<std::int64_t>(i)));
  CHECK(observer.status().chunks_redispatched >= 1);
  REQUIRE(hosts.restore());
  // The worker's late result is ignored; it registers again.
  CHECK(t::eventually(
      [&] {
        const auto workers = observer.status().workers;
        return std::any_of(workers.begin(), workers.end(), [&](const auto& w) { return w.pid == remote_pid; });
      },
      20s));
}

namespace {

// Four namespaces made by this test: "host A" and "host B" (one broker each), "host C" (the worker
// supervisor and the client), joined by a bridge in a fourth ("switch") namespace. Cutting A's link
// takes host A off the network: its broker hears nobody and nobody hears it. Removed on destruction.
class PairHosts {
 public:
  PairHosts() {
    const std::string id = std::to_string(::getpid());
    for (const char* name : {"s", "a", "b", "c"}) ns_[name] = std::string("pm") + name + id;
    ok_ = run({"ip", "netns", "add", ns_["s"]}) && run(in("s", {"ip", "link", "add", "br0", "type", "bridge"})) &&
          run(in("s", {"ip", "link", "set", "br0", "up"}));
    int address = 1;
    for (const char* host : {"a", "b", "c"}) {
      const std::string inside = std::string("pmh") + host + id;  // in the host
      const std::string port = std::string("pms") + host + id;    // on the bridge
      ok_ = ok_ && run({"ip", "netns", "add", ns_[host]}) &&
            run({"ip", "link", "add", inside, "netns", ns_[host], "type", "veth", "peer", "name", port, "netns",
                 ns_["s"]}) &&
            run(in("s", {"ip", "link", "set", port, "master", "br0"})) && run(in("s", {"ip", "link", "set", port, "up"})) &&
            run(in(host, {"ip", "addr", "add", "10.214.0." + std::to_string(address++) + "/24", "dev", inside})) &&
            run(in(host, {"ip", "link", "set", inside, "up"})) && run(in(host, {"ip", "link", "set", "lo", "up"}));
      links_[host] = port;
    }
  }
  ~PairHosts() {
    for (const char* name : {"a", "b", "c", "s"}) run({"ip", "netns", "del", ns_[name]});
  }
  bool ok() const { return ok_; }
  std::vector<std::string> in(const std::string& host, std::vector<std::string> argv) const {
    std::vector<std::string> out{"/usr/sbin/ip", "netns", "exec", ns_.at(host)};
    out.insert(out.end(), argv.begin(), argv.end());
    return out;
  }
  // Host A's link down (the bridge side), or up again.
  bool cut(const std::string& host) const { return run(in("s", {"ip", "link", "set", links_.at(host), "down"})); }
  bool restore(const std::string& host) const { return run(in("s", {"ip", "link", "set", links_.at(host), "up"})); }

 private:
  static bool run(std::vector<std::string> argv) {
    if (argv[0] == "ip") argv[0] = "/usr/sbin/ip";
    return run_command(std::move(argv)) == 0;
  }
  std::map<std::string, std::string> ns_;
  std::map<std::string, std::string> links_;
  bool ok_ = false;
};

std::size_t lines_in(const std::string& path) {
  std::ifstream in(path);
  std::size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

}  // namespace

TEST_CASE("Faults.Network.ThePairSurvivesTheActivesHostCutOffAndItsFreezeWithNothingRunTwice" * doctest::timeout(110)) {
  if (::geteuid() != 0 || ::access("/usr/sbin/ip", X_OK) != 0) {
    MESSAGE("SKIPPED Faults.Network.ThePairSurvives...: needs root and iproute2");
    return;
  }
  PairHosts hosts;
  if (!hosts.ok()) {
    MESSAGE("SKIPPED Faults.Network.ThePairSurvives...: network namespaces or bridges are not permitted here");
    return;
  }
  const std::string beat = std::to_string(t::heartbeat().count());
  // --insecure: the addresses exist only inside this test's own namespaces. Fixed addresses and
  // ports are safe there (nothing else lives in those namespaces) and are what lets each broker
  // name its peer before either has started.
  auto broker = [&](const std::string& host, const std::string& role, const std::string& me, const std::string& peer) {
    return t::ChildProcess(hosts.in(host, {t::broker_binary(), "--clients", "tcp://" + me + ":5555", "--workers",
                                           "tcp://" + me + ":5556", "--ha", role, "--ha-bind", "tcp://" + me + ":5557",
                                           "--ha-peer", "tcp://" + peer + ":5557", "--insecure", "--heartbeat-ms", beat,
                                           "--log-level", "debug"}));
  };
  t::ChildProcess a = broker("a", "primary", "10.214.0.1", "10.214.0.2");
  t::ChildProcess b = broker("b", "backup", "10.214.0.2", "10.214.0.1");
  REQUIRE(a.read_line(10s).has_value());
  REQUIRE(b.read_line(10s).has_value());
  const std::string runs = "/tmp/poolmap-netns-runs-" + std::to_string(::getpid());
  std::filesystem::remove(runs);
  t::ChildProcess workers(hosts.in("c", {"env", "POOLMAP_TEST_RUN_LOG=" + runs, t::worker_binary(), "--broker",
                                         "tcp://10.214.0.1:5556,tcp://10.214.0.2:5556", "--processes", "2",
                                         "--heartbeat-ms", beat, "--tasks", t::test_tasks_library()}));
  const std::string clients = "tcp://10.214.0.1:5555,tcp://10.214.0.2:5555";
  auto role_of = [&](const std::string& endpoint) {
    t::ChildProcess cli(hosts.in("c", {t::cli_binary(), "status", "--broker", endpoint, "--json", "--timeout-ms", "1000"}));
    const std::string out = cli.read_all(10s);
    for (const char* role : {"active", "passive"}) {
      if (out.find(std::string("\"role\":\"") + role + "\"") != std::string::npos) return std::string(role);
    }
    return std::string("none");
  };
  auto each_ran_once = [&](std::size_t n) {
    std::map<std::int64_t, int> count;
    std::ifstream in(runs);
    for (std::int64_t index = 0; in >> index;) ++count[index];
    std::size_t twice = 0, missing = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const int c = count[static_cast<std::int64_t>(i)];
      twice += c > 1;
      missing += c == 0;
    }
    CHECK(missing == 0);
    CHECK(twice == 0);
  };
  constexpr std::size_t kItems = 200;

  // 1. Host A cut off in the middle of a map: the map finishes through B, exactly, nothing twice.
  {
    t::ChildProcess client(hosts.in("c", {t::test_client_binary(), "slow", clients, std::to_string(kItems), "20000"}));
    REQUIRE(t::eventually([&] { return lines_in(runs) >= kItems / 4; }, 30s));
    REQUIRE(role_of("tcp://10.214.0.1:5555") == "active");
    REQUIRE(hosts.cut("a"));
    CHECK(client.read_line(60s) == std::optional<std::string>("exact"));
    CHECK(role_of("tcp://10.214.0.2:5555") == "active");
    each_ran_once(kItems);
  }
  // A's link back: A, still active at the old epoch, hears B active at a newer one and steps down.
  REQUIRE(hosts.restore("a"));
  CHECK(t::eventually([&] { return role_of("tcp://10.214.0.1:5555") == "passive"; }, 20s));
  CHECK(a.stderr_text().find("two active brokers") != std::string::npos);
  CHECK(role_of("tcp://10.214.0.2:5555") == "active");

  // 2. B frozen in the middle of a map: A takes over; B, woken, steps down; nothing twice.
  std::filesystem::remove(runs);
  {
    t::ChildProcess client(hosts.in("c", {t::test_client_binary(), "slow", clients, std::to_string(kItems), "20000"}));
    REQUIRE(t::eventually([&] { return lines_in(runs) >= kItems / 4; }, 30s));
    REQUIRE(::kill(b.pid(), SIGSTOP) == 0);
    const bool took_over = t::eventually([&] { return role_of("tcp://10.214.0.1:5555") == "active"; }, 30s);
    REQUIRE(::kill(b.pid(), SIGCONT) == 0);
    REQUIRE(took_over);
    CHECK(client.read_line(60s) == std::optional<std::string>("exact"));
    each_ran_once(kItems);
  }
  CHECK(t::eventually([&] { return role_of("tcp://10.214.0.2:5555") == "passive"; }, 20s));
  CHECK(b.stderr_text().find("is now PASSIVE") != std::string::npos);
  std::filesystem::remove(runs);
}
