// Pool.map end to end: real poolmap-broker and poolmap-worker processes on loopback, and the
// embedded Pool (worker copies of this test binary).
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <sstream>
#include <thread>

#include "poolmap/poolmap.hpp"
#include "process.hpp"
#include "test_tasks.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;

namespace {

std::vector<std::int64_t> iota_vector(std::size_t n, std::int64_t start = 0) {
  std::vector<std::int64_t> out(n);
  std::iota(out.begin(), out.end(), start);
  return out;
}

// Every item squared, in input order.
void check_squares(poolmap::Pool& pool, std::size_t n, poolmap::MapOptions options = {}) {
  const auto inputs = iota_vector(n);
  const auto results = pool.map(t::square, inputs, options);
  REQUIRE(results.size() == n);
  for (std::size_t i = 0; i < n; ++i) {
    if (results[i] != inputs[i] * inputs[i]) {
      FAIL("item " << i << " is " << results[i] << ", expected " << inputs[i] * inputs[i]);
    }
  }
}

poolmap::PoolOptions remote(const t::Cluster& cluster) {
  return {.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()};
}

}  // namespace

TEST_CASE("Map.Remote.EmptyInput" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  CHECK(pool.map(t::square, std::vector<std::int64_t>{}).empty());
}

TEST_CASE("Map.Remote.OneItem" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  const auto results = pool.map(t::square, std::vector<std::int64_t>{-9});
  REQUIRE(results.size() == 1);
  CHECK(results[0] == 81);
}

