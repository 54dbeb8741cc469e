// Fault injection against real processes: a map either completes with every result exactly once,
// or fails with a clear error; it never hangs, loses an item or delivers one twice.
//
// Every map here uses test.slow_hash (or a variant), whose output is a hash of the item's index,
// so a lost, duplicated or misplaced item shows as a wrong value at its position.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <thread>

#include "poolmap/poolmap.hpp"
#include "process.hpp"
#include "test_tasks.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;
using poolmap::test::slow_items;
using Clock = std::chrono::steady_clock;

namespace {

poolmap::PoolOptions remote(const t::Cluster& cluster) {
  return {.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()};
}

// Every position holds the hash of its own index: nothing lost, duplicated or moved.
void check_hashes(const std::vector<std::uint64_t>& results, std::size_t n) {
  REQUIRE(results.size() == n);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) wrong += results[i] != t::hash_index(static_cast<std::int64_t>(i));
  CHECK(wrong == 0);
}

std::vector<poolmap::BrokerStatus::Worker> workers_of(poolmap::Pool& pool) { return pool.status().workers; }

// A registered worker process that holds at least one chunk, if any.
std::optional<pid_t> busy_worker(poolmap::Pool& observer) {
  for (const auto& worker : workers_of(observer)) {
    if (worker.chunks_in_flight > 0) return static_cast<pid_t>(worker.pid);
  }
  return std::nullopt;
}

bool registered(poolmap::Pool& observer, pid_t pid) {
  const auto workers = workers_of(observer);
  return std::any_of(workers.begin(), workers.end(), [&](const auto& w) { return w.pid == static_cast<std::uint32_t>(pid); });
}

long rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      long kib = 0;
      in >> kib;
      return kib;
    }
  }
  return -1;
}

bool process_exists(pid_t pid) { return ::kill(pid, 0) == 0; }

// Whether a thread of process `pid` sleeps in nanosleep (t::sleep_ms running), as the kernel says
// (/proc/PID/task/TID/wchan).
bool sleeping_in_a_task(pid_t pid) {
  std::error_code error;
  for (const auto& thread : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", error)) {
    std::ifstream wchan(thread.path() / "wchan");
    std::string where;
    if (std::getline(wchan, where) && where.find("nanosleep") != std::string::npos) return true;
  }
  return false;
}

// Runs `map` on a thread and hands back its result or its error.
struct MapRun {
  std::optional<std::vector<std::uint64_t>> results;
  std::optional<poolmap::ErrorCode> code;
  std::string message;
  std::thread thread;

  template <class Task, class Items>
  void start(poolmap::Pool& pool, const Task& task, Items items, poolmap::MapOptions options) {
    thread = std::thread([this, &pool, task, items = std::move(items), options] {
      try {
        results = pool.map(task, items, options);
      } catch (const poolmap::Error& e) {
        code = e.code();
        message = e.what();
      }
    });
  }
  void join() { thread.join(); }
};

// A TCP relay on loopback that passes the bytes from its clients to `target` at most at
// `bytes_per_second` (a slow link), and the other way at full speed. Counts the connections made
// through it. Stops and closes everything when destroyed.
class SlowLink {
 public:
  SlowLink(const std::string& target, std::size_t bytes_per_second) : rate_(bytes_per_second) {
    const auto colon = target.rfind(':');
    target_port_ = static_cast<std::uint16_t>(std::stoi(target.substr(colon + 1)));
    listener_ = t::listen_on_loopback(endpoint_);
    thread_ = std::thread([this] { run(); });
  }
  ~SlowLink() {
    running_ = false;
    thread_.join();
    for (const auto& [from, to] : pairs_) {
      ::close(from);
      ::close(to);
    }
    ::close(listener_);
  }
  SlowLink(const SlowLink&) = delete;
  SlowLink& operator=(const SlowLink&) = delete;
  const std::string& endpoint() const { return endpoint_; }
  int connections() const { return connections_.load(); }

