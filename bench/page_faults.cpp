// poolmap-bench-page-faults: what a fresh page of memory costs on this machine, against memory
// already touched. Prints one JSON line:
//   {"fresh_us_per_page": 12.2, "fresh_gb_per_s": 0.34, "touched_gb_per_s": 21.9}
// On a virtual machine a page fault can cost 10-20 us (a bare-metal one, under 1 us), which is
// why poolmap's daemons and Pools reuse freed memory (docs/BENCHMARKS.md, "Fresh pages").
#include <sys/mman.h>

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>

int main() {
  constexpr std::size_t kBytes = 256 << 20;
  constexpr std::size_t kPage = 4096;
  using Clock = std::chrono::steady_clock;
  void* mapped = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) {
    std::perror("mmap");
    return 1;
  }
  auto* memory = static_cast<char*>(mapped);
  auto start = Clock::now();
  for (std::size_t at = 0; at < kBytes; at += kPage) memory[at] = 1;  // one fault per page
  const double fresh = std::chrono::duration<double>(Clock::now() - start).count();
  start = Clock::now();
  std::memset(memory, 2, kBytes);  // every page is there now
  const double touched = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("{\"fresh_us_per_page\": %.2f, \"fresh_gb_per_s\": %.2f, \"touched_gb_per_s\": %.2f}\n",
              fresh / (kBytes / kPage) * 1e6, kBytes / fresh / 1e9, kBytes / touched / 1e9);
  ::munmap(memory, kBytes);
  return 0;
}
