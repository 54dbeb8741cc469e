// A worker behind a link that is cut and restored: two network namespaces made by this test (a
// "broker host" and a "worker host") joined by a veth pair; `iptables -j DROP` in the worker's
// namespace cuts the link. Traffic stays inside the namespaces this test creates. Needs root,
// iproute2 and iptables; elsewhere the test says it is skipped.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <thread>

#include "poolmap/poolmap.hpp"
#include "process.hpp"
#include "test_tasks.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;

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

std::vector<t::SlowItem> slow_items(std::size_t n, std::int32_t sleep_us) {
  std::vector<t::SlowItem> items(n);
  for (std::size_t i = 0; i < n; ++i) items[i] = {static_cast<std::int64_t>(i), sleep_us};
  return items;
}

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