 private:
  void run() {
    std::vector<char> buffer(64 * 1024);
    double tokens = 0;
    auto last = Clock::now();
    while (running_.load()) {
      std::vector<pollfd> fds{{listener_, POLLIN, 0}};
      for (const auto& [from, to] : pairs_) {
        fds.push_back({from, POLLIN, 0});  // from the client: throttled
        fds.push_back({to, POLLIN, 0});    // from the target
      }
      (void)::poll(fds.data(), fds.size(), 5);
      const auto now = Clock::now();
      tokens = std::min<double>(tokens + std::chrono::duration<double>(now - last).count() * static_cast<double>(rate_),
                                static_cast<double>(buffer.size()));
      last = now;
      const std::size_t polled = pairs_.size();  // accept_one() may add one below
      for (std::size_t i = 0; i < polled; ++i) {
        const auto [from, to] = pairs_[i];
        if ((fds[1 + 2 * i].revents & (POLLIN | POLLHUP)) != 0 && tokens >= 1) {
          const auto got = ::read(from, buffer.data(), static_cast<std::size_t>(tokens));
          if (got > 0) {
            tokens -= static_cast<double>(got);
            write_all(to, buffer.data(), static_cast<std::size_t>(got));
          }
        }
        if ((fds[2 + 2 * i].revents & (POLLIN | POLLHUP)) != 0) {
          const auto got = ::read(to, buffer.data(), buffer.size());
          if (got > 0) write_all(from, buffer.data(), static_cast<std::size_t>(got));
        }
      }
      if ((fds[0].revents & POLLIN) != 0) accept_one();
    }
  }
  void accept_one() {
    const int from = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    if (from < 0) return;
    const int to = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(target_port_);
    if (to < 0 || ::connect(to, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      ::close(from);
      if (to >= 0) ::close(to);
      return;
    }
    pairs_.emplace_back(from, to);
    ++connections_;
  }
  static void write_all(int fd, const char* data, std::size_t size) {
    while (size > 0) {
      const auto put = ::write(fd, data, size);
      if (put <= 0) {
        if (put < 0 && errno == EINTR) continue;
        if (put < 0 && errno == EAGAIN) continue;
        return;  // the other side is gone
      }
      data += put;
      size -= static_cast<std::size_t>(put);
    }
  }

  std::size_t rate_;
  std::uint16_t target_port_ = 0;
  int listener_ = -1;
  std::string endpoint_;
  std::vector<std::pair<int, int>> pairs_;  // relay thread only (and the destructor, after it)
  std::atomic<int> connections_{0};
  std::atomic<bool> running_{true};
  std::thread thread_;
};

}  // namespace

