#include "process.hpp"

#include "poolmap/pool.hpp"
#include "secret.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <utility>

extern char** environ;  // NOLINT: POSIX

namespace poolmap::test {

namespace {
using Clock = std::chrono::steady_clock;

std::string temp_log_path() {
  static std::atomic<int> counter{0};
  return "/tmp/poolmap-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1)) + ".log";
}

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}
}  // namespace

ChildProcess::ChildProcess(std::vector<std::string> argv, std::vector<std::string> extra_env)
    : stderr_path_(temp_log_path()) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  const int stderr_fd = ::open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  // Everything the child needs is prepared before fork: between fork and exec only
  // async-signal-safe calls are allowed (the test process has threads).
  // A bare program name ("ip", "unshare") is looked up in PATH here, not in the child.
  if (!argv.empty() && argv[0].find('/') == std::string::npos) {
    const char* path = std::getenv("PATH");
    std::string dirs = path != nullptr ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    std::size_t start = 0;
    while (start <= dirs.size()) {
      const std::size_t end = std::min(dirs.find(':', start), dirs.size());
      const std::string candidate = dirs.substr(start, end - start) + "/" + argv[0];
      if (end > start && ::access(candidate.c_str(), X_OK) == 0) {
        argv[0] = candidate;
        break;
      }
      start = end + 1;
    }
  }
  std::vector<char*> args;
  for (auto& arg : argv) args.push_back(arg.data());
  args.push_back(nullptr);
  // An extra entry replaces the inherited one of the same name (getenv() would find the first).
  std::vector<std::string> env_storage;
  auto replaced = [&](const char* entry) {
    for (const auto& extra : extra_env) {
      const auto equals = extra.find('=');
      if (equals != std::string::npos && std::strncmp(entry, extra.data(), equals + 1) == 0) return true;
    }
    return false;
  };
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (!replaced(*entry)) env_storage.emplace_back(*entry);
  }
  for (auto& entry : extra_env) env_storage.push_back(entry);
  std::vector<char*> env;
  for (auto& entry : env_storage) env.push_back(entry.data());
  env.push_back(nullptr);
  const pid_t parent = ::getpid();
  sigset_t none;
  sigemptyset(&none);

  pid_ = ::fork();
  if (pid_ == 0) {
    // The child dies with the test process, even when ctest kills it on a timeout: no daemon
    // started by a test outlives it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(pipe_fds[1], STDOUT_FILENO);
    if (stderr_fd >= 0) ::dup2(stderr_fd, STDERR_FILENO);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // start with no blocked signals
    ::execve(args[0], args.data(), env.data());
    ::_exit(127);
  }
  const int fork_errno = errno;
  ::close(pipe_fds[1]);
  if (stderr_fd >= 0) ::close(stderr_fd);
  if (null_fd >= 0) ::close(null_fd);
  if (pid_ < 0) {
    ::close(pipe_fds[0]);
    throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(fork_errno));
  }
  stdout_fd_ = pipe_fds[0];
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(other.pid_),
      stdout_fd_(other.stdout_fd_),
      buffer_(std::move(other.buffer_)),
      stderr_path_(std::move(other.stderr_path_)),
      reaped_(other.reaped_) {
  other.pid_ = -1;
  other.stdout_fd_ = -1;
  other.reaped_ = true;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !reaped_) {
    if (!signal_and_wait(SIGTERM, 5s)) signal_and_wait(SIGKILL, 5s);
  }
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
  // POOLMAP_TEST_KEEP_LOGS=1 keeps the daemons' logs in /tmp, to read after a failure.
  if (!stderr_path_.empty() && std::getenv("POOLMAP_TEST_KEEP_LOGS") == nullptr) ::unlink(stderr_path_.c_str());
}

std::optional<std::string> ChildProcess::read_line(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    const auto newline = buffer_.find('\n');
    if (newline != std::string::npos) {
      std::string line = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      return line;
    }
    pollfd fd{stdout_fd_, POLLIN, 0};
    if (::poll(&fd, 1, remaining_ms(deadline)) <= 0) return std::nullopt;
    char chunk[4096];
    const ssize_t n = ::read(stdout_fd_, chunk, sizeof(chunk));
    if (n <= 0) return std::nullopt;
    buffer_.append(chunk, static_cast<std::size_t>(n));
  }
}

