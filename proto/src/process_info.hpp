// Internal (not installed): facts about this process that several components report.
#pragma once

#include <string>

namespace poolmap::detail {

// This machine's host name, or "unknown-host".
std::string host_name();

// The path of this program's executable (/proc/self/exe), or `fallback` where it cannot be read.
std::string self_executable(const std::string& fallback = {});

// Exit status of a worker process that ended itself after an item passed its deadline (it has
// answered for the item and handed its chunks back first): its supervisor does not count it as a
// crash.
inline constexpr int kDeadlineExitCode = 75;

}  // namespace poolmap::detail
