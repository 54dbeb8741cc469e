// Bounded messages, end to end: every peer's --max-message-bytes (64 MiB by default; 1 MiB here)
// is respected by the client, which splits chunks to fit and refuses, before sending anything,
// an item that fits in no message; and by the worker, which fails a chunk whose results would not
// fit instead of sending it (which would get it disconnected).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "poolmap/poolmap.hpp"
#include "process.hpp"
#include "test_tasks.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;

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