std::string ChildProcess::read_all(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    pollfd fd{stdout_fd_, POLLIN, 0};
    if (::poll(&fd, 1, remaining_ms(deadline)) <= 0) break;
    char chunk[4096];
    const ssize_t n = ::read(stdout_fd_, chunk, sizeof(chunk));
    if (n <= 0) break;
    buffer_.append(chunk, static_cast<std::size_t>(n));
  }
  return std::exchange(buffer_, {});
}

std::optional<int> ChildProcess::wait(std::chrono::milliseconds timeout) {
  if (reaped_) return std::nullopt;
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t done = ::waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      reaped_ = true;
      return status;
    }
    if (done < 0) {
      reaped_ = true;
      return std::nullopt;
    }
    if (Clock::now() > deadline) return std::nullopt;
    struct timespec pause{0, 5'000'000};
    ::nanosleep(&pause, nullptr);
  }
}

std::optional<int> ChildProcess::signal_and_wait(int signo, std::chrono::milliseconds timeout) {
  if (reaped_) return std::nullopt;
  ::kill(pid_, signo);
  return wait(timeout);
}

std::string ChildProcess::stderr_text() const {
  std::ifstream in(stderr_path_);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

bool process_running(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  const auto after_name = line.rfind(')');  // "PID (COMM) STATE ...": COMM may hold anything
  return after_name != std::string::npos && after_name + 2 < line.size() && line[after_name + 2] != 'Z' &&
         line[after_name + 2] != 'X';
}

std::string user_secret() { return poolmap::detail::load_user_secret({}); }

std::chrono::milliseconds heartbeat() {
  const char* text = std::getenv("POOLMAP_TEST_HEARTBEAT_MS");
  const long ms = text != nullptr ? std::strtol(text, nullptr, 10) : 0;
  return std::chrono::milliseconds(ms > 0 ? ms : 100);
}

std::string broker_binary() { return POOLMAP_TEST_BROKER_BIN; }
std::string worker_binary() { return POOLMAP_TEST_WORKER_BIN; }
std::string cli_binary() { return POOLMAP_TEST_CLI_BIN; }
std::string test_tasks_library() { return POOLMAP_TEST_TASKS_LIB; }
std::string test_client_binary() { return POOLMAP_TEST_CLIENT_BIN; }
std::string other_tasks_library() { return POOLMAP_TEST_OTHER_TASKS_LIB; }
std::string variant_tasks_library() { return POOLMAP_TEST_VARIANT_TASKS_LIB; }
std::string empty_tasks_library() { return POOLMAP_TEST_EMPTY_TASKS_LIB; }

Cluster::Cluster(ClusterOptions options) : options_(std::move(options)) {
  start_broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
  if (options_.workers > 0) add_workers(options_.workers);
}

void Cluster::start_broker(const std::string& clients, const std::string& workers) {
  std::vector<std::string> argv{broker_binary(), "--clients", clients, "--workers", workers, "--heartbeat-ms",
                                std::to_string(options_.heartbeat_ms), "--liveness", std::to_string(options_.liveness),
                                "--log-level", "debug"};
  argv.insert(argv.end(), options_.broker_args.begin(), options_.broker_args.end());
  broker_.reset();
  broker_.emplace(std::move(argv));
  const auto line = broker_->read_line(10s);
  if (!line) throw std::runtime_error("broker printed no ready line; stderr:\n" + broker_->stderr_text());
  // "poolmap-broker ready clients=<c> workers=<w>"
  const auto at_clients = line->find("clients=");
  const auto at_workers = line->find(" workers=");
  if (at_clients == std::string::npos || at_workers == std::string::npos) {
    throw std::runtime_error("unexpected broker ready line: " + *line);
  }
  client_endpoint_ = line->substr(at_clients + 8, at_workers - at_clients - 8);
  worker_endpoint_ = line->substr(at_workers + 9, line->find(' ', at_workers + 9) - (at_workers + 9));
  if (const auto at_http = line->find(" http="); at_http != std::string::npos) {
    http_url_ = line->substr(at_http + 6, line->find(' ', at_http + 6) - (at_http + 6));
  }
}

HttpResponse http_get(const std::string& url, const std::vector<std::string>& headers,
                      std::chrono::milliseconds timeout) {
  constexpr std::string_view kScheme = "http://";
  if (!url.starts_with(kScheme)) throw std::runtime_error("http_get: not an http:// URL: " + url);
  const auto slash = url.find('/', kScheme.size());
  const std::string authority = url.substr(kScheme.size(), slash - kScheme.size());
  const std::string path = slash == std::string::npos ? "/" : url.substr(slash);
  const auto colon = authority.rfind(':');
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(std::stoi(authority.substr(colon + 1))));
  if (colon == std::string::npos || ::inet_pton(AF_INET, authority.substr(0, colon).c_str(), &address.sin_addr) != 1) {
    throw std::runtime_error("http_get: expected http://IPv4:PORT/...: " + url);
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("http_get: socket failed");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  const timeval wait{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof(wait));
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    throw std::runtime_error("http_get: cannot connect to " + authority + ": " + std::strerror(errno));
  }
  std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + authority + "\r\nConnection: close\r\n";
  for (const std::string& header : headers) request += header + "\r\n";
  request += "\r\n";
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    throw std::runtime_error("http_get: cannot send the request to " + authority);
  }
  std::string answer;
  char buffer[65536];
  while (std::chrono::steady_clock::now() < deadline) {
    const ssize_t got = ::recv(fd, buffer, sizeof(buffer), 0);
    if (got == 0) break;  // the server closed: the whole answer is here
    if (got < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("http_get: no whole answer from " + url + ": " + std::strerror(errno));
    }
    answer.append(buffer, static_cast<std::size_t>(got));
  }
  const auto end_of_headers = answer.find("\r\n\r\n");
  if (!answer.starts_with("HTTP/1.") || end_of_headers == std::string::npos) {
    throw std::runtime_error("http_get: not an HTTP answer from " + url + ": " + answer.substr(0, 200));
  }
  HttpResponse response;
  response.status = std::stoi(answer.substr(answer.find(' ') + 1, 3));
  response.headers = answer.substr(0, end_of_headers);
  response.body = answer.substr(end_of_headers + 4);
  return response;
}

