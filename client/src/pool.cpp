#include "poolmap/pool.hpp"

#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <unistd.h>

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
#include <thread>
#include <unordered_map>

#include "log.hpp"
#include "process_info.hpp"
#include "poolmap/broker.hpp"
#include "poolmap/cpu_count.hpp"
#include "poolmap/protocol.hpp"
#include "poolmap/worker.hpp"
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

class Pool::Impl {
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

 private:
  struct Job {
    std::uint64_t id = 0;
    std::string task;
    std::string signature;
    std::vector<detail::ChunkRequest> chunks;
    std::uint32_t deadline_ms = 0;
    std::vector<std::optional<zmq::message_t>> payloads;  // sent and not yet answered: kept for resending
    std::vector<std::uint32_t> retries_left;                // task_retries per chunk
    std::size_t next_to_send = 0;
    std::size_t answered = 0;
    std::vector<detail::ChunkResult> results;    // without a sink that keeps them
    std::shared_ptr<detail::ChunkSink> sink;      // takes each chunk's results as they arrive
    std::vector<bool> have;
    std::shared_ptr<detail::FutureCore> core;
    std::optional<Clock::time_point> deadline;  // of the whole job
    std::optional<zmq::message_t> context;      // broadcast context (see contexts_sent_)
    std::uint64_t context_hash = 0;
    std::size_t context_resends = 0;  // chunks the broker answered with kContextMissing
    std::vector<std::uint64_t> submitted;  // per chunk: submits_ when last sent (contexts only)
    std::vector<std::uint32_t> partial;    // per chunk: items counted from CHUNK_PROGRESS (once one came)
    std::size_t total_items = 0;
    std::uint64_t payload_bytes_in_flight = 0;  // of the chunks sent and not yet answered
    std::map<std::size_t, std::uint32_t> rejected;  // per chunk: answers that did not decode (rare)
  };

