#include "process_info.hpp"

#include <malloc.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

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

void keep_freed_memory() {
#if defined(__GLIBC__)
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest
  ::mallopt(M_TRIM_THRESHOLD, 256 << 20);
  ::mallopt(M_ARENA_MAX, 1);  // one heap for all threads: the I/O thread reuses what the main one freed
#endif
}

}  // namespace poolmap::detail
