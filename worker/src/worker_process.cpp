#include <dlfcn.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "log.hpp"
#include "poolmap/error.hpp"
#include "poolmap/protocol.hpp"
#include "poolmap/task.hpp"
#include "poolmap/worker.hpp"
#include "wire.hpp"

namespace poolmap {

namespace {
using Clock = std::chrono::steady_clock;
using proto::Command;

// The broker accepts credit up to 1024 (1 running + prefetch).
constexpr std::uint32_t kMaxPrefetch = 1023;

std::string host_name() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof(buffer) - 1) != 0) return "unknown-host";
  return buffer;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ", ") + name;
  return out.empty() ? "none" : out;
}
}  // namespace

class WorkerProcess::Impl {
 public:
  explicit Impl(WorkerOptions options)
      : options_(std::move(options)), host_(host_name()), pid_(static_cast<std::uint32_t>(::getpid())),
        log_(detail::logger("poolmap.worker")) {
    if (options_.broker.empty()) throw Error(ErrorCode::kInvalidArgument, "worker: no broker endpoint given");
    if (options_.heartbeat_interval.count() <= 0 || options_.heartbeat_liveness < 1) {
      throw Error(ErrorCode::kInvalidArgument, "worker: heartbeat interval and liveness must be positive");
    }
    if (options_.prefetch > kMaxPrefetch) {
      throw Error(ErrorCode::kInvalidArgument, "worker: prefetch must be at most " + std::to_string(kMaxPrefetch));
    }
    try {  // reject a malformed endpoint now rather than in a restart loop
      zmq::socket_t probe(options_.context.impl().zmq, zmq::socket_type::dealer);
      probe.set(zmq::sockopt::linger, 0);
      probe.connect(options_.broker);
    } catch (const zmq::error_t& e) {
      throw Error(ErrorCode::kInvalidArgument, "worker: bad broker endpoint '" + options_.broker + "': " + e.what());
    }
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw Error(ErrorCode::kInternal, "worker: eventfd failed");
  }
  ~Impl() { ::close(wake_fd_); }

  void run();
  void stop() noexcept {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    tasks_ready_.notify_all();
    wake_io();
  }

 private:
  struct PendingTask {
    proto::TaskHeader header;
    zmq::message_t payload;
  };
  struct FinishedTask {
    std::uint64_t ticket = 0;
    proto::Outcome outcome;
    Bytes output;
  };

  void wake_io() noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(wake_fd_, &one, sizeof(one));
  }
  void io_loop();
  FinishedTask execute(PendingTask& task) const;
  zmq::socket_t connect(zmq::context_t& context);

  WorkerOptions options_;
  std::string host_;
  std::uint32_t pid_;
  std::shared_ptr<spdlog::logger> log_;
  int wake_fd_ = -1;

  std::mutex mutex_;  // guards tasks_, finished_, stopping_
  std::condition_variable tasks_ready_;
  std::deque<PendingTask> tasks_;
  std::deque<FinishedTask> finished_;
  bool stopping_ = false;
};

zmq::socket_t WorkerProcess::Impl::connect(zmq::context_t& context) {
  zmq::socket_t socket(context, zmq::socket_type::dealer);
  wire::configure(socket, {.high_water_mark = 1000, .linger = std::chrono::milliseconds(500),
                           .max_message_bytes = options_.max_message_bytes},
                  false);
  socket.connect(options_.broker);
  auto ready = wire::make(Command::kReady, proto::Ready{host_, pid_, 1 + options_.prefetch});
  wire::send(socket, ready, false);
  return socket;
}