  void start_embedded();
  void shutdown();  // stops every thread and child started; idempotent
  void io_loop();
  void wake() noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(wake_fd_, &one, sizeof(one));
  }
  void on_message(std::vector<zmq::message_t>& frames);
  void on_result(const proto::ClientResult& result, zmq::message_t& payload);
  void fail_job(std::uint64_t id, JobOutcome outcome);
  // Whether bytes from the broker reached this socket's connection within `window`: a broker whose
  // heartbeats queue behind one large RESULT on a slow link is silent but alive.
  bool bytes_arriving(std::chrono::milliseconds window) const {
    if (!broker_link_) return false;
    const auto since = broker_link_->since_data_received();
    return since && *since < window;
  }
  // A chunk's results did not decode (`why`): tells the broker (REJECT) and sends the chunk again;
  // false once kRejectsPerChunk answers of it were rejected (`why` then says so: the job fails).
  bool run_again_after_bad_result(Job& job, const proto::ClientResult& result, Status& why);
  static constexpr std::uint32_t kRejectsPerChunk = 3;
  void fail_all(const Status& error);
  // The handshake watch reported something: a refusal fails what waits, with the reason.
  void on_handshake_event();
  void finish(std::unique_ptr<Job> job, JobOutcome outcome);  // completes its Futures
  void check_deadlines();
  void send_chunks();
  // Sends again chunks the broker had no room for (kResourceExhausted): one per chunk of ours
  // answered since, so what we hold there stays at its quota, and one per heartbeat interval in
  // any case (room also frees as contexts expire).
  void send_deferred();
  void send_chunk(Job& job, std::size_t index);
  // Sends a message, after the SUBMITs gathered so far (so that messages leave in the order they
  // were made).
  void send(std::vector<zmq::message_t>& frames);
  // Sends the SUBMITs send_chunk() gathered, in one message.
  void flush_submits();
  void send_now(std::vector<zmq::message_t>& frames);
  void open_socket();
  void lost_broker(const std::string& why);

  PoolOptions options_;
  Context context_;
  std::shared_ptr<spdlog::logger> log_;
  std::string endpoint_;
  int wake_fd_ = -1;

  // Embedded mode only.
  std::unique_ptr<Broker> broker_;
  std::thread broker_thread_;
  std::unique_ptr<Supervisor> supervisor_;
  std::thread supervisor_thread_;

  mutable std::mutex mutex_;  // guards everything below up to the I/O thread's own state
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

  // Owned by the I/O thread.
  std::unique_ptr<zmq::socket_t> socket_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Job>> jobs_;
  std::deque<std::uint64_t> send_order_;  // jobs with chunks left to send, round-robin
  std::deque<std::promise<Result<BrokerStatus>>> status_waiting_;
  std::size_t in_flight_ = 0;
  std::uint64_t payload_bytes_in_flight_ = 0;  // the sum of the jobs' payload_bytes_in_flight
  std::size_t workers_seen_ = 0;               // workers_, as this thread last heard it
  // How many chunks may be in flight now (PoolOptions::max_chunks_in_flight).
  std::size_t window() const {
    return options_.max_chunks_in_flight != 0 ? options_.max_chunks_in_flight
                                              : automatic_window(workers_seen_, payload_bytes_in_flight_);
  }
  // Out of the window: the job's chunks in flight are no longer ours to count.
  void forget_in_flight(Job& job) {
    in_flight_ -= job.next_to_send - job.answered;
    payload_bytes_in_flight_ -= job.payload_bytes_in_flight;
    job.payload_bytes_in_flight = 0;
  }
  // What a Welcome or a result says of the workers registered at the broker.
  void heard_workers(std::size_t workers);
  // SUBMIT frames not sent yet ([signature, then a header and a payload frame per chunk]): the
  // chunks sent in one pass of the I/O loop go in one message.
  wire::ChunkBatch submits_out_{Command::kSubmit};
  std::deque<std::pair<std::uint64_t, std::size_t>> deferred_;  // (job, chunk) over the broker's quota
  std::size_t room_ = 0;             // chunks of ours answered since the broker last said it had no room
  Clock::time_point deferred_sent_;  // when a deferred chunk was last sent
  bool quota_logged_ = false;        // said once per Pool that the broker applies backpressure
  bool ever_welcomed_ = false;       // a broker has answered this Pool at least once
  bool unanswered_logged_ = false;   // warned that no broker answers at the endpoint
  Clock::time_point last_sent_;
  Clock::time_point last_heard_;
  std::optional<wire::ConnectionProbe> broker_link_;  // I/O thread: this socket's TCP connection
  // Broadcast contexts the broker has (as far as we know), by hash, with the session_ they were
  // sent in: sent once per broker session, not per job. The broker frees a context no chunk has
  // used for a while and then answers a chunk naming it with kContextMissing: we send it again.
  struct ContextSent {
    std::uint64_t session = 0;
    std::uint64_t at = 0;  // submits_ when sent
  };
  std::unordered_map<std::uint64_t, ContextSent> contexts_sent_;
  std::uint64_t submits_ = 0;  // SUBMITs and CONTEXTs sent, to order them
  bool session_welcomed_ = false;                   // WELCOME received on the current socket
  std::uint64_t session_ = 0;                       // counts sockets opened (broker sessions)
  std::optional<Clock::time_point> broker_lost_at_;  // set while trying to reach the broker again
  std::optional<wire::CurveClientKeys> curve_;        // remote mode with keys
  std::string secret_;                                // remote mode without keys: the per-user secret, or ""
  bool send_failed_ = false;                          // a message of a welcomed session was not sent
  std::optional<wire::HandshakeWatch> handshakes_;    // I/O thread: the current socket's handshakes
  std::optional<Status> refused_;                     // guarded by mutex_: why the broker refused us
  std::optional<Clock::time_point> retry_at_;         // I/O thread: a new socket then (the handshake was refused)
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
    if (!curve_ && !options_.broker.starts_with("inproc://")) secret_ = wire::load_secret(options_.secret_file);
  }
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw Error(ErrorCode::kInternal, "Pool: eventfd failed");
  if (options_.broker.empty()) {
    start_embedded();
  } else {
    endpoint_ = options_.broker;
  }
  try {
    open_socket();
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
                    .worker_password = password},
      context_);
  endpoint_ = broker_->client_endpoint();
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

