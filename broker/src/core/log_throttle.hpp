// Internal (not installed): log lines for events that may come in floods (bad messages, refused
// handshakes, peers over a cap), at most one per interval, each saying how many happened since the
// last one: a peer sending garbage must not flood the log. No clock of its own (callers pass `now`).
#pragma once

#include <chrono>
#include <cstdint>
#include <utility>

namespace poolmap::detail {

class LogThrottle {
 public:
  using Clock = std::chrono::steady_clock;
  // Counts one event. Returns how many to report when a line is due now, else 0.
  std::uint64_t count(Clock::time_point now, Clock::duration interval) {
    ++unlogged_;
    if (now - logged_ < interval) return 0;
    logged_ = now;
    return std::exchange(unlogged_, 0);
  }

 private:
  std::uint64_t unlogged_ = 0;
  Clock::time_point logged_{};
};

// "s" after a count that is not 1, for those lines.
inline const char* plural(std::uint64_t n) { return n == 1 ? "" : "s"; }

}  // namespace poolmap::detail
