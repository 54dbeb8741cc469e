#include "daemon.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include <CLI/CLI.hpp>
#include <spdlog/logger.h>

namespace poolmap::detail {

namespace {
std::string system_error(const std::string& what) { return what + ": " + std::strerror(errno); }

void write_all(int fd, const std::string& bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const auto n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}
}  // namespace

void redirect_stderr(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(system_error("cannot open the log file '" + path + "'"));
  // dup2 replaces fd 2 at once: a line being written goes wholly to the old file or the new one.
  if (fd != STDERR_FILENO && ::dup2(fd, STDERR_FILENO) < 0) {
    const std::string why = system_error("cannot write the log to '" + path + "'");
    ::close(fd);
    throw std::runtime_error(why);
  }
  if (fd != STDERR_FILENO) ::close(fd);
}

void reopen_log_file(const std::string& path, spdlog::logger& log) {
  if (path.empty()) return;
  try {
    redirect_stderr(path);
    log.info("SIGHUP: log file {} reopened", path);
  } catch (const std::exception& e) {
    log.error("SIGHUP: {}; logging on to the old file", e.what());
  }
}

void name_environment_variables(CLI::App& app, const std::string& prefix) {
  for (CLI::Option* option : app.get_options()) {
    const std::string name = option->get_single_name();
    if (name == "help" || name == "version" || !option->get_envname().empty()) continue;
    std::string variable = prefix + name;
    for (char& c : variable) c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    option->envname(variable);
  }
}

Daemon Daemon::start() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error(system_error("--daemon: pipe"));
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(system_error("--daemon: fork"));
  if (pid > 0) {
    // The command's process: wait for the daemon's ready line.
    ::close(fds[1]);
    std::string line;
    char buffer[4096];
    for (;;) {
      const auto n = ::read(fds[0], buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      line.append(buffer, static_cast<std::size_t>(n));
    }
    if (line.empty()) {
      write_all(STDERR_FILENO, "the daemon (pid " + std::to_string(pid) +
                                   ") ended before it was ready; its log file says why\n");
      ::_exit(1);
    }
    write_all(STDOUT_FILENO, line + "\n");
    ::_exit(0);
  }
  ::close(fds[0]);
  ::setsid();  // no controlling terminal: a closed terminal's SIGHUP is not ours
  const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    ::dup2(null, STDIN_FILENO);
    ::dup2(null, STDOUT_FILENO);
    ::close(null);
  }
  return Daemon(fds[1]);
}

void Daemon::ready(const std::string& line) {
  if (notify_fd_ < 0) return;
  write_all(notify_fd_, line);
  ::close(notify_fd_);
  notify_fd_ = -1;
}

Daemon::Daemon(Daemon&& other) noexcept : notify_fd_(other.notify_fd_) { other.notify_fd_ = -1; }

Daemon::~Daemon() {
  if (notify_fd_ >= 0) ::close(notify_fd_);  // never ready: the parent reports the failure
}

PidFile::PidFile(std::string path) : path_(std::move(path)) {
  {
    std::ifstream existing(path_);
    long pid = 0;
    if (existing >> pid && pid > 0 && pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) == 0) {
      throw std::runtime_error("--pidfile " + path_ + " names pid " + std::to_string(pid) +
                               ", which is running: is this daemon running already?");
    }
  }
  const std::string temporary = path_ + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << ::getpid() << '\n';
    if (!out) throw std::runtime_error("cannot write --pidfile " + path_);
  }
  if (::rename(temporary.c_str(), path_.c_str()) != 0) {
    ::unlink(temporary.c_str());
    throw std::runtime_error(system_error("cannot write --pidfile " + path_));
  }
}

PidFile::~PidFile() {
  std::ifstream in(path_);
  long pid = 0;
  if (in >> pid && pid == ::getpid()) ::unlink(path_.c_str());
}

}  // namespace poolmap::detail