void Pool::Impl::open_socket() {
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
  if (!endpoint_.starts_with("inproc://")) handshakes_.emplace(context_.impl().zmq, *socket_);
  socket_->connect(endpoint_);
  broker_link_.reset();
  submits_out_.clear();  // for the lost session; every chunk not yet answered is sent after the WELCOME
  auto hello = wire::make(Command::kHello, proto::Hello{detail::host_name(), static_cast<std::uint32_t>(::getpid())});
  // Never blocks: a handshake refused before this line leaves the socket without a pipe.
  (void)wire::send(*socket_, hello, true);
  session_welcomed_ = false;
  ++session_;
  last_sent_ = last_heard_ = Clock::now();
}

void Pool::Impl::lost_broker(const std::string& why) {
  // A new socket is a new peer to the broker: say HELLO, and after its WELCOME send again every
  // chunk not yet answered. Results are matched by (job, chunk), so a chunk answered twice (once
  // before the loss, once after) still reaches the caller once.
  if (!broker_lost_at_) {
    broker_lost_at_ = Clock::now();
    // A broker never reached was not lost: the "no answer" warning has said so already.
    if (ever_welcomed_) log_->warn("lost the broker at {} ({}); reconnecting", endpoint_, why);
  }
  open_socket();
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
  auto job = std::make_unique<Job>();
  job->task = std::move(request.task);
  job->signature = std::move(request.signature);
  job->chunks = std::move(request.chunks);
  job->total_items = request.total_items;
  job->deadline_ms = request.deadline_ms;
  job->payloads.resize(job->chunks.size());
  job->retries_left.assign(job->chunks.size(), request.task_retries);
  job->sink = std::move(request.sink);
  if (!job->sink || !job->sink->keeps()) job->results.resize(job->chunks.size());  // a checking sink keeps nothing
  job->have.assign(job->chunks.size(), false);
  job->core = core;
  if (request.job_deadline.count() > 0) job->deadline = Clock::now() + request.job_deadline;
  if (request.context) {
    // Zero-copy: the message refers to the caller's encoded context and keeps it alive, so the many
    // jobs of one imap with a context share one buffer.
    auto keep = std::make_unique<std::shared_ptr<const Bytes>>(request.context);
    job->context.emplace(const_cast<std::byte*>(request.context->data()), request.context->size(),
                         [](void*, void* hint) { delete static_cast<std::shared_ptr<const Bytes>*>(hint); },
                         keep.get());
    (void)keep.release();  // owned by the message now
    job->context_hash = request.context_hash;
  }
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || closed_) throw Error(ErrorCode::kCancelled, "the Pool is closed: it takes no new work");
    job->id = next_job_++;
    const std::uint64_t id = job->id;
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

void Pool::Impl::finish(std::unique_ptr<Job> job, JobOutcome outcome) {
  job->core->complete(std::move(outcome));
  {
    std::lock_guard lock(mutex_);
    --active_jobs_;
  }
  changed_.notify_all();
}

