// Internal (not installed): facts about this process that several components report.
#pragma once

#include <chrono>
#include <cstdint>
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

// Exit status of a worker process that heard no broker for kSilentPeriodsBeforeExit liveness
// periods (and at least kSilenceBeforeExitAtLeast) while it was registering again after losing
// one: its ZeroMQ context may be wedged (a blocked I/O thread never recovers), so it ends and its
// supervisor starts a fresh one. Not a crash. The floor leaves room for ZeroMQ's reconnect
// back-off (at most 1 s) to reach a broker that came back.
inline constexpr int kSilenceExitCode = 76;
inline constexpr int kSilentPeriodsBeforeExit = 10;
inline constexpr std::chrono::seconds kSilenceBeforeExitAtLeast{15};

// A fresh random 64-bit instance id (never 0). Worker processes and supervisors are told apart by
// it, not by (host, pid): containers and pid namespaces repeat pids, restarts repeat them too.
std::uint64_t new_instance_id();

// The 8 hex digits that logs and `poolmap status` show of an instance id.
std::string short_id(std::uint64_t instance);

// The half of an instance id that may be shown to anyone (status, logs): its high 32 bits, the
// low ones zero. The whole id stays with the process, its supervisor and the broker: it is what a
// worker registers with and what a supervisor's exit report must name.
constexpr std::uint64_t public_id(std::uint64_t instance) { return instance & 0xffff'ffff'0000'0000ULL; }

// Environment variables through which a supervisor gives a worker process its instance id and its
// own (16 hex digits each).
inline constexpr const char* kInstanceVariable = "POOLMAP_WORKER_INSTANCE";
inline constexpr const char* kSupervisorVariable = "POOLMAP_SUPERVISOR_INSTANCE";

// The instance id in environment variable `name`, or 0 if it is unset or not 1-16 hex digits.
std::uint64_t instance_from_environment(const char* name);

// Formats an instance id as 16 hex digits (what the variables above hold).
std::string full_id(std::uint64_t instance);

// Makes glibc's malloc keep memory it freed for the next allocation instead of returning it to
// the kernel: blocks up to 32 MiB come from the heap (not a fresh mmap each), up to 256 MiB of
// free heap stays mapped, and all threads share one arena (so that a buffer one thread frees is
// reused by another: ZeroMQ's I/O thread receives into what the loop thread freed). A process
// that moves chunk after chunk of similar size then reuses pages it has already touched; memory
// never touched costs a page fault per 4 KiB, and on virtual machines a fault costs 10-20 us
// (docs/BENCHMARKS.md). The heap grows 64 MiB at a time (M_TOP_PAD), and the memory it grows by
// is advised to use transparent huge pages before anything touches it (advise_heap_growth() in
// poolmap/archive.hpp, called again as a map fills large buffers). The price: RSS stays near its
// peak (up to 256 MiB above what is held).
// Called by poolmap-broker, by every worker process, and by a Pool with
// PoolOptions::reuse_freed_memory. Does nothing where the C library is not glibc.
void keep_freed_memory();

// The value of GLIBC_TUNABLES for a process that should back its heap with transparent huge pages
// (glibc.malloc.hugetlb=1: malloc advises MADV_HUGEPAGE on the memory it takes from the kernel),
// given the inherited value (nullptr: none). A value that sets glibc.malloc.hugetlb already is kept
// as it is: that is how a user opts out (glibc.malloc.hugetlb=0). Supervisors give it to the worker
// processes they start.
std::string glibc_tunables_with_huge_pages(const char* inherited);

}  // namespace poolmap::detail
