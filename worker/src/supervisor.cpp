#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>

#include "log.hpp"
#include "process_info.hpp"
#include "poolmap/error.hpp"
#include "poolmap/protocol.hpp"
#include "poolmap/worker.hpp"
#include "progress_slot.hpp"
#include "wire.hpp"

extern char** environ;  // NOLINT: POSIX

namespace poolmap {

namespace {
using Clock = std::chrono::steady_clock;

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = ::sigdescr_np(WTERMSIG(status));
    return "signal " + std::to_string(WTERMSIG(status)) + " (" + (name != nullptr ? name : "?") + ")";
  }
  return "status " + std::to_string(status);
}

}  // namespace

class Supervisor::Impl {
 public:
  explicit Impl(SupervisorOptions options) : options_(std::move(options)), log_(detail::logger("poolmap.supervisor")) {
    if (options_.executable.empty()) throw Error(ErrorCode::kInvalidArgument, "supervisor: no executable given");
    if (options_.processes == 0) throw Error(ErrorCode::kInvalidArgument, "supervisor: processes must be >= 1");
    if (options_.arguments.empty()) options_.arguments.push_back(options_.executable);
    if (!options_.report_endpoint.empty()) report_endpoints_ = wire::split_endpoints(options_.report_endpoint);
    curve_ = wire::load_curve_client(options_.curve_secret_file, options_.broker_key_file);
    const bool all_inproc = std::all_of(report_endpoints_.begin(), report_endpoints_.end(),
                                        [](const std::string& endpoint) { return endpoint.starts_with("inproc://"); });
    if (!curve_ && options_.report_password.empty() && !all_inproc) {
      secret_ = wire::load_secret(options_.secret_file);
    }
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw Error(ErrorCode::kInternal, "supervisor: eventfd failed");
    build_environment();
  }
  ~Impl() {
    stop_all();
    ::close(wake_fd_);
  }

  void run();
  void stop() noexcept {
    stopping_.store(true);
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(wake_fd_, &one, sizeof(one));
  }
  std::vector<int> pids() const {
    std::lock_guard lock(mutex_);
    std::vector<int> out;
    for (const auto& [pid, child] : children_) out.push_back(pid);
    return out;
  }
  std::size_t exits() const { return exits_.load(); }

 private:
  struct Child {
    int pidfd = -1;  // -1 where pidfd_open is not available: then run() polls
    std::uint64_t instance = 0;  // the id it registers with (given through kInstanceVariable)
    Clock::time_point started;
    detail::ProgressSlot progress;  // the chunk it runs, read when it dies
  };
  struct Slot {
    Clock::time_point restart_at;
    std::chrono::milliseconds backoff;
  };

  void build_environment() {
    std::map<std::string, std::string> env;
    for (char** entry = environ; *entry != nullptr; ++entry) {
      const std::string text(*entry);
      const auto eq = text.find('=');
      if (eq != std::string::npos) env[text.substr(0, eq)] = text.substr(eq + 1);
    }
    // Worker processes receive and encode chunk after chunk: huge pages make their fresh buffers
    // cheap (docs/BENCHMARKS.md, "Fresh pages"), unless GLIBC_TUNABLES says otherwise.
    const auto tunables = env.find("GLIBC_TUNABLES");
    env["GLIBC_TUNABLES"] =
        detail::glibc_tunables_with_huge_pages(tunables == env.end() ? nullptr : tunables->second.c_str());
    for (const auto& [name, value] : options_.environment) env[name] = value;
    for (const auto& [name, value] : env) environment_.push_back(name + "=" + value);
  }

