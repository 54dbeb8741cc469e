// Test helpers that start real poolmap processes on loopback and always reap them.
//
// ChildProcess runs a program with its stdout on a pipe (and stderr to a log file), reads lines
// with a deadline, and on destruction sends SIGTERM, then SIGKILL after a grace period, and waits.
// Its stderr log is removed then too, unless POOLMAP_TEST_KEEP_LOGS is set (to read after a failure).
// Cluster starts a poolmap-broker on tcp://127.0.0.1:* (reading the real endpoints from its ready
// line) and poolmap-worker supervisors connected to it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace poolmap::test {

using namespace std::chrono_literals;

class ChildProcess {
 public:
  // Starts `argv[0]` with `argv`. Extra environment entries ("NAME=value") are added, each
  // replacing an inherited variable of the same name.
  // Throws std::runtime_error when it cannot be started.
  explicit ChildProcess(std::vector<std::string> argv, std::vector<std::string> extra_env = {});
  ~ChildProcess();  // stop(): SIGTERM, 5 s grace, SIGKILL; always reaped
  ChildProcess(ChildProcess&&) noexcept;
  ChildProcess& operator=(ChildProcess&&) = delete;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Next stdout line, or nullopt at EOF or when `timeout` passes first.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout);
  // Everything on stdout until EOF (bounded by `timeout`).
  std::string read_all(std::chrono::milliseconds timeout);
  // Sends `signo` and waits up to `timeout` for the exit; returns the wait status, or nullopt if
  // it did not exit in time.
  std::optional<int> signal_and_wait(int signo, std::chrono::milliseconds timeout);
  // Waits up to `timeout` for the exit; returns the wait status.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  // The stderr log so far.
  std::string stderr_text() const;

 private:
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string buffer_;
  std::string stderr_path_;
  bool reaped_ = false;
};

// Path of a built binary or library, from the compile definitions of the test target.
std::string broker_binary();
std::string worker_binary();
std::string cli_binary();
std::string test_tasks_library();
std::string test_client_binary();
// Task libraries for routing tests: other_tasks registers only other.cube (nothing the other
// tests use); variant_tasks registers test.square with another signature, double(double), and
// other.cube; empty_tasks registers nothing.
std::string other_tasks_library();
std::string variant_tasks_library();
std::string empty_tasks_library();

// The heartbeat interval tests run with: 100 ms, or POOLMAP_TEST_HEARTBEAT_MS (sanitizer builds run
// several times slower and use a longer one). Peers are lost after 3 intervals.
std::chrono::milliseconds heartbeat();

struct ClusterOptions {
  int workers = 2;                                          // worker processes (one supervisor)
  int heartbeat_ms = static_cast<int>(heartbeat().count()); // broker and workers
  int liveness = 3;
  bool load_test_tasks = true;      // --tasks libpoolmap_test_tasks.so
  std::vector<std::string> broker_args{};  // extra poolmap-broker flags
  std::vector<std::string> worker_args{};  // extra poolmap-worker flags
};

class Cluster {
 public:
  // Starts the broker and one worker supervisor; returns once the broker is bound (the workers may
  // still be registering: use Pool::wait_for_workers).
  explicit Cluster(ClusterOptions options = {});
  ~Cluster();

  const std::string& client_endpoint() const { return client_endpoint_; }
  const std::string& worker_endpoint() const { return worker_endpoint_; }
  // The broker's dashboard ("http://127.0.0.1:PORT/"), with --http in broker_args; else "".
  const std::string& http_url() const { return http_url_; }
  ChildProcess& broker() { return *broker_; }
  ChildProcess& workers() { return workers_.front(); }
  // Starts another worker supervisor with `processes` processes; `tasks_library` replaces the
  // test tasks when given, `extra_args` are added to its command line.
  ChildProcess& add_workers(int processes, const std::string& tasks_library = {},
                            const std::vector<std::string>& extra_args = {});
  // Kills the broker with SIGKILL and starts a new one on the same endpoints.
  void restart_broker();
  // Starts a broker on the endpoints of the last one (after it exited).
  void start_broker_again();
  // Worker processes (children) of supervisor `index`.
  std::vector<pid_t> worker_pids(std::size_t index = 0);

 private:
  void start_broker(const std::string& clients, const std::string& workers);

