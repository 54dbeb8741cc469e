// Bounded messages, end to end: every peer's --max-message-bytes (64 MiB by default; 1 MiB here)
// is respected by the client, which splits chunks to fit and refuses, before sending anything,
// an item that fits in no message; and by the worker, which fails a chunk whose results would not
// fit instead of sending it (which would get it disconnected). Bounded peers: the broker caps
// workers, clients and registrations per address, and holds per-client quotas, against which the
// Pool applies backpressure.
#include <doctest/doctest.h>

#include <future>
#include <string>
#include <vector>
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

namespace {

constexpr std::int64_t kLimit = 1 << 20;  // 1 MiB on every peer

t::ClusterOptions limited(int workers) {
  return {.workers = workers,
          .broker_args = {"--max-message-bytes", std::to_string(kLimit)},
          .worker_args = {"--max-message-bytes", std::to_string(kLimit)}};
}

poolmap::PoolOptions remote(const t::Cluster& cluster) {
  return {.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat(), .max_message_bytes = kLimit};
}

std::string expected_shout(const std::string& s) {
  std::string out = s;
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out + "!";
}

std::string message_of(auto&& call) {
  try {
    call();
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kInvalidArgument);
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("Limits.Messages.ChunksAreSplitToFitTheLimit" * doctest::timeout(60)) {
  t::Cluster cluster(limited(2));
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 20s));
  // 40 items of 100 kB in chunks of 20: 2 MB chunks, twice the limit.
  std::vector<std::string> items;
  for (int i = 0; i < 40; ++i) items.emplace_back(100'000, static_cast<char>('a' + i % 26));
  const auto results = pool.map(t::shout, items, {.chunksize = 20});
  REQUIRE(results.size() == items.size());
  for (std::size_t i = 0; i < items.size(); ++i) CHECK(results[i] == expected_shout(items[i]));
  // At most 10 items (1,000,0xx bytes) fit in 1 MiB: at least 4 chunks went through.
  CHECK(pool.status().chunks_done >= 4);

  // imap splits the same way.
  std::vector<std::string> streamed;
  for (auto&& result : pool.imap(t::shout, items, {.chunksize = 20})) streamed.push_back(std::move(result));
  CHECK(streamed == results);
}

TEST_CASE("Limits.Messages.AnItemThatFitsNoMessageFailsBeforeAnythingIsSent" * doctest::timeout(60)) {
  t::Cluster cluster(limited(1));
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 20s));
  std::vector<std::string> items{"a", "b", "c", std::string(2 << 20, 'x'), "e"};
  const std::string map_error = message_of([&] { (void)pool.map(t::shout, items); });
  CHECK(map_error.find("item 3 encodes to") != std::string::npos);
  CHECK(map_error.find("max_message_bytes") != std::string::npos);
  CHECK(message_of([&] { (void)pool.submit(t::shout, items[3]).get(); }).find("item 0 encodes to") !=
        std::string::npos);
  // A context is checked the same way.
  const std::vector<std::uint8_t> table(2 << 20, 7);
  CHECK(message_of([&] { (void)pool.map(t::lookup.with(table), std::vector<std::int64_t>{1}); })
            .find("context") != std::string::npos);
  // Nothing reached the broker.
  const auto status = pool.status();
  CHECK(status.chunks_done + status.chunks_failed + status.chunks_queued + status.chunks_in_flight == 0);
  CHECK(status.context_bytes_received == 0);

  // imap hands out the results before the item, then fails.
  std::vector<std::string> before;
  const std::string stream_error = message_of([&] {
    for (auto&& result : pool.imap(t::shout, items, {.chunksize = 1})) before.push_back(std::move(result));
  });
  CHECK(stream_error.find("item 3 encodes to") != std::string::npos);
  CHECK(before == std::vector<std::string>{"A!", "B!", "C!"});
}

TEST_CASE("Limits.Messages.ResultsTooLargeFailTheirChunkNotTheWorker" * doctest::timeout(60)) {
  t::Cluster cluster(limited(1));
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 20s));
  const auto before = pool.status().workers;
  // 1 kB repeated 2,000 times: a 2 MB result for a tiny input.
  const std::string error = message_of([&] {
    (void)pool.starmap(t::repeat, std::vector<std::tuple<std::string, std::int32_t>>{{std::string(1000, 'r'), 2000}});
  });
  CHECK(error.find("--max-message-bytes") != std::string::npos);
  // The worker was not disconnected or replaced, and serves the next map.
  CHECK(pool.starmap(t::repeat, std::vector<std::tuple<std::string, std::int32_t>>{{"ab", 3}}) ==
        std::vector<std::string>{"ababab"});
  const auto after = pool.status().workers;
  REQUIRE(after.size() == 1);
  REQUIRE(before.size() == 1);
  CHECK(after[0].instance == before[0].instance);
}

