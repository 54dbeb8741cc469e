// Internal (not installed): the HPC habits of poolmap's daemons, --daemon, --pidfile and --log-file.
//
//   auto daemon = detail::Daemon::start();          // --daemon: forks; this process is now the daemon
//   detail::redirect_stderr("poolmap-broker.log");  // --log-file: every log line (and anything else
//                                                   // written to stderr) goes there, appended
//   detail::PidFile pidfile("poolmap-broker.pid");  // --pidfile: written now, removed at exit
//   ... bind ...
//   daemon.ready("poolmap-broker ready clients=... workers=...");
//
// Daemon::start() must run before any thread exists (create the SignalWaiter after it). The process
// that ran the command waits until the daemon calls ready(): it prints the daemon's line on stdout
// and exits 0, so that a script can use the daemon on its next line; if the daemon ends without
// ready(), it says so on stderr and exits 1. SIGHUP makes the daemons call redirect_stderr() again,
// so that a rotated log file is reopened.
#pragma once

#include <string>

namespace CLI {
class App;
}
namespace spdlog {
class logger;
}

namespace poolmap::detail {

// Sends stderr (fd 2) to `path`, opened for appending (created 0644). Inherited by child processes.
// Throws std::runtime_error with the reason when it cannot be opened.
void redirect_stderr(const std::string& path);

// SIGHUP: redirect_stderr(path) again, so that a rotated log file is reopened by name, and log the
// outcome (on failure the old file stays in use). Does nothing for an empty path.
void reopen_log_file(const std::string& path, spdlog::logger& log);

// Gives every option of `app` defined so far an environment variable: `prefix` and the option's
// name in upper case with '_' for '-' (prefix POOLMAP_BROKER_: --heartbeat-ms reads
// POOLMAP_BROKER_HEARTBEAT_MS). Skips --help, --version and options that have a variable already.
void name_environment_variables(CLI::App& app, const std::string& prefix);

class Daemon {
 public:
  // Forks. Returns in the child, which starts a new session with stdin and stdout on /dev/null;
  // the parent never returns (see above). Throws std::runtime_error if fork or pipe fails.
  static Daemon start();
  // Makes the waiting parent print `line` and exit 0. Once.
  void ready(const std::string& line);

  Daemon(Daemon&& other) noexcept;
  Daemon& operator=(Daemon&&) = delete;
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon();

 private:
  explicit Daemon(int notify_fd) : notify_fd_(notify_fd) {}
  int notify_fd_ = -1;
};

// Writes this process's pid to `path` and removes the file at destruction (if it still holds that
// pid). Throws std::runtime_error if the file names a process that is still running (the daemon
// runs already) or cannot be written.
class PidFile {
 public:
  explicit PidFile(std::string path);
  ~PidFile();
  PidFile(const PidFile&) = delete;
  PidFile& operator=(const PidFile&) = delete;

 private:
  std::string path_;
};

}  // namespace poolmap::detail