void Cluster::restart_broker() {
  broker_->signal_and_wait(SIGKILL, 5s);
  start_broker_again();
}

void Cluster::start_broker_again() { start_broker(client_endpoint_, worker_endpoint_); }

std::vector<pid_t> Cluster::worker_pids(std::size_t index) {
  const pid_t parent = workers_.at(index).pid();
  std::ifstream in("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children");
  std::vector<pid_t> out;
  pid_t pid = 0;
  while (in >> pid) out.push_back(pid);
  return out;
}

ChildProcess& Cluster::add_workers(int processes, const std::string& tasks_library,
                                   const std::vector<std::string>& extra_args) {
  std::vector<std::string> argv{worker_binary(), "--broker",      worker_endpoint_,
                                "--processes",   std::to_string(processes), "--heartbeat-ms",
                                std::to_string(options_.heartbeat_ms),      "--liveness",
                                std::to_string(options_.liveness),          "--log-level",
                                "debug"};
  if (!tasks_library.empty()) {
    argv.push_back("--tasks");
    argv.push_back(tasks_library);
  } else if (options_.load_test_tasks) {
    argv.push_back("--tasks");
    argv.push_back(test_tasks_library());
  }
  argv.insert(argv.end(), options_.worker_args.begin(), options_.worker_args.end());
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  workers_.emplace_back(std::move(argv));
  return workers_.back();
}

Cluster::~Cluster() {
  workers_.clear();  // supervisors first: they stop and reap their worker processes
  broker_.reset();
}

int listen_on_loopback(std::string& endpoint, int backlog) {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::listen(listener, backlog) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    const int error = errno;
    ::close(listener);
    throw std::runtime_error(std::string("cannot listen on loopback: ") + std::strerror(error));
  }
  endpoint = "tcp://127.0.0.1:" + std::to_string(ntohs(address.sin_port));
  return listener;
}

struct Relay::Impl {
  int listener = -1;
  int wake[2] = {-1, -1};
  sockaddr_in target{};
  std::mutex mutex;
  bool cut = false;
  std::vector<std::pair<int, int>> links;  // accepted, outgoing
  std::atomic<bool> quit{false};
  std::thread thread;