void Pool::Impl::check_deadlines() {
  const auto now = Clock::now();
  std::vector<std::uint64_t> late;
  for (const auto& [id, job] : jobs_) {
    if (job->deadline && *job->deadline <= now) late.push_back(id);
  }
  for (const std::uint64_t id : late) {
    const std::string task = jobs_.at(id)->task;
    fail_job(id, JobOutcome{{}, Status(ErrorCode::kDeadlineExceeded, "task '" + task + "' did not finish within its deadline"),
                            std::nullopt});
  }
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

void Pool::Impl::send(std::vector<zmq::message_t>& frames) {
  flush_submits();
  send_now(frames);
}

void Pool::Impl::flush_submits() {
  if (submits_out_.empty()) return;
  auto frames = submits_out_.take();
  send_now(frames);
}

void Pool::Impl::send_now(std::vector<zmq::message_t>& frames) {
  // Never blocks: a socket whose handshake failed (a CURVE key the broker refused) has no pipe, and
  // a blocking send would hang this thread and every caller. What could not be sent in a welcomed
  // session is sent again on a new one (every chunk not yet answered is); before the WELCOME only
  // HELLO, heartbeats and status requests go out, which need no resending.
  if (wire::send(*socket_, frames, true)) {
    last_sent_ = Clock::now();
  } else if (session_welcomed_) {
    send_failed_ = true;
  }
}

void Pool::Impl::io_loop() {
  for (;;) {
    // The handshake watch only until the broker welcomes this session (a lost broker means a new
    // socket, watched again): every ZeroMQ socket in a poll costs system calls on every turn.
    void* const watch = handshakes_ && !session_welcomed_ ? handshakes_->socket().handle() : nullptr;
    std::array<zmq::pollitem_t, 3> items{{{socket_->handle(), 0, ZMQ_POLLIN, 0},
                                          {nullptr, wake_fd_, ZMQ_POLLIN, 0},
                                          {watch, -1, ZMQ_POLLIN, 0}}};
    auto wake_at = last_sent_ + options_.heartbeat_interval;
    for (const auto& [id, job] : jobs_) {
      if (job->deadline) wake_at = std::min(wake_at, *job->deadline);
    }
    if (!deferred_.empty()) wake_at = std::min(wake_at, deferred_sent_ + options_.heartbeat_interval);
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
          auto job = std::move(incoming_.front());
          incoming_.pop_front();
          const std::uint64_t id = job->id;
          jobs_.emplace(id, std::move(job));
        }
        lock.unlock();
        fail_all(Status(ErrorCode::kCancelled, "Pool destroyed while a map was running"));
        auto bye = wire::make_empty(Command::kDisconnect);
        (void)wire::send(*socket_, bye, true);
        return;
      }
      while (!incoming_.empty()) {
        auto job = std::move(incoming_.front());
        incoming_.pop_front();
        send_order_.push_back(job->id);
        const std::uint64_t id = job->id;
        jobs_.emplace(id, std::move(job));
      }
      std::deque<std::uint64_t> cancels;
      cancels.swap(cancels_);
      const bool terminate = std::exchange(terminate_, false);
      lock.unlock();
      for (const std::uint64_t id : cancels) {
        fail_job(id, JobOutcome{{}, Status(ErrorCode::kCancelled, "cancelled"), std::nullopt});
      }
      if (terminate) {
        std::vector<std::uint64_t> all;
        for (const auto& [id, job] : jobs_) all.push_back(id);
        for (const std::uint64_t id : all) {
          fail_job(id, JobOutcome{{}, Status(ErrorCode::kCancelled, "the Pool was terminated"), std::nullopt});
        }
      }
      lock.lock();
      while (!status_requests_.empty()) {
        status_waiting_.push_back(std::move(status_requests_.front()));
        status_requests_.pop_front();
        lock.unlock();
        auto request = wire::make_empty(Command::kStatusRequest);
        send(request);
        lock.lock();
      }
    }
    // Only when the poll found the socket readable: a receive that finds nothing costs two system
    // calls (ZeroMQ looks at the socket's command pipe).
    while ((items[0].revents & ZMQ_POLLIN) != 0) {
      auto frames = wire::receive(*socket_);
      if (!frames) break;
      last_heard_ = Clock::now();
      if (!broker_link_ && !frames->empty()) broker_link_ = wire::ConnectionProbe::of(frames->front());
      on_message(*frames);
    }
    if (retry_at_ && Clock::now() >= *retry_at_) open_socket();  // refused: nothing was sent on that socket
    const bool waiting = !jobs_.empty() || !status_waiting_.empty();
    const auto silent = Clock::now() - last_heard_;
    if (!ever_welcomed_ && !unanswered_logged_ && silent > options_.heartbeat_interval) {
      unanswered_logged_ = true;
      log_->warn("no answer from a poolmap broker at {} after {} ms: is one running there, and is this its client "
                 "endpoint (poolmap-broker --clients, port 5555 by default)? Still trying",
                 endpoint_, std::chrono::duration_cast<std::chrono::milliseconds>(silent).count());
    }
    const auto expiry = options_.heartbeat_interval * options_.heartbeat_liveness;
    if (waiting && silent > expiry && !bytes_arriving(expiry)) {
      lost_broker("no word for " + std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(silent).count()) +
                  " ms");
    }
    if (broker_lost_at_ && Clock::now() - *broker_lost_at_ > options_.reconnect_timeout) {
      // Never wait for ever on a broker that is gone.
      if (waiting) {
        fail_all(Status(ErrorCode::kUnavailable, "the poolmap broker at " + endpoint_ + " did not come back within " +
                                                     std::to_string(options_.reconnect_timeout.count()) + " ms"));
      }
      broker_lost_at_ = Clock::now();  // later calls get a full reconnect_timeout of their own
    }
    check_deadlines();
    send_deferred();
    send_chunks();
    flush_submits();
    if (Clock::now() - last_sent_ >= options_.heartbeat_interval) {
      auto beat = wire::make_empty(Command::kHeartbeat);
      send(beat);
      last_sent_ = Clock::now();  // sent or not, the next try is an interval away
    }
    if (send_failed_) {
      send_failed_ = false;
      lost_broker("cannot send to it");
    }
  }
}