TEST_CASE("Faults.Worker.KilledAtRandomPointsMapStillCompletes" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  poolmap::Pool observer(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  MapRun run;
  run.start(pool, t::slow_hash, slow_items(10'000, 200), {.chunksize = 20});
  std::mt19937 random(20261121);  // seeded: the same kill points every run
  int kills = 0;
  for (int i = 0; i < 5; ++i) {
    const auto pause = std::chrono::milliseconds(std::uniform_int_distribution<int>(50, 200)(random));
    struct timespec wait{0, static_cast<long>(pause.count()) * 1'000'000};
    ::nanosleep(&wait, nullptr);  // a random point of the map, not a wait for readiness
    if (const auto victim = busy_worker(observer)) {
      if (::kill(*victim, SIGKILL) == 0) ++kills;
    }
  }
  run.join();
  REQUIRE_FALSE(run.code.has_value());
  check_hashes(*run.results, 10'000);
  CHECK(kills >= 1);
  CHECK(observer.status().chunks_redispatched >= 1);
}

TEST_CASE("Faults.Worker.PoisonItemFailsAfterThreeKillsOthersSucceed" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  MapRun poison;
  MapRun healthy;
  poison.start(pool, t::segfault_at_13, slow_items(40, 1000), {.chunksize = 1});
  healthy.start(pool, t::slow_hash, slow_items(400, 1000), {.chunksize = 5});
  poison.join();
  healthy.join();
  REQUIRE(poison.code.has_value());
  CHECK(*poison.code == poolmap::ErrorCode::kWorkerLost);
  CAPTURE(poison.message);
  CHECK(poison.message.find("items 13..13") != std::string::npos);
  CHECK(poison.message.find("killed 3 worker processes") != std::string::npos);
  CHECK(poison.message.find("attempt 3:") != std::string::npos);
  CHECK(poison.message.find("attempt 4:") == std::string::npos);
  // Each attempt names the signal the supervisor saw (11, or 6 where a sanitizer turns the
  // segfault into an abort).
  std::size_t signals = 0;
  for (auto at = poison.message.find("ended with signal"); at != std::string::npos;
       at = poison.message.find("ended with signal", at + 1)) {
    ++signals;
  }
  CHECK(signals == 3);
  REQUIRE_FALSE(healthy.code.has_value());
  check_hashes(*healthy.results, 400);
}

TEST_CASE("Faults.Worker.AQuickLoneChunkThatKillsItsProcessIsBlamedLikeAnyOther" * doctest::timeout(60)) {
  // A lone chunk of a task whose last chunk was quick runs on the worker process's I/O thread
  // (no hand-off to its task thread). When it kills the process it must be blamed as a chunk on
  // the task thread is: the supervisor names it, and after three kills the call fails.
  t::Cluster cluster({.workers = 1});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 10s));
  for (std::int64_t i = 0; i < 10; ++i) {  // quick chunks, one at a time: the process learns the pace
    CHECK(pool.submit(t::segfault_at_13, t::SlowItem{i, 0}).get(10s) == t::hash_index(i));
  }
  auto poisoned = pool.submit(t::segfault_at_13, t::SlowItem{13, 0});
  try {
    (void)poisoned.get(30s);
    FAIL("a chunk that kills its process succeeded");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kWorkerLost);
    CAPTURE(e.what());
    CHECK(std::string(e.what()).find("killed 3 worker processes") != std::string::npos);
  }
  // The replacement processes serve the same task, on either thread.
  for (std::int64_t i = 20; i < 23; ++i) {
    CHECK(pool.submit(t::segfault_at_13, t::SlowItem{i, 0}).get(10s) == t::hash_index(i));
  }
}

TEST_CASE("Faults.Worker.StoppedWorkerIsReplacedLateResultDiscarded" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  poolmap::Pool observer(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  MapRun run;
  run.start(pool, t::slow_hash, slow_items(60, 50'000), {.chunksize = 1});
  std::optional<pid_t> victim;
  REQUIRE(t::eventually([&] { return (victim = busy_worker(observer)).has_value(); }, 10s));
  const auto stopped_at = Clock::now();
  REQUIRE(::kill(*victim, SIGSTOP) == 0);
  REQUIRE(t::eventually([&] { return !registered(observer, *victim); }, 10s));
  const auto detection = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - stopped_at);
  MESSAGE("stopped worker dropped after " << detection.count() << " ms (interval x liveness = "
                                          << (3 * t::heartbeat()).count() << " ms)");
  CHECK(detection >= 3 * t::heartbeat() - 50ms);
  run.join();
  REQUIRE_FALSE(run.code.has_value());
  check_hashes(*run.results, 60);
  CHECK(observer.status().chunks_redispatched >= 1);
  REQUIRE(::kill(*victim, SIGCONT) == 0);
  // It wakes, finishes its old chunk (answered by the other worker already, so its result is
  // dropped) and registers again.
  CHECK(t::eventually([&] { return registered(observer, *victim); }, 10s));
  check_hashes(pool.map(t::slow_hash, slow_items(100, 0)), 100);
}

TEST_CASE("Faults.Worker.BusyNotDeadGetsItsRetryBackAndItsLateAnswerCounts" * doctest::timeout(60)) {
  // A worker that is silent past liveness (here: SIGSTOP, as an overloaded host would look) and
  // then speaks again was busy, not dead. With --max-retries 0 a single silent loss used to fail
  // the map with worker-lost at once; now the chunk's retry is given back when the worker returns,
  // and the map completes with every item exactly once.
  t::Cluster cluster({.workers = 1, .broker_args = {"--max-retries", "0"}});
  poolmap::Pool pool(remote(cluster));
  poolmap::Pool observer(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 10s));
  const auto item_us = static_cast<std::int32_t>(std::chrono::microseconds(2 * t::heartbeat()).count());
  MapRun run;
  run.start(pool, t::slow_hash, slow_items(6, item_us), {.chunksize = 1});
  std::optional<pid_t> victim;
  REQUIRE(t::eventually([&] { return (victim = busy_worker(observer)).has_value(); }, 10s));
  REQUIRE(::kill(*victim, SIGSTOP) == 0);
  const bool dropped = t::eventually([&] { return !registered(observer, *victim); }, 10s);
  REQUIRE(::kill(*victim, SIGCONT) == 0);
  REQUIRE(dropped);
  run.join();
  INFO("map error: " << run.message);
  REQUIRE_FALSE(run.code.has_value());
  check_hashes(*run.results, 6);
  CHECK(cluster.broker().stderr_text().find("busy, not dead") != std::string::npos);
}

TEST_CASE("Faults.Worker.DeadlineReplacesTheHungProcess" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  const auto before = cluster.worker_pids();
  REQUIRE(before.size() == 2);
  try {
    (void)pool.map(t::hang_at_7, slow_items(20, 1000), {.chunksize = 1, .task_deadline = 300ms});
    FAIL("a map with a hung item returned");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kDeadlineExceeded);
    CHECK(std::string(e.what()).find("item 7 ran longer than its deadline of 300 ms") != std::string::npos);
  }
  // The hung process ended itself; its supervisor started a fresh one.
  CHECK(t::eventually(
      [&] {
        const auto now = cluster.worker_pids();
        return now.size() == 2 && now != before;
      },
      10s));
  CHECK(pool.wait_for_workers(2, 10s));
  check_hashes(pool.map(t::slow_hash, slow_items(50, 0), {.task_deadline = 300ms}), 50);
}

TEST_CASE("Faults.Worker.HungChildOfAKilledSupervisorEndsItself" * doctest::timeout(90)) {
  // The supervisor's death asks its child to stop (PR_SET_PDEATHSIG), which means finishing the
  // running chunk; a hung chunk never finishes and no SIGKILL follows. The child must end itself
  // after its stop timeout (10 s) and hand the chunk back.
  t::Cluster cluster({.workers = 1});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 10s));
  const auto children = cluster.worker_pids();
  REQUIRE(children.size() == 1);
  auto hung = pool.map_async(t::hang_at_7, slow_items(8, 0), {.chunksize = 1});
  // Items 0..6 are answered; item 7 runs for ever.
  REQUIRE(t::eventually(
      [&] {
        const auto status = pool.status();
        return status.chunks_done >= 7 && status.chunks_in_flight == 1;
      },
      20s));
  REQUIRE(::kill(cluster.workers().pid(), SIGKILL) == 0);
  REQUIRE(cluster.workers().wait(10s).has_value());
  const auto killed_at = Clock::now();
  CHECK(t::eventually([&] { return !t::process_running(children[0]); }, 10s + 20 * t::heartbeat()));
  CHECK(Clock::now() - killed_at >= 9s);  // it did wait for its chunk first
  CHECK(t::eventually(
      [&] {
        return cluster.broker().stderr_text().find("chunks handed back=1") != std::string::npos;
      },
      10s));
  CHECK(cluster.workers().stderr_text().find("its chunk is still running; handing it back") != std::string::npos);
  pool.terminate();
  CHECK_THROWS_AS(hung.get(), poolmap::Error);
}