  std::optional<int> spawn() {
    std::vector<char*> argv;
    for (auto& arg : options_.arguments) argv.push_back(arg.data());
    argv.push_back(nullptr);
    detail::ProgressSlot progress = detail::ProgressSlot::create();
    std::string progress_variable;
    const std::uint64_t instance = detail::new_instance_id();
    std::string instance_variable = std::string(detail::kInstanceVariable) + "=" + detail::full_id(instance);
    std::string supervisor_variable = std::string(detail::kSupervisorVariable) + "=" + detail::full_id(instance_);
    std::vector<char*> envp;
    for (auto& entry : environment_) envp.push_back(entry.data());
    envp.push_back(instance_variable.data());
    envp.push_back(supervisor_variable.data());
    posix_spawn_file_actions_t files;
    posix_spawn_file_actions_init(&files);
    if (progress.valid()) {
      progress_variable = std::string(detail::kProgressFdVariable) + "=" + std::to_string(progress.fd());
      envp.push_back(progress_variable.data());
      posix_spawn_file_actions_adddup2(&files, progress.fd(), progress.fd());  // same number: inherited
    }
    envp.push_back(nullptr);
    // The child starts with no blocked signals and default dispositions, whatever this process
    // (which may wait for signals in a thread of its own) has set.
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    sigset_t none;
    sigemptyset(&none);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (const int signo : {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGUSR1, SIGUSR2}) sigaddset(&defaults, signo);
    posix_spawnattr_setsigmask(&attributes, &none);
    posix_spawnattr_setsigdefault(&attributes, &defaults);
    // Each child leads a process group of its own, which whatever it starts (the commands of
    // `poolmap exec`, and what they start) inherits; reap() kills that group when the child has
    // ended, however it ended (see there).
    posix_spawnattr_setpgroup(&attributes, 0);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
    pid_t pid = 0;
    const int rc =
        ::posix_spawn(&pid, options_.executable.c_str(), &files, &attributes, argv.data(), envp.data());
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&files);
    if (rc != 0) {
      log_->error("cannot start {}: {}", options_.executable, std::strerror(rc));
      return std::nullopt;
    }
    Child child;
    child.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    child.instance = instance;
    child.started = Clock::now();
    child.progress = std::move(progress);
    std::lock_guard lock(mutex_);
    children_.emplace(pid, std::move(child));
    return pid;
  }

  // Whether child `pid` has ended; if so, kills what is left in its process group and reaps it,
  // setting `status` (nullopt: it was reaped elsewhere, status unknown).
  //
  // A child that ends leaves behind what it started: a `poolmap exec` command cut off by a
  // deadline (the worker process answers for the item and _Exit()s: a thread cannot be stopped),
  // by an abandon or stop timeout, or running when the child was killed with SIGKILL (by stop_all()
  // or by a user), and what that command started (`sh -c 'x & y'`). They would run on as orphans.
  // They are all in the child's process group (spawn() made the child its leader), so one
  // kill(-pid, SIGKILL) ends them, from here, because a child killed with SIGKILL runs no code of
  // its own. It is done before the child is reaped: until then the zombie holds its pid, so the
  // group id cannot have passed to an unrelated process. The other tools fall short:
  // PR_SET_PDEATHSIG acts on the direct child only (the shell, not what it started) and cannot be
  // set through posix_spawn; PR_SET_CHILD_SUBREAPER only changes who reaps orphans and kills
  // nothing (and would change the user's process, for an embedded Pool). What the group kill
  // misses: a command that leaves the group (setsid, setpgid, a shell's job control), and a child
  // killed with SIGKILL after this supervisor is gone (one that ends by itself then kills its group
  // itself: say_goodbye_and_exit in worker_process.cpp).
  bool ended(pid_t pid, std::optional<int>& status) {
    siginfo_t info{};
    if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
      if (errno != ECHILD) return false;  // EINTR: next time
      status.reset();                     // reaped by someone else: its pid may be reused, no kill
      return true;
    }
    if (info.si_pid != pid) return false;  // still running
    ::kill(-pid, SIGKILL);
    int raw = 0;
    pid_t reaped = -1;
    while ((reaped = ::waitpid(pid, &raw, 0)) < 0 && errno == EINTR) {
    }
    status = reaped == pid ? std::optional<int>(raw) : std::nullopt;
    return true;
  }

  // Reaps children that exited; returns how many.
  std::size_t reap() {
    std::size_t reaped = 0;
    std::lock_guard lock(mutex_);  // also guards exit_reports_
    for (auto it = children_.begin(); it != children_.end();) {
      std::optional<int> wait_status;
      if (ended(it->first, wait_status)) {
        const int status = wait_status.value_or(0);
        const pid_t pid = it->first;
        const Child& child = it->second;
        const bool exited = wait_status.has_value();
        const bool quick = Clock::now() - child.started < std::chrono::seconds(1);
        // Status 0: it ended by itself (max tasks per child) after saying goodbye to the broker, a
        // planned exit that is replaced at once. The deadline status: it answered for the stuck
        // item first. Anything else is a crash, which the broker blames on the chunk it ran.
        const bool planned = exited && WIFEXITED(status) && WEXITSTATUS(status) == 0;
        const bool deadline = exited && WIFEXITED(status) && WEXITSTATUS(status) == detail::kDeadlineExitCode;
        const bool silence = exited && WIFEXITED(status) && WEXITSTATUS(status) == detail::kSilenceExitCode;
        if (!stopping_.load()) {
          const std::string cause = exited ? describe_exit(status) : "ended (status unknown)";
          if (planned) {
            log_->info("worker process {} [{}] finished its work (max tasks per child); starting a fresh one", pid,
                       detail::short_id(child.instance));
          } else if (silence) {
            log_->warn("worker process {} [{}] heard no broker for {} liveness periods and ended itself; starting a "
                       "fresh one",
                       pid, detail::short_id(child.instance), detail::kSilentPeriodsBeforeExit);
          } else {
            log_->warn("worker process {} [{}] exited ({}); restarting", pid, detail::short_id(child.instance), cause);
          }
          const bool crashed =
              exited && !planned && !deadline && !silence && (WIFSIGNALED(status) || WIFEXITED(status));
          exit_reports_.push_back({host_, static_cast<std::uint32_t>(pid), child.instance, instance_, crashed,
                                   "ended with " + cause, child.progress.load()});
        }
        if (child.pidfd >= 0) ::close(child.pidfd);
        it = children_.erase(it);
        ++reaped;
        exits_.fetch_add(1);
        // A child that dies right after starting (bad task library, no broker address) backs off
        // exponentially instead of spinning; a planned exit is replaced at once.
        last_backoff_ = planned ? std::chrono::milliseconds(0)
                        : quick ? std::clamp(last_backoff_ * 2, options_.restart_backoff, options_.restart_backoff_max)
                                : options_.restart_backoff;
        restarts_.push_back({Clock::now() + last_backoff_, last_backoff_});
      } else {
        ++it;
      }
    }
    return reaped;
  }

  void stop_all() {
    std::vector<pid_t> pids;
    {
      std::lock_guard lock(mutex_);
      for (const auto& [pid, child] : children_) pids.push_back(pid);
    }
    if (pids.empty()) return;
    for (const pid_t pid : pids) ::kill(pid, SIGTERM);
    const auto deadline = Clock::now() + options_.stop_grace;
    while (Clock::now() < deadline) {
      reap();
      std::lock_guard lock(mutex_);
      if (children_.empty()) break;
      ::poll(nullptr, 0, 10);
    }
    {
      std::lock_guard lock(mutex_);
      for (const auto& [pid, child] : children_) ::kill(pid, SIGKILL);
    }
    while (true) {
      reap();
      std::lock_guard lock(mutex_);
      if (children_.empty()) break;
      ::poll(nullptr, 0, 5);
    }
  }

  SupervisorOptions options_;
  std::shared_ptr<spdlog::logger> log_;
  std::vector<std::string> environment_;
  int wake_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<std::size_t> exits_{0};
  mutable std::mutex mutex_;  // guards children_
  std::map<pid_t, Child> children_;
  std::vector<Slot> restarts_;  // run() thread only
  std::string host_ = detail::host_name();
  std::uint64_t instance_ = detail::new_instance_id();  // this supervisor, named in its exit reports
  std::vector<proto::WorkerExited> exit_reports_;  // guarded by mutex_; sent by run()
  std::vector<std::string> report_endpoints_;      // options_.report_endpoint split (a pair: both)
  std::optional<wire::CurveClientKeys> curve_;     // for the report connections
  std::string secret_;                             // or the per-user secret ("" = none)
  std::chrono::milliseconds last_backoff_{0};  // guarded by mutex_
};