void WorkerProcess::Impl::io_loop() {
  zmq::context_t& context = options_.context.impl().zmq;
  zmq::socket_t socket;
  try {
    socket = connect(context);
  } catch (const zmq::error_t& e) {
    log_->error("worker cannot connect to {}: {}", options_.broker, e.what());
    stop();
    return;
  }
  log_->info("worker {} pid {} connected to {} (tasks: {})", host_, pid_, options_.broker,
             join(detail::TaskRegistry::instance().names()));
  auto last_heard = Clock::now();
  auto last_sent = Clock::now();
  const auto expiry = options_.heartbeat_interval * options_.heartbeat_liveness;

  for (;;) {
    std::array<zmq::pollitem_t, 2> items{{{socket.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, wake_fd_, ZMQ_POLLIN, 0}}};
    const auto next_beat = last_sent + options_.heartbeat_interval;
    const auto wait = std::max(std::chrono::milliseconds(0),
                               std::chrono::duration_cast<std::chrono::milliseconds>(next_beat - Clock::now()));
    zmq::poll(items.data(), items.size(), wait);

    if ((items[1].revents & ZMQ_POLLIN) != 0) {
      std::uint64_t value = 0;
      [[maybe_unused]] const auto got = ::read(wake_fd_, &value, sizeof(value));
    }
    std::deque<FinishedTask> finished;
    bool stopping = false;
    {
      std::lock_guard lock(mutex_);
      finished.swap(finished_);
      stopping = stopping_;
    }
    for (auto& done : finished) {
      auto frames = wire::make(Command::kWorkerResult, proto::WorkerResult{done.ticket, std::move(done.outcome)});
      frames.push_back(wire::to_message(std::move(done.output)));
      wire::send(socket, frames, false);
      last_sent = Clock::now();
    }
    if (stopping) {
      auto bye = wire::make_empty(Command::kDisconnect);
      (void)wire::send(socket, bye, true);
      return;
    }

    bool forget_tasks = false;
    while (auto frames = wire::receive(socket)) {
      last_heard = Clock::now();
      if (frames->size() < 2) continue;
      auto command = proto::parse_signature(wire::view((*frames)[0]));
      if (!command) {
        log_->warn("worker ignored a message from the broker: {}", command.status().to_string());
        continue;
      }
      if (command.value() == Command::kTask) {
        auto header = proto::decode<proto::TaskHeader>(wire::view((*frames)[1]));
        if (!header) {
          log_->warn("worker ignored a TASK whose header does not decode: {}", header.status().to_string());
          continue;
        }
        if (frames->size() != 3) {  // answer it, so the broker gets its credit and the chunk back
          proto::Outcome outcome{ErrorCode::kMalformed, 0, {}, "TASK without a payload frame", host_, pid_};
          auto reply = wire::make(Command::kWorkerResult, proto::WorkerResult{header.value().ticket, outcome});
          reply.emplace_back();
          wire::send(socket, reply, false);
          continue;
        }
        {
          std::lock_guard lock(mutex_);
          tasks_.push_back(PendingTask{std::move(header.value()), std::move((*frames)[2])});
        }
        tasks_ready_.notify_one();
      } else if (command.value() == Command::kDisconnect) {
        forget_tasks = true;  // the broker does not know us (restarted, or declared us lost)
      } else if (command.value() == Command::kError) {
        auto error = proto::decode<proto::ErrorReply>(wire::view((*frames)[1]));
        log_->warn("broker refused a message: {}", error ? error.value().message : error.status().to_string());
      }
      // kHeartbeat: nothing to do; hearing anything is what counts.
    }

    const auto now = Clock::now();
    if (forget_tasks || now - last_heard > expiry) {
      if (!forget_tasks) {
        log_->warn("worker heard nothing from broker {} for {} ms; registering again", options_.broker,
                   std::chrono::duration_cast<std::chrono::milliseconds>(now - last_heard).count());
      } else {
        log_->info("broker asked worker pid {} to register again", pid_);
      }
      {
        std::lock_guard lock(mutex_);
        tasks_.clear();  // the broker has given these chunks to others
      }
      socket.close();
      socket = connect(context);
      last_heard = last_sent = Clock::now();
      continue;
    }
    if (now - last_sent >= options_.heartbeat_interval) {
      auto beat = wire::make_empty(Command::kHeartbeat);
      (void)wire::send(socket, beat, true);
      last_sent = now;
    }
  }
}

WorkerProcess::Impl::FinishedTask WorkerProcess::Impl::execute(PendingTask& task) const {
  FinishedTask done;
  done.ticket = task.header.ticket;
  done.outcome.worker_host = host_;
  done.outcome.worker_pid = pid_;
  const auto* runner = detail::TaskRegistry::instance().find(task.header.task);
  if (runner == nullptr) {
    done.outcome.code = ErrorCode::kUnknownTask;
    done.outcome.message = "task '" + task.header.task + "' is not registered on worker " + host_ + " pid " +
                           std::to_string(pid_) + " (it has: " + join(detail::TaskRegistry::instance().names()) +
                           ")";
    return done;
  }
  if (runner->signature() != task.header.signature) {
    done.outcome.code = ErrorCode::kSignatureMismatch;
    done.outcome.message = "task '" + task.header.task + "' is " + runner->signature() + " on worker " + host_ +
                           " pid " + std::to_string(pid_) + " but the client called it as " + task.header.signature;
    return done;
  }
  detail::TaskFailure failure;
  const Status status = runner->run(wire::view(task.payload), task.header.count, done.output, failure);
  if (!status.is_ok()) {
    done.output.clear();
    done.outcome.code = status.code();
    done.outcome.message = status.message();
    done.outcome.failed_offset = failure.offset;
    done.outcome.error_type = failure.type;
  }
  return done;
}

void WorkerProcess::Impl::run() {
  std::thread io([this] { io_loop(); });
  for (;;) {
    PendingTask task;
    {
      std::unique_lock lock(mutex_);
      tasks_ready_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
      if (stopping_) break;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    FinishedTask done = execute(task);
    if (done.outcome.code != ErrorCode::kOk) {
      log_->debug("task {} chunk at item {} failed: {}", task.header.task, task.header.first_index,
                  done.outcome.message);
    }
    {
      std::lock_guard lock(mutex_);
      finished_.push_back(std::move(done));
    }
    wake_io();
  }
  io.join();
}

WorkerProcess::WorkerProcess(WorkerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
WorkerProcess::~WorkerProcess() = default;
void WorkerProcess::run() { impl_->run(); }
void WorkerProcess::stop() noexcept { impl_->stop(); }

std::vector<std::string> load_task_library(const std::string& path) {
  const auto before = detail::TaskRegistry::instance().names();
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = ::dlerror();
    throw Error(ErrorCode::kInvalidArgument,
                "cannot load task library '" + path + "': " + (why != nullptr ? why : "unknown dlopen error"));
  }
  // Never dlclose: registered tasks point into the library.
  auto after = detail::TaskRegistry::instance().names();
  std::vector<std::string> added;
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::back_inserter(added));
  return added;
}

}  // namespace poolmap
