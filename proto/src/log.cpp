#include "log.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace poolmap::detail {

namespace {
std::atomic<bool> program_configured{false};
// "2026-12-02T11:10:20.256 info poolmap.broker[9609] broker serving ...", for daemons and library.
constexpr const char* kLinePattern = "%Y-%m-%dT%H:%M:%S.%e %^%l%$ %n[%P] %v";
}  // namespace

std::shared_ptr<spdlog::logger> logger(const std::string& name) {
  static std::mutex mutex;  // guards creation, so two threads don't register the same name
  std::lock_guard lock(mutex);
  if (auto existing = spdlog::get(name)) return existing;
  std::shared_ptr<spdlog::logger> created;
  if (program_configured.load()) {
    // A poolmap program: its settings (sinks, pattern, level) apply.
    const auto& sinks = spdlog::default_logger()->sinks();
    created = std::make_shared<spdlog::logger>(name, sinks.begin(), sinks.end());
    spdlog::initialize_logger(created);
  } else {
    // The library inside a user's program: stderr, warnings and up, unless POOLMAP_LOG_LEVEL says.
    created = std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    spdlog::initialize_logger(created);
    created->set_pattern(kLinePattern);  // the daemons' shape, pid included
    const char* level = std::getenv("POOLMAP_LOG_LEVEL");
    created->set_level(level != nullptr ? spdlog::level::from_str(level) : spdlog::level::warn);
  }
  return created;
}

bool configure_program_logging(const std::string& level, const std::string& program) {
  const auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") return false;
  program_configured.store(true);
  auto stderr_logger = spdlog::stderr_color_mt(program);
  spdlog::set_default_logger(stderr_logger);
  spdlog::set_pattern(kLinePattern);
  spdlog::set_level(parsed);
  return true;
}

std::string printable_identity(const std::string& identity) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(identity.size() * 2);
  for (unsigned char c : identity) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

std::string printable(std::string_view text, std::size_t max_bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 8);
  for (const char ch : text) {
    if (out.size() >= max_bytes) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += ch;
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace poolmap::detail