  ClusterOptions options_;
  std::optional<ChildProcess> broker_;
  std::vector<ChildProcess> workers_;
  std::string client_endpoint_;
  std::string worker_endpoint_;
  std::string http_url_;
};

// One HTTP GET on loopback ("http://127.0.0.1:PORT/path"), with extra header lines ("Name: value"):
// the status code and the body. Throws std::runtime_error when the connection fails or no whole
// answer comes within `timeout`.
struct HttpResponse {
  int status = 0;
  std::string headers;  // the header lines, as sent
  std::string body;
};
HttpResponse http_get(const std::string& url, const std::vector<std::string>& headers = {},
                      std::chrono::milliseconds timeout = 10s);

// Forwards TCP connections made to its own loopback endpoint to `target` (host:port of a
// tcp://127.0.0.1:PORT endpoint), on a thread of its own, until cut(): then every connection through
// it is closed and new ones are refused at once, until heal(). A link a test can break.
class Relay {
 public:
  explicit Relay(const std::string& target);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;
  const std::string& endpoint() const { return endpoint_; }
  void cut();
  void heal();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string endpoint_;
};

// Two poolmap-brokers of a pair (--ha primary, --ha backup) on loopback, their peer link through
// two Relays (so a test can cut it), each broker restartable on the endpoints it had; worker
// supervisors are given both brokers. Broker 0 is the primary.
class BrokerPair {
 public:
  explicit BrokerPair(ClusterOptions options = {});
  ~BrokerPair();

  // "tcp://127.0.0.1:A,tcp://127.0.0.1:B": for PoolOptions::broker and poolmap-worker --broker.
  std::string client_endpoints() const { return client_[0] + "," + client_[1]; }
  std::string worker_endpoints() const { return worker_[0] + "," + worker_[1]; }
  const std::string& client_endpoint(int i) const { return client_[i]; }
  ChildProcess& broker(int i) { return *brokers_[i]; }
  bool running(int i) const { return brokers_[i].has_value(); }
  // SIGKILL, reaped.
  void kill(int i);
  // Starts broker `i` (after kill) on the endpoints it had.
  void start(int i);
  ChildProcess& add_workers(int processes, std::vector<std::string> extra_env = {},
                            std::vector<std::string> extra_args = {});
  // The broker whose status says "active" (asked of each running one), or -1.
  int active(std::chrono::milliseconds timeout = 5s);
  // The role broker `i`'s status gives ("active", "passive"), or "" when it does not answer.
  std::string role(int i, std::chrono::milliseconds timeout = 5s);
  // The peer link: cut both directions, or heal them.
  void cut_peer_link();
  void heal_peer_link();
  // With CURVE: the client key role() and active() ask with (a .key file and the brokers' .pub).
  std::string probe_curve_secret;
  std::string probe_broker_key;
  const std::string& ha_endpoint(int i) const { return ha_[i]; }

 private:
  void start_broker(int i, const std::string& clients, const std::string& workers, const std::string& ha);

  ClusterOptions options_;
  std::optional<ChildProcess> brokers_[2];
  std::vector<ChildProcess> workers_;
  std::string client_[2], worker_[2], ha_[2];
  std::optional<Relay> to_[2];  // relays to broker i's peer link
};

// Whether process `pid` runs: not gone, and not a zombie its new parent has yet to reap (a daemon
// or an orphan whose parent was not this test).
bool process_running(pid_t pid);

// This user's poolmap secret: what a broker started without CURVE (as Cluster starts it) requires
// of every peer. Raw ZeroMQ sockets of tests give it with wire::apply_secret() before connect().
// Made on first use, as the daemons make it (secret.hpp).
std::string user_secret();

// A TCP socket listening on 127.0.0.1, on a port the kernel picks, for a test's own relay or fake
// peer; `endpoint` gets "tcp://127.0.0.1:PORT". The caller closes it. Throws std::runtime_error
// when it cannot.
int listen_on_loopback(std::string& endpoint, int backlog = 16);

// Polls `condition` every 10 ms until it holds or `timeout` passes; returns its last value.
template <class Condition>
bool eventually(Condition condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    struct timespec pause{0, 10'000'000};
    ::nanosleep(&pause, nullptr);
  }
  return true;
}

// A directory of its own under the system's temporary directory, removed with everything in it
// when this goes out of scope.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace poolmap::test
