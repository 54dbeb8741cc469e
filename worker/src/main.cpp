// poolmap-worker: starts N worker processes that take chunks from a broker and run them.
//
//   poolmap-worker --broker tcp://HOST:5556[,tcp://HOST2:5556] [--processes N] [--tasks LIB.so ...]
//                  [--allow-exec] [--curve-secret worker.key --broker-key broker.pub] [--secret-file FILE]
//
// The process started by the user is a supervisor: it detects the worker count (physical cores,
// CPU affinity, cgroup quota, SLURM/PBS allocation), starts that many copies of itself in the
// hidden --child role and restarts any that die. For a pair of brokers, --broker lists both: the
// children turn from one to the other (WorkerOptions::broker), the supervisor reports exits to
// each. SIGINT/SIGTERM stop everything; SIGUSR1 (a broker of a pair hands over to its peer on it)
// does nothing, in the supervisor and in the children. --daemon, --pidfile and --log-file
// (reopened on SIGHUP, by the children too) as for the broker. Every flag
// can also be given as an environment variable, POOLMAP_WORKER_ and the flag's name in upper case
// with '_' for '-' (POOLMAP_WORKER_PREFETCH=4), except the keys (POOLMAP_CURVE_SECRET,
// POOLMAP_BROKER_KEY, shared with the client library) and the per-user secret of a broker without
// CURVE (--secret-file, POOLMAP_SECRET_FILE; by default found where the same user's broker made it).
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <iostream>
#include <optional>

#include <CLI/CLI.hpp>

#include "daemon.hpp"
#include "log.hpp"
#include "process_info.hpp"
#include "poolmap/cpu_count.hpp"
#include "poolmap/error.hpp"
#include "poolmap/task.hpp"
#include "poolmap/worker.hpp"
#include "signals.hpp"

namespace {

// Children die with their supervisor, even if it is killed with SIGKILL.
void exit_with_parent(pid_t expected_parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (::getppid() != expected_parent) std::_Exit(0);  // the parent died before prctl
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"poolmap-worker: runs poolmap tasks for a broker, one process per core"};
  app.set_version_flag("--version", std::string("poolmap-worker ") + POOLMAP_VERSION);
  std::string broker;
  std::size_t processes = 0;
  std::vector<std::string> task_libraries;
  std::string prefetch = "auto";
  int heartbeat_ms = 1000;
  int liveness = 3;
  std::string log_level = "info";
  bool child = false;
  std::uint64_t max_tasks_per_child = 0;
  std::vector<std::string> init_args;
  int parent_pid = 0;
  app.add_option("--broker", broker,
                 "endpoint of the broker; a comma-separated list for a pair of brokers, e.g. tcp://broker-host:5556 "
                 "or tcp://broker-a:5556,tcp://broker-b:5556")
      ->required();
  app.add_option("-n,--processes", processes,
                 "worker processes to run (default 0 = physical cores, limited by CPU affinity, cgroup quota "
                 "and SLURM_CPUS_PER_TASK / PBS_NCPUS / NCPUS)");
  app.add_option("--tasks", task_libraries, "task library (.so) to load; repeat for several")
      ->check(CLI::ExistingFile);
  app.add_option("--prefetch", prefetch,
                 "chunks each process accepts beyond the one it runs: 0..1023, or auto (hold about 2 ms of work, "
                 "1 to 256 chunks)")
      ->default_val("auto")
      ->check(CLI::IsMember({"auto"}) | CLI::Range(0, 1023));
  app.add_option("--heartbeat-ms", heartbeat_ms, "heartbeat interval in milliseconds")->default_val(1000)->check(CLI::PositiveNumber);
  app.add_option("--liveness", liveness, "missed heartbeats before the broker counts as gone")->default_val(3)->check(CLI::PositiveNumber);
  app.add_option("--max-tasks-per-child", max_tasks_per_child,
                 "replace a worker process after it ran this many chunks (0 = never)")
      ->default_val(0);
  bool allow_exec = false;
  app.add_flag("--allow-exec", allow_exec,
               "run commands for `poolmap exec` (the poolmap.exec task): anyone who may reach the broker can then "
               "run any command as this user");
  app.add_option("--init-arg", init_args, "argument for the task libraries' POOLMAP_WORKER_INIT; repeat for several");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")->default_val("info");
  std::int64_t max_message_bytes = 64LL << 20;
  app.add_option("--max-message-bytes", max_message_bytes,
                 "largest message accepted or sent, in bytes; keep equal to the broker's")
      ->default_val(64LL << 20)
      ->check(CLI::Range(std::int64_t{4096}, std::int64_t{1} << 40));
  std::string curve_secret;
  std::string broker_key;
  app.add_option("--curve-secret", curve_secret, "this worker's CURVE secret key file (from `poolmap keygen`)")
      ->envname("POOLMAP_CURVE_SECRET");
  app.add_option("--broker-key", broker_key, "the broker's CURVE public key file (its .pub)")
      ->envname("POOLMAP_BROKER_KEY");
  std::string secret_file;
  app.add_option("--secret-file", secret_file,
                 "without CURVE: the file of this user's secret that the broker requires (made if missing; 'none': "
                 "give none)")
      ->default_str("${XDG_CONFIG_HOME:-$HOME/.config}/poolmap/secret")
      ->envname("POOLMAP_SECRET_FILE");
  bool daemon = false;
  std::string pidfile;
  std::string log_file;
  app.add_flag("--daemon", daemon, "run in the background (needs --log-file); exits once it runs");
  app.add_option("--pidfile", pidfile, "write the supervisor's pid to this file (removed at exit)");
  app.add_option("--log-file", log_file, "append the log to this file instead of stderr (reopened on SIGHUP)");
  poolmap::detail::name_environment_variables(app, "POOLMAP_WORKER_");  // POOLMAP_WORKER_PREFETCH, ...
  app.add_flag("--child", child, "internal: run one worker process (started by the supervisor)")->group("");
  app.add_option("--parent-pid", parent_pid, "internal")->group("");
  CLI11_PARSE(app, argc, argv);
  if (child) {  // the supervisor's business, even when the environment says otherwise
    daemon = false;
    pidfile.clear();
  }
  const std::optional<std::uint32_t> fixed_prefetch =
      prefetch == "auto" ? std::nullopt : std::optional<std::uint32_t>(static_cast<std::uint32_t>(std::stoul(prefetch)));
  if (daemon && log_file.empty()) {
    std::cerr << "poolmap-worker: --daemon needs --log-file (a daemon has no terminal to log to)\n";
    return 2;
  }

