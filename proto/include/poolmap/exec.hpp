// The task behind `poolmap exec` (GNU parallel across a cluster): runs one command per input line on
// a worker and returns what it printed.
//
// Only workers started with `poolmap-worker --allow-exec` register it (enable_exec_task() in
// worker.hpp): any client that may reach their broker can then run any command as the worker's
// user, so use CURVE (docs/SECURITY.md) on a shared network.
//
// The command is the broadcast context, the input line the argument:
//   pool.imap(poolmap::exec_task.with(std::vector<std::string>{"gzip", "-k", "{}"}), lines)
// Every "{}" in an argument is replaced by the line; when no argument holds one, the line is added
// as the last argument. The program is looked up in the worker's PATH; its standard input is
// /dev/null. It ends with the worker process that runs it, and so does all it started: past a
// task deadline (the item fails with kDeadlineExceeded), or when that process is killed.
#pragma once

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "poolmap/task.hpp"

namespace poolmap {

// What one command did: its exit status (0 to 255; 128 + N when signal N ended it; 127 when it
// could not be started), then everything it wrote to stdout, then to stderr.
using ExecResult = std::tuple<std::int32_t, std::string, std::string>;

inline constexpr Task<ExecResult(std::vector<std::string>, std::string)> exec_task{"poolmap.exec"};

}  // namespace poolmap
