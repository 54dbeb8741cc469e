// poolmap_failover_bench: how long a pair of brokers (poolmap-broker --ha) takes to fail over, from
// the kill -9 of the active broker to the first chunk a client sees completed through the standby.
//
//   poolmap_failover_bench --broker-bin B --worker-bin W --tasks LIB [--kills 20]
//                          [--heartbeat-ms 1000,250] [--liveness 3] [--processes N] [--sleep-us 1000]
//                          [--pause-reads-ms MS] [--seed S] [--daemon-log-level L] [--log-dir DIR]
//                          [--json FILE]
//
// bench/failover.sh runs it on a build tree (docs/BENCHMARKS.md, "Failover"). For each heartbeat
// interval of the list, with a fresh cluster on loopback: two brokers of a pair (primary, backup),
// one poolmap-worker supervisor of N processes given both worker endpoints, and a Pool given both
// client endpoints, all with that interval and liveness. Then, `--kills` times: an imap_unordered
// of bench.logged_hash items (chunksize 1, each `--sleep-us` long) flows; once results come, after
// a random wait of up to one heartbeat interval (so that the kill falls anywhere between two
// heartbeats), the active broker (the one whose status says "active") is killed with SIGKILL at
// T0. T1 is the first result the client reads after T0 that came through the standby: one whose
// execution ended after the killed broker was reaped (the killed broker cannot have forwarded it),
// or that arrived more than one heartbeat interval after that (the killed broker's last answers
// were on the client's socket by then). The failover time is T1 - T0. The stream goes on for a
// heartbeat interval (at least 0.5 s) more, then ends; its results must be exact (every item once,
// with the right hash). The killed broker is started again on its endpoints and must report "passive" (and
// see its peer active) before the next kill, so the kills alternate between the two brokers.
//
// --pause-reads-ms MS: the client stops reading results MS before each kill and reads on right after
// it. Its window stays full meanwhile, so the workers run dry; the chunks it sends next reach only
// the dead broker and are answered by no worker: the case where the first chunk completed through
// the standby is one the client sent again, held back by the standby (takeover.cpp) before it runs.
//
// Every execution of an item is appended to a run log by the task (POOLMAP_BENCH_RUN_LOG); an item
// found there more than once ran twice. Prints a progress line per kill, then a markdown table, and
// writes one JSON line per heartbeat setting to --json (and stdout). Exit status 1 when a setting
// failed (a wrong result, a failover over 30 s, a step past its time limit), 2 on bad arguments.
//
// Every process it starts is stopped (SIGTERM, then SIGKILL) and reaped when it ends, also on
// failure; the brokers die with it even if it is killed (PR_SET_PDEATHSIG), and the worker
// supervisor stops its processes then.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <ranges>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench_tasks.hpp"
#include "poolmap/poolmap.hpp"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using namespace std::chrono_literals;
namespace bench = poolmap::bench;

constexpr auto kFailoverLimit = 30s;  // a failover slower than this is a failure
constexpr auto kStepLimit = 30s;      // any other step (ready line, registration, flowing)
constexpr std::int64_t kMaxItemsPerRound = 1LL << 30;
constexpr int kIndexShift = 32;  // item index = round << 32 | position in the round's stream

std::int64_t to_ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
double ms_between(std::int64_t from_ns, std::int64_t to) { return static_cast<double>(to - from_ns) / 1e6; }

// SIGINT / SIGTERM: every wait below checks this and unwinds (the destructors stop the children).
std::atomic<bool> interrupted{false};
extern "C" void on_stop_signal(int) { interrupted.store(true); }

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check_interrupted() {
  if (interrupted.load()) throw Failure("interrupted");
}

// Waits (polling every `step`) until `condition` holds; false when `limit` passes first.
template <class Condition>
bool wait_until(Condition condition, Clock::duration limit, milliseconds step = 5ms) {
  const auto deadline = Clock::now() + limit;
  while (!condition()) {
    check_interrupted();
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(step);
  }
  return true;
}

// The pids of every child still running, for emergency_exit().
std::mutex children_mutex;
std::vector<pid_t> children;

