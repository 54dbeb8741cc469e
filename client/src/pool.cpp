#include "poolmap/pool.hpp"

#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>

#include "log.hpp"
#include "process_info.hpp"
#include "poolmap/broker.hpp"
#include "poolmap/cpu_count.hpp"
#include "poolmap/protocol.hpp"
#include "poolmap/worker.hpp"
#include "session.hpp"
#include "wire.hpp"

namespace poolmap {

namespace {
using Clock = std::chrono::steady_clock;
using proto::Command;

// Environment of a worker copy started by an embedded Pool.
constexpr const char* kWorkerEndpointVar = "POOLMAP_EMBEDDED_WORKER";
constexpr const char* kWorkerPasswordVar = "POOLMAP_EMBEDDED_PASSWORD";  // removed from the environment once read
constexpr const char* kParentPidVar = "POOLMAP_PARENT_PID";
constexpr const char* kHeartbeatVar = "POOLMAP_HEARTBEAT_MS";
constexpr const char* kLivenessVar = "POOLMAP_LIVENESS";
constexpr const char* kMaxTasksVar = "POOLMAP_MAX_TASKS_PER_CHILD";
constexpr const char* kMaxMessageVar = "POOLMAP_MAX_MESSAGE_BYTES";
constexpr std::int64_t kMinMessageBytes = 4096;  // room for any header
constexpr const char* kInitArgsVar = "POOLMAP_INIT_ARGS";  // separated by kInitArgsSeparator
constexpr char kInitArgsSeparator = '\x1f';

// argv recorded by init(); guarded by its mutex.
struct InitState {
  std::mutex mutex;
  bool called = false;
  std::vector<std::string> argv;
};
InitState& init_state() {
  static InitState state;
  return state;
}

long env_number(const char* name, long fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr) return fallback;
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  return (end != text && *end == '\0' && value > 0) ? value : fallback;
}

// 32 random bytes from the kernel, as hex: the password of an embedded Pool's worker socket.
std::string random_password() {
  std::array<unsigned char, 32> bytes{};
  std::size_t filled = 0;
  while (filled < bytes.size()) {
    const auto got = ::getrandom(bytes.data() + filled, bytes.size() - filled, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorCode::kInternal, std::string("embedded pool: getrandom failed: ") + std::strerror(errno));
    }
    filled += static_cast<std::size_t>(got);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string text;
  for (const unsigned char byte : bytes) {
    text += kHex[byte >> 4];
    text += kHex[byte & 15];
  }
  return text;
}

[[noreturn]] void run_embedded_worker(const char* endpoint) {
  const auto parent = static_cast<pid_t>(env_number(kParentPidVar, 0));
  const char* given_password = std::getenv(kWorkerPasswordVar);
  const std::string password = given_password == nullptr ? "" : given_password;
  ::unsetenv(kWorkerPasswordVar);  // not passed on to whatever the tasks start
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // die with the Pool's process
  if (parent != 0 && ::getppid() != parent) std::_Exit(0);
  try {
    std::vector<std::string> init_args;
    if (const char* joined = std::getenv(kInitArgsVar); joined != nullptr && *joined != '\0') {
      std::string text(joined);
      std::size_t start = 0;
      for (std::size_t at = text.find(kInitArgsSeparator); at != std::string::npos;
           start = at + 1, at = text.find(kInitArgsSeparator, start)) {
        init_args.push_back(text.substr(start, at - start));
      }
      init_args.push_back(text.substr(start));
    }
    WorkerProcess worker({.broker = endpoint,
                          .heartbeat_interval = std::chrono::milliseconds(env_number(kHeartbeatVar, 1000)),
                          .heartbeat_liveness = static_cast<int>(env_number(kLivenessVar, 3)),
                          .max_message_bytes = static_cast<std::int64_t>(env_number(kMaxMessageVar, 64L << 20)),
                          .max_tasks_per_child = static_cast<std::uint64_t>(env_number(kMaxTasksVar, 0)),
                          .init_args = init_args,
                          .broker_password = password});
    worker.run();  // until SIGTERM, or max tasks per child
  } catch (const std::exception& e) {
    detail::logger("poolmap.worker")->critical("embedded worker failed: {}", e.what());
    std::_Exit(3);
  }
  std::_Exit(0);
}
}  // namespace

void init(int argc, char** argv) {
  if (const char* endpoint = std::getenv(kWorkerEndpointVar)) run_embedded_worker(endpoint);
  InitState& state = init_state();
  std::lock_guard lock(state.mutex);
  state.called = true;
  state.argv.assign(argv, argv + argc);
}