TEST_CASE("Limits.Peers.TheBrokerCapsWorkersAndClients" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 2, .broker_args = {"--max-workers", "2", "--max-clients", "2"}});
  poolmap::Pool first({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(first.wait_for_workers(2, 20s));
  // A third worker process is refused, says why, and leaves no registration.
  auto& third = cluster.add_workers(1);
  CHECK(t::eventually([&] { return third.stderr_text().find("--max-workers") != std::string::npos; }, 20s));
  CHECK(first.status().workers.size() == 2);
  // A second client is served; a third is refused at once, with the reason.
  poolmap::Pool second({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  CHECK(second.map(t::square, std::vector<std::int64_t>{4}) == std::vector<std::int64_t>{16});
  poolmap::Pool third_client({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  std::string refused;
  try {
    (void)third_client.map(t::square, std::vector<std::int64_t>{4});
  } catch (const poolmap::Error& e) {
    refused = e.what();
  }
  CHECK(refused.find("--max-clients") != std::string::npos);
  CHECK(first.status().clients == 2);
  CHECK(first.map(t::square, std::vector<std::int64_t>{5}) == std::vector<std::int64_t>{25});
}

TEST_CASE("Limits.Peers.RegistrationChurnFromOneAddressIsRateLimited" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 1, .broker_args = {"--max-ready-per-second", "5"}});
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(1, 20s));
  // 40 raw peers on 127.0.0.1 register at once, as a churning or hostile host would.
  zmq::context_t context;
  std::vector<zmq::socket_t> peers;
  const auto started = std::chrono::steady_clock::now();
  for (std::uint32_t i = 0; i < 40; ++i) {
    zmq::socket_t& peer = peers.emplace_back(context, zmq::socket_type::dealer);
    peer.set(zmq::sockopt::linger, 0);
    wire::apply_secret(peer, t::user_secret());  // this user's peers: the rate limit is under test
    peer.connect(cluster.worker_endpoint());
    proto::Ready ready;
    ready.host = "churn";
    ready.pid = i + 1;
    ready.instance = 1000 + i;
    ready.generation = 1;
    auto frames = wire::make(proto::Command::kReady, ready);
    REQUIRE(wire::send(peer, frames, true));
  }
  // A refused peer hears ERROR naming the flag; a registered one hears a heartbeat.
  std::size_t refused = 0;
  std::size_t registered = 0;
  for (auto& peer : peers) {
    zmq::pollitem_t item{peer.handle(), 0, ZMQ_POLLIN, 0};
    REQUIRE(zmq::poll(&item, 1, 10s) == 1);
    auto frames = wire::receive(peer);
    REQUIRE(frames.has_value());
    const auto command = proto::parse_signature(wire::view(frames->at(0)));
    REQUIRE(command);
    if (command.value() == proto::Command::kError) {
      const auto error = proto::decode<proto::ErrorReply>(wire::view(frames->at(1)));
      REQUIRE(error);
      CHECK(error.value().code == poolmap::ErrorCode::kUnavailable);
      CHECK(error.value().message.find("--max-ready-per-second") != std::string::npos);
      ++refused;
    } else {
      ++registered;
    }
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  MESSAGE(registered << " of 40 registered, " << refused << " refused in " << elapsed << " s");
  CHECK(registered + refused == 40);
  // A burst of 5, then 5 per second.
  CHECK(static_cast<double>(registered) <= 5 + 5 * elapsed + 1);
  CHECK(refused > 0);
  // The real worker still serves.
  CHECK(pool.map(t::square, std::vector<std::int64_t>{1, 2, 3}) == std::vector<std::int64_t>{1, 4, 9});
}

TEST_CASE("Limits.Quotas.AClientOverItsQuotaWaitsInsteadOfFailing" * doctest::timeout(90)) {
  t::Cluster cluster({.workers = 2, .broker_args = {"--max-client-chunks", "4", "--max-client-jobs", "3"}});
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(2, 20s));
  // 300 one-item chunks against a quota of 4 at the broker: the Pool holds the rest back.
  std::vector<std::int64_t> items(300);
  for (std::size_t i = 0; i < items.size(); ++i) items[i] = static_cast<std::int64_t>(i);
  const auto squares = pool.map(t::square, items, {.chunksize = 1});
  REQUIRE(squares.size() == items.size());
  for (std::size_t i = 0; i < items.size(); ++i) CHECK(squares[i] == items[i] * items[i]);
  // 20 jobs at once against a quota of 3 jobs.
  std::vector<poolmap::Future<std::int64_t>> futures;
  for (std::int64_t i = 0; i < 20; ++i) futures.push_back(pool.submit(t::square, i));
  for (std::int64_t i = 0; i < 20; ++i) CHECK(futures[static_cast<std::size_t>(i)].get() == i * i);
  const auto status = pool.status();
  CHECK(status.chunks_failed == 0);  // held back, never failed
  CHECK(status.chunks_done == 320);
  CHECK(cluster.broker().stderr_text().find("--max-client-chunks 4") != std::string::npos);
}

TEST_CASE("Limits.Quotas.ContextsBeyondTheQuotaWaitTheirTurn" * doctest::timeout(90)) {
  t::Cluster cluster({.workers = 2,
                      .broker_args = {"--max-client-contexts", "1", "--max-client-context-bytes", "100000"}});
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(2, 20s));
  // Three maps, each with its own context, at once: the broker keeps one context at a time.
  std::vector<std::vector<std::uint8_t>> tables;
  for (int k = 0; k < 3; ++k) {
    auto& table = tables.emplace_back(10'000);
    for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<std::uint8_t>((i * (k + 3)) % 251);
  }
  std::vector<std::int64_t> indices(60);
  for (std::size_t i = 0; i < indices.size(); ++i) indices[i] = static_cast<std::int64_t>(i * 97);
  std::vector<poolmap::Future<std::vector<std::uint8_t>>> maps;
  for (const auto& table : tables) maps.push_back(pool.map_async(t::lookup.with(table), indices, {.chunksize = 1}));
  for (std::size_t k = 0; k < maps.size(); ++k) {
    const auto values = maps[k].get();
    REQUIRE(values.size() == indices.size());
    for (std::size_t i = 0; i < indices.size(); ++i) {
      CHECK(values[i] == tables[k][static_cast<std::size_t>(indices[i]) % tables[k].size()]);
    }
  }
  CHECK(pool.status().context_bytes_held <= 100000);
  // A context larger than the whole quota can never be kept: the map fails and says which flag.
  const std::vector<std::uint8_t> huge(200'000, 7);
  try {
    (void)pool.map(t::lookup.with(huge), std::vector<std::int64_t>{1, 2});
    FAIL("a context over the quota was accepted");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kInvalidArgument);
    CHECK(std::string(e.what()).find("--max-client-context-bytes") != std::string::npos);
  }
}

TEST_CASE("Limits.Quotas.AChunkLargerThanTheByteQuotaFailsAndSaysWhy" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 1, .broker_args = {"--max-client-bytes", "100000"}});
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(1, 20s));
  const std::string big(200'000, 'a');
  try {
    (void)pool.map(t::shout, std::vector<std::string>{big});
    FAIL("a chunk over the byte quota was accepted");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kInvalidArgument);
    CHECK(std::string(e.what()).find("--max-client-bytes") != std::string::npos);
  }
  // Items that fit go through, held back where they exceed the quota together.
  std::vector<std::string> items(20, std::string(30'000, 'b'));
  const auto shouted = pool.map(t::shout, items, {.chunksize = 1});
  REQUIRE(shouted.size() == items.size());
  for (const auto& s : shouted) CHECK(s == expected_shout(items[0]));
}

TEST_CASE("Limits.Window.GrowsWithTheWorkersAndHoldsItsBound" * doctest::timeout(180)) {
  // 3,000 chunks of 200 ms: the workers hold a few of them, and the broker queues the rest of what
  // the Pool's window lets it send. The most the broker ever holds for the map is that window.
  t::Cluster cluster({.workers = 1});
  const auto held_at_broker = [](poolmap::Pool& pool) {
    std::uint64_t held = 0;
    for (const auto& job : pool.status().jobs) held += job.chunks_queued + job.chunks_in_flight;
    return held;
  };
  const auto most_held = [&](poolmap::PoolOptions options, std::size_t workers, std::uint64_t window) {
    poolmap::Pool pool(options);
    REQUIRE(pool.wait_for_workers(workers, 60s));
    auto naps = pool.map_async(t::sleep_ms, std::vector<std::int64_t>(3000, 200), {.chunksize = 1});
    std::uint64_t most = 0;
    CHECK(t::eventually([&] { return (most = std::max(most, held_at_broker(pool))) >= window; }, 30s));
    for (int look = 0; look < 5; ++look) most = std::max(most, held_at_broker(pool));
    CHECK(naps.cancel());
    return most;
  };
  poolmap::PoolOptions options{.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()};
  CHECK(most_held(options, 1, 512) == 512);  // the floor
  options.max_chunks_in_flight = 100;
  CHECK(most_held(options, 1, 100) == 100);  // as given
  // 17 workers: 32 each.
  cluster.add_workers(16);
  options.max_chunks_in_flight = 0;
  CHECK(most_held(options, 17, 17 * 32) == 17 * 32);
}