// For when a thread cannot be joined (a stream that never ends): SIGKILL and reap every child,
// then leave without running destructors (which would wait on that thread).
[[noreturn]] void emergency_exit(const std::string& why) {
  std::fprintf(stderr, "poolmap_failover_bench: %s; killing everything it started\n", why.c_str());
  std::printf("FAILED: %s\n", why.c_str());
  std::fflush(stdout);
  std::lock_guard lock(children_mutex);
  for (const pid_t pid : children) ::kill(pid, SIGKILL);
  for (const pid_t pid : children) ::waitpid(pid, nullptr, 0);
  std::_Exit(1);
}

// A child process: argv[0] exec'd with extra environment entries, stdout on a pipe (read with
// read_line), stderr appended to a log file. The destructor stops it (SIGTERM, 5 s, SIGKILL) and
// reaps it. It gets `death_signal` when this process dies.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env, const std::string& log_path,
        int death_signal) {
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw Failure("pipe2 failed");
    const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (log_fd < 0 || null_fd < 0) throw Failure("cannot open " + log_path);
    // Everything the child needs is made before fork: this process has threads.
    std::vector<std::string> argv_copy = argv;
    std::vector<char*> args;
    for (auto& arg : argv_copy) args.push_back(arg.data());
    args.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** entry = environ; *entry != nullptr; ++entry) {
      const std::string_view text(*entry);
      const bool replaced = std::any_of(extra_env.begin(), extra_env.end(), [&](const std::string& extra) {
        const auto name = extra.substr(0, extra.find('=') + 1);
        return text.starts_with(name);
      });
      if (!replaced) env_strings.emplace_back(text);
    }
    env_strings.insert(env_strings.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> env;
    for (auto& entry : env_strings) env.push_back(entry.data());
    env.push_back(nullptr);
    const pid_t parent = ::getpid();
    std::lock_guard lock(children_mutex);
    pid_ = ::fork();
    if (pid_ < 0) throw Failure("fork failed");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, death_signal);
      if (::getppid() != parent) ::_exit(127);
      ::dup2(null_fd, 0);
      ::dup2(pipe_fds[1], 1);
      ::dup2(log_fd, 2);
      ::execve(args[0], args.data(), env.data());
      static constexpr char kMessage[] = "poolmap_failover_bench: exec failed\n";
      [[maybe_unused]] const auto written = ::write(2, kMessage, sizeof(kMessage) - 1);
      ::_exit(127);
    }
    children.push_back(pid_);
    ::close(pipe_fds[1]);
    ::close(log_fd);
    ::close(null_fd);
    stdout_fd_ = pipe_fds[0];
  }
  ~Child() {
    if (!stop(SIGTERM, 5s)) stop(SIGKILL, 5s);
    if (!reaped_) {  // SIGKILL not done in 5 s: wait for it anyway, or the pid leaks
      ::waitpid(pid_, nullptr, 0);
      forget();
    }
    if (stdout_fd_ >= 0) ::close(stdout_fd_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }

  // Next stdout line, or nullopt at EOF or when `limit` passes first.
  std::optional<std::string> read_line(Clock::duration limit) {
    const auto deadline = Clock::now() + limit;
    for (;;) {
      if (const auto newline = buffer_.find('\n'); newline != std::string::npos) {
        std::string line = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        return line;
      }
      check_interrupted();
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return std::nullopt;
      pollfd fd{stdout_fd_, POLLIN, 0};
      if (::poll(&fd, 1, static_cast<int>(std::min<long>(left, 100))) < 0 && errno != EINTR) return std::nullopt;
      if ((fd.revents & (POLLIN | POLLHUP)) == 0) continue;
      char chunk[4096];
      const ssize_t n = ::read(stdout_fd_, chunk, sizeof(chunk));
      if (n <= 0) return std::nullopt;
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  // Sends `signo` and waits up to `limit` for the exit; true once reaped.
  bool stop(int signo, Clock::duration limit) {
    if (reaped_) return true;
    ::kill(pid_, signo);
    const auto deadline = Clock::now() + limit;
    for (;;) {
      const pid_t done = ::waitpid(pid_, nullptr, WNOHANG);
      if (done == pid_ || (done < 0 && errno == ECHILD)) {
        forget();
        return true;
      }
      if (Clock::now() > deadline) return false;
      std::this_thread::sleep_for(1ms);
    }
  }

 private:
  void forget() {
    reaped_ = true;
    std::lock_guard lock(children_mutex);
    children.erase(std::remove(children.begin(), children.end(), pid_), children.end());
  }

  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string buffer_;
  bool reaped_ = false;
};

struct Settings {
  std::string broker_bin, worker_bin, tasks;
  int liveness = 3;
  std::size_t processes = 2;
  std::int32_t sleep_us = 1000;
  milliseconds pause_reads{0};
  std::string daemon_log_level = "info";
  std::string log_dir;
};

// A broker's status, asked through a Pool of its own that only asks (it does not vote).
std::optional<poolmap::BrokerStatus> status_of(const std::string& endpoint, milliseconds heartbeat) {
  try {
    poolmap::Pool probe({.broker = endpoint, .heartbeat_interval = heartbeat});
    return probe.status(2s);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// Two brokers of a pair on loopback, each restartable on the endpoints it had. Their ha endpoints
// are learned by a first start on free ports (tcp://127.0.0.1:*), then each is started again with
// its peer's.
class BrokerPair {
 public:
  BrokerPair(const Settings& settings, milliseconds heartbeat, const std::string& log_prefix)
      : settings_(settings), heartbeat_(heartbeat), log_prefix_(log_prefix) {
    for (int i = 0; i < 2; ++i) {
      endpoints_[i] = {"tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*"};
      start_with(i, "tcp://127.0.0.1:1");  // a peer that is never there: this start only learns ports
      brokers_[i].reset();
    }
    for (int i = 0; i < 2; ++i) start(i);
  }
  ~BrokerPair() {
    for (auto& broker : brokers_) broker.reset();
  }

  std::string client_endpoints() const { return endpoints_[0].clients + "," + endpoints_[1].clients; }
  std::string worker_endpoints() const { return endpoints_[0].workers + "," + endpoints_[1].workers; }
  const std::string& client_endpoint(int i) const { return endpoints_[i].clients; }

  void start(int i) { start_with(i, endpoints_[1 - i].ha); }

  // SIGKILL, reaped; returns when the process is gone.
  void kill(int i) {
    if (!brokers_[i]) return;
    if (!brokers_[i]->stop(SIGKILL, 10s)) throw Failure("broker " + std::to_string(i) + " did not die of SIGKILL");
    brokers_[i].reset();
  }

  std::optional<poolmap::BrokerStatus> status(int i) const {
    if (!brokers_[i]) return std::nullopt;
    return status_of(endpoints_[i].clients, heartbeat_);
  }

  // The broker that says "active" while the other says "passive", waiting up to `limit`.
  int active(Clock::duration limit) const {
    int found = -1;
    const bool ok = wait_until(
        [&] {
          const auto a = status(0);
          const auto b = status(1);
          if (!a || !b) return false;
          if (a->role == "active" && b->role == "passive") found = 0;
          if (a->role == "passive" && b->role == "active") found = 1;
          return found >= 0;
        },
        limit, 50ms);
    return ok ? found : -1;
  }

 private:
  struct Endpoints {
    std::string clients, workers, ha;
  };

  void start_with(int i, const std::string& peer) {
    const std::vector<std::string> argv{settings_.broker_bin,
                                        "--clients",
                                        endpoints_[i].clients,
                                        "--workers",
                                        endpoints_[i].workers,
                                        "--heartbeat-ms",
                                        std::to_string(heartbeat_.count()),
                                        "--liveness",
                                        std::to_string(settings_.liveness),
                                        "--ha",
                                        i == 0 ? "primary" : "backup",
                                        "--ha-bind",
                                        endpoints_[i].ha,
                                        "--ha-peer",
                                        peer,
                                        "--log-level",
                                        settings_.daemon_log_level};
    brokers_[i].emplace(argv, std::vector<std::string>{}, log_prefix_ + "broker" + std::to_string(i) + ".log", SIGKILL);
    const auto line = brokers_[i]->read_line(kStepLimit);
    if (!line) throw Failure("broker " + std::to_string(i) + " printed no ready line (see its log)");
    // "poolmap-broker ready clients=<c> workers=<w> ha=<h>"
    const auto field = [&](const std::string& name) {
      const auto at = line->find(" " + name + "=");
      if (at == std::string::npos) throw Failure("unexpected ready line: " + *line);
      const auto from = at + name.size() + 2;
      return line->substr(from, line->find(' ', from) - from);
    };
    endpoints_[i] = {field("clients"), field("workers"), field("ha")};
  }

  const Settings& settings_;
  milliseconds heartbeat_;
  std::string log_prefix_;
  Endpoints endpoints_[2];
  std::optional<Child> brokers_[2];
};

// One round's stream: imap_unordered of logged_hash over items round << 32 | i, on a thread of its
// own, until stop; notes when the first result through the standby came (see the top).
class Stream {
 public:
  Stream(poolmap::Pool& pool, std::int64_t round, std::int32_t sleep_us, milliseconds heartbeat)
      : pool_(pool), base_(round << kIndexShift), heartbeat_ns_(std::chrono::nanoseconds(heartbeat).count()) {
    thread_ = std::thread([this, sleep_us] { run(pool_, sleep_us); });
  }
  ~Stream() {
    stop_.store(true);
    // Unwinding (a failure, SIGINT, SIGTERM): cancel what is in flight rather than wait for it (the
    // brokers may be gone); the Pool takes no more work after this, and the setting ends.
    if (std::uncaught_exceptions() > 0 || interrupted.load()) pool_.terminate();
    // A stream waits for the chunks still out; past this, something is stuck for good.
    const auto limit = interrupted.load() ? Clock::duration(10s) : Clock::duration(90s);
    const auto deadline = Clock::now() + limit;
    while (!finished_.load()) {
      if (Clock::now() > deadline) emergency_exit("a stream did not end within its time limit after it was stopped");
      std::this_thread::sleep_for(5ms);
    }
    thread_.join();
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  std::size_t received() const { return received_.load(); }
  bool finished() const { return finished_.load(); }
  void broker_dead_at(std::int64_t ns) { dead_ns_.store(ns); }
  std::int64_t first_through_standby_ns() const { return standby_ns_.load(); }
  // When that first result's execution ended (on the worker).
  std::int64_t first_through_standby_finished_ns() const { return standby_finished_ns_.load(); }
  // When the last result so far was read (0: none yet).
  std::int64_t last_result_ns() const { return last_ns_.load(); }
  void stop() { stop_.store(true); }
  // While paused, the stream reads no result and so sends no new chunk (its window is full).
  void pause(bool on) { paused_.store(on); }

  // After finished(): "" when every item of the stream came back once with its hash, else why not.
  std::string verdict() const {
    if (!error_.empty()) return "the stream failed: " + error_;
    if (wrong_ > 0) return std::to_string(wrong_) + " results with a wrong index or hash";
    std::size_t missing = 0, twice = 0;
    for (const int count : counts_) {
      missing += count == 0;
      twice += count > 1;
    }
    if (missing > 0 || twice > 0) {
      return std::to_string(missing) + " items missing and " + std::to_string(twice) + " delivered twice of " +
             std::to_string(counts_.size());
    }
    return "";
  }
  std::size_t items() const { return counts_.size(); }

 private:
  void run(poolmap::Pool& pool, std::int32_t sleep_us) {
    try {
      auto inputs = std::views::iota(std::int64_t{0}, kMaxItemsPerRound) |
                    std::views::take_while([this](std::int64_t) { return !stop_.load(); }) |
                    std::views::transform([this, sleep_us](std::int64_t i) {
                      return bench::LoggedItem{base_ + i, sleep_us};
                    });
      for (const bench::LoggedResult& result : pool.imap_unordered(bench::logged_hash, inputs, {.chunksize = 1})) {
        const std::int64_t now = to_ns(Clock::now());
        const std::int64_t at = result.index - base_;
        if (at < 0 || at >= kMaxItemsPerRound || result.hash != bench::hash_index(result.index)) {
          ++wrong_;
          continue;
        }
        if (static_cast<std::size_t>(at) >= counts_.size()) counts_.resize(static_cast<std::size_t>(at) + 1, 0);
        ++counts_[static_cast<std::size_t>(at)];
        const std::int64_t dead = dead_ns_.load();
        if (dead != 0 && standby_ns_.load() == 0 && (result.finished_ns > dead || now - dead > heartbeat_ns_)) {
          standby_finished_ns_.store(result.finished_ns);
          standby_ns_.store(now);
        }
        last_ns_.store(now);
        received_.fetch_add(1);
        while (paused_.load() && !stop_.load()) std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    } catch (const std::exception& e) {
      error_ = e.what();
    }
    finished_.store(true);
  }

  poolmap::Pool& pool_;
  const std::int64_t base_;
  const std::int64_t heartbeat_ns_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> finished_{false};
  std::atomic<std::size_t> received_{0};
  std::atomic<std::int64_t> dead_ns_{0};
  std::atomic<std::int64_t> standby_ns_{0};
  std::atomic<std::int64_t> standby_finished_ns_{0};
  std::atomic<std::int64_t> last_ns_{0};
  std::atomic<bool> paused_{false};
  // Written by the stream's thread, read after finished().
  std::vector<int> counts_;
  std::size_t wrong_ = 0;
  std::string error_;
  std::thread thread_;
};

// Local time with milliseconds, as the daemons' log lines start ("2026-12-07T16:52:56.351").
std::string wall_clock_now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm local{};
  ::localtime_r(&seconds, &local);
  char text[40];
  const std::size_t n = std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &local);
  std::snprintf(text + n, sizeof(text) - n, ".%03lld", static_cast<long long>(ms));
  return text;
}

struct Kill {
  int broker = -1;
  double failover_ms = 0;
  double quiet_before_ms = 0;  // from the last result read before the kill to the kill
  double run_ended_ms = 0;     // when the first result through the standby was computed, from the kill
  std::string wall_time;       // of the kill, as the daemons' logs write it (to read them side by side)
  std::int64_t t0_ns = 0;      // of the kill, steady clock (as the run log's start times)
  std::size_t items = 0;       // items of the round's stream
};

struct Outcome {
  milliseconds heartbeat{0};
  std::vector<Kill> kills;
  std::size_t executed_twice = 0;    // items that ran more than once
  std::size_t extra_executions = 0;  // runs past each item's first
  std::size_t executions = 0;
  std::map<std::int64_t, std::size_t> twice_by_round;
  std::string failure;  // "" = every step passed
};

// Items in the run log more than once: how many, and the runs past the first.
void count_runs(const std::string& path, Outcome& outcome) {
  std::unordered_map<std::int64_t, int> runs;
  std::ifstream in(path);
  std::int64_t index = 0;
  std::int64_t started_ns = 0;
  while (in >> index >> started_ns) {
    ++runs[index];
    ++outcome.executions;
  }
  for (const auto& [item, count] : runs) {
    if (count > 1) {
      ++outcome.executed_twice;
      outcome.extra_executions += static_cast<std::size_t>(count - 1);
      ++outcome.twice_by_round[item >> kIndexShift];
    }
  }
}

// `number` (1, 2, ...) names the setting's logs: DIR/<number>-hb<ms>-broker0.log and so on.
Outcome run_setting(const Settings& settings, std::size_t number, milliseconds heartbeat, int kills,
                    std::mt19937_64& rng) {
  Outcome outcome;
  outcome.heartbeat = heartbeat;
  const std::string prefix =
      settings.log_dir + "/" + std::to_string(number) + "-hb" + std::to_string(heartbeat.count()) + "-";
  const std::string run_log = prefix + "runs.log";
  std::filesystem::remove(run_log);
  try {
    BrokerPair pair(settings, heartbeat, prefix);
    Child workers(
        {settings.worker_bin, "--broker", pair.worker_endpoints(), "--processes", std::to_string(settings.processes),
         "--heartbeat-ms", std::to_string(heartbeat.count()), "--liveness", std::to_string(settings.liveness),
         "--tasks", settings.tasks, "--log-level", settings.daemon_log_level},
        {"POOLMAP_BENCH_RUN_LOG=" + run_log}, prefix + "workers.log", SIGTERM);
    poolmap::Pool pool({.broker = pair.client_endpoints(),
                        .heartbeat_interval = heartbeat,
                        .heartbeat_liveness = settings.liveness,
                        .start_timeout = 30s,
                        .reconnect_timeout = 60s});
    if (!pool.wait_for_workers(settings.processes, kStepLimit)) {
      throw Failure("fewer than " + std::to_string(settings.processes) + " workers registered within 30 s");
    }
    std::uniform_int_distribution<std::int64_t> phase_us(0, std::chrono::microseconds(heartbeat).count() - 1);
    for (int round = 1; round <= kills; ++round) {
      const int active = pair.active(kStepLimit);
      if (active < 0) throw Failure("kill " + std::to_string(round) + ": no broker of the pair is active");
      Kill kill;
      kill.broker = active;
      {
        Stream stream(pool, round, settings.sleep_us, heartbeat);
        // Work is flowing: results come back (a few per worker process).
        if (!wait_until([&] { return stream.received() >= 4 * settings.processes || stream.finished(); }, kStepLimit) ||
            stream.finished()) {
          stream.stop();
          throw Failure("kill " + std::to_string(round) + ": no results flowing before the kill");
        }
        // Anywhere between two heartbeats.
        std::this_thread::sleep_for(std::chrono::microseconds(phase_us(rng)));
        if (settings.pause_reads > 0ms) {  // the workers run dry; the next chunks reach only the dead broker
          stream.pause(true);
          std::this_thread::sleep_for(settings.pause_reads);
        }
        const auto t0 = Clock::now();
        kill.wall_time = wall_clock_now();
        kill.t0_ns = to_ns(t0);
        kill.quiet_before_ms = ms_between(stream.last_result_ns(), to_ns(t0));
        pair.kill(active);
        stream.broker_dead_at(to_ns(Clock::now()));
        stream.pause(false);
        if (!wait_until([&] { return stream.first_through_standby_ns() != 0 || stream.finished(); }, kFailoverLimit,
                        1ms) ||
            stream.first_through_standby_ns() == 0) {
          stream.stop();
          throw Failure("kill " + std::to_string(round) + ": no result through the standby within 30 s of the kill" +
                        (stream.finished() ? " (the stream ended: " + stream.verdict() + ")" : ""));
        }
        kill.failover_ms = ms_between(to_ns(t0), stream.first_through_standby_ns());
        kill.run_ended_ms = ms_between(to_ns(t0), stream.first_through_standby_finished_ns());
        // A little more work through the new active broker, then the stream ends and is checked.
        std::this_thread::sleep_for(std::max<milliseconds>(heartbeat, 500ms));
        stream.stop();
        if (!wait_until([&] { return stream.finished(); }, 60s)) {
          emergency_exit("kill " + std::to_string(round) + ": the stream did not end within 60 s");
        }
        if (const auto why = stream.verdict(); !why.empty()) {
          throw Failure("kill " + std::to_string(round) + ": " + why);
        }
        kill.items = stream.items();
      }
      outcome.kills.push_back(kill);
      std::printf(
          "  %4lld ms x %d, kill %2d/%d at %s: broker %d (%s) killed, first chunk through the standby after %7.1f ms "
          "(computed %.1f ms after the kill; last result before it %.1f ms before; %zu items, exact)\n",
          static_cast<long long>(heartbeat.count()), settings.liveness, round, kills, kill.wall_time.c_str(), active,
          active == 0 ? "primary" : "backup", kill.failover_ms, kill.run_ended_ms, kill.quiet_before_ms, kill.items);
      std::fflush(stdout);
      // Back as the passive one, hearing its peer active, before the next kill (of the other).
      pair.start(active);
      if (!wait_until(
              [&] {
                const auto back = pair.status(active);
                return back && back->role == "passive" && back->peer == "active";
              },
              kStepLimit, 20ms)) {
        throw Failure("kill " + std::to_string(round) + ": broker " + std::to_string(active) +
                      " did not come back passive within 30 s");
      }
    }
  } catch (const std::exception& e) {
    outcome.failure = e.what();
  }
  count_runs(run_log, outcome);
  return outcome;
}

struct Summary {
  double p50 = 0, p99 = 0, min = 0, max = 0;
};

Summary summarize(std::vector<double> samples) {
  Summary s;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  const std::size_t n = samples.size();
  s.p50 = n % 2 == 1 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
  // Nearest rank: the smallest sample with at least 99 % of them at or below it (the max for n < 100).
  const auto rank = static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(n)));
  s.p99 = samples[std::max<std::size_t>(rank, 1) - 1];
  s.min = samples.front();
  s.max = samples.back();
  return s;
}

std::string json_escape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
      continue;
    }
    out += c;
  }
  return out;
}

