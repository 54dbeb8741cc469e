// poolmap: the command-line tool.
//
//   poolmap status --broker tcp://HOST:5555 [--verbose] [--json] [--watch [--interval-ms MS]]
//                  [--curve-secret FILE --broker-key FILE]
//       workers (with their tasks), queue depth and counters of a broker; --watch: again every
//       interval (in place on a terminal, one snapshot after another when piped) until Ctrl-C
//   poolmap keygen PATH [--if-missing]
//       writes a CURVE key pair: PATH.key (secret, mode 0600) and PATH.pub (public)
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <optional>
#include <thread>

#include <CLI/CLI.hpp>

#include "poolmap/poolmap.hpp"
#include "process_info.hpp"

namespace {

// A JSON string literal (the broker already made peer strings printable; quote and escape anyway).
std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buffer[8];
      std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
      out += buffer;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

void print_json(const std::string& broker, const poolmap::BrokerStatus& status) {
  std::string out = "{\"broker\":" + json_string(broker) + ",\"workers\":[";
  for (std::size_t i = 0; i < status.workers.size(); ++i) {
    const auto& worker = status.workers[i];
    out += (i == 0 ? "" : ",");
    out += "{\"host\":" + json_string(worker.host) + ",\"pid\":" + std::to_string(worker.pid) +
           ",\"id\":\"" + poolmap::detail::full_id(worker.instance) + "\",\"supervisor\":\"" + poolmap::detail::full_id(worker.supervisor) +
           "\",\"chunks_in_flight\":" + std::to_string(worker.chunks_in_flight) +
           ",\"chunks_done\":" + std::to_string(worker.chunks_done) + ",\"tasks\":[";
    for (std::size_t t = 0; t < worker.tasks.size(); ++t) {
      out += (t == 0 ? "" : ",");
      out += "{\"name\":" + json_string(worker.tasks[t].name) +
             ",\"signature\":" + json_string(worker.tasks[t].signature) + "}";
    }
    out += "]}";
  }
  out += "],\"clients\":" + std::to_string(status.clients) +
         ",\"chunks_queued\":" + std::to_string(status.chunks_queued) +
         ",\"chunks_in_flight\":" + std::to_string(status.chunks_in_flight) +
         ",\"chunks_done\":" + std::to_string(status.chunks_done) +
         ",\"chunks_failed\":" + std::to_string(status.chunks_failed) +
         ",\"chunks_redispatched\":" + std::to_string(status.chunks_redispatched) +
         ",\"bad_messages\":" + std::to_string(status.bad_messages) + "}";
  std::printf("%s\n", out.c_str());
}

int keygen(const std::string& base, bool if_missing) {
  const std::filesystem::path secret_file = base + ".key";
  const std::filesystem::path public_file = base + ".pub";
  if (if_missing && std::filesystem::exists(secret_file) && std::filesystem::exists(public_file)) return 0;
  if (const auto parent = std::filesystem::path(base).parent_path(); !parent.empty()) {
    std::filesystem::create_directories(parent);
  }
  poolmap::write_curve_keypair(base, poolmap::generate_curve_keypair());
  std::cout << "wrote " << secret_file.string() << " (secret, keep it on this host) and " << public_file.string()
            << " (public)\n";
  return 0;
}

struct StatusOptions {
  std::string broker;
  int timeout_ms = 5000;
  bool verbose = false;
  bool json = false;
  bool watch = false;
  int interval_ms = 1000;
  std::string curve_secret;
  std::string broker_key;
};

// One snapshot as a table. `rate`: chunks done per second since the previous snapshot (--watch).
void print_table(const StatusOptions& options, const poolmap::BrokerStatus& status, std::optional<double> rate) {
  std::printf("broker     %s\n", options.broker.c_str());
  std::printf("workers    %zu\n", status.workers.size());
  std::printf("clients    %u (including this one)\n", status.clients);
  std::printf("chunks     queued %llu, in flight %llu, done %llu, failed %llu, re-dispatched %llu\n",
              static_cast<unsigned long long>(status.chunks_queued),
              static_cast<unsigned long long>(status.chunks_in_flight),
              static_cast<unsigned long long>(status.chunks_done), static_cast<unsigned long long>(status.chunks_failed),
              static_cast<unsigned long long>(status.chunks_redispatched));
  std::printf("bad input  %llu messages\n", static_cast<unsigned long long>(status.bad_messages));
  if (rate) std::printf("rate       %.1f chunks/s done\n", *rate);
  if (!status.workers.empty()) {
    std::printf("\n%-32s %8s %-8s %10s %12s %6s\n", "HOST", "PID", "ID", "IN FLIGHT", "CHUNKS DONE", "TASKS");
    for (const auto& worker : status.workers) {
      std::printf("%-32s %8u %-8s %10u %12llu %6zu\n", worker.host.c_str(), worker.pid,
                  poolmap::detail::short_id(worker.instance).c_str(), worker.chunks_in_flight,
                  static_cast<unsigned long long>(worker.chunks_done), worker.tasks.size());
      if (options.verbose) {
        for (const auto& task : worker.tasks) std::printf("    %s %s\n", task.name.c_str(), task.signature.c_str());
      }
    }
  }
}

int print_status(const StatusOptions& options) {
  poolmap::Pool pool({.broker = options.broker,
                      .start_timeout = std::chrono::milliseconds(options.timeout_ms),
                      .curve_secret_file = options.curve_secret,
                      .broker_key_file = options.broker_key});
  const bool terminal = ::isatty(STDOUT_FILENO) == 1;
  std::optional<std::pair<std::chrono::steady_clock::time_point, std::uint64_t>> previous;
  for (;;) {
    const poolmap::BrokerStatus status = pool.status(std::chrono::milliseconds(options.timeout_ms));
    const auto now = std::chrono::steady_clock::now();
    std::optional<double> rate;
    if (previous && now > previous->first) {
      rate = static_cast<double>(status.chunks_done - previous->second) /
             std::chrono::duration<double>(now - previous->first).count();
    }
    previous.emplace(now, status.chunks_done);
    if (options.json) {
      print_json(options.broker, status);  // with --watch: one object per line
    } else {
      if (options.watch) {
        const std::time_t wall = std::time(nullptr);
        char when[32];
        std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", std::localtime(&wall));
        if (terminal) std::printf("\033[H\033[2J");  // in place
        std::printf("%s, every %d ms (Ctrl-C to stop)\n", when, options.interval_ms);
      }
      print_table(options, status, rate);
      if (options.watch && !terminal) std::printf("\n");
    }
    std::fflush(stdout);
    if (!options.watch) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(options.interval_ms));
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"poolmap: command-line tool for a poolmap cluster"};
  app.set_version_flag("--version", std::string("poolmap ") + POOLMAP_VERSION);
  app.require_subcommand(1);
  StatusOptions options;
  auto* status = app.add_subcommand("status", "show a broker's workers, queue and counters");
  status->add_option("--broker", options.broker, "broker client endpoint")
      ->envname("POOLMAP_BROKER")
      ->default_val("tcp://127.0.0.1:5555");
  status->add_option("--timeout-ms", options.timeout_ms, "how long to wait for the broker")->default_val(5000);
  status->add_flag("-v,--verbose", options.verbose, "list each worker's tasks (name and signature)");
  status->add_flag("--json", options.json, "print one JSON object instead of the table");
  status->add_flag("--watch", options.watch,
                   "show it again every --interval-ms, in place on a terminal, until Ctrl-C (with --json: one "
                   "object per line)");
  status->add_option("--interval-ms", options.interval_ms, "--watch: time between snapshots")
      ->default_val(1000)
      ->check(CLI::PositiveNumber);
  status->add_option("--curve-secret", options.curve_secret, "this client's CURVE secret key file")
      ->envname("POOLMAP_CURVE_SECRET");
  status->add_option("--broker-key", options.broker_key, "the broker's CURVE public key file")
      ->envname("POOLMAP_BROKER_KEY");

  auto* keygen_command = app.add_subcommand("keygen", "write a CURVE key pair: PATH.key (secret, 0600) and PATH.pub");
  std::string key_base;
  bool if_missing = false;
  keygen_command->add_option("PATH", key_base, "where to write, without the extension")->required();
  keygen_command->add_flag("--if-missing", if_missing, "do nothing when PATH.key and PATH.pub exist (for scripts)");
  CLI11_PARSE(app, argc, argv);
  try {
    if (status->parsed()) return print_status(options);
    if (keygen_command->parsed()) return keygen(key_base, if_missing);
  } catch (const std::exception& e) {
    std::cerr << "poolmap: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
