// Hostile peers on the worker endpoint while a good client maps (issue 23): a peer that never
// registered forging results, progress and exit reports under ids it read from `poolmap status`;
// a worker whose results do not decode to its chunks; peers that register, take chunks and
// vanish, ten a second. In every case each map of the good client is exact and none fails.
#include <doctest/doctest.h>

#include <atomic>
#include <fstream>
#include <random>
#include <thread>

#include <zmq.hpp>

#include "poolmap/poolmap.hpp"
#include "poolmap/protocol.hpp"
#include "process.hpp"
#include "test_tasks.hpp"
#include "wire.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;
namespace proto = poolmap::proto;
namespace wire = poolmap::wire;
using Clock = std::chrono::steady_clock;

namespace {

poolmap::PoolOptions remote(const t::Cluster& cluster) {
  return {.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()};
}

// A peer on the worker endpoint that speaks the protocol by hand.
class RawPeer {
 public:
  explicit RawPeer(const std::string& endpoint) : socket_(context_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    // This user's secret: a hostile peer of the same user (or one that has the secret) is what
    // these tests are about; strangers are refused at the handshake (tests/integration/secret_test.cpp).
    wire::apply_secret(socket_, t::user_secret());
    socket_.connect(endpoint);
  }
  template <class Header>
  void send(proto::Command command, const Header& header, const poolmap::Bytes* payload = nullptr) {
    auto frames = wire::make(command, header);
    if (payload != nullptr) frames.emplace_back(payload->data(), payload->size());
    (void)wire::send(socket_, frames, true);  // a full queue drops the message: fine for an attacker
  }
  // Registers as a worker process offering `task` (name, signature) with `credit`.
  void register_as(const std::string& name, const std::string& signature, std::uint32_t credit) {
    static std::mt19937_64 random{std::random_device{}()};
    send(proto::Command::kReady, proto::Ready{"raw-peer", 1, credit, random() | 1, 0, {{name, signature}}, 1, 0, {}});
  }
  // The chunks of the TASK messages that arrive within `wait` (heartbeats and the rest skipped).
  std::vector<proto::TaskHeader> tasks(std::chrono::milliseconds wait) {
    std::vector<proto::TaskHeader> out;
    const auto until = Clock::now() + wait;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      if (left.count() <= 0 || zmq::poll(&item, 1, left) <= 0) return out;
      while (auto frames = wire::receive(socket_)) {
        if (frames->size() < 3) continue;
        const auto command = proto::parse_signature(wire::view(frames->front()));
        if (!command || command.value() != proto::Command::kTask) continue;
        for (std::size_t i = 1; i + 1 < frames->size(); i += 2) {
          auto header = proto::decode<proto::TaskHeader>(wire::view((*frames)[i]));
          if (header) out.push_back(header.value());
        }
      }
      if (!out.empty()) return out;
    }
  }

 private:
  zmq::context_t context_{1};
  zmq::socket_t socket_;
};

// `count` encoded results of type T, each `value`.
template <class T>
poolmap::Bytes encoded(std::uint32_t count, T value) {
  poolmap::Bytes out;
  poolmap::OutputArchive archive(out);
  for (std::uint32_t i = 0; i < count; ++i) archive(value);
  return out;
}

// Maps `task` over `items` on a thread again and again until stop(), counting the maps whose every
// result is right and those that were wrong or failed.
class GoodClient {
 public:
  template <class Task, class Item, class Check>
  GoodClient(poolmap::Pool& pool, const Task& task, std::vector<Item> items, poolmap::MapOptions options, Check check)
      : thread_([this, &pool, task, items = std::move(items), options, check] {
          while (mapping_.load()) {
            try {
              const auto results = pool.map(task, items, options);
              bool ok = results.size() == items.size();
              for (std::size_t i = 0; ok && i < items.size(); ++i) ok = check(items[i], results[i]);
              ++(ok ? right : wrong);
            } catch (const std::exception& e) {
              ++wrong;
              std::lock_guard lock(mutex_);
              last_error_ = e.what();
            }
          }
        }) {}
  ~GoodClient() { stop(); }
  void stop() {
    mapping_ = false;
    if (thread_.joinable()) thread_.join();
  }
  std::string last_error() {
    std::lock_guard lock(mutex_);
    return last_error_;
  }
  std::atomic<int> right{0};
  std::atomic<int> wrong{0};

 private:
  std::atomic<bool> mapping_{true};
  std::mutex mutex_;
  std::string last_error_;
  std::thread thread_;
};

std::vector<std::int64_t> iota(std::int64_t n) {
  std::vector<std::int64_t> items(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) items[static_cast<std::size_t>(i)] = i;
  return items;
}

bool squared(std::int64_t item, std::int64_t result) { return result == item * item; }

