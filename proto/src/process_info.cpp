#include "process_info.hpp"

#include <unistd.h>

#include <climits>

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

}  // namespace poolmap::detail