using detail::JobOutcome;

class Pool::Impl final : private detail::ClientSession::Port {
 public:
  explicit Impl(PoolOptions options);
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  std::shared_ptr<detail::FutureCore> start(detail::JobRequest job);
  bool cancel(std::uint64_t id);
  void close();
  void join();
  void terminate();
  std::size_t workers() const {
    std::lock_guard lock(mutex_);
    return workers_;
  }
  bool wait_for_workers(std::size_t count, std::chrono::milliseconds timeout) const {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return workers_ >= count; });
  }
  std::size_t workers_for_chunking() const;
  std::size_t max_payload_bytes() const noexcept { return static_cast<std::size_t>(options_.max_message_bytes); }
  BrokerStatus status(std::chrono::milliseconds timeout);
  std::string dashboard_url() const { return broker_ ? broker_->http_url() : std::string(); }

 private:
  using Job = detail::ClientSession::Job;

  void start_embedded();
  void shutdown();  // stops every thread and child started; idempotent
  // The I/O thread: the socket, the caller's requests, and the session (detail::ClientSession)
  // that decides what to send.
  void io_loop();
  void wake() noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(wake_fd_, &one, sizeof(one));
  }
  // The handshake watch reported something: a refusal fails what waits, with the reason.
  void on_handshake_event();

  // detail::ClientSession::Port, on the I/O thread.
  bool send(std::vector<zmq::message_t>& frames) override;
  void open_connection(const std::string& endpoint) override;
  bool bytes_arriving(std::chrono::milliseconds window) override {
    if (!broker_link_) return false;
    const auto since = broker_link_->since_data_received();
    return since && *since < window;
  }
  void job_ended(std::unique_ptr<Job> job, JobOutcome outcome) override;  // completes its Futures
  void heard_workers(std::size_t workers, bool welcome) override;
  void refused(const Status& why) override;

  PoolOptions options_;
  Context context_;
  std::shared_ptr<spdlog::logger> log_;
  std::string endpoint_;  // as given: one endpoint, or the list of a pair
  std::vector<std::string> endpoints_;
  std::string connected_to_;  // the one of endpoints_ the socket connects to
  int wake_fd_ = -1;

  // Embedded mode: the broker and the worker supervisor, each on a thread of its own.
  std::unique_ptr<Broker> broker_;
  std::thread broker_thread_;
  std::unique_ptr<Supervisor> supervisor_;
  std::thread supervisor_thread_;

  // Shared between the caller's threads and the I/O thread, guarded by mutex_.
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::size_t workers_ = 0;
  bool welcomed_ = false;  // heard the broker at least once
  bool stopping_ = false;
  std::deque<std::unique_ptr<Job>> incoming_;
  std::deque<std::uint64_t> cancels_;  // jobs to cancel
  bool closed_ = false;                // close(): no new jobs
  bool terminate_ = false;             // terminate(): cancel every job
  std::size_t active_jobs_ = 0;        // started and not ended; join() waits for 0
  std::deque<std::promise<Result<BrokerStatus>>> status_requests_;
  std::uint64_t next_job_ = 1;
  std::optional<Status> refused_;  // why the broker refused us

  // I/O thread only.
  std::unique_ptr<zmq::socket_t> socket_;
  std::optional<detail::ClientSession> session_;
  std::optional<wire::ConnectionProbe> broker_link_;  // this socket's TCP connection
  std::optional<wire::CurveClientKeys> curve_;        // remote mode with keys
  std::string secret_;                                // remote mode without keys: the per-user secret, or ""
  std::optional<wire::HandshakeWatch> handshakes_;    // the current socket's handshakes
  std::optional<Clock::time_point> retry_at_;         // a new socket then (the handshake was refused)
  std::thread io_thread_;
};