// A variable of a process's environment (root reads any process's), or "".
std::string environment_of(pid_t pid, const std::string& name) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
  std::string entry;
  while (std::getline(in, entry, '\0')) {
    if (entry.starts_with(name + "=")) return entry.substr(name.size() + 1);
  }
  return {};
}

// The value of the first field `key` in `json` at or after `at` (a string's text without its
// quotes, or a number's digits), and `at` moved past it; "" when there is none.
std::string json_field(const std::string& json, const std::string& key, std::size_t& at) {
  const std::string tag = "\"" + key + "\":";
  const auto found = json.find(tag, at);
  if (found == std::string::npos) return {};
  std::size_t start = found + tag.size();
  std::size_t end = 0;
  if (start < json.size() && json[start] == '"') {
    end = json.find('"', ++start);
  } else {
    end = json.find_first_of(",}]", start);
  }
  if (end == std::string::npos) end = json.size();
  at = end;
  return json.substr(start, end - start);
}

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t count = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++count;
  return count;
}

}  // namespace

TEST_CASE("Faults.Hostile.Identity.IdsReadFromStatusGrantNothing" * doctest::timeout(110)) {
  // A peer that never registered sends WORKER_RESULT and WORKER_PROGRESS for the tickets in flight
  // under the workers' ids (as `poolmap status --json` shows them, and even their whole ids, read
  // here from the processes' environment), and WORKER_EXITED under the ids status shows. Before,
  // the broker took its results as late answers (maps came back with its values) and its exit
  // reports dropped the workers.
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 20s));
  GoodClient good(pool, t::square, iota(64), {.chunksize = 1}, squared);
  REQUIRE(t::eventually([&] { return good.right.load() >= 3; }, 30s));

  t::ChildProcess cli({t::cli_binary(), "status", "--broker", cluster.client_endpoint(), "--json"});
  const std::string json = cli.read_all(20s);
  struct Seen {
    std::string host;
    std::uint32_t pid = 0;
    std::uint64_t id = 0;
    std::uint64_t supervisor = 0;
  };
  std::vector<Seen> seen;
  for (std::size_t at = 0; (at = json.find("\"host\":", at)) != std::string::npos;) {
    Seen worker;
    worker.host = json_field(json, "host", at);
    worker.pid = static_cast<std::uint32_t>(std::stoul(json_field(json, "pid", at)));
    // As shown: 8 hex digits, the high half of each id.
    worker.id = std::stoull(json_field(json, "id", at), nullptr, 16) << 32;
    worker.supervisor = std::stoull(json_field(json, "supervisor", at), nullptr, 16) << 32;
    seen.push_back(worker);
  }
  REQUIRE_MESSAGE(seen.size() == 2, json);
  std::vector<std::uint64_t> claimed;  // every id the forger tries results under
  for (const auto& worker : seen) claimed.push_back(worker.id);
  for (const pid_t pid : cluster.worker_pids()) {
    const std::string whole = environment_of(pid, "POOLMAP_WORKER_INSTANCE");
    if (!whole.empty()) claimed.push_back(std::stoull(whole, nullptr, 16));
  }
  REQUIRE(claimed.size() == 4);

  RawPeer forger(cluster.worker_endpoint());
  poolmap::Pool observer(remote(cluster));
  const auto lie = encoded<std::int64_t>(1, 999);
  for (int round = 0; round < 20; ++round) {
    // Tickets are numbered in order: the ones in flight now lie just past the chunks done.
    const std::uint64_t done = observer.status().chunks_done;
    for (std::uint64_t ticket = done; ticket < done + 200; ++ticket) {
      for (const std::uint64_t instance : claimed) {
        proto::WorkerResult result;
        result.ticket = ticket;
        result.instance = instance;
        result.count = 1;
        forger.send(proto::Command::kWorkerResult, result, &lie);
        forger.send(proto::Command::kWorkerProgress, proto::WorkerProgress{ticket, 1});
      }
    }
    for (const auto& worker : seen) {
      forger.send(proto::Command::kWorkerExited,
                  proto::WorkerExited{worker.host, worker.pid, worker.id, worker.supervisor, true,
                                      "signal 9 (Killed)", done});
    }
    const int before = good.right.load() + good.wrong.load();
    REQUIRE(t::eventually([&] { return good.right.load() + good.wrong.load() > before; }, 30s));
  }
  good.stop();
  MESSAGE("good client: " << good.right.load() << " maps right, " << good.wrong.load() << " wrong or failed "
                          << good.last_error());
  CHECK(good.wrong.load() == 0);
  const std::string log = cluster.broker().stderr_text();
  CHECK(log.find("accepted a late result") == std::string::npos);
  CHECK(log.find("worker lost") == std::string::npos);
  // The same two processes are registered, never dropped or replaced.
  const auto workers = observer.status().workers;
  REQUIRE(workers.size() == 2);
  for (const auto& worker : workers) {
    CHECK(std::any_of(seen.begin(), seen.end(), [&](const Seen& s) { return s.pid == worker.pid && s.id == worker.instance; }));
  }
}

