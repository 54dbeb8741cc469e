// A client program the integration tests start as a separate process.
//
//   poolmap_test_client no-init            Pool() without poolmap::init: must fail with a clear error
//   poolmap_test_client hold ENDPOINT      connect, print "connected", then wait to be killed
//   poolmap_test_client map ENDPOINT N     map test.square over 0..N-1, print the sum of results
//                                          (or "error: ..." on stderr and exit status 1)
//   poolmap_test_client blobs ENDPOINT COUNT BYTES
//                                          map test.blob_size over COUNT blobs of BYTES (chunksize 1)
//   poolmap_test_client slow ENDPOINTS N US  map test.logged_hash over items 0..N-1 of US microseconds
//                                          each (chunksize 1); print "exact", or "wrong K" for K
//                                          results out of place (ENDPOINTS may be a pair's list)
#include <poll.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>

#include "poolmap/poolmap.hpp"
#include "test_tasks.hpp"

namespace {
// Same rule as the tests: 100 ms, or POOLMAP_TEST_HEARTBEAT_MS.
std::chrono::milliseconds heartbeat() {
  const char* text = std::getenv("POOLMAP_TEST_HEARTBEAT_MS");
  const long ms = text != nullptr ? std::strtol(text, nullptr, 10) : 0;
  return std::chrono::milliseconds(ms > 0 ? ms : 100);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "no-init") == 0) {
    try {
      poolmap::Pool pool;
      std::puts("created a pool without init");
      return 1;
    } catch (const poolmap::Error& e) {
      std::printf("error: %s\n", e.what());
      return 3;
    }
  }
  poolmap::init(argc, argv);
  if (argc >= 3 && std::strcmp(argv[1], "hold") == 0) {
    poolmap::Pool pool({.broker = argv[2], .heartbeat_interval = heartbeat()});
    (void)pool.status();
    std::puts("connected");
    std::fflush(stdout);
    ::poll(nullptr, 0, -1);  // until killed
    return 0;
  }
  if (argc >= 4 && std::strcmp(argv[1], "map") == 0) {
    try {
      poolmap::Pool pool({.broker = argv[2]});
      std::vector<std::int64_t> inputs(std::stoul(argv[3]));
      std::iota(inputs.begin(), inputs.end(), 0);
      const auto results = pool.map(poolmap::test::square, inputs);
      std::printf("%lld\n", static_cast<long long>(std::accumulate(results.begin(), results.end(), std::int64_t{0})));
      return 0;
    } catch (const poolmap::Error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
  }
  if (argc >= 5 && std::strcmp(argv[1], "blobs") == 0) {
    poolmap::Pool pool({.broker = argv[2], .heartbeat_interval = heartbeat()});
    const std::vector<std::vector<std::uint8_t>> blobs(std::stoul(argv[3]), std::vector<std::uint8_t>(std::stoul(argv[4]), 7));
    std::puts("mapping");
    std::fflush(stdout);
    const auto sizes = pool.map(poolmap::test::blob_size, blobs, {.chunksize = 1});
    std::printf("%zu\n", sizes.size());
    return 0;
  }
  if (argc >= 5 && std::strcmp(argv[1], "slow") == 0) {
    try {
      poolmap::Pool pool({.broker = argv[2], .heartbeat_interval = heartbeat()});
      std::vector<poolmap::test::SlowItem> items(std::stoul(argv[3]));
      for (std::size_t i = 0; i < items.size(); ++i) items[i] = {static_cast<std::int64_t>(i), std::stoi(argv[4])};
      const auto results = pool.map(poolmap::test::logged_hash, items, {.chunksize = 1});
      std::size_t wrong = results.size() == items.size() ? 0 : items.size();
      for (std::size_t i = 0; i < results.size() && i < items.size(); ++i) {
        wrong += results[i] != poolmap::test::hash_index(static_cast<std::int64_t>(i));
      }
      if (wrong == 0) {
        std::puts("exact");
      } else {
        std::printf("wrong %zu\n", wrong);
      }
      return 0;
    } catch (const poolmap::Error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "usage: %s no-init | hold ENDPOINT | map ENDPOINT N | blobs ENDPOINT COUNT BYTES | slow ENDPOINTS N US\n",
               argv[0]);
  return 2;
}