void Pool::Impl::send_chunk(Job& job, std::size_t index) {
  if (job.context) {  // the broker needs the context before the chunk
    const auto sent = contexts_sent_.find(job.context_hash);
    if (sent == contexts_sent_.end() || sent->second.session != session_) {
      auto frames = wire::make(Command::kContext, proto::ContextHeader{job.context_hash});
      frames.emplace_back();
      frames.back().copy(*job.context);
      send(frames);
      contexts_sent_[job.context_hash] = ContextSent{session_, ++submits_};
    }
    if (job.submitted.size() != job.chunks.size()) job.submitted.resize(job.chunks.size());
    job.submitted[index] = ++submits_;
  }
  detail::ChunkRequest& chunk = job.chunks[index];
  auto& payload = job.payloads[index];
  if (!payload) payload = wire::to_message(std::move(chunk.payload));
  // The first chunk asks the broker to say when it reaches a worker (Future::running()).
  if (submits_out_.needs_new_message(payload->size())) flush_submits();
  zmq::message_t shared;
  shared.copy(*payload);  // reference-counted: the payload stays here until answered
  submits_out_.add(wire::header_message(proto::Submit{job.id, index, chunk.first_index, chunk.count, job.task,
                                                      job.signature, job.deadline_ms, job.context_hash,
                                                      index == 0 ? proto::kNotifyStarted : 0,
                                                      static_cast<std::uint64_t>(job.total_items)}),
                   std::move(shared));
}

void Pool::Impl::send_deferred() {
  if (!session_welcomed_) return;
  while (!deferred_.empty() && (room_ > 0 || Clock::now() - deferred_sent_ >= options_.heartbeat_interval)) {
    if (room_ > 0) --room_;
    deferred_sent_ = Clock::now();
    const auto [id, index] = deferred_.front();
    deferred_.pop_front();
    const auto job = jobs_.find(id);
    if (job == jobs_.end() || job->second->have[index]) continue;  // ended meanwhile
    send_chunk(*job->second, index);
  }
}

void Pool::Impl::send_chunks() {
  if (!session_welcomed_) return;  // a broker that has not welcomed us would refuse them
  while (in_flight_ < window() && !send_order_.empty()) {
    const std::uint64_t id = send_order_.front();
    send_order_.pop_front();
    const auto found = jobs_.find(id);
    if (found == jobs_.end()) continue;
    Job& job = *found->second;
    if (job.next_to_send >= job.chunks.size()) continue;
    const std::size_t index = job.next_to_send++;
    send_chunk(job, index);
    ++in_flight_;
    const std::uint64_t bytes = job.payloads[index]->size();
    job.payload_bytes_in_flight += bytes;
    payload_bytes_in_flight_ += bytes;
    if (job.next_to_send < job.chunks.size()) send_order_.push_back(id);
  }
}