TEST_CASE("Map.Remote.HundredThousandItemsInOrder" * doctest::timeout(60)) {
  for (int workers : {1, 2, 4}) {
    CAPTURE(workers);
    t::Cluster cluster({.workers = workers});
    poolmap::Pool pool(remote(cluster));
    REQUIRE(pool.wait_for_workers(static_cast<std::size_t>(workers), 10s));
    check_squares(pool, 100'000);
    check_squares(pool, 100'000, {.chunksize = 7});
  }
}

TEST_CASE("Map.Remote.DefaultChunksizeSpreadsOverWorkers" * doctest::timeout(30)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  // 400 items on 2 workers: chunks of ceil(400 / 8) = 50, so 8 chunks; each worker holds at most 2
  // at a time, so both take part.
  const auto pids = pool.map(t::worker_pid, iota_vector(400));
  const std::set<std::int64_t> distinct(pids.begin(), pids.end());
  CHECK(distinct.size() == 2);
  CHECK_FALSE(distinct.contains(::getpid()));
  // Within a chunk every item ran in the same process: 50 equal pids in a row.
  for (std::size_t chunk = 0; chunk < 8; ++chunk) {
    for (std::size_t i = chunk * 50; i < chunk * 50 + 50; ++i) CHECK(pids[i] == pids[chunk * 50]);
  }
}

TEST_CASE("Map.Remote.FewChunksGoToIdleWorkersFirst" * doctest::timeout(30)) {
  // Regression: each worker takes 2 chunks (1 + prefetch); 2 chunks on 2 idle workers must not
  // both land on the first worker's slots.
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  for (int round = 0; round < 5; ++round) {
    const auto pids = pool.map(t::worker_pid, iota_vector(2), {.chunksize = 1});
    CHECK(pids[0] != pids[1]);
  }
}

TEST_CASE("Map.Remote.ChunksizeLargerThanInput" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  check_squares(pool, 10, {.chunksize = 1000});
  const auto pids = pool.map(t::worker_pid, iota_vector(10), {.chunksize = 1000});
  CHECK(std::set<std::int64_t>(pids.begin(), pids.end()).size() == 1);  // one chunk, one worker
}

TEST_CASE("Map.Remote.ExceptionAtOneItem" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  const auto inputs = iota_vector(100);
  bool thrown = false;
  try {
    (void)pool.map(t::fail_at_13, inputs, {.chunksize = 5});
  } catch (const poolmap::TaskError& e) {
    thrown = true;
    CHECK(e.code() == poolmap::ErrorCode::kTaskFailed);
    CHECK(e.task() == "test.fail_at_13");
    CHECK(e.index() == 13);
    CHECK(e.remote_type() == "std::invalid_argument");
    CHECK(e.remote_message() == "bad item 13");
    CHECK_FALSE(e.worker_host().empty());
    CHECK(e.worker_pid() > 0);
    CHECK(e.worker_pid() != static_cast<std::uint32_t>(::getpid()));
    CHECK(std::string(e.what()).find("bad item 13") != std::string::npos);
  }
  CHECK(thrown);
  // The pool and the workers keep serving.
  check_squares(pool, 1000);
  const auto fine = pool.map(t::fail_at_13, iota_vector(10, 100));
  CHECK(fine == iota_vector(10, 100));
}

TEST_CASE("Map.Remote.StringsVectorsAndStructs" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));

  const std::vector<std::string> words{"pool", "", "map", std::string(10'000, 'z')};
  const auto shouted = pool.map(t::shout, words, {.chunksize = 1});
  REQUIRE(shouted.size() == 4);
  CHECK(shouted[0] == "POOL!");
  CHECK(shouted[1] == "!");
  CHECK(shouted[2] == "MAP!");
  CHECK(shouted[3] == std::string(10'000, 'Z') + "!");

  const std::vector<std::vector<double>> vectors{{1, 2, 3}, {}, {0.5}};
  const auto sums = pool.map(t::prefix_sums, vectors);
  CHECK(sums == std::vector<std::vector<double>>{{1, 3, 6}, {}, {0.5}});

  const std::vector<t::Point> points{{1, 2, "a"}, {-3.5, 0, "b"}};
  const auto mirrored = pool.map(t::mirror, points);
  CHECK(mirrored == std::vector<t::Point>{{-1, -2, "a'"}, {3.5, -0.0, "b'"}});

  // Elements convert to the argument type: ints into an i64 task.
  const std::vector<int> small{1, 2, 3};
  CHECK(pool.map(t::square, small) == std::vector<std::int64_t>{1, 4, 9});
}

TEST_CASE("Map.Remote.UnknownTaskNamesIt" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  try {
    (void)pool.map(t::not_registered, iota_vector(3));
    FAIL("map of an unregistered task returned");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kUnknownTask);
    CHECK(std::string(e.what()).find("test.not_registered") != std::string::npos);
  }
}

TEST_CASE("Map.Remote.SignatureMismatchIsAClearError" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  try {
    (void)pool.map(t::square_as_double, std::vector<double>{1.5});
    FAIL("map with a mismatched signature returned");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kSignatureMismatch);
    const std::string what = e.what();
    CHECK(what.find("i64(i64)") != std::string::npos);
    CHECK(what.find("f64(f64)") != std::string::npos);
  }
}

TEST_CASE("Map.Remote.TwoClientsAtOnce" * doctest::timeout(60)) {
  t::Cluster cluster;
  poolmap::Pool first(remote(cluster));
  poolmap::Pool second(remote(cluster));
  std::vector<std::int64_t> from_first;
  std::vector<std::int64_t> from_second;
  std::thread a([&] { from_first = first.map(t::square, iota_vector(50'000), {.chunksize = 100}); });
  std::thread b([&] { from_second = second.map(t::square, iota_vector(50'000, -50'000), {.chunksize = 100}); });
  a.join();
  b.join();
  REQUIRE(from_first.size() == 50'000);
  REQUIRE(from_second.size() == 50'000);
  for (std::int64_t i = 0; i < 50'000; ++i) {
    if (from_first[static_cast<std::size_t>(i)] != i * i) FAIL("first client, item " << i);
    const std::int64_t x = i - 50'000;
    if (from_second[static_cast<std::size_t>(i)] != x * x) FAIL("second client, item " << i);
  }
}

TEST_CASE("Map.Remote.ThreadsShareOnePool" * doctest::timeout(60)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      const auto inputs = iota_vector(5'000, i * 10'000);
      const auto results = pool.map(t::square, inputs, {.chunksize = 50});
      ok[static_cast<std::size_t>(i)] = results.size() == inputs.size() && results.back() == inputs.back() * inputs.back();
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(ok == std::vector<int>{1, 1, 1, 1});
}

TEST_CASE("Map.Embedded.RunsTasksOfThisProgram" * doctest::timeout(60)) {
  for (std::size_t processes : {1, 2}) {
    CAPTURE(processes);
    poolmap::Pool pool({.processes = processes, .heartbeat_interval = t::heartbeat()});
    CHECK(pool.workers() == processes);
    check_squares(pool, 100'000);
    const auto pids = pool.map(t::worker_pid, iota_vector(100), {.chunksize = 1});
    const std::set<std::int64_t> distinct(pids.begin(), pids.end());
    CHECK(distinct.size() == processes);
    CHECK_FALSE(distinct.contains(::getpid()));
    CHECK_THROWS_AS((void)pool.map(t::fail_at_13, iota_vector(20)), poolmap::TaskError);
  }
}

// The loopback TCP ports this process listens on (/proc/net/tcp: state 0A), found through the
// inodes of its open sockets.
std::vector<unsigned> own_listening_tcp_ports() {
  std::set<std::string> inodes;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code error;
    const std::string target = std::filesystem::read_symlink(entry.path(), error).string();
    if (!error && target.starts_with("socket:[")) inodes.insert(target.substr(8, target.size() - 9));
  }
  std::vector<unsigned> ports;
  std::ifstream table("/proc/self/net/tcp");
  std::string line;
  std::getline(table, line);  // the column names
  while (std::getline(table, line)) {
    std::istringstream fields(line);
    std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
    fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >> timeout >> inode;
    if (state == "0A" && inodes.contains(inode) && local.starts_with("0100007F:")) {
      ports.push_back(static_cast<unsigned>(std::stoul(local.substr(9), nullptr, 16)));
    }
  }
  return ports;
}

TEST_CASE("Map.Embedded.AnotherLocalProgramCannotRegisterAsItsWorker" * doctest::timeout(90)) {
  poolmap::Pool pool({.processes = 1, .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(1, 30s));
  // The port the embedded broker's workers connect to is open to every local user: a program that
  // finds it, here a poolmap-worker with this test's tasks, must not get work from the Pool.
  const auto ports = own_listening_tcp_ports();
  REQUIRE(ports.size() == 1);
  t::ChildProcess stranger({t::worker_binary(), "--broker", "tcp://127.0.0.1:" + std::to_string(ports.front()),
                            "--tasks", t::test_tasks_library(), "--processes", "1", "--heartbeat-ms",
                            std::to_string(t::heartbeat().count())});
  const bool told =
      t::eventually([&] { return stranger.stderr_text().find("embedded Pool's own broker") != std::string::npos; }, 30s);
  if (!told) MESSAGE("the stranger's log: " << stranger.stderr_text());
  CHECK(told);
  CHECK(pool.status().workers.size() == 1);
  CHECK(pool.workers() == 1);
  const auto pids = pool.map(t::worker_pid, iota_vector(200), {.chunksize = 1});
  CHECK(std::set<std::int64_t>(pids.begin(), pids.end()).size() == 1);
  check_squares(pool, 10'000);
}

// The whole text of a /proc file.
std::string read_proc(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

// The value of GLIBC_TUNABLES in the environment process `pid` started with ("" if none).
std::string glibc_tunables_of(std::int64_t pid) {
  const std::string environment = read_proc("/proc/" + std::to_string(pid) + "/environ");
  constexpr std::string_view kName = "GLIBC_TUNABLES=";
  std::size_t start = 0;
  while (start < environment.size()) {
    const std::size_t end = std::min(environment.find('\0', start), environment.size());
    const std::string_view entry(environment.data() + start, end - start);
    if (entry.starts_with(kName)) return std::string(entry.substr(kName.size()));
    start = end + 1;
  }
  return "";
}

// Whether the kernel may back the mapping that holds `address` with transparent huge pages
// (/proc/self/smaps: THPeligible).
bool huge_pages_eligible(const void* address) {
  std::istringstream maps(read_proc("/proc/self/smaps"));
  const auto wanted = reinterpret_cast<std::uintptr_t>(address);
  bool inside = false;
  std::string line;
  while (std::getline(maps, line)) {
    const auto dash = line.find('-');
    const auto space = line.find(' ');
    if (dash != std::string::npos && space != std::string::npos && dash < space &&
        line.find_first_not_of("0123456789abcdef") == dash) {  // a mapping's first line: start-end ...
      const auto start = std::stoull(line.substr(0, dash), nullptr, 16);
      const auto end = std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16);
      inside = start <= wanted && wanted < end;
    } else if (inside && line.starts_with("THPeligible:")) {
      return line.find('1') != std::string::npos;
    }
  }
  return false;
}

TEST_CASE("Map.Embedded.LargeBuffersUseHugePagesUnlessToldNot" * doctest::timeout(90)) {
  const std::string mode = read_proc("/sys/kernel/mm/transparent_hugepage/enabled");
  {
    poolmap::Pool pool({.processes = 1, .heartbeat_interval = t::heartbeat()});
    // The worker copies malloc with glibc.malloc.hugetlb=1 (fresh buffers: a page fault per 2 MiB).
    const auto pids = pool.map(t::worker_pid, iota_vector(4), {.chunksize = 1});
    REQUIRE(pids.size() == 4);
    CHECK(glibc_tunables_of(pids.front()).find("glibc.malloc.hugetlb=1") != std::string::npos);
    // The map's output (16 MB) lies where the kernel may back it with huge pages.
    const auto inputs = iota_vector(2'000'000);
    const auto results = pool.map(t::square, inputs);
    REQUIRE(results.size() == inputs.size());
    CHECK(results.back() == inputs.back() * inputs.back());
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    MESSAGE("output placement not checked: a sanitizer brings its own allocator");
#else
    if (mode.find("[never]") != std::string::npos || mode.empty()) {
      MESSAGE("output placement not checked: transparent huge pages are off on this machine");
    } else {
      CHECK(huge_pages_eligible(results.data()));
    }
#endif
  }
  // A user who says otherwise in GLIBC_TUNABLES is obeyed.
  const char* previous = std::getenv("GLIBC_TUNABLES");
  const std::string saved = previous == nullptr ? "" : previous;
  ::setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0", 1);
  {
    poolmap::Pool pool({.processes = 1, .heartbeat_interval = t::heartbeat()});
    const auto pids = pool.map(t::worker_pid, iota_vector(4), {.chunksize = 1});
    REQUIRE(pids.size() == 4);
    CHECK(glibc_tunables_of(pids.front()) == "glibc.malloc.hugetlb=0");
  }
  if (previous == nullptr) {
    ::unsetenv("GLIBC_TUNABLES");
  } else {
    ::setenv("GLIBC_TUNABLES", saved.c_str(), 1);
  }
}

TEST_CASE("Map.Embedded.WithoutInitIsAClearError" * doctest::timeout(30)) {
  t::ChildProcess program({t::test_client_binary(), "no-init"});
  const std::string out = program.read_all(20s);
  const auto status = program.wait(10s);
  REQUIRE(status.has_value());
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 3);
  CHECK(out.find("poolmap::init(argc, argv)") != std::string::npos);
}