void Supervisor::Impl::run() {
  // A socket per broker endpoint (two for a pair: only the active broker acts on a report, and
  // which one that is the supervisor does not know), owned by this thread, for exit reports.
  std::optional<Context> report_context;
  std::vector<zmq::socket_t> reporters;
  if (!report_endpoints_.empty()) report_context.emplace();
  for (const auto& endpoint : report_endpoints_) {
    zmq::socket_t reporter(report_context->impl().zmq, zmq::socket_type::dealer);
    wire::configure(reporter, {.high_water_mark = 1000, .linger = std::chrono::milliseconds(200)}, false);
    try {
      if (curve_) wire::apply_curve_client(reporter, *curve_);
      if (!options_.report_password.empty()) wire::apply_password(reporter, options_.report_password);
      if (!secret_.empty()) wire::apply_secret(reporter, secret_);
      reporter.connect(endpoint);
      reporters.push_back(std::move(reporter));
    } catch (const zmq::error_t& e) {
      log_->error("supervisor cannot report exits to '{}': {}", endpoint, e.what());
    }
  }
  auto send_reports = [&] {
    std::vector<proto::WorkerExited> reports;
    {
      std::lock_guard lock(mutex_);
      reports.swap(exit_reports_);
    }
    for (auto& reporter : reporters) {
      for (const auto& report : reports) {
        auto frames = wire::make(proto::Command::kWorkerExited, report);
        (void)wire::send(reporter, frames, true);
      }
    }
  };
  for (std::size_t i = 0; i < options_.processes && !stopping_.load(); ++i) {
    if (!spawn()) restarts_.push_back({Clock::now() + options_.restart_backoff, options_.restart_backoff});
  }
  log_->info("supervisor [{}] started {} worker processes of {}", detail::short_id(instance_), options_.processes,
             options_.executable);
  while (!stopping_.load()) {
    std::vector<pollfd> fds;
    fds.push_back({wake_fd_, POLLIN, 0});
    bool all_have_pidfd = true;
    {
      std::lock_guard lock(mutex_);
      for (const auto& [pid, child] : children_) {
        if (child.pidfd >= 0) {
          fds.push_back({child.pidfd, POLLIN, 0});
        } else {
          all_have_pidfd = false;
        }
      }
    }
    int timeout_ms = all_have_pidfd ? 1000 : 50;
    for (const auto& slot : restarts_) {
      const auto until = std::chrono::duration_cast<std::chrono::milliseconds>(slot.restart_at - Clock::now());
      timeout_ms = std::clamp(static_cast<int>(until.count()), 0, timeout_ms);
    }
    ::poll(fds.data(), fds.size(), timeout_ms);
    if (stopping_.load()) break;
    reap();
    send_reports();
    const auto now = Clock::now();
    for (auto it = restarts_.begin(); it != restarts_.end();) {
      if (it->restart_at <= now) {
        const auto backoff = it->backoff;
        it = restarts_.erase(it);
        if (!spawn()) restarts_.push_back({now + backoff, std::min(backoff * 2, options_.restart_backoff_max)});
        break;  // iterator invalidated by push_back; the rest are handled next round
      }
      ++it;
    }
  }
  stop_all();
  log_->info("supervisor stopped");
}

Supervisor::Supervisor(SupervisorOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Supervisor::~Supervisor() = default;
void Supervisor::run() { impl_->run(); }
void Supervisor::stop() noexcept { impl_->stop(); }
std::vector<int> Supervisor::pids() const { return impl_->pids(); }
std::size_t Supervisor::exits() const { return impl_->exits(); }

}  // namespace poolmap