void Pool::Impl::on_message(std::vector<zmq::message_t>& frames) {
  if (frames.size() < 2) return;
  auto command = proto::parse_signature(wire::view(frames[0]));
  if (!command) {
    log_->warn("ignored a message from the broker: {}", command.status().to_string());
    return;
  }
  const auto header = wire::view(frames[1]);
  switch (command.value()) {
    case Command::kWelcome: {
      auto welcome = proto::decode<proto::Welcome>(header);
      if (!welcome) return;
      {
        std::lock_guard lock(mutex_);
        workers_ = welcome.value().workers;
        welcomed_ = true;
        refused_.reset();
      }
      workers_seen_ = welcome.value().workers;
      changed_.notify_all();
      ever_welcomed_ = true;
      if (!session_welcomed_) {
        session_welcomed_ = true;
        handshakes_.reset();  // welcomed: no more handshakes to explain on this socket
        if (broker_lost_at_) {
          deferred_.clear();  // every unanswered chunk is sent again now
          room_ = 0;
          std::size_t resent = 0;
          for (auto& [id, job] : jobs_) {
            for (std::size_t i = 0; i < job->next_to_send; ++i) {
              if (!job->have[i]) {
                send_chunk(*job, i);
                ++resent;
              }
            }
          }
          log_->warn("reached the broker at {} again after {} ms; resent {} unanswered chunks", endpoint_,
                     std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - *broker_lost_at_).count(),
                     resent);
          broker_lost_at_.reset();
        }
      }
      return;
    }
    case Command::kResult: {  // [signature, then a header and a payload frame for each chunk]
      for (std::size_t i = 1; i < frames.size(); i += 2) {
        auto result = proto::decode<proto::ClientResult>(wire::view(frames[i]));
        if (!result || i + 1 == frames.size()) {
          // Its job cannot be told, so waiting for it could be for ever: fail what is waiting.
          const std::string why = result ? "a RESULT without a payload frame" : result.status().message();
          log_->error("the broker at {} sent a RESULT this client cannot read ({})", endpoint_, why);
          fail_all(Status(ErrorCode::kMalformed, "the poolmap broker at " + endpoint_ +
                                                     " sent a RESULT this client cannot read (" + why +
                                                     "); are the broker, workers and client the same poolmap version?"));
          return;
        }
        on_result(result.value(), frames[i + 1]);
      }
      return;
    }
    case Command::kStarted: {
      auto started = proto::decode<proto::Started>(header);
      if (!started) return;
      const auto job = jobs_.find(started.value().job);
      if (job != jobs_.end()) job->second->core->mark_started();
      return;
    }
    case Command::kChunkProgress: {
      auto progress = proto::decode<proto::ChunkProgress>(header);
      if (!progress) return;
      const auto found = jobs_.find(progress.value().job);
      if (found == jobs_.end()) return;
      Job& job = *found->second;
      const auto chunk = progress.value().chunk;
      if (chunk >= job.chunks.size() || job.have[chunk]) return;
      // Counted now; the chunk's RESULT adds only the rest. Never more than the chunk holds.
      if (job.partial.size() != job.chunks.size()) job.partial.resize(job.chunks.size());
      const std::uint32_t items = std::min(progress.value().items_done, job.chunks[chunk].count);
      if (items > job.partial[chunk]) {
        job.core->add_progress(items - job.partial[chunk], 0);
        job.partial[chunk] = items;
      }
      return;
    }
    case Command::kStatusReply: {
      auto reply = proto::decode<proto::StatusReply>(header);
      if (!reply || status_waiting_.empty()) return;
      BrokerStatus status;
      for (const auto& w : reply.value().workers) {
        BrokerStatus::Worker& worker = status.workers.emplace_back();
        worker.host = w.host;
        worker.pid = w.pid;
        worker.chunks_in_flight = w.in_flight;
        worker.chunks_done = w.chunks_done;
        worker.instance = w.instance;
        worker.supervisor = w.supervisor;
        for (const auto& task : w.tasks) worker.tasks.push_back({task.name, task.signature});
        worker.chunks_failed = w.chunks_failed;
        worker.last_seen = std::chrono::milliseconds(w.last_seen_ms);
        worker.credit = w.credit;
      }
      for (const auto& j : reply.value().jobs) {
        status.jobs.push_back({j.client_host, j.client_pid, j.job, j.task, j.items_total, j.items_done,
                               j.chunks_queued, j.chunks_in_flight, std::chrono::milliseconds(j.age_ms)});
      }
      status.clients = reply.value().clients;
      status.chunks_queued = reply.value().chunks_queued;
      status.chunks_in_flight = reply.value().chunks_in_flight;
      status.chunks_done = reply.value().chunks_done;
      status.chunks_failed = reply.value().chunks_failed;
      status.chunks_redispatched = reply.value().chunks_redispatched;
      status.bad_messages = reply.value().bad_messages;
      status.context_bytes_received = reply.value().context_bytes_received;
      status.context_bytes_sent = reply.value().context_bytes_sent;
      status.context_bytes_held = reply.value().context_bytes_held;
      status_waiting_.front().set_value(Result<BrokerStatus>(std::move(status)));
      status_waiting_.pop_front();
      return;
    }
    case Command::kError: {
      auto error = proto::decode<proto::ErrorReply>(header);
      const std::string text = error ? error.value().message : "unreadable error";
      log_->error("the poolmap broker at {} refused a message: {}", endpoint_, text);
      const Status refused(error ? error.value().code : ErrorCode::kMalformed,
                           "the poolmap broker at " + endpoint_ + " refused this client: " + text);
      if (!session_welcomed_) {  // it refused our HELLO (e.g. --max-clients): calls fail now, not at start_timeout
        {
          std::lock_guard lock(mutex_);
          refused_ = refused;
        }
        changed_.notify_all();
      }
      fail_all(refused);
      return;
    }
    case Command::kDisconnect:
      // The broker is going away, or it does not know us (it restarted): register again.
      lost_broker("it said goodbye or does not know this client");
      return;
    case Command::kHeartbeat:
    default:
      return;
  }
}