TEST_CASE("Faults.Hostile.Liar.AWorkerWhoseResultsDoNotDecodeIsDroppedAndEveryMapSucceeds" * doctest::timeout(110)) {
  // The liar claims the right count and sends one result too many: only the client's decoder can
  // tell. Before, the client failed the map with kMalformed (27,941 of 27,942 maps failed); now it
  // tells the broker, which drops the liar, and runs the chunk again elsewhere.
  t::Cluster cluster({.workers = 1});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 20s));
  // Slow items keep the honest worker busy, so that chunks stay queued and the liar gets some.
  std::vector<t::SlowItem> items(12);
  for (std::size_t i = 0; i < items.size(); ++i) items[i] = {static_cast<std::int64_t>(i), 20'000};
  GoodClient good(pool, t::slow_hash, items, {.chunksize = 1},
                  [](const t::SlowItem& item, std::uint64_t hash) { return hash == t::hash_index(item.index); });
  RawPeer liar(cluster.worker_endpoint());
  liar.register_as(std::string(t::slow_hash.name()), poolmap::Task<std::uint64_t(t::SlowItem)>::signature(), 4);
  int lies = 0;
  const auto until = Clock::now() + 60s;
  while (lies == 0 && Clock::now() < until) {
    for (const auto& task : liar.tasks(1s)) {
      const auto too_many = encoded<std::uint64_t>(task.count + 1, 999);
      proto::WorkerResult result;
      result.ticket = task.ticket;
      result.count = task.count;
      liar.send(proto::Command::kWorkerResult, result, &too_many);
      ++lies;
    }
  }
  REQUIRE(lies > 0);
  REQUIRE(t::eventually(
      [&] { return cluster.broker().stderr_text().find("do not decode at the client") != std::string::npos; }, 20s));
  const int after = good.right.load();
  REQUIRE(t::eventually([&] { return good.right.load() >= after + 3; }, 60s));
  good.stop();
  MESSAGE("the liar answered " << lies << " chunks; good client: " << good.right.load() << " maps right, "
                               << good.wrong.load() << " wrong or failed " << good.last_error());
  CHECK(good.wrong.load() == 0);
  CHECK(pool.status().workers.size() == 1);  // the liar is gone
}

TEST_CASE("Faults.Hostile.Churn.PeersThatRegisterTakeChunksAndVanishDoNotStarveAGoodClient" * doctest::timeout(110)) {
  // Ten peers a second register with a real task, take what they are given and vanish without an
  // answer. Before, each took chunks at once (an idle worker goes first) and held them for a
  // liveness period: a good client fell from about 1,190 maps a second to 0.3, and a chunk lost on
  // enough of them failed its map. A worker on probation now gets one chunk, only what the proven
  // workers leave queued, and its loss spends no retry.
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 20s));
  const auto phase = std::max<std::chrono::milliseconds>(3s, 20 * t::heartbeat());
  auto maps_in = [&](GoodClient& good) {
    const int start = good.right.load();
    std::this_thread::sleep_for(phase);  // a measuring window, not a wait for readiness
    return good.right.load() - start;
  };
  GoodClient good(pool, t::square, iota(64), {.chunksize = 8}, squared);
  REQUIRE(t::eventually([&] { return good.right.load() >= 3; }, 30s));
  const int baseline = maps_in(good);

  std::atomic<bool> churning{true};
  std::atomic<int> fakes{0};
  std::atomic<int> chunks_taken{0};
  std::thread churn([&] {
    const std::string signature = poolmap::Task<std::int64_t(std::int64_t)>::signature();
    while (churning.load()) {
      RawPeer fake(cluster.worker_endpoint());
      fake.register_as(std::string(t::square.name()), signature, 20);
      ++fakes;
      const auto vanish_at = Clock::now() + 100ms;  // then it vanishes, answering nothing
      while (Clock::now() < vanish_at) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(vanish_at - Clock::now());
        chunks_taken += static_cast<int>(fake.tasks(left).size());
      }
    }
  });
  const int under_churn = maps_in(good);
  churning = false;
  churn.join();
  good.stop();
  MESSAGE("maps in " << phase.count() << " ms: " << baseline << " before, " << under_churn << " while " << fakes.load()
                     << " peers registered and vanished (they were given " << chunks_taken.load() << " chunks); "
                     << good.wrong.load() << " maps wrong or failed " << good.last_error());
  CHECK(occurrences(cluster.broker().stderr_text(), "raw-peer") >= 10);  // they did register
  CHECK(good.wrong.load() == 0);
  CHECK(under_churn * 2 >= baseline);
}