Pool::Impl::Impl(PoolOptions options)
    : options_(std::move(options)), log_(detail::logger("poolmap.client")) {
  if (options_.heartbeat_interval.count() <= 0 || options_.heartbeat_liveness < 1 ||
      options_.max_message_bytes < kMinMessageBytes) {
    throw Error(ErrorCode::kInvalidArgument,
                "Pool options: heartbeat_interval and heartbeat_liveness must be positive, "
                "max_message_bytes at least " + std::to_string(kMinMessageBytes));
  }
  if (options_.reuse_freed_memory) detail::keep_freed_memory();
  if (options_.broker.empty()) {
    if (const char* from_environment = std::getenv("POOLMAP_BROKER"); from_environment != nullptr) {
      options_.broker = from_environment;  // set by the PBS/Slurm launch scripts
    }
  }
  if (!options_.broker.empty()) {
    for (auto [option, variable] : {std::pair{&options_.curve_secret_file, "POOLMAP_CURVE_SECRET"},
                                    std::pair{&options_.broker_key_file, "POOLMAP_BROKER_KEY"}}) {
      const char* from_environment = std::getenv(variable);
      if (option->empty() && from_environment != nullptr) *option = from_environment;
    }
    curve_ = wire::load_curve_client(options_.curve_secret_file, options_.broker_key_file);
    endpoints_ = wire::split_endpoints(options_.broker);
    const bool all_inproc = std::all_of(endpoints_.begin(), endpoints_.end(),
                                        [](const std::string& endpoint) { return endpoint.starts_with("inproc://"); });
    if (!curve_ && !all_inproc) secret_ = wire::load_secret(options_.secret_file);
  }
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw Error(ErrorCode::kInternal, "Pool: eventfd failed");
  if (options_.broker.empty()) {
    start_embedded();
  } else {
    endpoint_ = options_.broker;
  }
  std::random_device random;
  std::uint64_t session_id = 0;
  while (session_id == 0) session_id = static_cast<std::uint64_t>(random()) << 32 | random();
  session_.emplace(detail::ClientSession::Options{.heartbeat_interval = options_.heartbeat_interval,
                                                 .heartbeat_liveness = options_.heartbeat_liveness,
                                                 .reconnect_timeout = options_.reconnect_timeout,
                                                 .max_chunks_in_flight = options_.max_chunks_in_flight,
                                                 .endpoint = endpoint_,
                                                 .endpoints = endpoints_,
                                                 .hello = proto::Hello{detail::host_name(),
                                                                       static_cast<std::uint32_t>(::getpid()),
                                                                       session_id, 0, 0}},
                   static_cast<detail::ClientSession::Port&>(*this), log_);
  try {
    session_->start(Clock::now());
  } catch (const zmq::error_t& e) {
    shutdown();
    throw Error(ErrorCode::kInvalidArgument, "Pool: bad broker endpoint '" + endpoint_ + "': " + e.what());
  }
  io_thread_ = std::thread([this] { io_loop(); });

  if (broker_ != nullptr) {
    const std::size_t wanted = options_.processes;
    if (!wait_for_workers(wanted, options_.start_timeout)) {
      const std::size_t got = workers();
      shutdown();  // the destructor does not run for a constructor that throws
      throw Error(ErrorCode::kUnavailable, "embedded Pool: only " + std::to_string(got) + " of " +
                                               std::to_string(wanted) + " worker processes registered within " +
                                               std::to_string(options_.start_timeout.count()) + " ms");
    }
  }
}