TEST_CASE("Faults.Broker.KilledAndRestartedMapCompletesExactlyOnce" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  MapRun run;
  run.start(pool, t::slow_hash, slow_items(2'000, 1000), {.chunksize = 10});
  {
    poolmap::Pool observer(remote(cluster));
    REQUIRE(t::eventually([&] { return observer.status().chunks_done >= 10; }, 10s));
  }
  const auto killed_at = Clock::now();
  cluster.restart_broker();
  run.join();
  const auto recovered = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed_at);
  MESSAGE("map finished " << recovered.count() << " ms after the broker was killed");
  REQUIRE_FALSE(run.code.has_value());
  check_hashes(*run.results, 2'000);
}

// Issue 23's wedge. A worker that hears nothing for its liveness period closes its socket and
// registers again on a new one; the old socket lingers (500 ms) to flush what it queued, and if a
// broker comes back meanwhile it reconnects and reports the handshake to its HandshakeWatch. That
// watch was closed already, and ZeroMQ's I/O thread sends monitor events with a blocking send: it
// blocked for ever, and with it every socket of the process, which never registered again. Here
// the broker restarts in bursts, each down time timed around the workers' silence timeout and each
// up time long enough for them to hear it. Then every worker registers with the last broker, in
// less than the silence after which a worker ends itself (the safety net must not be what saves
// it), and a map is exact.
TEST_CASE("Faults.Broker.BurstsOfRestartsNeverWedgeAWorker" * doctest::timeout(115)) {
  constexpr int kProcesses = 4;
  t::Cluster cluster({.workers = kProcesses});
  const auto beat = t::heartbeat();
  const auto expiry = beat * 3;
  {
    poolmap::Pool observer(remote(cluster));
    REQUIRE(observer.wait_for_workers(kProcesses, 20s));
  }
  int restarts = 0;
  for (int burst = 0; burst < 3; ++burst) {
    for (int i = 0; i < 8; ++i) {
      // A fault schedule, not a wait for readiness: up for 2..5 heartbeats, down for the liveness
      // period plus 0..350 ms (within the old socket's linger after the workers' timeout fires).
      std::this_thread::sleep_for(beat * (2 + i % 4));
      cluster.broker().signal_and_wait(SIGKILL, 5s);
      std::this_thread::sleep_for(expiry + std::chrono::milliseconds(50 * ((i * 3) % 8)));
      cluster.start_broker_again();
      ++restarts;
    }
  }
  poolmap::Pool pool(remote(cluster));
  // ZeroMQ's reconnect back-off (at most 1 s) may hold a socket back; the safety net ends a
  // silent process only after max(10 liveness periods, 15 s).
  const auto back_within = std::max<std::chrono::milliseconds>(10s, 10 * expiry);
  const auto since = Clock::now();
  const bool all_back = pool.wait_for_workers(kProcesses, back_within);
  MESSAGE(restarts << " broker restarts; " << pool.status().workers.size() << " of " << kProcesses
                   << " workers registered again after "
                   << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - since).count() << " ms");
  const std::string log = cluster.workers().stderr_text();
  CHECK(log.find("ended itself") == std::string::npos);  // the safety net was not needed
  REQUIRE(all_back);
  check_hashes(pool.map(t::slow_hash, slow_items(200, 100), {.chunksize = 5}), 200);
}

// Issue 23: a client sending a legal 60 MiB chunk at 3 MiB/s was dropped by the broker for silence
// half-way through (its heartbeats queue behind the message on the same connection), its SUBMIT
// was answered with DISCONNECT when it arrived, and it was resent for ever. Bytes arriving on a
// peer's connection now count as life.
TEST_CASE("Faults.Network.ALargeChunkOnASlowLinkIsDeliveredAndAnsweredOnce" * doctest::timeout(110)) {
  t::Cluster cluster({.workers = 1});
  constexpr std::size_t kRate = 3 << 20;  // bytes per second, client to broker
  SlowLink link(cluster.client_endpoint(), kRate);
  poolmap::Pool pool({.broker = link.endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(1, 20s));
  const std::vector<std::uint8_t> blob(std::size_t{60} << 20, 7);
  const auto started = Clock::now();
  CHECK(pool.submit(t::blob_size, blob).get(90s) == blob.size());
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
  MESSAGE("60 MiB at 3 MiB/s answered after " << took.count() << " ms, through " << link.connections()
                                              << " connection(s)");
  CHECK(took >= 15s);  // the link really was slow: far past any liveness period
  CHECK(link.connections() == 1);  // never dropped, so never sent again on a new connection
  poolmap::Pool observer(remote(cluster));
  CHECK(observer.status().chunks_done == 1);  // answered once
  CHECK(cluster.broker().stderr_text().find("gone (no heartbeat)") == std::string::npos);
}

TEST_CASE("Faults.Client.KilledClientFreesBrokerMemory" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 1});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 10s));
  check_hashes(pool.map(t::slow_hash, slow_items(100, 0)), 100);  // warm up
  const pid_t broker = cluster.broker().pid();
  const long baseline = rss_kib(broker);
  // 200 chunks of 1 MiB, each taking a worker 20 ms: most of them wait in the broker.
  t::ChildProcess client({t::test_client_binary(), "blobs", cluster.client_endpoint(), "200", "1048576"});
  REQUIRE(client.read_line(10s) == std::optional<std::string>("mapping"));
  REQUIRE(t::eventually([&] { return rss_kib(broker) > baseline + 100 * 1024; }, 20s));
  const long loaded = rss_kib(broker);
  client.signal_and_wait(SIGKILL, 5s);
  // The broker notices (3 heartbeats), drops the client's chunks and returns their memory.
  const bool returned = t::eventually([&] { return rss_kib(broker) < baseline + 32 * 1024; }, 10s);
  MESSAGE("broker RSS: baseline " << baseline / 1024 << " MiB, loaded " << loaded / 1024 << " MiB, after "
                                  << rss_kib(broker) / 1024 << " MiB");
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer keeps freed memory in quarantine: RSS cannot come back under it.
  MESSAGE("RSS check skipped under AddressSanitizer (freed memory stays in its quarantine)");
  (void)returned;