void Pool::Impl::heard_workers(std::size_t workers) {
  if (workers == workers_seen_) return;
  workers_seen_ = workers;
  {
    std::lock_guard lock(mutex_);
    workers_ = workers;
  }
  changed_.notify_all();  // wait_for_workers()
}

void Pool::Impl::on_result(const proto::ClientResult& result, zmq::message_t& payload) {
  heard_workers(result.workers);
  const auto found = jobs_.find(result.job);
  if (found == jobs_.end()) return;  // a job that already failed: late answers are ignored
  Job& job = *found->second;
  if (result.chunk >= job.chunks.size() || job.have[result.chunk]) return;  // duplicate
  const proto::Outcome& outcome = result.outcome;
  if (outcome.code == ErrorCode::kResourceExhausted) {
    // The broker holds as much of our work as its per-client quotas allow: keep this chunk (it
    // still counts against our window) and send it again as room frees (send_deferred).
    if (!quota_logged_) {
      quota_logged_ = true;
      log_->info("the broker at {} holds as much of this client's work as its quotas allow; sending the rest as "
                 "earlier chunks are answered ({})",
                 endpoint_, outcome.message);
    }
    if (job.context) {  // the broker did not keep the context either, perhaps: send it with the chunk
      const auto sent = contexts_sent_.find(job.context_hash);
      if (sent != contexts_sent_.end() && sent->second.at < job.submitted[result.chunk]) contexts_sent_.erase(sent);
    }
    if (deferred_.empty()) deferred_sent_ = Clock::now();
    deferred_.emplace_back(result.job, static_cast<std::size_t>(result.chunk));
    room_ = 0;
    return;
  }
  ++room_;
  // The broker had freed the chunk's context (no chunk used it for a while): send both again, a
  // bounded number of times per job (twice per chunk), so a broker that keeps refusing cannot make
  // us loop: past that the job fails with kContextMissing.
  if (outcome.code == ErrorCode::kContextMissing && job.context && job.context_resends < 2 * job.chunks.size() + 8) {
    ++job.context_resends;
    // Send the context again unless that already happened after this chunk was submitted.
    const auto sent = contexts_sent_.find(job.context_hash);
    if (sent != contexts_sent_.end() && sent->second.at < job.submitted[result.chunk]) contexts_sent_.erase(sent);
    send_chunk(job, result.chunk);
    return;
  }
  if (outcome.code == ErrorCode::kTaskFailed && job.retries_left[result.chunk] > 0) {
    --job.retries_left[result.chunk];  // the caller asked for task retries: run the chunk again
    send_chunk(job, result.chunk);
    return;
  }
  if (outcome.code != ErrorCode::kOk) {
    JobOutcome failed;
    failed.error = Status(outcome.code, outcome.message);
    if (outcome.code == ErrorCode::kTaskFailed) {
      failed.task_error = TaskError::Details{job.task, job.chunks[result.chunk].first_index + outcome.failed_offset,
                                             outcome.error_type, outcome.message, outcome.worker_host,
                                             outcome.worker_pid};
    }
    fail_job(result.job, std::move(failed));
    return;
  }
  const detail::ChunkRequest& chunk = job.chunks[result.chunk];
  if (job.sink) {
    // Decoded into the output now (or only checked); the received bytes go at the end of this scope.
    Status decoded = job.sink->take(chunk.first_index, chunk.count, wire::view(payload));
    if (!decoded.is_ok()) {
      if (run_again_after_bad_result(job, result, decoded)) return;
      fail_job(result.job, JobOutcome{{}, std::move(decoded), std::nullopt});
      return;
    }
  }
  if (!job.sink || !job.sink->keeps()) {
    auto owned = std::make_shared<zmq::message_t>(std::move(payload));
    job.results[result.chunk] = detail::ChunkResult{wire::view(*owned), owned, chunk.count};
  }
  --in_flight_;
  const std::uint64_t bytes = job.payloads[result.chunk] ? job.payloads[result.chunk]->size() : 0;
  job.payload_bytes_in_flight -= bytes;
  payload_bytes_in_flight_ -= bytes;
  job.payloads[result.chunk].reset();
  job.have[result.chunk] = true;
  const std::uint32_t reported = job.partial.empty() ? 0 : job.partial[result.chunk];
  job.core->add_progress(job.chunks[result.chunk].count - reported, outcome.compute_us);
  if (++job.answered == job.chunks.size()) {
    auto done = std::move(found->second);
    jobs_.erase(found);
    auto results = std::move(done->results);
    finish(std::move(done), JobOutcome{std::move(results), Status::ok(), std::nullopt});
  }
}