void Pool::Impl::start_embedded() {
  std::vector<std::string> argv;
  {
    InitState& state = init_state();
    std::lock_guard lock(state.mutex);
    if (!state.called) {
      throw Error(ErrorCode::kInvalidArgument,
                  "poolmap::Pool without a broker address starts worker copies of this program, which needs "
                  "poolmap::init(argc, argv) as the first line of main(); add it, or pass PoolOptions::broker");
    }
    argv = state.argv;
  }
  if (std::getenv(kWorkerEndpointVar) != nullptr) {
    throw Error(ErrorCode::kInvalidArgument,
                "poolmap::Pool created inside an embedded worker process: poolmap::init(argc, argv) must run "
                "before anything else in main()");
  }
  if (options_.dashboard.empty()) {
    if (const char* from_environment = std::getenv("POOLMAP_DASHBOARD"); from_environment != nullptr) {
      options_.dashboard = from_environment;
    }
  }
  if (options_.processes == 0) {
    const auto detected = detect_worker_count();
    options_.processes = detected.count;
    log_->info("embedded pool: {} workers decided by {} ({})", detected.count, detected.source, detected.detail);
  }
  // The workers' loopback port is open to every local user: only the worker copies, given this
  // password in their environment (which only this user can read), can register there.
  const std::string password = random_password();
  static std::atomic<std::uint64_t> pool_number{0};
  broker_ = std::make_unique<Broker>(
      BrokerOptions{.client_endpoint = "inproc://poolmap-pool-" + std::to_string(pool_number.fetch_add(1)),
                    .worker_endpoint = "tcp://127.0.0.1:*",
                    .heartbeat_interval = options_.heartbeat_interval,
                    .heartbeat_liveness = options_.heartbeat_liveness,
                    .max_message_bytes = options_.max_message_bytes,
                    .worker_password = password,
                    .http_address = options_.dashboard},
      context_);
  if (!broker_->http_url().empty()) log_->info("dashboard at {}", broker_->http_url());
  endpoint_ = broker_->client_endpoint();
  endpoints_ = {endpoint_};
  broker_thread_ = std::thread([this] { broker_->run(); });

  std::vector<std::pair<std::string, std::string>> environment{
      {kWorkerEndpointVar, broker_->worker_endpoint()},
      {kParentPidVar, std::to_string(::getpid())},
      {kHeartbeatVar, std::to_string(options_.heartbeat_interval.count())},
      {kLivenessVar, std::to_string(options_.heartbeat_liveness)},
      {kMaxTasksVar, std::to_string(options_.max_tasks_per_child)},
      {kMaxMessageVar, std::to_string(options_.max_message_bytes)},
      {kWorkerPasswordVar, password}};
  if (!options_.init_args.empty()) {
    std::string joined;
    for (const auto& arg : options_.init_args) joined += (joined.empty() ? "" : std::string(1, kInitArgsSeparator)) + arg;
    environment.emplace_back(kInitArgsVar, joined);
  }
  for (const char* name : {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}) {
    if (std::getenv(name) == nullptr) environment.emplace_back(name, "1");
  }
  const std::string executable = detail::self_executable();
  supervisor_ = std::make_unique<Supervisor>(SupervisorOptions{.executable = executable,
                                                               .arguments = argv,
                                                               .environment = environment,
                                                               .processes = options_.processes,
                                                               .stop_grace = std::chrono::milliseconds(2000),
                                                               .report_endpoint = broker_->worker_endpoint(),
                                                               .report_password = password});
  supervisor_thread_ = std::thread([this] { supervisor_->run(); });
}

Pool::Impl::~Impl() { shutdown(); }

void Pool::Impl::shutdown() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  if (io_thread_.joinable()) {
    wake();
    io_thread_.join();
  }
  handshakes_.reset();  // before its socket closes (see HandshakeWatch)
  socket_.reset();
  if (supervisor_thread_.joinable()) {
    supervisor_->stop();
    supervisor_thread_.join();
  }
  if (broker_thread_.joinable()) {
    broker_->stop();
    broker_thread_.join();
  }
  supervisor_.reset();
  broker_.reset();
  if (wake_fd_ >= 0) {
    ::close(wake_fd_);
    wake_fd_ = -1;
  }
}

void Pool::Impl::open_connection(const std::string& endpoint) {
  connected_to_ = endpoint;
  if (socket_) socket_->set(zmq::sockopt::linger, 0);  // what is queued for a lost broker is resent anyway
  handshakes_.reset();  // before its socket closes (see HandshakeWatch)
  socket_ = std::make_unique<zmq::socket_t>(context_.impl().zmq, zmq::socket_type::dealer);
  wire::configure(*socket_,
                  {.high_water_mark = 10000,
                   .linger = std::chrono::milliseconds(200),
                   .max_message_bytes = options_.max_message_bytes},
                  false);
  socket_->set(zmq::sockopt::reconnect_ivl, 100);
  socket_->set(zmq::sockopt::reconnect_ivl_max, 1000);
  if (curve_) wire::apply_curve_client(*socket_, *curve_);
  if (!secret_.empty()) wire::apply_secret(*socket_, secret_);
  retry_at_.reset();
  if (!endpoint.starts_with("inproc://")) handshakes_.emplace(context_.impl().zmq, *socket_);
  socket_->connect(endpoint);
  broker_link_.reset();
}

bool Pool::Impl::send(std::vector<zmq::message_t>& frames) { return wire::send(*socket_, frames, true); }

void Pool::Impl::heard_workers(std::size_t workers, bool welcome) {
  {
    std::lock_guard lock(mutex_);
    workers_ = workers;
    if (welcome) {
      welcomed_ = true;
      refused_.reset();
    }
  }
  changed_.notify_all();  // wait_for_workers()
  if (welcome) handshakes_.reset();  // welcomed: no more handshakes to explain on this socket
}

void Pool::Impl::refused(const Status& why) {
  {
    std::lock_guard lock(mutex_);
    refused_ = why;
  }
  changed_.notify_all();
}

