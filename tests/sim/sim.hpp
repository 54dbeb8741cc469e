// One simulated run: a seed draws the cluster, the workload and the fault rates, the run goes through
// its faults, everything heals, and the checks of docs/RELIABILITY.md ("The deterministic
// simulator") are made after every step and at the end.
//
// A run has one broker or a pair (poolmap-sim --pair, or a corpus line marked "pair"; random seeds
// run one broker while pair seeds still find open product issues, about 1 in 2,000: then
// pair_by_seed() is to pick one seed in three again). A pair's run adds the pair's faults (a
// broker killed and restarted passive, frozen, the link between the two cut, either one's clock
// jumping) and the pair's invariants (sim.cpp, "The pair's invariants"): at most one broker acts
// per epoch, a broker becomes active only on a vote, two brokers act at once no longer than a
// bound unless the link between them is cut, some broker acts again within a failover bound while
// a voter is there, clients never act on a message of an older epoch, and every chunk that runs
// again has a cause: a fault, a failover the takeover mechanism cannot cover, or a known product
// issue (counted apart).
#pragma once

#include <cstdint>
#include <string>

namespace poolmap::sim {

struct RunResult {
  bool passed = false;
  std::string summary;  // what the seed drew, what happened, what was checked (deterministic)
  std::string failure;  // the violation, with the trace that led to it ("" when passed)
  std::string trace;    // with POOLMAP_SIM_DEBUG set: the trace's last lines, passed or not
  std::uint64_t events = 0;
};

// Which brokers a seed runs: as the seed says (pair_by_seed), or forced.
enum class Brokers { kBySeed, kOne, kPair };
// Whether the seed runs a pair of brokers (one seed in three; every seed of the corpus from before
// the pair runs one broker, as it did then).
bool pair_by_seed(std::uint64_t seed);

// Runs the seed. `trace_lines`: how much of the trace a failure shows.
// `strict`: a known product issue (see tests/sim/peers.hpp, kKnown*, and the summary's "known
// issues") fails the seed instead of being counted.
RunResult run_seed(std::uint64_t seed, std::size_t trace_lines = 120, Brokers brokers = Brokers::kBySeed,
                   bool strict = false);

}  // namespace poolmap::sim
