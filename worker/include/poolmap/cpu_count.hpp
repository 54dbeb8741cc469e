// poolmap: default worker-count detection.
//
// Decides how many worker processes a poolmap worker host should start when the user did not say.
// The answer is the smallest of several limits the machine, the container and the batch scheduler
// put on this process, so that a pool never oversubscribes the CPUs it was actually given.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace poolmap {

// Where the inputs of detect_worker_count come from. Every path is relative to `root`, so tests
// can point it at a fake tree. Default: the real machine.
struct CpuProbe {
  // Prefix for /sys/devices/system/cpu, /sys/fs/cgroup and /proc/self/cgroup.
  std::filesystem::path root = "/";
  // CPUs this process may run on (sched_getaffinity). Default (nullopt): read the real affinity
  // mask. An empty vector means "affinity unknown". Negative and duplicate ids are ignored.
  std::optional<std::vector<int>> affinity;
  // Environment lookup. Default (empty function): std::getenv.
  std::function<std::optional<std::string>(const std::string&)> getenv;
};

// How many worker processes to start, and which input decided it.
struct CpuCount {
  std::size_t count = 1;  // always >= 1
  // One of "physical-cores", "affinity", "cgroup-quota", "SLURM_CPUS_PER_TASK", "PBS_NCPUS",
  // "NCPUS", "fallback".
  std::string source;
  // Human-readable summary of every input seen, e.g.
  // "physical-cores=8 affinity=16 cgroup-quota=4 SLURM_CPUS_PER_TASK=unset PBS_NCPUS=unset NCPUS=unset".
  // Unknown or malformed inputs appear as e.g. "cgroup-quota=max", "NCPUS=invalid(\"abc\")".
  std::string detail;
};

// Returns the default worker count: the minimum of
//   - physical-cores: physical cores among the CPUs in the affinity mask; hyperthread siblings count
//     once (unique (physical_package_id, core_id) pairs read from
//     <root>/sys/devices/system/cpu/cpuN/topology/). If the affinity mask is unknown, every cpuN
//     directory is considered. If any needed topology file is missing or malformed, physical cores
//     are taken to equal the affinity count (and are then reported as unknown, so that "affinity"
//     is the source when it is the minimum);
//   - affinity: number of CPUs in the affinity mask;
//   - cgroup-quota: CPU quota, ceil(quota/period), smallest of
//       cgroup v2: <root>/sys/fs/cgroup/cpu.max ("max 100000" = unlimited, "150000 100000" -> 2), and
//       the cpu.max of the process's own cgroup dir (from the "0::/some/path" line of
//       <root>/proc/self/cgroup) and of its ancestors, where present;
//       cgroup v1: <root>/sys/fs/cgroup/cpu/cpu.cfs_quota_us / cpu.cfs_period_us (quota -1 =
//       unlimited), also under the process's own "cpu" controller path where present;
//   - the batch scheduler's allocation: SLURM_CPUS_PER_TASK, PBS_NCPUS, NCPUS (positive decimal
//     integers; anything else is ignored and mentioned in detail).
// The smallest wins; on ties the earlier source in the order physical-cores, affinity,
// cgroup-quota, SLURM_CPUS_PER_TASK, PBS_NCPUS, NCPUS wins, EXCEPT that a batch-scheduler variable
// that is set and equal to the minimum is reported as the source (the first such variable in that
// order). If no input is known: count = std::thread::hardware_concurrency() or 1, source "fallback".
// Throws: never. Unreadable or malformed files and values are ignored (mentioned in detail); any
// unexpected internal failure (e.g. allocation failure) yields the fallback answer.
CpuCount detect_worker_count(const CpuProbe& probe = {});

}  // namespace poolmap