  void close_links() {
    for (auto [a, b] : links) {
      ::close(a);
      ::close(b);
    }
    links.clear();
  }
  void poke() { [[maybe_unused]] const auto n = ::write(wake[1], "x", 1); }
  void run() {
    std::vector<char> buffer(1 << 16);
    while (!quit.load()) {
      std::vector<pollfd> fds{{listener, POLLIN, 0}, {wake[0], POLLIN, 0}};
      {
        std::lock_guard lock(mutex);
        for (auto [a, b] : links) {
          fds.push_back({a, POLLIN, 0});
          fds.push_back({b, POLLIN, 0});
        }
      }
      if (::poll(fds.data(), fds.size(), 100) <= 0) continue;
      if ((fds[1].revents & POLLIN) != 0) {
        char drain[64];
        [[maybe_unused]] const auto n = ::read(wake[0], drain, sizeof(drain));
      }
      std::lock_guard lock(mutex);
      if ((fds[0].revents & POLLIN) != 0) {
        const int accepted = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        if (accepted >= 0) {
          const int outgoing = cut ? -1 : ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
          if (outgoing >= 0 && ::connect(outgoing, reinterpret_cast<const sockaddr*>(&target), sizeof(target)) == 0) {
            links.emplace_back(accepted, outgoing);
          } else {
            if (outgoing >= 0) ::close(outgoing);
            ::close(accepted);
          }
        }
      }
      std::vector<std::pair<int, int>> dead;
      for (std::size_t i = 2; i + 1 < fds.size(); i += 2) {
        for (int side = 0; side < 2; ++side) {
          const pollfd& from = fds[i + side];
          if (from.revents == 0) continue;
          const int to = fds[i + 1 - side].fd;
          const auto got = ::read(from.fd, buffer.data(), buffer.size());
          bool ok = got > 0;
          for (ssize_t sent = 0; ok && sent < got;) {
            const auto n = ::send(to, buffer.data() + sent, static_cast<std::size_t>(got - sent), MSG_NOSIGNAL);
            ok = n > 0;
            sent += std::max<ssize_t>(n, 0);
          }
          if (!ok) dead.emplace_back(fds[i].fd, fds[i + 1].fd);
        }
      }
      for (auto link : dead) {
        const auto found = std::find(links.begin(), links.end(), link);
        if (found == links.end()) continue;
        ::close(link.first);
        ::close(link.second);
        links.erase(found);
      }
    }
  }
};

