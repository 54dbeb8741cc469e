// poolmap-sim: runs the deterministic simulator (tests/sim) over seeds. scripts/simulate drives it.
//
//   poolmap-sim --seed S                 one seed, its whole summary (the same output every time)
//   poolmap-sim --seeds N [--seed S]     N seeds from S (default 1)
//   poolmap-sim --minutes M [--seed S]   seeds from S until M minutes have passed
//   --corpus FILE                        seeds to run first (one per line, # comments)
//   --stride K --offset I                only seeds S+I, S+I+K, ... (for K processes side by side)
//   --pair | --single                    every seed runs a pair of brokers, or one (default: one,
//                                        but a corpus line marked "pair"; pair seeds still find open
//                                        product issues, so CI's random minute runs one broker)
//   --strict                             known product issues fail a seed (else they are counted)
// A corpus line is a seed, optionally followed by "pair" or "single" (how it was found).
// POOLMAP_SIM_DEBUG=1 in the environment puts the brokers' debug log lines, and every TASK and
// PASSIVE a broker sends, in the trace of a failing seed.
// Prints each failing seed with the trace that led to its failure; the last line is
// "N seeds, F failed". Exit status 1 when a seed failed.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "sim.hpp"

int main(int argc, char** argv) {
  CLI::App app{"poolmap-sim: the broker core through simulated bad days, one seed at a time"};
  std::optional<std::uint64_t> seed;
  std::optional<std::uint64_t> seeds;
  std::optional<double> minutes;
  std::string corpus;
  std::uint64_t stride = 1, offset = 0;
  std::size_t trace_lines = 120;
  bool pair = false, single = false, strict = false;
  app.add_option("--seed", seed, "the first seed (alone: run only this one and print its summary)");
  app.add_option("--seeds", seeds, "how many seeds to run");
  app.add_option("--minutes", minutes, "run seeds until this much time has passed");
  app.add_option("--corpus", corpus, "a file of seeds to run first (past failures)");
  app.add_option("--stride", stride, "run every K-th seed")->check(CLI::PositiveNumber);
  app.add_option("--offset", offset, "starting I seeds after --seed");
  app.add_option("--trace-lines", trace_lines, "events shown for a failing seed")->capture_default_str();
  auto* pair_flag = app.add_flag("--pair", pair, "every seed runs a pair of brokers (default: one, but a corpus line marked pair)");
  app.add_flag("--single", single, "every seed runs one broker")->excludes(pair_flag);
  app.add_flag("--strict", strict, "known product issues fail a seed (else they are counted in its summary)");
  CLI11_PARSE(app, argc, argv);

  std::uint64_t ran = 0, failed = 0;
  using poolmap::sim::Brokers;
  const Brokers brokers = pair ? Brokers::kPair : single ? Brokers::kOne : Brokers::kBySeed;
  auto run = [&](std::uint64_t s, bool verbose, Brokers kind) {
    const auto result = poolmap::sim::run_seed(s, trace_lines, kind, strict);
    ++ran;
    if (verbose) std::cout << result.summary << result.trace;
    if (!result.passed) {
      ++failed;
      if (!verbose) std::cout << result.summary;
      std::cout << result.failure << "  replay: scripts/simulate --seed " << s
                << (kind == Brokers::kPair ? " --pair" : kind == Brokers::kOne ? " --single" : "")
                << (strict ? " --strict" : "") << "\n"
                << std::flush;
    }
  };
  if (seed && !seeds && !minutes) {
    const auto start = std::chrono::steady_clock::now();
    run(*seed, true, brokers);
    const auto took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "(" << took << " s of wall-clock time)\n";
    std::cout << ran << " seeds, " << failed << " failed\n";
    return failed == 0 ? 0 : 1;
  }
  if (!corpus.empty()) {
    std::ifstream in(corpus);
    if (!in) {
      std::cerr << "poolmap-sim: cannot read the corpus " << corpus << "\n";
      return 2;
    }
    std::string line;
    std::uint64_t index = 0;
    while (std::getline(in, line)) {
      if (const auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      // A seed, and how it was found ("pair", "single"), unless the command line says otherwise.
      std::istringstream words(line);
      std::uint64_t number = 0;
      std::string how;
      words >> number >> how;
      const Brokers kind = brokers != Brokers::kBySeed ? brokers
                           : how == "pair"            ? Brokers::kPair
                           : how == "single"          ? Brokers::kOne
                                                      : Brokers::kBySeed;
      if (index++ % stride == offset % stride) run(number, false, kind);
    }
  }
  const auto start = std::chrono::steady_clock::now();
  const std::uint64_t first = seed.value_or(1) + offset;
  for (std::uint64_t i = 0;; ++i) {
    if (seeds && i * stride + offset >= *seeds) break;
    if (minutes && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >= *minutes * 60) break;
    if (!seeds && !minutes) break;
    run(first + i * stride, false, brokers);
  }
  std::cout << ran << " seeds, " << failed << " failed\n";
  return failed == 0 ? 0 : 1;
}