std::vector<milliseconds> parse_heartbeats(const std::string& list) {
  std::vector<milliseconds> out;
  std::stringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    std::size_t used = 0;
    const long value = std::stol(item, &used);
    if (used != item.size() || value <= 0) throw std::invalid_argument("bad heartbeat interval '" + item + "'");
    out.emplace_back(value);
  }
  if (out.empty()) throw std::invalid_argument("no heartbeat interval given");
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"poolmap_failover_bench: failover time of a pair of brokers (kill -9 of the active one)"};
  Settings settings;
  int kills = 20;
  std::string heartbeat_list = "1000,250";
  std::uint64_t seed = 1;
  std::string json_path;
  settings.processes = std::max<std::size_t>(2, std::thread::hardware_concurrency());
  app.add_option("--broker-bin", settings.broker_bin, "poolmap-broker")->required();
  app.add_option("--worker-bin", settings.worker_bin, "poolmap-worker")->required();
  app.add_option("--tasks", settings.tasks, "the bench task library (libpoolmap_bench_tasks.so)")->required();
  app.add_option("--kills", kills, "kills of the active broker per heartbeat setting")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--heartbeat-ms", heartbeat_list, "heartbeat intervals, comma-separated (brokers, workers, client)")
      ->capture_default_str();
  app.add_option("--liveness", settings.liveness, "missed heartbeats before a peer counts as gone")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--processes", settings.processes, "worker processes (default: cores, at least 2)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--sleep-us", settings.sleep_us, "how long each item runs, microseconds")->capture_default_str();
  long pause_reads_ms = 0;
  app.add_option("--pause-reads-ms", pause_reads_ms,
                 "before each kill, the client stops reading results for this long (resuming after the kill): the "
                 "workers are idle at the kill and the next chunks reach only the dead broker")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", seed, "seed of the random wait before each kill")->capture_default_str();
  app.add_option("--daemon-log-level", settings.daemon_log_level, "the brokers' and workers' --log-level")
      ->capture_default_str();
  app.add_option("--log-dir", settings.log_dir,
                 "where the daemons' logs and the run logs go (default: a new temp dir)");
  app.add_option("--json", json_path, "append one JSON line per heartbeat setting to this file");
  CLI11_PARSE(app, argc, argv);
  settings.pause_reads = milliseconds(pause_reads_ms);
  std::vector<milliseconds> heartbeats;
  try {
    heartbeats = parse_heartbeats(heartbeat_list);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "poolmap_failover_bench: %s\n", e.what());
    return 2;
  }
  if (settings.log_dir.empty()) {
    std::string pattern = std::filesystem::temp_directory_path() / "poolmap-failover.XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::fprintf(stderr, "poolmap_failover_bench: cannot make a temp dir\n");
      return 1;
    }
    settings.log_dir = pattern;
  }
  std::filesystem::create_directories(settings.log_dir);
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  ::sigemptyset(&action.sa_mask);
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  std::printf(
      "failover: %d kills per setting, %zu worker processes, items of %d us (chunksize 1), liveness %d, "
      "seed %llu%s; logs in %s\n",
      kills, settings.processes, settings.sleep_us, settings.liveness, static_cast<unsigned long long>(seed),
      pause_reads_ms > 0 ? (", results unread for " + std::to_string(pause_reads_ms) + " ms before each kill").c_str()
                         : "",
      settings.log_dir.c_str());
  std::fflush(stdout);
  std::mt19937_64 rng(seed);
  std::vector<Outcome> outcomes;
  for (const milliseconds heartbeat : heartbeats) {
    outcomes.push_back(run_setting(settings, outcomes.size() + 1, heartbeat, kills, rng));
    if (!outcomes.back().failure.empty()) std::printf("  FAILED: %s\n", outcomes.back().failure.c_str());
    std::fflush(stdout);
    if (interrupted.load()) break;
  }

  bool failed = false;
  std::string json;
  std::printf(
      "\n| heartbeat x liveness | kills | p50 (ms) | p99 (ms) | min (ms) | max (ms) | chunks executed twice | "
      "goal: p99 under | goal | Slurm (SlurmctldTimeout default) | Ray (GCS reconnect) |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const Outcome& outcome : outcomes) {
    std::vector<double> samples;
    for (const Kill& kill : outcome.kills) samples.push_back(kill.failover_ms);
    const Summary s = summarize(samples);
    const double goal_ms = static_cast<double>(outcome.heartbeat.count() * settings.liveness) + 500.0;
    const bool complete = outcome.failure.empty() && static_cast<int>(outcome.kills.size()) == kills;
    const bool met = complete && s.p99 < goal_ms;
    failed = failed || !outcome.failure.empty();
    std::printf("| %lld ms x %d | %zu%s | %.0f | %.0f | %.0f | %.0f | %zu | %.0f ms | %s | 120,000 ms | 60,000 ms |\n",
                static_cast<long long>(outcome.heartbeat.count()), settings.liveness, outcome.kills.size(),
                complete ? "" : " (FAILED)", s.p50, s.p99, s.min, s.max, outcome.executed_twice, goal_ms,
                met ? "met" : (complete ? "missed" : "-"));
    std::ostringstream line;
    line << "{\"workload\": \"failover\", \"impl\": \"poolmap-pair\", \"processes\": " << settings.processes
         << ", \"heartbeat_ms\": " << outcome.heartbeat.count() << ", \"liveness\": " << settings.liveness
         << ", \"kills\": " << outcome.kills.size() << ", \"value\": " << s.p99 << ", \"unit\": \"ms\""
         << ", \"p50_ms\": " << s.p50 << ", \"p99_ms\": " << s.p99 << ", \"min_ms\": " << s.min
         << ", \"max_ms\": " << s.max << ", \"executed_twice\": " << outcome.executed_twice
         << ", \"extra_executions\": " << outcome.extra_executions << ", \"executions\": " << outcome.executions
         << ", \"goal_ms\": " << goal_ms << ", \"goal_met\": " << (met ? "true" : "false")
         << ", \"slurm_ms\": 120000, \"ray_ms\": 60000, \"item_us\": " << settings.sleep_us
         << ", \"pause_reads_ms\": " << settings.pause_reads.count() << ", \"samples_ms\": [";
    for (std::size_t i = 0; i < outcome.kills.size(); ++i) {
      line << (i == 0 ? "" : ", ") << std::round(outcome.kills[i].failover_ms * 10) / 10;
    }
    line << "], \"computed_after_kill_ms\": [";
    for (std::size_t i = 0; i < outcome.kills.size(); ++i) {
      line << (i == 0 ? "" : ", ") << std::round(outcome.kills[i].run_ended_ms * 10) / 10;
    }
    line << "], \"quiet_before_kill_ms\": [";
    for (std::size_t i = 0; i < outcome.kills.size(); ++i) {
      line << (i == 0 ? "" : ", ") << std::round(outcome.kills[i].quiet_before_ms * 10) / 10;
    }
    line << "], \"killed_at_ns\": [";
    for (std::size_t i = 0; i < outcome.kills.size(); ++i) line << (i == 0 ? "" : ", ") << outcome.kills[i].t0_ns;
    line << "], \"killed\": [";
    for (std::size_t i = 0; i < outcome.kills.size(); ++i) line << (i == 0 ? "" : ", ") << outcome.kills[i].broker;
    line << "], \"twice_by_kill\": {";
    bool first = true;
    for (const auto& [round, count] : outcome.twice_by_round) {
      line << (first ? "" : ", ") << "\"" << round << "\": " << count;
      first = false;
    }
    line << "}, \"failure\": \"" << json_escape(outcome.failure) << "\"}";
    json += line.str() + "\n";
  }
  std::printf(
      "\np50: the median; p99: nearest rank, which is the largest sample for fewer than 100 kills. Goal: "
      "p99 under one liveness period (heartbeat x liveness) + 0.5 s. Slurm: a backup slurmctld takes over "
      "after SlurmctldTimeout (default 120 s); Ray: raylets wait gcs_rpc_server_reconnect_timeout_s "
      "(default 60 s) for a restarted GCS. Chunks executed twice: items the task ran more than once, over "
      "every kill of the setting.\n\n%s",
      json.c_str());
  if (!json_path.empty()) {
    std::ofstream out(json_path, std::ios::app);
    out << json;
    if (!out) {
      std::fprintf(stderr, "poolmap_failover_bench: cannot write %s\n", json_path.c_str());
      failed = true;
    }
  }
  return failed || interrupted.load() ? 1 : 0;
}
