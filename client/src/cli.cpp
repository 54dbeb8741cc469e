// poolmap: the command-line tool.
//
//   poolmap status --broker tcp://HOST:5555[,tcp://HOST2:5555] [--verbose] [--json] [--watch [--interval-ms MS]]
//                  [--curve-secret FILE --broker-key FILE] [--secret-file FILE]
//       workers (with their tasks), queue depth and counters of a broker; --watch: again every
//       interval (in place on a terminal, one snapshot after another when piped) until Ctrl-C. For a
//       pair (a list), each broker's role, epoch and peer state, and the active one's status
//   poolmap map TASK [FILE] [--chunksize N] [--no-progress]
//       runs TASK over the lines of FILE (or stdin), one input per line (tab-separated fields for a
//       task of several arguments), and prints the results in input order, one per line
//   poolmap exec [--keep-going] [-a FILE] [--] CMD ARGS... {}
//       runs CMD once per input line on workers started with --allow-exec ({} is the line) and
//       prints each command's stdout and stderr in input order
//   poolmap keygen PATH [--if-missing]
//       writes a CURVE key pair: PATH.key (secret, mode 0600) and PATH.pub (public)
//
// map and exec show a progress bar on stderr when it is a terminal. Exit status: 0 done, 1 failed
// (a task threw, a command failed, the broker is unreachable), 2 bad usage or an input line that
// does not parse.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <thread>

#include <CLI/CLI.hpp>

#include "poolmap/exec.hpp"
#include "poolmap/poolmap.hpp"
#include "json.hpp"
#include "process_info.hpp"
#include "text_codec.hpp"
#include "wire.hpp"

