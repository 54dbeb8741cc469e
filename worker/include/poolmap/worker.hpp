// poolmap's worker side: the process that runs tasks, and the supervisor that keeps N of them alive.
//
// A WorkerProcess connects one socket to the broker, registers with some credit and the tasks
// registered in this process when it was constructed (POOLMAP_TASK, or task libraries loaded with
// load_task_library; the broker sends it only chunks of those), and runs the chunks it is sent. It
// registers under a random instance id (the one its supervisor gave it in POOLMAP_WORKER_INSTANCE,
// else its own) that tells it apart from every other process, whatever its host and pid. A task
// that throws, a result that cannot be encoded or an argument that cannot be decoded produces an
// error result for that item; the process keeps serving. Heartbeats flow both ways while a task runs (a second thread owns the socket, so a long
// task never looks like a dead worker). If the broker is silent for heartbeat_interval ×
// heartbeat_liveness, or says it does not know this worker, the process registers again.
//
// A pair of brokers (primary and backup, docs/PROTOCOL.md): WorkerOptions::broker lists both, and
// the process talks to one at a time, the first one first. It turns to the next one (round-robin)
// when its broker says it is the passive one of its pair (PASSIVE), when the broker it was
// registered with is silent for a liveness period, or when a connection has had no answer for a
// liveness period. It ignores every message from a broker whose epoch is older than the newest it
// has seen (a broker that lost its place to its peer and does not know it yet). Having lost its
// broker it keeps the chunks it holds (the one running and the ones queued), lists them in its
// READY to the next broker (Ready::held, with each chunk's origin, which every result echoes) and
// sends the results it has not sent yet after that READY; a broker that does not know it
// (DISCONNECT) gets only the running chunk listed, the queued ones are dropped as before.
//
// A Supervisor starts `processes` copies of a command (normally this executable in its child role)
// and restarts any that exit, with a back-off, until stop(); a copy that ends with status 0 (max
// tasks per child) is replaced at once. It gives each copy an instance id and can report each exit
// to the broker by that id. Each copy leads a process group of its own; when a copy has ended, for
// whatever reason (SIGKILL included), what is left in its group (the commands it ran, what they
// started) is killed with SIGKILL before the copy is reaped, so nothing it started outlives it.
//
// Thread-safety: run() blocks the calling thread; stop() may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "poolmap/context.hpp"