std::size_t Pool::Impl::workers_for_chunking() const {
  std::unique_lock lock(mutex_);
  if (!changed_.wait_for(lock, options_.start_timeout, [&] { return welcomed_ || refused_; })) {
    throw Error(ErrorCode::kUnavailable, "no answer from the poolmap broker at " + endpoint_ + " within " +
                                             std::to_string(options_.start_timeout.count()) + " ms");
  }
  if (!welcomed_ && refused_) throw Error(*refused_);
  return workers_;
}

std::shared_ptr<detail::FutureCore> Pool::Impl::start(detail::JobRequest request) {
  auto core = std::make_shared<detail::FutureCore>();
  core->task = request.task;
  core->total_items = request.total_items;
  if (request.chunks.empty()) {
    core->complete(JobOutcome{{}, Status::ok(), std::nullopt});
    return core;
  }
  // Every path (map, imap, submit, apply) ends here: nothing too large for a message leaves.
  const std::size_t limit = max_payload_bytes();
  if (request.context && request.context->size() > limit) {
    throw Error(ErrorCode::kInvalidArgument,
                "the broadcast context encodes to " + std::to_string(request.context->size()) +
                    " bytes, more than max_message_bytes (" + std::to_string(limit) +
                    "): raise PoolOptions::max_message_bytes and the daemons' --max-message-bytes together");
  }
  for (const auto& chunk : request.chunks) {
    if (chunk.payload.size() > limit) throw detail::item_too_large(chunk.first_index, chunk.payload.size(), limit);
  }
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || closed_) throw Error(ErrorCode::kCancelled, "the Pool is closed: it takes no new work");
    const std::uint64_t id = next_job_++;
    core->job_id = id;
    if (request.stream == detail::kStartStream) request.stream = id;
    auto job = detail::ClientSession::make_job(std::move(request), id, core, Clock::now());
    core->request_cancel = [this, id] { cancel(id); };
    ++active_jobs_;
    incoming_.push_back(std::move(job));
  }
  wake();
  return core;
}

bool Pool::Impl::cancel(std::uint64_t id) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return false;
    cancels_.push_back(id);
  }
  wake();
  return true;
}

void Pool::Impl::close() {
  std::lock_guard lock(mutex_);
  closed_ = true;
}

void Pool::Impl::join() {
  std::unique_lock lock(mutex_);
  if (!closed_) throw Error(ErrorCode::kInvalidArgument, "Pool::join() needs close() or terminate() first");
  changed_.wait(lock, [this] { return active_jobs_ == 0; });
}

void Pool::Impl::terminate() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    terminate_ = true;
  }
  wake();
}

void Pool::Impl::job_ended(std::unique_ptr<Job> job, JobOutcome outcome) {
  job->core->complete(std::move(outcome));
  {
    std::lock_guard lock(mutex_);
    --active_jobs_;
  }
  changed_.notify_all();
}

BrokerStatus Pool::Impl::status(std::chrono::milliseconds timeout) {
  std::promise<Result<BrokerStatus>> promise;
  auto future = promise.get_future();
  {
    std::lock_guard lock(mutex_);
    if (refused_) throw Error(*refused_);
    status_requests_.push_back(std::move(promise));
  }
  wake();
  if (future.wait_for(timeout) != std::future_status::ready) {
    throw Error(ErrorCode::kUnavailable, "no status from the poolmap broker at " + endpoint_ + " within " +
                                             std::to_string(timeout.count()) + " ms");
  }
  Result<BrokerStatus> status = future.get();
  if (!status) throw Error(status.status());
  return std::move(status).value();
}