namespace {

using poolmap::detail::json_string;

// One broker of a list (a pair): its endpoint and what it said, or nothing when it did not answer.
struct BrokerAnswer {
  std::string endpoint;
  std::optional<poolmap::BrokerStatus> status;
  std::string error;  // why not
};

std::string peer_json(const poolmap::BrokerStatus& status) {
  return ",\"role\":" + json_string(status.role) + ",\"epoch\":" + std::to_string(status.epoch) +
         ",\"peer\":" + (status.peer.empty() ? std::string("null") : json_string(status.peer)) +
         ",\"peer_silent_ms\":" + std::to_string(status.peer_silent.count());
}

void print_json(const std::string& broker, const poolmap::BrokerStatus& status,
                const std::vector<BrokerAnswer>& brokers = {}) {
  std::string out = "{\"broker\":" + json_string(broker) + peer_json(status);
  if (brokers.size() > 1) {
    out += ",\"brokers\":[";
    for (std::size_t i = 0; i < brokers.size(); ++i) {
      out += (i == 0 ? "" : ",");
      out += "{\"endpoint\":" + json_string(brokers[i].endpoint);
      out += brokers[i].status ? peer_json(*brokers[i].status)
                               : ",\"role\":\"unreachable\",\"error\":" + json_string(brokers[i].error);
      out += "}";
    }
    out += "]";
  }
  out += ",\"workers\":[";
  for (std::size_t i = 0; i < status.workers.size(); ++i) {
    const auto& worker = status.workers[i];
    out += (i == 0 ? "" : ",");
    out += "{\"host\":" + json_string(worker.host) + ",\"pid\":" + std::to_string(worker.pid) +
           ",\"id\":\"" + poolmap::detail::short_id(worker.instance) + "\",\"supervisor\":\"" + poolmap::detail::short_id(worker.supervisor) +
           "\",\"chunks_in_flight\":" + std::to_string(worker.chunks_in_flight) +
           ",\"chunks_done\":" + std::to_string(worker.chunks_done) +
           ",\"chunks_failed\":" + std::to_string(worker.chunks_failed) +
           ",\"last_seen_ms\":" + std::to_string(worker.last_seen.count()) +
           ",\"credit\":" + std::to_string(worker.credit) +
           ",\"running_task\":" + json_string(worker.running_task) +
           ",\"running_job\":" + std::to_string(worker.running_job) +
           ",\"running_first_index\":" + std::to_string(worker.running_first_index) +
           ",\"running_items\":" + std::to_string(worker.running_items) +
           ",\"running_ms\":" + std::to_string(worker.running_for.count()) + ",\"tasks\":[";
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
         ",\"bad_messages\":" + std::to_string(status.bad_messages) + ",\"jobs\":[";
  for (std::size_t i = 0; i < status.jobs.size(); ++i) {
    const auto& job = status.jobs[i];
    out += (i == 0 ? "" : ",");
    out += "{\"client_host\":" + json_string(job.client_host) + ",\"client_pid\":" + std::to_string(job.client_pid) +
           ",\"job\":" + std::to_string(job.id) + ",\"task\":" + json_string(job.task) +
           ",\"items_done\":" + std::to_string(job.items_done) + ",\"items_total\":" + std::to_string(job.items_total) +
           ",\"chunks_queued\":" + std::to_string(job.chunks_queued) +
           ",\"chunks_in_flight\":" + std::to_string(job.chunks_in_flight) +
           ",\"age_ms\":" + std::to_string(job.age.count()) + ",\"stream\":" + (job.stream ? "true" : "false") +
           ",\"items_failed\":" + std::to_string(job.items_failed) +
           ",\"waiting\":" + json_string(job.waiting) + "}";
  }
  out += "],\"events\":[";
  for (std::size_t i = 0; i < status.events.size(); ++i) {
    const auto& event = status.events[i];
    out += (i == 0 ? "" : ",");
    out += std::string("{\"kind\":") +
           (event.kind == poolmap::BrokerStatus::Event::Kind::kFailed ? "\"failed\"" : "\"redispatched\"") +
           ",\"age_ms\":" + std::to_string(event.age.count()) + ",\"task\":" + json_string(event.task) +
           ",\"client_host\":" + json_string(event.client_host) +
           ",\"client_pid\":" + std::to_string(event.client_pid) + ",\"job\":" + std::to_string(event.job) +
           ",\"item\":" + std::to_string(event.item) + ",\"items\":" + std::to_string(event.items) +
           ",\"attempt\":" + std::to_string(event.attempt) + ",\"error\":" + json_string(event.error) +
           ",\"message\":" + json_string(event.message) + ",\"worker_host\":" + json_string(event.worker_host) +
           ",\"worker_pid\":" + std::to_string(event.worker_pid) + "}";
  }
  out += "]}";
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

// How to reach the broker: shared by status, map and exec.
struct Connection {
  std::string broker;
  int timeout_ms = 5000;
  std::string curve_secret;
  std::string broker_key;
  std::string secret_file;
};

void add_connection_options(CLI::App& command, Connection& connection) {
  command.add_option("--broker", connection.broker,
                     "broker client endpoint; for a pair of brokers both, comma-separated")
      ->envname("POOLMAP_BROKER")
      ->default_val("tcp://127.0.0.1:5555");
  command.add_option("--timeout-ms", connection.timeout_ms, "how long to wait for the broker's first answer")
      ->default_val(5000)
      ->check(CLI::PositiveNumber);
  command.add_option("--curve-secret", connection.curve_secret, "this client's CURVE secret key file")
      ->envname("POOLMAP_CURVE_SECRET");
  command.add_option("--broker-key", connection.broker_key, "the broker's CURVE public key file")
      ->envname("POOLMAP_BROKER_KEY");
  command.add_option("--secret-file", connection.secret_file,
                     "without CURVE: the file of this user's secret that the broker requires (made if missing; "
                     "'none': give none)")
      ->default_str("${XDG_CONFIG_HOME:-$HOME/.config}/poolmap/secret")
      ->envname("POOLMAP_SECRET_FILE");
}

poolmap::PoolOptions pool_options(const Connection& connection) {
  return {.broker = connection.broker,
          .start_timeout = std::chrono::milliseconds(connection.timeout_ms),
          .curve_secret_file = connection.curve_secret,
          .broker_key_file = connection.broker_key,
          .secret_file = connection.secret_file};
}

struct StatusOptions {
  Connection connection;
  bool verbose = false;
  bool json = false;
  bool watch = false;
  int interval_ms = 1000;
};

// "0.3s" ago, for the LAST SEEN column.
std::string seconds_ago(std::chrono::milliseconds ago) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1fs", static_cast<double>(ago.count()) / 1000.0);
  return text;
}

// One snapshot as a table. `rate`: chunks done per second since the previous snapshot (--watch).
// "active at epoch 3, peer passive (heard 0.1s ago)", or "" for a broker without a peer.
std::string describe_role(const poolmap::BrokerStatus& status) {
  if (status.peer.empty()) return "";
  return status.role + " at epoch " + std::to_string(status.epoch) + ", peer " + status.peer + " (heard " +
         seconds_ago(status.peer_silent) + " ago)";
}

void print_table(const StatusOptions& options, const std::string& broker, const poolmap::BrokerStatus& status,
                 std::optional<double> rate, const std::vector<BrokerAnswer>& brokers) {
  std::printf("broker     %s\n", broker.c_str());
  if (brokers.size() > 1) {
    for (const auto& answer : brokers) {
      std::printf("  %-40s %s\n", answer.endpoint.c_str(),
                  answer.status ? describe_role(*answer.status).c_str() : ("unreachable: " + answer.error).c_str());
    }
  } else if (!status.peer.empty()) {
    std::printf("role       %s\n", describe_role(status).c_str());
  }
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
    std::printf("\n%-24s %8s %-8s %9s %11s %8s %9s %6s %9s\n", "HOST", "PID", "ID", "IN FLIGHT", "CHUNKS DONE",
                "FAILED", "LAST SEEN", "TASKS", "RUNNING");
    for (const auto& worker : status.workers) {
      std::printf("%-24s %8u %-8s %9u %11llu %8llu %9s %6zu %9s\n", worker.host.c_str(), worker.pid,
                  poolmap::detail::short_id(worker.instance).c_str(), worker.chunks_in_flight,
                  static_cast<unsigned long long>(worker.chunks_done),
                  static_cast<unsigned long long>(worker.chunks_failed), seconds_ago(worker.last_seen).c_str(),
                  worker.tasks.size(), worker.running_items == 0 ? "-" : seconds_ago(worker.running_for).c_str());
      if (options.verbose) {
        if (worker.running_items != 0) {
          std::printf("    running %s, job %llu, items %llu..%llu\n", worker.running_task.c_str(),
                      static_cast<unsigned long long>(worker.running_job),
                      static_cast<unsigned long long>(worker.running_first_index),
                      static_cast<unsigned long long>(worker.running_first_index + worker.running_items - 1));
        }
        for (const auto& task : worker.tasks) std::printf("    %s %s\n", task.name.c_str(), task.signature.c_str());
      }
    }
  }
  if (!status.jobs.empty()) {
    std::printf("\n%-24s %8s %6s %-20s %21s %6s %10s %8s\n", "CLIENT", "PID", "JOB", "TASK", "ITEMS DONE/TOTAL", "%",
                "ITEMS/S", "AGE");
    for (const auto& job : status.jobs) {
      const double seconds = std::chrono::duration<double>(job.age).count();
      const std::string total = job.items_total == 0 ? "?" : std::to_string(job.items_total);
      const std::string done = std::to_string(job.items_done) + "/" + total;
      const std::string percent =
          job.items_total == 0 ? "" : std::to_string(100 * job.items_done / job.items_total);
      std::printf("%-24s %8u %6llu %-20s %21s %6s %10.0f %7.1fs\n", job.client_host.c_str(), job.client_pid,
                  static_cast<unsigned long long>(job.id), (job.task + (job.stream ? " (imap)" : "")).c_str(),
                  done.c_str(), percent.c_str(), seconds > 0 ? static_cast<double>(job.items_done) / seconds : 0.0,
                  seconds);
      if (!job.waiting.empty()) std::printf("    waiting: %s\n", job.waiting.c_str());
    }
  }
  if (!status.events.empty()) {
    // The latest few (all with --verbose), newest first.
    const std::size_t shown = options.verbose ? status.events.size() : std::min<std::size_t>(status.events.size(), 10);
    std::printf("\nLATEST FAILURES AND RE-DISPATCHES\n");
    for (std::size_t i = 0; i < shown; ++i) {
      const auto& event = status.events[i];
      const bool failed = event.kind == poolmap::BrokerStatus::Event::Kind::kFailed;
      std::printf("%8s ago  %-12s %s job %llu item %llu (attempt %u)%s%s: %s%s%s\n", seconds_ago(event.age).c_str(),
                  failed ? "failed" : "re-dispatched", event.task.c_str(), static_cast<unsigned long long>(event.job),
                  static_cast<unsigned long long>(event.item), event.attempt,
                  event.worker_host.empty() ? "" : (" on " + event.worker_host).c_str(),
                  event.worker_pid == 0 ? "" : (" pid " + std::to_string(event.worker_pid)).c_str(),
                  event.error.c_str(), event.error.empty() ? "" : " ", event.message.c_str());
    }
    if (shown < status.events.size()) std::printf("  and %zu more (--verbose)\n", status.events.size() - shown);
  }
}

int print_status(const StatusOptions& options) {
  // One Pool per broker of the list: each is asked on its own (a Pool that only asks for status
  // never makes a passive broker take over). With a pair, the active one's status is shown, and
  // each broker's role.
  const auto endpoints = poolmap::wire::split_endpoints(options.connection.broker);
  std::vector<std::unique_ptr<poolmap::Pool>> pools;
  for (const auto& endpoint : endpoints) {
    Connection one = options.connection;
    one.broker = endpoint;
    pools.push_back(std::make_unique<poolmap::Pool>(pool_options(one)));
  }
  const bool terminal = ::isatty(STDOUT_FILENO) == 1;
  std::optional<std::pair<std::chrono::steady_clock::time_point, std::uint64_t>> previous;
  for (;;) {
    std::vector<BrokerAnswer> answers(endpoints.size());
    std::vector<std::future<void>> asked;
    for (std::size_t i = 0; i < endpoints.size(); ++i) {
      asked.push_back(std::async(std::launch::async, [&, i] {
        answers[i].endpoint = endpoints[i];
        try {
          answers[i].status = pools[i]->status(std::chrono::milliseconds(options.connection.timeout_ms));
        } catch (const poolmap::Error& e) {
          answers[i].error = e.what();
        }
      }));
    }
    for (auto& answer : asked) answer.get();
    // The active one, else the first that answered; none: the first one's error.
    const BrokerAnswer* shown = nullptr;
    for (const auto& answer : answers) {
      if (answer.status && answer.status->role == "active") {
        shown = &answer;
        break;
      }
    }
    for (const auto& answer : answers) {
      if (shown == nullptr && answer.status) shown = &answer;
    }
    if (shown == nullptr) {
      if (answers.size() == 1) throw poolmap::Error(poolmap::ErrorCode::kUnavailable, answers[0].error);
      throw poolmap::Error(poolmap::ErrorCode::kUnavailable,
                           "no broker of " + options.connection.broker + " answered: " + answers[0].error);
    }
    const poolmap::BrokerStatus& status = *shown->status;
    const auto now = std::chrono::steady_clock::now();
    std::optional<double> rate;
    if (previous && now > previous->first) {
      rate = static_cast<double>(status.chunks_done - previous->second) /
             std::chrono::duration<double>(now - previous->first).count();
    }
    previous.emplace(now, status.chunks_done);
    if (options.json) {
      print_json(shown->endpoint, status, answers);  // with --watch: one object per line
    } else {
      if (options.watch) {
        const std::time_t wall = std::time(nullptr);
        char when[32];
        std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", std::localtime(&wall));
        if (terminal) std::printf("\033[H\033[2J");  // in place
        std::printf("%s, every %d ms (Ctrl-C to stop)\n", when, options.interval_ms);
      }
      print_table(options, shown->endpoint, status, rate, answers);
      if (options.watch && !terminal) std::printf("\n");
    }
    std::fflush(stdout);
    if (!options.watch) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(options.interval_ms));
  }
}


