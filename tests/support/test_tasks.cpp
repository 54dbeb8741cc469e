#include "test_tasks.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <set>
#include <stdexcept>

namespace poolmap::test {

POOLMAP_TASK(square, [](std::int64_t x) { return x * x; });
POOLMAP_TASK(unencodable, [](std::int64_t x) { return Unencodable{x}; });
POOLMAP_TASK(undecodable, [](const Undecodable& x) { return x.value; });

POOLMAP_TASK(fail_at_13, [](std::int64_t x) -> std::int64_t {
  if (x == 13) throw std::invalid_argument("bad item 13");
  return x;
});

POOLMAP_TASK(shout, [](const std::string& s) {
  std::string out = s;
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::toupper(c); });
  return out + "!";
});

POOLMAP_TASK(prefix_sums, [](const std::vector<double>& v) {
  std::vector<double> out(v.size());
  double sum = 0;
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = sum += v[i];
  return out;
});

POOLMAP_TASK(mirror, [](const Point& p) { return Point{-p.x, -p.y, p.label + "'"}; });

POOLMAP_TASK(sleep_ms, [](std::int64_t ms) {
  struct timespec pause{static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1'000'000};
  ::nanosleep(&pause, nullptr);
  return ms;
});

namespace {
void sleep_us(std::int64_t us) {
  struct timespec pause{static_cast<time_t>(us / 1'000'000), static_cast<long>(us % 1'000'000) * 1000};
  ::nanosleep(&pause, nullptr);
}
}  // namespace

POOLMAP_TASK(slow_hash, [](const SlowItem& item) {
  sleep_us(item.sleep_us);
  return hash_index(item.index);
});

POOLMAP_TASK(logged_hash, [](const SlowItem& item) {
  if (const char* path = std::getenv("POOLMAP_TEST_RUN_LOG"); path != nullptr) {
    const int fd = ::open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
      const std::string line = std::to_string(item.index) + "\n";  // one write: O_APPEND keeps lines whole
      [[maybe_unused]] const auto written = ::write(fd, line.data(), line.size());
      ::close(fd);
    }
  }
  sleep_us(item.sleep_us);
  return hash_index(item.index);
});

POOLMAP_TASK(segfault_at_13, [](const SlowItem& item) {
  if (item.index == 13) std::raise(SIGSEGV);
  sleep_us(item.sleep_us);
  return hash_index(item.index);
});

POOLMAP_TASK(hang_at_7, [](const SlowItem& item) {
  while (item.index == 7) sleep_us(1'000'000);
  sleep_us(item.sleep_us);
  return hash_index(item.index);
});

POOLMAP_TASK(blob_size, [](const std::vector<std::uint8_t>& blob) {
  sleep_us(20'000);
  return static_cast<std::uint64_t>(blob.size());
});

POOLMAP_TASK(add, [](std::int64_t a, std::int64_t b) { return a + b; });

POOLMAP_TASK(repeat, [](const std::string& s, std::int32_t n) {
  std::string out;
  for (std::int32_t i = 0; i < n; ++i) out += s;
  return out;
});

POOLMAP_TASK(flaky_once, [](std::int64_t x) {
  static std::set<std::int64_t> seen;  // a worker process runs one item at a time
  if (seen.insert(x).second) throw std::runtime_error("first try of " + std::to_string(x));
  return x;
});

namespace {
std::string init_args_seen;
int init_runs = 0;
}  // namespace

POOLMAP_WORKER_INIT([](const std::vector<std::string>& args) {
  ++init_runs;
  init_args_seen.clear();
  for (const auto& arg : args) init_args_seen += (init_args_seen.empty() ? "" : ",") + arg;
});

POOLMAP_TASK(init_report, [](std::int64_t) { return init_args_seen + "|" + std::to_string(init_runs); });

POOLMAP_TASK(lookup, [](const std::vector<std::uint8_t>& table, std::int64_t i) {
  return table.at(static_cast<std::size_t>(i) % table.size());
});

POOLMAP_TASK(worker_pid, [](std::int64_t) { return static_cast<std::int64_t>(::getpid()); });

}  // namespace poolmap::test
