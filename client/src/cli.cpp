// poolmap: the command-line tool.
//
//   poolmap status --broker tcp://HOST:5555     workers, queue depth and counters of a broker
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "poolmap/poolmap.hpp"

namespace {

int print_status(const std::string& broker, int timeout_ms) {
  poolmap::Pool pool({.broker = broker, .start_timeout = std::chrono::milliseconds(timeout_ms)});
  const poolmap::BrokerStatus status = pool.status(std::chrono::milliseconds(timeout_ms));
  std::printf("broker     %s\n", broker.c_str());
  std::printf("workers    %zu\n", status.workers.size());
  std::printf("clients    %u (including this one)\n", status.clients);
  std::printf("chunks     queued %llu, in flight %llu, done %llu, failed %llu, re-dispatched %llu\n",
              static_cast<unsigned long long>(status.chunks_queued),
              static_cast<unsigned long long>(status.chunks_in_flight),
              static_cast<unsigned long long>(status.chunks_done), static_cast<unsigned long long>(status.chunks_failed),
              static_cast<unsigned long long>(status.chunks_redispatched));
  std::printf("bad input  %llu messages\n", static_cast<unsigned long long>(status.bad_messages));
  if (!status.workers.empty()) {
    std::printf("\n%-32s %8s %10s %12s\n", "HOST", "PID", "IN FLIGHT", "CHUNKS DONE");
    for (const auto& worker : status.workers) {
      std::printf("%-32s %8u %10u %12llu\n", worker.host.c_str(), worker.pid, worker.chunks_in_flight,
                  static_cast<unsigned long long>(worker.chunks_done));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"poolmap: command-line tool for a poolmap cluster"};
  app.require_subcommand(1);
  std::string broker = "tcp://127.0.0.1:5555";
  int timeout_ms = 5000;
  auto* status = app.add_subcommand("status", "show a broker's workers, queue and counters");
  status->add_option("--broker", broker, "broker client endpoint")->default_val("tcp://127.0.0.1:5555");
  status->add_option("--timeout-ms", timeout_ms, "how long to wait for the broker")->default_val(5000);
  CLI11_PARSE(app, argc, argv);
  try {
    if (status->parsed()) return print_status(broker, timeout_ms);
  } catch (const std::exception& e) {
    std::cerr << "poolmap: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