// A progress bar on stderr, drawn only when stderr is a terminal: bar, percentage, counts, rate and
// time left, redrawn at most every 100 ms.
class ProgressBar {
 public:
  ProgressBar(bool wanted, std::string unit) : enabled_(wanted && ::isatty(STDERR_FILENO) == 1), unit_(std::move(unit)) {}
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ~ProgressBar() { clear(); }

  void update(std::size_t done, std::size_t total) {
    if (!enabled_ || total == 0) return;
    const auto now = std::chrono::steady_clock::now();
    if (drawn_ && done != total && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const double fraction = static_cast<double>(done) / static_cast<double>(total);
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(kWidth, '.');
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0;
    char line[160];
    if (rate > 0 && done < total) {
      std::snprintf(line, sizeof(line), "\r[%s] %3d%% %zu/%zu %s, %.0f/s, %.0f s left\033[K", bar.c_str(),
                    static_cast<int>(fraction * 100), done, total, unit_.c_str(), rate,
                    static_cast<double>(total - done) / rate);
    } else {
      std::snprintf(line, sizeof(line), "\r[%s] %3d%% %zu/%zu %s\033[K", bar.c_str(), static_cast<int>(fraction * 100),
                    done, total, unit_.c_str());
    }
    std::fputs(line, stderr);
    std::fflush(stderr);
    drawn_ = true;
  }
  // Removes the bar (before other output, and at the end).
  void clear() {
    if (!drawn_) return;
    std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
    drawn_ = false;
  }

 private:
  bool enabled_;
  std::string unit_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_draw_{};
};

// A usage or input error: exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Every line of `file` ("" or "-" = stdin), without its line feed.
std::vector<std::string> read_lines(const std::string& file) {
  std::ifstream opened;
  if (!file.empty() && file != "-") {
    opened.open(file);
    if (!opened) throw UsageError("cannot read " + file);
  }
  std::istream& in = opened.is_open() ? static_cast<std::istream&>(opened) : std::cin;
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(std::move(line));
  return lines;
}

// The signature the workers announce for `task`. Throws when none or several do.
std::string announced_signature(const poolmap::BrokerStatus& status, const std::string& broker,
                                const std::string& task) {
  std::set<std::string> signatures;
  std::set<std::string> names;
  for (const auto& worker : status.workers) {
    for (const auto& info : worker.tasks) {
      names.insert(info.name);
      if (info.name == task) signatures.insert(info.signature);
    }
  }
  if (signatures.size() == 1) return *signatures.begin();
  if (signatures.empty()) {
    std::string known;
    for (const auto& name : names) known += (known.empty() ? "" : ", ") + name;
    throw std::runtime_error("no worker of the broker at " + broker + " has task '" + task + "'" +
                             (status.workers.empty() ? " (no worker is connected)"
                                                     : " (they have: " + known + ")"));
  }
  std::string listed;
  for (const auto& signature : signatures) listed += (listed.empty() ? "" : ", ") + signature;
  throw std::runtime_error("the workers disagree on task '" + task + "': " + listed);
}

struct MapCommand {
  Connection connection;
  std::string task;
  std::string file;
  std::size_t chunksize = 0;
  bool no_progress = false;
};

int run_map(const MapCommand& command) {
  poolmap::Pool pool(pool_options(command.connection));
  const auto status = pool.status(std::chrono::milliseconds(command.connection.timeout_ms));
  const std::string signature = announced_signature(status, command.connection.broker, command.task);
  poolmap::cli::TextSignature types;
  try {
    types = poolmap::cli::parse_text_signature(command.task, signature);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  const std::vector<std::string> lines = read_lines(command.file);
  std::vector<poolmap::Bytes> items(lines.size());
  for (std::size_t i = 0; i < lines.size(); ++i) {
    try {
      poolmap::OutputArchive archive(items[i]);
      poolmap::cli::encode_line(types, lines[i], archive);
    } catch (const std::invalid_argument& e) {
      throw UsageError("line " + std::to_string(i + 1) + ": " + e.what() + " (task '" + command.task + "' is " +
                       signature + ")");
    }
  }
  ProgressBar bar(!command.no_progress, "items");
  const poolmap::Bytes results =
      pool.map_encoded(command.task, signature, items,
                       {.chunksize = command.chunksize,
                        .progress = [&bar](std::size_t done, std::size_t total) { bar.update(done, total); }});
  bar.clear();
  poolmap::InputArchive archive(results);
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    out.clear();
    poolmap::cli::decode_result(types.result, archive, out);
    out += '\n';
    std::fwrite(out.data(), 1, out.size(), stdout);
  }
  return 0;
}

struct ExecCommand {
  Connection connection;
  std::vector<std::string> command;
  std::string arg_file;
  bool keep_going = false;
  bool no_progress = false;
};

// For `poolmap exec`: moves the command (from its first word that is not an option of `exec`,
// or after "--") into `command` and returns how many words of argv are left for the parser.
int split_exec_command(int argc, char** argv, CLI::App& exec, std::vector<std::string>& command) {
  if (argc < 2 || std::string_view(argv[1]) != "exec") return argc;
  for (int i = 2; i < argc; ++i) {
    const std::string_view word = argv[i];
    if (word == "--") {
      command.assign(argv + i + 1, argv + argc);
      return i;
    }
    if (!word.starts_with("-") || word == "-") {
      command.assign(argv + i, argv + argc);
      return i;
    }
    const CLI::Option* option = exec.get_option_no_throw(std::string(word));
    if (option != nullptr && option->get_items_expected_min() > 0) ++i;  // its value, e.g. --broker EP
  }
  return argc;
}

std::string shell_words(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& word : words) out += (out.empty() ? "" : " ") + word;
  return out;
}

