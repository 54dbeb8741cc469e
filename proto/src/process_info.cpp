#include "process_info.hpp"

#include "poolmap/archive.hpp"

#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string_view>

namespace poolmap::detail {

std::string host_name() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof(buffer) - 1) != 0) return "unknown-host";
  return buffer;
}

std::string self_executable(const std::string& fallback) {
  char buffer[PATH_MAX] = {};
  const ssize_t n = ::readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  return n > 0 ? std::string(buffer, static_cast<std::size_t>(n)) : fallback;
}

std::uint64_t new_instance_id() {
  std::random_device device;
  for (;;) {
    const std::uint64_t id = (static_cast<std::uint64_t>(device()) << 32) ^ static_cast<std::uint64_t>(device());
    if (id != 0) return id;
  }
}

std::string short_id(std::uint64_t instance) {
  char buffer[17] = {};
  std::snprintf(buffer, sizeof(buffer), "%016llx", static_cast<unsigned long long>(instance));
  return std::string(buffer, 8);
}

std::string full_id(std::uint64_t instance) {
  char buffer[17] = {};
  std::snprintf(buffer, sizeof(buffer), "%016llx", static_cast<unsigned long long>(instance));
  return buffer;
}

std::uint64_t instance_from_environment(const char* name) {
  const char* text = std::getenv(name);
  if (text == nullptr) return 0;
  const std::size_t length = std::strlen(text);
  if (length == 0 || length > 16) return 0;
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < length; ++i) {
    const char c = text[i];
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (digit < 0) return 0;
    value = value * 16 + static_cast<std::uint64_t>(digit);
  }
  return value;
}

namespace {
constexpr std::uintptr_t kHugePage = 2 << 20;

std::uintptr_t huge_page_down(std::uintptr_t address) { return address & ~(kHugePage - 1); }
std::uintptr_t huge_page_up(std::uintptr_t address) { return (address + kHugePage - 1) & ~(kHugePage - 1); }

// The end of the heap memory advised so far (0: keep_freed_memory() has not run). Read without
// the mutex, so that the common case (the heap has not grown) costs no lock.
std::mutex heap_advice_mutex;
std::atomic<std::uintptr_t> heap_advised_to{0};
}  // namespace

void advise_heap_growth() noexcept {
  const auto advised = heap_advised_to.load(std::memory_order_relaxed);
  const auto end = reinterpret_cast<std::uintptr_t>(::sbrk(0));
  if (advised == 0 || end == static_cast<std::uintptr_t>(-1) || huge_page_down(end) <= advised) return;
  std::lock_guard lock(heap_advice_mutex);
  const auto from = heap_advised_to.load(std::memory_order_relaxed);
  const auto top = huge_page_down(reinterpret_cast<std::uintptr_t>(::sbrk(0)));
  if (top <= from) return;  // another thread advised it meanwhile
  // Only memory nothing has touched yet: advice on used memory would have the kernel's khugepaged
  // copy it into huge pages in the background, which costs more than it saves.
  (void)::madvise(reinterpret_cast<void*>(from), top - from, MADV_HUGEPAGE);
  heap_advised_to.store(top, std::memory_order_relaxed);
}

void advise_huge_pages(const void* data, std::size_t bytes) noexcept {
  if (data == nullptr || bytes < (1 << 20) || heap_advised_to.load(std::memory_order_relaxed) == 0) return;
  advise_heap_growth();  // a buffer on the heap: it came from the heap's new end, if anywhere new
  // A buffer in its own mapping (larger than M_MMAP_THRESHOLD): the whole huge pages inside it.
  const auto begin = huge_page_up(reinterpret_cast<std::uintptr_t>(data));
  const auto end = huge_page_down(reinterpret_cast<std::uintptr_t>(data) + bytes);
  const auto top = reinterpret_cast<std::uintptr_t>(::sbrk(0));
  if (reinterpret_cast<std::uintptr_t>(data) >= top && end > begin) {
    (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
}

std::string glibc_tunables_with_huge_pages(const char* inherited) {
  constexpr std::string_view kTunable = "glibc.malloc.hugetlb=";
  std::string value = inherited == nullptr ? "" : inherited;
  if (value.find(kTunable) != std::string::npos) return value;
  if (!value.empty()) value.push_back(':');
  value.append(kTunable);
  value.push_back('1');
  return value;
}

void keep_freed_memory() {
#if defined(__GLIBC__)
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest
  ::mallopt(M_TRIM_THRESHOLD, 256 << 20);
  ::mallopt(M_ARENA_MAX, 1);
  // The heap grows 64 MiB at a time, and all of it is advised to use huge pages now and whenever
  // advise_huge_pages() sees a large buffer on it: the next allocations land on advised memory.
  ::mallopt(M_TOP_PAD, 64 << 20);
  {
    std::lock_guard lock(heap_advice_mutex);
    if (heap_advised_to.load() == 0) heap_advised_to.store(huge_page_up(reinterpret_cast<std::uintptr_t>(::sbrk(0))));
  }
  // Grows the heap now, by the pad (M_TRIM_THRESHOLD keeps it), so that the next allocations land
  // on advised memory. Through a volatile pointer: the compiler drops a malloc only freed.
  void* volatile grown = ::malloc(1 << 20);
  ::free(grown);
  advise_heap_growth();  // one heap for all threads: the I/O thread reuses what the main one freed
#endif
}

}  // namespace poolmap::detail
