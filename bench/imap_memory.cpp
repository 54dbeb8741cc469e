// imap over N tiny items through a running broker; prints the client's peak RSS.
//   poolmap-bench-imap-memory ENDPOINT N
#include <sys/resource.h>

#include <cstdio>
#include <ranges>
#include <string>

#include "poolmap/poolmap.hpp"
#include "test_tasks.hpp"

int main(int argc, char** argv) {
  poolmap::init(argc, argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s ENDPOINT N\n", argv[0]);
    return 2;
  }
  poolmap::Pool pool({.broker = argv[1]});
  const long n = std::stol(argv[2]);
  std::int64_t sum = 0;
  std::size_t count = 0;
  auto stream = pool.imap(poolmap::test::square, std::views::iota(0L, n));
  for (std::int64_t r : stream) {
    sum += r;
    ++count;
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("items=%zu client_peak_rss_kib=%ld chunks=%zu final_chunksize=%zu checksum=%lld\n", count,
              usage.ru_maxrss, stream.chunks_sent(), stream.chunksize(), static_cast<long long>(sum));
  return count == static_cast<std::size_t>(n) ? 0 : 1;
}