void Pool::Impl::io_loop() {
  detail::ClientSession& session = *session_;
  for (;;) {
    // The handshake watch only until the broker welcomes this session (a lost broker means a new
    // socket, watched again): every ZeroMQ socket in a poll costs system calls on every turn.
    void* const watch = handshakes_ && !session.welcomed() ? handshakes_->socket().handle() : nullptr;
    std::array<zmq::pollitem_t, 3> items{{{socket_->handle(), 0, ZMQ_POLLIN, 0},
                                          {nullptr, wake_fd_, ZMQ_POLLIN, 0},
                                          {watch, -1, ZMQ_POLLIN, 0}}};
    auto wake_at = session.next_pass();
    if (retry_at_) wake_at = std::min(wake_at, *retry_at_);
    const auto wait = std::max(std::chrono::milliseconds(0),
                               std::chrono::ceil<std::chrono::milliseconds>(wake_at - Clock::now()));
    zmq::poll(items.data(), items.size(), wait);
    if ((items[2].revents & ZMQ_POLLIN) != 0) on_handshake_event();
    if ((items[1].revents & ZMQ_POLLIN) != 0) {
      std::uint64_t value = 0;
      [[maybe_unused]] const auto got = ::read(wake_fd_, &value, sizeof(value));
    }
    {
      std::unique_lock lock(mutex_);
      if (stopping_) {
        while (!incoming_.empty()) {  // complete them too: nothing may wait on a stopped Pool
          session.add_job(std::move(incoming_.front()));
          incoming_.pop_front();
        }
        lock.unlock();
        session.fail_all(Status(ErrorCode::kCancelled, "Pool destroyed while a map was running"));
        session.goodbye();
        return;
      }
      while (!incoming_.empty()) {
        session.add_job(std::move(incoming_.front()));
        incoming_.pop_front();
      }
      std::deque<std::uint64_t> cancels;
      cancels.swap(cancels_);
      const bool terminate = std::exchange(terminate_, false);
      lock.unlock();
      for (const std::uint64_t id : cancels) {
        session.fail_job(id, JobOutcome{{}, Status(ErrorCode::kCancelled, "cancelled"), std::nullopt});
      }
      if (terminate) {
        for (const std::uint64_t id : session.job_ids()) {
          session.fail_job(id, JobOutcome{{}, Status(ErrorCode::kCancelled, "the Pool was terminated"), std::nullopt});
        }
      }
      lock.lock();
      while (!status_requests_.empty()) {
        auto request = std::move(status_requests_.front());
        status_requests_.pop_front();
        lock.unlock();
        session.request_status(std::move(request));
        lock.lock();
      }
    }
    // Only when the poll found the socket readable: a receive that finds nothing costs two system
    // calls (ZeroMQ looks at the socket's command pipe).
    while ((items[0].revents & ZMQ_POLLIN) != 0) {
      auto frames = wire::receive(*socket_);
      if (!frames) break;
      if (!broker_link_ && !frames->empty()) broker_link_ = wire::ConnectionProbe::of(frames->front());
      session.on_message(Clock::now(), *frames);
    }
    if (retry_at_ && Clock::now() >= *retry_at_) session.reconnect(Clock::now());  // refused: nothing was sent on that socket
    session.pass(Clock::now());
  }
}

void Pool::Impl::on_handshake_event() {
  if (!handshakes_) return;
  const auto failure = handshakes_->failure(connected_to_, curve_.has_value());
  if (!failure) return;
  // A refused key or a mismatched mechanism does not mend itself: say so at once and fail what
  // waits, instead of letting every call run into its timeout. ZeroMQ does not retry a refused
  // handshake: a new socket does, later, so a broker that admits the key after a SIGHUP serves the
  // calls made after that.
  retry_at_ = Clock::now() + wire::kRetryAfterRefusal;
  session_->answered_by_refusal();  // it did answer: with this refusal
  const Status refusal(ErrorCode::kUnavailable, *failure);
  bool first = false;
  {
    std::lock_guard lock(mutex_);
    first = !refused_ || refused_->message() != refusal.message();
    refused_ = refusal;
  }
  changed_.notify_all();
  if (first) log_->error("{}", *failure);
  session_->fail_all(refusal);
}

Pool::Pool() : Pool(PoolOptions{}) {}
Pool::Pool(PoolOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Pool::~Pool() = default;
std::shared_ptr<detail::FutureCore> Pool::start(detail::JobRequest job) { return impl_->start(std::move(job)); }
void Pool::log_debug(const std::string& line) const { detail::logger("poolmap.client")->debug("{}", line); }
void Pool::close() { impl_->close(); }
void Pool::join() { impl_->join(); }
void Pool::terminate() { impl_->terminate(); }
std::size_t Pool::workers_for_chunking() const { return impl_->workers_for_chunking(); }
std::size_t Pool::max_payload_bytes() const noexcept { return impl_->max_payload_bytes(); }
std::size_t Pool::workers() const { return impl_->workers(); }
bool Pool::wait_for_workers(std::size_t count, std::chrono::milliseconds timeout) const {
  return impl_->wait_for_workers(count, timeout);
}
BrokerStatus Pool::status(std::chrono::milliseconds timeout) const { return impl_->status(timeout); }
std::string Pool::dashboard_url() const { return impl_->dashboard_url(); }

}  // namespace poolmap