Relay::Relay(const std::string& target) : impl_(std::make_unique<Impl>()) {
  const auto colon = target.rfind(':');
  impl_->target.sin_family = AF_INET;
  impl_->target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  impl_->target.sin_port = htons(static_cast<std::uint16_t>(std::stoi(target.substr(colon + 1))));
  impl_->listener = listen_on_loopback(endpoint_);
  if (::pipe2(impl_->wake, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error("pipe2 failed");
  impl_->thread = std::thread([this] { impl_->run(); });
}

Relay::~Relay() {
  impl_->quit.store(true);
  impl_->poke();
  impl_->thread.join();
  impl_->close_links();
  ::close(impl_->listener);
  ::close(impl_->wake[0]);
  ::close(impl_->wake[1]);
}

void Relay::cut() {
  std::lock_guard lock(impl_->mutex);
  impl_->cut = true;
  impl_->close_links();
  impl_->poke();
}

void Relay::heal() {
  std::lock_guard lock(impl_->mutex);
  impl_->cut = false;
}

BrokerPair::BrokerPair(ClusterOptions options) : options_(std::move(options)) {
  // Each peer link is bound first on a free port, then the relays to them are made, then each
  // broker is started again with its peer's relay (the first start only learns the endpoints).
  // Between the two starts another process may take one of those ports (tests run side by side):
  // then all of it again, on new ports.
  for (int attempt = 1;; ++attempt) {
    try {
      for (int i = 0; i < 2; ++i) {
        start_broker(i, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
        brokers_[i].reset();
      }
      for (int i = 0; i < 2; ++i) to_[i].emplace(ha_[i]);
      for (int i = 0; i < 2; ++i) start(i);
      return;
    } catch (const std::runtime_error& e) {
      if (attempt == 3 || std::string_view(e.what()).find("Address already in use") == std::string_view::npos) throw;
      for (auto& broker : brokers_) broker.reset();
      for (auto& relay : to_) relay.reset();
    }
  }
}

BrokerPair::~BrokerPair() {
  workers_.clear();
  for (auto& broker : brokers_) broker.reset();
}

void BrokerPair::start_broker(int i, const std::string& clients, const std::string& workers, const std::string& ha) {
  const std::string peer = to_[1 - i] ? to_[1 - i]->endpoint() : "tcp://127.0.0.1:1";
  std::vector<std::string> argv{broker_binary(), "--clients", clients, "--workers", workers, "--heartbeat-ms",
                                std::to_string(options_.heartbeat_ms), "--liveness", std::to_string(options_.liveness),
                                "--log-level", "debug", "--ha", i == 0 ? "primary" : "backup", "--ha-bind", ha,
                                "--ha-peer", peer};
  argv.insert(argv.end(), options_.broker_args.begin(), options_.broker_args.end());
  brokers_[i].emplace(std::move(argv));
  const auto line = brokers_[i]->read_line(10s);
  if (!line) throw std::runtime_error("broker printed no ready line; stderr:\n" + brokers_[i]->stderr_text());
  // "poolmap-broker ready clients=<c> workers=<w> ha=<h>"
  const auto field = [&](const std::string& name) {
    const auto at = line->find(" " + name + "=");
    if (at == std::string::npos) throw std::runtime_error("unexpected broker ready line: " + *line);
    const auto from = at + name.size() + 2;
    return line->substr(from, line->find(' ', from) - from);
  };
  client_[i] = field("clients");
  worker_[i] = field("workers");
  ha_[i] = field("ha");
}

void BrokerPair::kill(int i) {
  if (brokers_[i]) brokers_[i]->signal_and_wait(SIGKILL, 5s);
  brokers_[i].reset();
}

void BrokerPair::start(int i) { start_broker(i, client_[i], worker_[i], ha_[i]); }

ChildProcess& BrokerPair::add_workers(int processes, std::vector<std::string> extra_env,
                                      std::vector<std::string> extra_args) {
  std::vector<std::string> argv{worker_binary(), "--broker",      worker_endpoints(),
                                "--processes",   std::to_string(processes), "--heartbeat-ms",
                                std::to_string(options_.heartbeat_ms),      "--liveness",
                                std::to_string(options_.liveness),          "--log-level",
                                "debug",         "--tasks",                 test_tasks_library()};
  argv.insert(argv.end(), options_.worker_args.begin(), options_.worker_args.end());
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  workers_.emplace_back(std::move(argv), std::move(extra_env));
  return workers_.back();
}

std::string BrokerPair::role(int i, std::chrono::milliseconds timeout) {
  if (!brokers_[i]) return "";
  // `poolmap status` in a process of its own, which the test can always end: a Pool made and
  // destroyed here, many times a second against a passive broker under load, once blocked for good
  // in its ZeroMQ context's termination (see the note of issue 25).
  std::vector<std::string> argv{cli_binary(), "status", "--json", "--broker", client_[i], "--timeout-ms",
                                std::to_string(timeout.count())};
  if (!probe_curve_secret.empty()) argv.insert(argv.end(), {"--curve-secret", probe_curve_secret});
  if (!probe_broker_key.empty()) argv.insert(argv.end(), {"--broker-key", probe_broker_key});
  try {
    ChildProcess cli(std::move(argv));
    const auto line = cli.read_line(timeout + 5s);
    if (!line) return "";
    const std::string key = "\"role\":\"";
    const auto at = line->find(key);
    if (at == std::string::npos) return "";
    return line->substr(at + key.size(), line->find('"', at + key.size()) - at - key.size());
  } catch (const std::exception&) {
    return "";
  }
}

int BrokerPair::active(std::chrono::milliseconds timeout) {
  for (int i = 0; i < 2; ++i) {
    if (role(i, timeout) == "active") return i;
  }
  return -1;
}

void BrokerPair::cut_peer_link() {
  for (auto& relay : to_) relay->cut();
}

void BrokerPair::heal_peer_link() {
  for (auto& relay : to_) relay->heal();
}

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "poolmap-test-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace poolmap::test