int run_exec(const ExecCommand& command) {
  if (command.command.empty()) throw UsageError("exec: give the command to run, e.g. poolmap exec -- gzip -k {}");
  poolmap::Pool pool(pool_options(command.connection));
  const auto status = pool.status(std::chrono::milliseconds(command.connection.timeout_ms));
  bool allowed = false;
  for (const auto& worker : status.workers) {
    for (const auto& info : worker.tasks) allowed = allowed || info.name == poolmap::exec_task.name();
  }
  if (!allowed) {
    throw std::runtime_error("no worker of the broker at " + command.connection.broker +
                             " runs commands: start poolmap-worker with --allow-exec (anyone who may reach the "
                             "broker can then run commands as the worker's user; see docs/SECURITY.md)");
  }
  const std::vector<std::string> lines = read_lines(command.arg_file);
  ProgressBar bar(!command.no_progress, "commands");
  std::size_t done = 0;
  std::size_t failed = 0;
  auto results = pool.imap(poolmap::exec_task.with(command.command), lines, {.chunksize = 1});
  for (const auto& [code, out, err] : results) {
    bar.clear();
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
    std::fwrite(err.data(), 1, err.size(), stderr);
    ++done;
    if (code != 0) {
      ++failed;
      if (!command.keep_going) {
        std::fprintf(stderr, "poolmap exec: `%s` exited with status %d for input line %zu; stopping (--keep-going runs "
                     "every line)\n", shell_words(command.command).c_str(), code, done);
        return 1;  // the stream's destructor cancels what is still queued or running
      }
    }
    bar.update(done, lines.size());
  }
  bar.clear();
  if (failed > 0) {
    std::fprintf(stderr, "poolmap exec: %zu of %zu commands failed\n", failed, lines.size());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"poolmap: command-line tool for a poolmap cluster"};
  app.set_version_flag("--version", std::string("poolmap ") + POOLMAP_VERSION);
  app.require_subcommand(1);
  StatusOptions options;
  auto* status = app.add_subcommand("status", "show a broker's workers, queue and counters");
  add_connection_options(*status, options.connection);
  status->add_flag("-v,--verbose", options.verbose, "list each worker's tasks (name and signature)");
  status->add_flag("--json", options.json, "print one JSON object instead of the table");
  status->add_flag("--watch", options.watch,
                   "show it again every --interval-ms, in place on a terminal, until Ctrl-C (with --json: one "
                   "object per line)");
  status->add_option("--interval-ms", options.interval_ms, "--watch: time between snapshots")
      ->default_val(1000)
      ->check(CLI::PositiveNumber);

  MapCommand map;
  auto* map_command = app.add_subcommand(
      "map", "run TASK over the lines of FILE (or stdin) and print the results in input order, one per line");
  add_connection_options(*map_command, map.connection);
  map_command->add_option("TASK", map.task, "task name, as `poolmap status --verbose` lists it")->required();
  map_command->add_option("FILE", map.file, "one input per line; tab-separated fields for several arguments "
                                            "(default: stdin)");
  map_command->add_option("--chunksize", map.chunksize, "items per chunk (default 0: as Python's Pool.map)")
      ->default_val(0);
  map_command->add_flag("--no-progress", map.no_progress, "no progress bar (there is none when stderr is not a "
                                                          "terminal)");

  ExecCommand exec;
  auto* exec_command = app.add_subcommand(
      "exec", "run a command once per input line on workers started with --allow-exec; {} in the command is the "
              "line (else it is added as the last argument); stdout and stderr come back in input order");
  add_connection_options(*exec_command, exec.connection);
  exec_command->add_option("-a,--arg-file", exec.arg_file, "read the input lines from this file (default: stdin)");
  exec_command->add_flag("--keep-going", exec.keep_going,
                         "run every line even after a command failed (exit status 1 if any failed)");
  exec_command->add_flag("--no-progress", exec.no_progress, "no progress bar");
  exec_command->add_option("COMMAND", exec.command,
                            "the command and its arguments: everything from the first word that is not one of "
                            "these options (or after --) belongs to it");
  auto* keygen_command = app.add_subcommand("keygen", "write a CURVE key pair: PATH.key (secret, 0600) and PATH.pub");
  std::string key_base;
  bool if_missing = false;
  keygen_command->add_option("PATH", key_base, "where to write, without the extension")->required();
  keygen_command->add_flag("--if-missing", if_missing, "do nothing when PATH.key and PATH.pub exist (for scripts)");
  // `poolmap exec [OPTIONS] [--] CMD ARGS...`: CMD and every word after it go to the command as
  // they are (its own options, a "--"), so they are split off before CLI11 sees them.
  const int parsed_words = split_exec_command(argc, argv, *exec_command, exec.command);
  CLI11_PARSE(app, parsed_words, argv);
  try {
    if (status->parsed()) return print_status(options);
    if (map_command->parsed()) return run_map(map);
    if (exec_command->parsed()) return run_exec(exec);
    if (keygen_command->parsed()) return keygen(key_base, if_missing);
  } catch (const UsageError& e) {
    std::cerr << "poolmap: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "poolmap: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
