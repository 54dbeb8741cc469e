// One simulated run: a seed draws the cluster, the workload and the fault rates, the run goes through
// its faults, everything heals, and the checks of docs/RELIABILITY.md ("The deterministic
// simulator") are made after every step and at the end.
#pragma once

#include <cstdint>
#include <string>

namespace poolmap::sim {

struct RunResult {
  bool passed = false;
  std::string summary;  // what the seed drew, what happened, what was checked (deterministic)
  std::string failure;  // the violation, with the trace that led to it ("" when passed)
  std::uint64_t events = 0;
};

// Runs the seed. `trace_lines`: how much of the trace a failure shows.
RunResult run_seed(std::uint64_t seed, std::size_t trace_lines = 120);

}  // namespace poolmap::sim