#else
  CHECK(returned);
#endif
  CHECK(pool.status().clients == 1);
  check_hashes(pool.map(t::slow_hash, slow_items(200, 100), {.chunksize = 10}), 200);
}

TEST_CASE("Faults.Signals.TermDrainsWorkersAndBrokerUnderLoad" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 2});
  cluster.add_workers(1);  // a second supervisor that stays
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(3, 10s));
  MapRun run;
  run.start(pool, t::slow_hash, slow_items(300, 10'000), {.chunksize = 1});
  {
    poolmap::Pool observer(remote(cluster));
    REQUIRE(t::eventually([&] { return observer.status().chunks_done >= 5; }, 10s));
  }
  // A worker supervisor: its processes finish their running chunk, hand back the rest, exit.
  const auto children = cluster.worker_pids(0);
  const auto term_at = Clock::now();
  const auto supervisor_status = cluster.workers().signal_and_wait(SIGTERM, 10s);
  REQUIRE(supervisor_status.has_value());
  CHECK(WIFEXITED(*supervisor_status));
  CHECK(WEXITSTATUS(*supervisor_status) == 0);
  CHECK(Clock::now() - term_at < 10s);
  for (const pid_t child : children) CHECK_FALSE(process_exists(child));
  // The broker: chunks in flight are answered, then everyone is told to go; the client resends
  // what was not answered to the next broker on the same endpoint.
  const auto broker_status = cluster.broker().signal_and_wait(SIGTERM, 10s);
  REQUIRE(broker_status.has_value());
  CHECK(WIFEXITED(*broker_status));
  CHECK(WEXITSTATUS(*broker_status) == 0);
  cluster.start_broker_again();
  run.join();
  REQUIRE_FALSE(run.code.has_value());
  check_hashes(*run.results, 300);
}

// A client that leaves (or cancels) must not hold the workers with work nobody waits for: the
// broker tells the workers to abandon its chunks; a prefetched one is dropped, a running one gets
// one heartbeat interval to finish and then its process is replaced.
TEST_CASE("Faults.Abandon.WorkOfAClientThatLeftOrCancelledStopsHoldingWorkers" * doctest::timeout(120)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool observer(remote(cluster));
  REQUIRE(observer.wait_for_workers(2, 20s));
  // One answer ends the probation of both processes (same supervisor): each then takes a chunk
  // to run and one to prefetch.
  REQUIRE(observer.map(t::square, std::vector<std::int64_t>{1, 2}, {.chunksize = 1}) == std::vector<std::int64_t>{1, 4});
  auto instances = [&] {
    std::vector<std::uint64_t> ids;
    for (const auto& worker : observer.status().workers) ids.push_back(worker.instance);
    std::sort(ids.begin(), ids.end());
    return ids;
  };
  // Chunks the workers hold, by the broker's count per worker: a worker's count drops only when it
  // answers (or its process goes), whether or not anyone still waits for the chunk.
  auto busy = [&] {
    std::uint64_t held = 0;
    for (const auto& worker : observer.status().workers) held += worker.chunks_in_flight;
    return held;
  };
  const std::vector<std::int64_t> long_sleeps(4, 60'000);  // 4 × 60 s on 2 workers: 2 running, 2 prefetched

  SUBCASE("the client leaves") {
    const auto before = instances();
    {
      poolmap::Pool leaving(remote(cluster));
      auto future = leaving.map_async(t::sleep_ms, long_sleeps, {.chunksize = 1});
      REQUIRE(t::eventually([&] { return busy() == 4; }, 20s));
      // Both processes have started a chunk (on a loaded host a task thread may not have yet, and a
      // chunk not started is only dropped, its process kept).
      const auto pids = cluster.worker_pids();
      REQUIRE(pids.size() == 2);
      REQUIRE(t::eventually([&] { return sleeping_in_a_task(pids[0]) && sleeping_in_a_task(pids[1]); }, 20s));
    }  // gone: its destructor cancels and says goodbye
    // Well within the 60 s sleeps: nothing is held, and fresh processes replaced the two that ran.
    CHECK(t::eventually([&] { return busy() == 0; }, 20s));
    CHECK(t::eventually(
        [&] {
          const auto now = instances();
          return now.size() == 2 && std::none_of(now.begin(), now.end(), [&](std::uint64_t id) {
                   return std::find(before.begin(), before.end(), id) != before.end();
                 });
        },
        20s));
  }
  SUBCASE("the client cancels") {
    poolmap::Pool cancelling(remote(cluster));
    auto future = cancelling.map_async(t::sleep_ms, long_sleeps, {.chunksize = 1});
    REQUIRE(t::eventually([&] { return busy() == 4; }, 20s));
    CHECK(future.cancel());
    CHECK(t::eventually([&] { return busy() == 0; }, 20s));
    // The same client goes on with new work, well before the 60 s sleeps would have ended.
    auto next = cancelling.map_async(t::square, std::vector<std::int64_t>{1, 2, 3});
    CHECK(next.get(20s) == std::vector<std::int64_t>{1, 4, 9});
  }
  REQUIRE(observer.wait_for_workers(2, 20s));
  CHECK(observer.map(t::square, std::vector<std::int64_t>{5, 6}) == std::vector<std::int64_t>{25, 36});
}