  if (!poolmap::detail::configure_program_logging(log_level, child ? "worker" : "supervisor")) {
    std::cerr << "poolmap-worker: unknown --log-level '" << log_level << "'\n";
    return 2;
  }
  // Forked before the log moves, so that the waiting command can still say why a daemon failed.
  std::optional<poolmap::detail::Daemon> background;
  if (daemon) background.emplace(poolmap::detail::Daemon::start());  // before any thread exists
  if (!log_file.empty() && !child) {  // the children inherit it
    try {
      poolmap::detail::redirect_stderr(log_file);
    } catch (const std::exception& e) {
      std::cerr << "poolmap-worker: " << e.what() << '\n';
      return 1;
    }
  }
  poolmap::detail::SignalWaiter signals;
  auto log = poolmap::detail::logger("poolmap.worker");
  if (child && parent_pid > 0) exit_with_parent(static_cast<pid_t>(parent_pid));
  try {
    for (const auto& library : task_libraries) {
      const auto added = poolmap::load_task_library(library);
      if (added.empty()) {
        log->critical("task library '{}' registers no task (each task needs a POOLMAP_TASK in a .cpp file of the "
                      "library); refusing to start",
                      library);
        return 2;
      }
      if (!child) log->info("loaded {} ({} tasks)", library, added.size());
    }
    if (allow_exec) poolmap::enable_exec_task();
    if (poolmap::detail::TaskRegistry::instance().names().empty()) {
      log->critical("no tasks to run: give a task library with --tasks LIB.so (or --allow-exec); refusing to start");
      return 2;
    }
    if (child) {
      poolmap::WorkerProcess worker({.broker = broker,
                                     .prefetch = fixed_prefetch,
                                     .heartbeat_interval = std::chrono::milliseconds(heartbeat_ms),
                                     .heartbeat_liveness = liveness,
                                     .max_message_bytes = max_message_bytes,
                                     .max_tasks_per_child = max_tasks_per_child,
                                     .init_args = init_args,
                                     .curve_secret_file = curve_secret,
                                     .broker_key_file = broker_key,
                                     .secret_file = secret_file});
      signals.on_signal([&worker, &log, &log_file](int signo) {
        if (signo == SIGHUP) return poolmap::detail::reopen_log_file(log_file, *log);
        if (signo == SIGUSR1) return;  // a broker's signal (hand over to its peer): never drains a worker
        worker.stop();
      });
      try {
        worker.run();
      } catch (const std::exception& e) {
        log->critical("worker process failed: {}", e.what());  // e.g. a POOLMAP_WORKER_INIT threw
        return 3;
      }
      signals.on_signal(nullptr);
      return 0;
    }

    // Refuse a malformed endpoint (or list of them) here, not in every child of a restart loop.
    // Bad key files too, and a secret file open to others (a missing one is made here, once).
    {
      poolmap::WorkerProcess check({.broker = broker,
                                    .prefetch = fixed_prefetch,
                                    .curve_secret_file = curve_secret,
                                    .broker_key_file = broker_key,
                                    .secret_file = secret_file});
    }
    if (processes == 0) {
      const auto detected = poolmap::detect_worker_count();
      processes = detected.count;
      log->info("worker count {} decided by {} ({})", detected.count, detected.source, detected.detail);
    } else {
      log->info("worker count {} from --processes", processes);
    }
    const std::string self = poolmap::detail::self_executable(argv[0]);
    std::vector<std::string> child_args{self,        "--child",        "--parent-pid", std::to_string(::getpid()),
                                        "--broker",  broker,           "--prefetch",   prefetch,
                                        "--heartbeat-ms", std::to_string(heartbeat_ms), "--liveness",
                                        std::to_string(liveness), "--log-level", log_level};
    for (const auto& library : task_libraries) {
      child_args.push_back("--tasks");
      child_args.push_back(library);
    }
    if (allow_exec) child_args.push_back("--allow-exec");
    child_args.push_back("--max-tasks-per-child");
    child_args.push_back(std::to_string(max_tasks_per_child));
    child_args.push_back("--max-message-bytes");
    child_args.push_back(std::to_string(max_message_bytes));
    for (const auto& arg : init_args) {
      child_args.push_back("--init-arg");
      child_args.push_back(arg);
    }
    if (!curve_secret.empty()) child_args.insert(child_args.end(), {"--curve-secret", curve_secret});
    if (!log_file.empty()) child_args.insert(child_args.end(), {"--log-file", log_file});
    if (!broker_key.empty()) child_args.insert(child_args.end(), {"--broker-key", broker_key});
    if (!secret_file.empty()) child_args.insert(child_args.end(), {"--secret-file", secret_file});
    std::vector<std::pair<std::string, std::string>> environment;
    for (const char* name : {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}) {
      if (std::getenv(name) == nullptr) environment.emplace_back(name, "1");
    }
    poolmap::Supervisor supervisor({.executable = self,
                                    .arguments = child_args,
                                    .environment = environment,
                                    .processes = processes,
                                    .report_endpoint = broker,
                                    .curve_secret_file = curve_secret,
                                    .broker_key_file = broker_key,
                                    .secret_file = secret_file});
    std::optional<poolmap::detail::PidFile> pid_file;
    if (!pidfile.empty()) pid_file.emplace(pidfile);
    signals.on_signal([&supervisor, &log, &log_file](int signo) {
      if (signo == SIGHUP) {
        poolmap::detail::reopen_log_file(log_file, *log);
        for (const int pid : supervisor.pids()) ::kill(pid, SIGHUP);  // they reopen it too
        return;
      }
      if (signo == SIGUSR1) return;  // a broker's signal (hand over to its peer): never stops the workers
      log->info("signal {}: stopping worker processes", signo);
      supervisor.stop();
    });
    if (background) {
      const std::string ready = "poolmap-worker ready pid=" + std::to_string(::getpid()) +
                                " processes=" + std::to_string(processes) + " broker=" + broker;
      log->info("{} (in the background)", ready);
      background->ready(ready);
    }
    supervisor.run();
    signals.on_signal(nullptr);
    return 0;
  } catch (const std::exception& e) {
    log->critical("{}", e.what());
    return 1;
  }
}
