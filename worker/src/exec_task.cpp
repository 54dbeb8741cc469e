// The poolmap.exec task (poolmap/exec.hpp): one command per input line, its output captured.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "poolmap/exec.hpp"
#include "poolmap/worker.hpp"

extern char** environ;

namespace poolmap {
namespace {

// The command's arguments with every "{}" replaced by `line`, or `line` added at the end when no
// argument holds one.
std::vector<std::string> substitute(const std::vector<std::string>& command, const std::string& line) {
  std::vector<std::string> argv;
  bool placed = false;
  for (const auto& argument : command) {
    std::string out;
    for (std::size_t at = 0; at < argument.size();) {
      if (argument.compare(at, 2, "{}") == 0) {
        out += line;
        placed = true;
        at += 2;
      } else {
        out += argument[at++];
      }
    }
    argv.push_back(std::move(out));
  }
  if (!placed) argv.push_back(line);
  return argv;
}

class Pipe {
 public:
  Pipe() {
    if (::pipe2(fds_.data(), O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  int read_end() const { return fds_[0]; }
  int write_end() const { return fds_[1]; }
  void close_read() { close_fd(fds_[0]); }
  void close_write() { close_fd(fds_[1]); }

 private:
  static void close_fd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  std::array<int, 2> fds_{-1, -1};
};

ExecResult run_command(const std::vector<std::string>& command, const std::string& line) {
  if (command.empty()) throw std::invalid_argument("poolmap.exec: the command is empty");
  std::vector<std::string> arguments = substitute(command, line);
  std::vector<char*> argv;
  for (auto& argument : arguments) argv.push_back(argument.data());
  argv.push_back(nullptr);

  Pipe out;
  Pipe err;
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&files, out.write_end(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&files, err.write_end(), STDERR_FILENO);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t none;  // the worker blocks the signals it waits for; the command gets the defaults
  sigemptyset(&none);
  sigset_t defaults;
  sigfillset(&defaults);
  posix_spawnattr_setsigmask(&attributes, &none);
  posix_spawnattr_setsigdefault(&attributes, &defaults);
  // No POSIX_SPAWN_SETPGROUP, on purpose: the command, and all it starts, stay in this worker
  // process's process group, which its supervisor kills when it reaps this process, however this
  // process ended (a deadline or abandon ends it with the command still running; SIGKILL gives it
  // no chance to act): see Supervisor's reap() in supervisor.cpp. A group of its own would hide
  // the command from that kill.
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  const int spawned = ::posix_spawnp(&pid, argv[0], &files, &attributes, argv.data(), environ);
  posix_spawnattr_destroy(&attributes);
  posix_spawn_file_actions_destroy(&files);
  if (spawned != 0) return {127, "", "poolmap exec: " + command.front() + ": " + std::strerror(spawned) + "\n"};
  out.close_write();
  err.close_write();

  std::string captured[2];
  std::array<pollfd, 2> polled{{{out.read_end(), POLLIN, 0}, {err.read_end(), POLLIN, 0}}};
  int open_pipes = 2;
  while (open_pipes > 0) {
    if (::poll(polled.data(), polled.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (std::size_t i = 0; i < polled.size(); ++i) {
      if (polled[i].fd < 0 || polled[i].revents == 0) continue;
      char buffer[65536];
      const ssize_t got = ::read(polled[i].fd, buffer, sizeof(buffer));
      if (got > 0) {
        captured[i].append(buffer, static_cast<std::size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        polled[i].fd = -1;  // poll ignores it from now on
        --open_pipes;
      }
    }
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  const std::int32_t code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return {code, std::move(captured[0]), std::move(captured[1])};
}

}  // namespace

void enable_exec_task() {
  static const detail::TaskRegistration registration(exec_task, run_command);
}

}  // namespace poolmap