namespace poolmap {

struct WorkerOptions {
  // The broker's worker endpoint, e.g. "tcp://broker-host:5556"; for a pair of brokers, both, in a
  // comma-separated list ("tcp://a:5556,tcp://b:5556"; spaces around each are ignored; see above).
  // Required.
  std::string broker{};
  // Chunks accepted beyond the one running, so the next is already here when one finishes. At
  // most 1023. Default: nullopt = adapt to the chunks: start at 1, then hold about 2 ms of work
  // (measured chunk time × prefetched chunks, at most 256 chunks and 16 MiB of their payloads), so
  // that tiny chunks never wait for a round trip through the broker and long ones are not held
  // back behind a slow one (the process tells the broker with CREDIT when that changes much, and
  // a chunk that runs past 2 ms hands the chunks waiting behind it, but one, back to the broker).
  std::optional<std::uint32_t> prefetch{};
  // Heartbeat interval and liveness; keep them equal to the broker's. Default: 1 s × 3.
  std::chrono::milliseconds heartbeat_interval{1000};
  int heartbeat_liveness = 3;
  // Largest message accepted or sent, in bytes (keep it equal to the broker's). A chunk whose
  // results encode to more fails with kInvalidArgument instead of being sent. Default: 64 MiB.
  std::int64_t max_message_bytes = 64LL << 20;
  // The context to open the socket in (share it with an in-process broker for inproc://).
  // Default: a private context.
  Context context{};
  // After this many chunks the process finishes, hands back what it prefetched and run() returns,
  // so that its supervisor starts a fresh one (Python's maxtasksperchild). Default: 0 = never.
  std::uint64_t max_tasks_per_child = 0;
  // Passed to the POOLMAP_WORKER_INIT initializers, which run() calls first. Default: none.
  std::vector<std::string> init_args{};
  // CURVE: this worker's secret key file and the broker's public key file (`poolmap keygen`).
  // Both or neither. Default: none (the broker must then be on loopback or --insecure).
  std::filesystem::path curve_secret_file{};
  std::filesystem::path broker_key_file{};
  // Without CURVE: the password the broker's worker socket requires (BrokerOptions::worker_password;
  // ZeroMQ PLAIN, in clear: loopback only). An embedded Pool gives its worker copies one.
  // Default: "" = none.
  std::string broker_password{};
  // Without CURVE and broker_password (and not over inproc://): the file of this user's secret,
  // which a broker without CURVE requires (BrokerOptions::secret_file; read, or made when missing,
  // at construction). "none": give no secret. Default: "" = the POOLMAP_SECRET_FILE environment
  // variable, else ${XDG_CONFIG_HOME:-$HOME/.config}/poolmap/secret, as the same user's broker does.
  std::filesystem::path secret_file{};
  // After stop(), how long the running chunk may still take. Past it the process says goodbye
  // (the broker gives the chunk to another worker without counting it against the chunk) and
  // ends at once, so a hung task cannot keep a process alive whose supervisor is gone. Default: 10 s.
  std::chrono::milliseconds stop_timeout{10000};
};

class WorkerProcess {
 public:
  // Does not connect yet. Throws poolmap::Error (kInvalidArgument) for an empty or malformed broker
  // endpoint (any of a list, or an empty entry in it), non-positive heartbeat settings, too much
  // prefetch, bad key files or a secret file that cannot be had or is open to others.
  explicit WorkerProcess(WorkerOptions options);
  ~WorkerProcess();
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  // Runs the POOLMAP_WORKER_INIT initializers, connects, registers and runs tasks until stop() or
  // max_tasks_per_child. The calling thread runs the tasks. Throws what an initializer throws.
  void run();
  // Makes run() return after the task in progress, if any; if that task is still running after
  // stop_timeout, ends the process (exit code 75) without waiting for it. Thread-safe.
  void stop() noexcept;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Registers the poolmap.exec task (poolmap/exec.hpp) in this process, as `poolmap-worker
// --allow-exec` does: any client that may reach the broker can then run any command as this
// process's user. Call before WorkerProcess::run(); calling it again does nothing.
void enable_exec_task();

// Loads a task library (dlopen), which registers its POOLMAP_TASKs in this process.
// Throws poolmap::Error (kInvalidArgument) with dlerror()'s text when it cannot be loaded.
// Returns the names of the tasks it added.
std::vector<std::string> load_task_library(const std::string& path);

struct SupervisorOptions {
  // Program to run and its arguments (argv[0] included). Required.
  std::string executable{};
  std::vector<std::string> arguments{};
  // Variables added to (or replacing in) the inherited environment.
  std::vector<std::pair<std::string, std::string>> environment{};
  // How many copies to keep running. Required, >= 1.
  std::size_t processes = 1;
  // Wait before restarting a copy that exited; doubles for a copy that dies within a second of
  // starting, up to restart_backoff_max. Default: 100 ms, max 5 s.
  std::chrono::milliseconds restart_backoff{100};
  std::chrono::milliseconds restart_backoff_max{5000};
  // After stop(), time the children get to exit after SIGTERM before SIGKILL. Default: 5 s.
  std::chrono::milliseconds stop_grace{5000};
  // A broker worker endpoint to tell when a child exits (host, pid, signal or exit code), so that
  // the broker re-dispatches its chunks at once and knows which chunk killed it; for a pair of
  // brokers a comma-separated list (as WorkerOptions::broker), and each is told (the passive one
  // ignores it). Default: "" = none.
  std::string report_endpoint{};
  // CURVE keys for the report connection (the same as the workers'). Both or neither.
  std::filesystem::path curve_secret_file{};
  std::filesystem::path broker_key_file{};
  // Or, without CURVE, the workers' broker_password. Default: "" = none.
  std::string report_password{};
  // Or, without either, the workers' secret_file (WorkerOptions::secret_file). Default: "" = the
  // same default place.
  std::filesystem::path secret_file{};
};

class Supervisor {
 public:
  // Throws poolmap::Error (kInvalidArgument) for an empty executable, zero processes, an empty
  // entry in report_endpoint's list or bad key files.
  explicit Supervisor(SupervisorOptions options);
  ~Supervisor();  // stops and reaps every child if run() is not running
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts the children, restarts those that exit, and returns after stop() once every child has
  // been reaped (SIGTERM, then SIGKILL after stop_grace). Call from one thread.
  void run();
  // Makes run() wind down. Thread-safe.
  void stop() noexcept;

  // Process ids of the children running now.
  std::vector<int> pids() const;
  // Children that exited (and were restarted unless stopping) so far.
  std::size_t exits() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace poolmap