bool Pool::Impl::run_again_after_bad_result(Job& job, const proto::ClientResult& result, Status& why) {
  // Results that do not decode to the chunk's items are the worker's fault, not the caller's: the
  // broker drops that worker, and the chunk runs again elsewhere, kRejectsPerChunk times at most.
  auto reject = wire::make(Command::kReject, proto::Reject{result.job, result.chunk, result.attempt, why.message()});
  send(reject);
  std::uint32_t& rejected = job.rejected[static_cast<std::size_t>(result.chunk)];
  if (++rejected > kRejectsPerChunk) {
    why = Status(ErrorCode::kMalformed, "task '" + job.task + "': " + std::to_string(rejected) +
                                            " workers in a row returned results that do not decode for chunk " +
                                            std::to_string(result.chunk) + "; the last: " + why.message());
    return false;
  }
  log_->warn("a worker returned results for chunk {} of job {} that do not decode ({}); the broker drops it and the "
             "chunk runs again",
             result.chunk, result.job, why.message());
  send_chunk(job, static_cast<std::size_t>(result.chunk));
  return true;
}

void Pool::Impl::fail_job(std::uint64_t id, JobOutcome outcome) {
  const auto found = jobs_.find(id);
  if (found == jobs_.end()) return;
  Job& job = *found->second;
  // Chunks sent but not answered no longer count against the window.
  forget_in_flight(job);
  // Fail fast: the broker drops the job's queued chunks and ignores the running ones' results.
  auto cancel = wire::make(Command::kCancel, proto::Cancel{id});
  send(cancel);
  auto done = std::move(found->second);
  jobs_.erase(found);
  finish(std::move(done), std::move(outcome));
}

void Pool::Impl::on_handshake_event() {
  if (!handshakes_) return;
  const auto failure = handshakes_->failure(endpoint_, curve_.has_value());
  if (!failure) return;
  // A refused key or a mismatched mechanism does not mend itself: say so at once and fail what
  // waits, instead of letting every call run into its timeout. ZeroMQ does not retry a refused
  // handshake: a new socket does, later, so a broker that admits the key after a SIGHUP serves the
  // calls made after that.
  retry_at_ = Clock::now() + wire::kRetryAfterRefusal;
  unanswered_logged_ = true;  // it did answer: with this refusal
  const Status refused(ErrorCode::kUnavailable, *failure);
  bool first = false;
  {
    std::lock_guard lock(mutex_);
    first = !refused_ || refused_->message() != refused.message();
    refused_ = refused;
  }
  changed_.notify_all();
  if (first) log_->error("{}", *failure);
  fail_all(refused);
}

void Pool::Impl::fail_all(const Status& error) {
  for (auto& [id, job] : jobs_) {
    forget_in_flight(*job);
    finish(std::move(job), JobOutcome{{}, error, std::nullopt});
  }
  jobs_.clear();
  send_order_.clear();
  for (auto& waiting : status_waiting_) waiting.set_value(error);
  status_waiting_.clear();
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

}  // namespace poolmap
