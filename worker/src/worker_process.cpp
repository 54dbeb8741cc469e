#include <dlfcn.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

#include "log.hpp"
#include "process_info.hpp"
#include "poolmap/error.hpp"
#include "poolmap/protocol.hpp"
#include "poolmap/task.hpp"
#include "poolmap/worker.hpp"
#include "progress_slot.hpp"
#include "wire.hpp"

namespace poolmap {

namespace {
using Clock = std::chrono::steady_clock;
using proto::Command;

// The broker accepts credit up to proto::kMaxCredit (1 running + prefetch).
constexpr std::uint32_t kMaxPrefetch = proto::kMaxCredit - 1;
// Adaptive prefetch (WorkerOptions::prefetch unset): the work held beyond the running chunk.
constexpr auto kAdaptiveHold = std::chrono::microseconds(2000);
// A chunk of a task whose last kQuickStreak chunks each ran ok in less than kRunHereAtMost (and in
// less than a twentieth of the heartbeat interval) runs on the I/O thread when the task thread is
// idle and the I/O thread has not yet spent kRunHereAtMost on the chunks of the same TASK: a call
// then crosses two threads fewer, a batch of quick chunks none (see WorkerProcess::Impl::run_here).
constexpr auto kRunHereAtMost = std::chrono::microseconds(500);
constexpr std::uint32_t kQuickStreak = 8;
constexpr double kAdaptiveHoldUs = 2000;
constexpr double kAdaptiveHoldBytes = 16 << 20;
constexpr std::uint32_t kMaxAdaptivePrefetch = 256;
constexpr std::size_t kContextCacheSize = 4;

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ", ") + name;
  return out.empty() ? "none" : out;
}
}  // namespace

class WorkerProcess::Impl {
 public:
  explicit Impl(WorkerOptions options)
      : options_(std::move(options)),
        host_(detail::host_name()),
        pid_(static_cast<std::uint32_t>(::getpid())),
        instance_(detail::instance_from_environment(detail::kInstanceVariable)),
        supervisor_(detail::instance_from_environment(detail::kSupervisorVariable)),
        log_(detail::logger("poolmap.worker")) {
    // Our supervisor chose our instance id (it reports our exit by it); started by hand we choose.
    // The variables are not passed on to whatever the tasks start.
    if (instance_ == 0) instance_ = detail::new_instance_id();
    prefetch_wanted_ = prefetch_sent_ = options_.prefetch.value_or(1);
    ::unsetenv(detail::kInstanceVariable);
    ::unsetenv(detail::kSupervisorVariable);
    if (supervisor_ != 0 && ::getpgrp() == ::getpid()) {  // the supervisor made us a group leader
      supervisor_pid_ = ::getppid();
      // Out of the terminal's foreground group, a log line to a terminal set to `stty tostop`
      // would stop this process (SIGTTOU); ignored, the line is written.
      ::signal(SIGTTOU, SIG_IGN);
    }
    for (const auto& name : detail::TaskRegistry::instance().names()) {
      tasks_announced_.push_back({name, detail::TaskRegistry::instance().find(name)->signature()});
    }
    if (options_.broker.empty()) throw Error(ErrorCode::kInvalidArgument, "worker: no broker endpoint given");
    endpoints_ = wire::split_endpoints(options_.broker);
    passive_at_.resize(endpoints_.size());
    if (options_.heartbeat_interval.count() <= 0 || options_.heartbeat_liveness < 1 || options_.stop_timeout.count() < 0) {
      throw Error(ErrorCode::kInvalidArgument,
                  "worker: heartbeat interval and liveness must be positive, stop_timeout not negative");
    }
    if (options_.prefetch.value_or(0) > kMaxPrefetch) {
      throw Error(ErrorCode::kInvalidArgument, "worker: prefetch must be at most " + std::to_string(kMaxPrefetch));
    }
    for (const auto& endpoint : endpoints_) {
      try {  // reject a malformed endpoint now rather than in a restart loop
        zmq::socket_t probe(options_.context.impl().zmq, zmq::socket_type::dealer);
        probe.set(zmq::sockopt::linger, 0);
        probe.connect(endpoint);
      } catch (const zmq::error_t& e) {
        throw Error(ErrorCode::kInvalidArgument, "worker: bad broker endpoint '" + endpoint + "': " + e.what());
      }
    }
    curve_ = wire::load_curve_client(options_.curve_secret_file, options_.broker_key_file);
    if (curve_ && !options_.broker_password.empty()) {
      throw Error(ErrorCode::kInvalidArgument, "worker: CURVE keys and a broker password exclude each other");
    }
    const bool all_inproc = std::all_of(endpoints_.begin(), endpoints_.end(),
                                        [](const std::string& endpoint) { return endpoint.starts_with("inproc://"); });
    if (!curve_ && options_.broker_password.empty() && !all_inproc) {
      secret_ = wire::load_secret(options_.secret_file);  // this user's, as the broker's (docs/SECURITY.md)
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
    proto::Origin origin;  // the chunk's TaskHeader::origin, echoed in its WorkerResult
    proto::Outcome outcome;
    Bytes output;
    std::uint32_t count = 0;  // results in `output`
  };
  // The chunk the task thread is running, for the deadline watch (guarded by mutex_).
  struct Running {
    std::uint64_t ticket = 0;
    proto::Origin origin;
    std::uint64_t first_item = 0;  // value of items_started_ when the chunk began
    std::uint64_t first_index = 0; // the chunk's first item in the caller's input
    std::uint32_t deadline_ms = 0;
    Clock::time_point started;
  };

  void wake_io() noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(wake_fd_, &one, sizeof(one));
  }
  void io_loop();
  FinishedTask execute(PendingTask& task);
  // Runs one chunk on the calling thread (the task thread, or the I/O thread in run_here()): the
  // progress slot names it while it runs (the supervisor blames it if the process dies), and it
  // teaches the adaptive prefetch and the run-here guess its time.
  FinishedTask run_chunk(PendingTask& task);
  // After a chunk (mutex_ held): counts it against max_tasks_per_child, and past that starts the
  // drain (the I/O thread sends the result, then says goodbye).
  void count_chunk_locked();
  // Hands a finished chunk to the I/O thread, from the thread that ran it (either): no chunk runs
  // after it, the chunk is counted, and the I/O thread is woken only by the first result it has
  // not taken (each wake-up takes all of them), so quick chunks cost one eventfd write, not one each.
  // The I/O thread itself (run_here) passes wake = false: it sends the results before it waits.
  void publish_result(FinishedTask done, bool wake = true);
  // Called by the I/O thread: sends the results finished since it last looked, in WORKER_RESULT
  // messages (a header and a payload frame each: with short chunks, one message for many).
  // Returns whether it sent any.
  bool send_results(zmq::socket_t& socket);
  // Called by the I/O thread for a chunk of a TASK without a context frame: runs it right here,
  // instead of handing it to the task thread and waiting to be woken with its result, when that is
  // safe: no deadline to watch (the I/O thread watches deadlines), the task thread idle with
  // nothing queued, not stopping, the task's last kQuickStreak chunks each ran ok in less than
  // kRunHereAtMost, and `until` (the TASK's arrival + kRunHereAtMost) not passed. So heartbeats and
  // the other duties of the I/O thread wait about twice kRunHereAtMost at most, unless the task
  // changes its pace; a chunk that then runs long is one the broker may count as lost and run
  // elsewhere, and its late answer is still taken: docs/PROTOCOL.md 5.6.
  // Returns false when it did not run it.
  bool run_here(PendingTask& task, Clock::time_point until);
  // Called by the I/O thread: if the running item has passed its deadline, answers its chunk with
  // kDeadlineExceeded, says goodbye and ends the process (the supervisor starts a fresh one).
  void enforce_deadline(zmq::socket_t& socket);
  // Called by the I/O thread for each chunk of a TASK: queues it for the task thread (with its
  // context, when one came along), or answers `malformed` when its payload frame is missing.
  // A chunk of a TASK without a context frame may run here until `run_here_until` (run_here);
  // Clock::time_point{} = not here.
  void accept_task(zmq::socket_t& socket, const zmq::message_t& header_frame, zmq::message_t* payload,
                   zmq::message_t* context, Clock::time_point run_here_until = {});
  // Called by the task thread after each chunk, with adaptive prefetch: updates the averages and
  // the prefetch it wants (prefetch_wanted_) when that is at least twice or half the current one.
  void adapt_prefetch(std::uint64_t compute_us, std::size_t payload_bytes);
  // Called by the I/O thread: for a chunk running longer than kProgressInterval, tells the broker
  // how many of its items are done (at most once per interval, and only when that changed).
  void report_progress(zmq::socket_t& socket);
  // Called by the I/O thread, with adaptive prefetch: when the running chunk has run for longer
  // than kAdaptiveHold and more than one chunk waits behind it, hands all but one of them back to
  // the broker (WORKER_RESULT `unavailable`: requeued for another worker without penalty) and
  // wants prefetch 1, so that a slow chunk never holds a queue that idle workers could run.
  void hand_back_when_stalled(zmq::socket_t& socket);
  // ABANDON from the broker: a chunk not started is dropped (answered kCancelled, which returns its
  // credit); the running one gets the grace to finish, then enforce_abandon() ends the process.
  void on_abandon(const proto::Abandon& abandon);
  void enforce_abandon(zmq::socket_t& socket);
  // Called by the I/O thread while stopping with a chunk running: past stop_timeout, says goodbye
  // (the broker hands the chunk to another worker without penalty) and ends the process.
  void enforce_stop_timeout(zmq::socket_t& socket);
  // Answers `ticket` (of `origin`) with `outcome`, says goodbye and ends the process with the
  // deadline exit code (its supervisor starts a fresh one at once and does not count a crash).
  [[noreturn]] void end_process(zmq::socket_t& socket, std::uint64_t ticket, const proto::Origin& origin,
                                proto::Outcome outcome);
  // Sends DISCONNECT (the broker takes back what this process holds), waits for what was sent to
  // leave, and ends the process with the deadline exit code.
  [[noreturn]] void say_goodbye_and_exit(zmq::socket_t& socket);
  // Opens a socket to the current endpoint (endpoint()) and sends READY on it: with newest_epoch_,
  // and every chunk this process holds now (Ready::held: the running one, then the queued ones),
  // which an earlier connection sent it.
  zmq::socket_t connect(zmq::context_t& context);
  // Called by the I/O thread: the endpoint it talks to now.
  const std::string& endpoint() const { return endpoints_[current_]; }
  // Called by the I/O thread: the endpoint after the current one (round-robin; itself when alone).
  std::size_t next_endpoint() const { return (current_ + 1) % endpoints_.size(); }

  WorkerOptions options_;
  std::vector<std::string> endpoints_;  // options_.broker split: one, or a pair's (wire::split_endpoints)
  std::size_t current_ = 0;             // I/O thread: the one connected to now (index in endpoints_)
  // I/O thread: when each endpoint last answered PASSIVE (none yet: nullopt). A worker between two
  // passive brokers (the pair has no active one for a moment) waits, rather than spins.
  std::vector<std::optional<Clock::time_point>> passive_at_;
  // I/O thread: the newest broker epoch seen (proto::epoch_of); a message of an older one is ignored.
  std::uint64_t newest_epoch_ = 0;
  // I/O thread: a switch of endpoint was logged at warning since a broker last took this process
  // (any message but PASSIVE): the next ones, while it searches, are logged at debug.
  bool switch_logged_ = false;
  // I/O thread: results sent that the broker may not have read: those sent since a liveness
  // period before it was last heard (a loaded broker reads late). A broker that dies takes what it had not read with it; they
  // are sent again after the READY to the next broker (of a pair, the other one), which matches
  // them to the chunks their clients send again (by origin). Shared frames, not copies; bounded.
  struct Unconfirmed {
    Clock::time_point sent;
    zmq::message_t header;
    zmq::message_t payload;
  };
  std::deque<Unconfirmed> unconfirmed_;
  std::size_t unconfirmed_bytes_ = 0;
  static constexpr std::size_t kUnconfirmedMax = 4096;
  static constexpr std::size_t kUnconfirmedBytesMax = std::size_t{64} << 20;
  // The results the broker has certainly read (sent a heartbeat interval before it last spoke) go.
  void forget_confirmed(Clock::time_point broker_heard);
  // Sends every unconfirmed result again (on a new connection, after its READY).
  void resend_unconfirmed(zmq::socket_t& socket);
  std::string host_;
  std::uint32_t pid_;
  std::uint64_t instance_;    // this process, unique across hosts, pid namespaces and restarts
  std::uint64_t supervisor_;  // the supervisor that started it; 0 = none
  // The supervisor's pid when it made this process the leader of its own process group (which the
  // commands it runs inherit; the supervisor kills the group when it reaps this process); 0 = not so.
  pid_t supervisor_pid_ = 0;
  std::vector<proto::TaskInfo> tasks_announced_;  // what READY says we can run
  std::uint32_t connections_ = 0;                 // I/O thread: sockets opened (READY's generation)
  std::optional<wire::CurveClientKeys> curve_;    // read once, at construction
  std::string secret_;                            // the per-user secret, or "": read at construction
  std::optional<wire::HandshakeWatch> handshakes_;  // I/O thread: the current socket's handshakes
  bool refusal_logged_ = false;                     // I/O thread: said since the broker last answered
  std::optional<Clock::time_point> retry_at_;       // I/O thread: a new socket then (the handshake was refused)
  bool ran_here_ = false;                           // I/O thread: run_here ran a chunk since the last send_results
  std::shared_ptr<spdlog::logger> log_;
  int wake_fd_ = -1;

  std::mutex mutex_;  // guards tasks_, finished_, stopping_, running_
  std::condition_variable tasks_ready_;
  std::deque<PendingTask> tasks_;
  std::deque<FinishedTask> finished_;
  // Broadcast contexts by hash: the bytes and, per task, the decoded value. At most
  // kContextCacheSize, least recently used evicted (the broker re-sends one that is missing).
  struct CachedContext {
    zmq::message_t bytes;
    std::map<const detail::TaskRunner*, std::shared_ptr<const void>> decoded;
    std::uint64_t last_used = 0;
  };
  std::map<std::uint64_t, CachedContext> contexts_;  // guarded by mutex_
  std::uint64_t context_clock_ = 0;                  // guarded by mutex_
  bool stopping_ = false;
  std::optional<Running> running_;
  std::uint64_t chunks_run_ = 0;  // guarded by mutex_: for max_tasks_per_child
  // How many chunks of each task in a row ran ok in less than kRunHereAtMost, by name (guarded by
  // mutex_; an entry is made only for a chunk that ran ok, i.e. of a registered task, so there is
  // at most one per task): run_here()'s guess.
  std::map<std::string, std::uint32_t, std::less<>> quick_streak_;
  struct Abandoned {
    std::uint64_t ticket = 0;
    proto::Origin origin;
    Clock::time_point deadline;
  };
  std::optional<Abandoned> abandoned_;  // I/O thread: the running chunk nobody waits for
  std::optional<Clock::time_point> stop_seen_;   // I/O thread: when it first saw stop() with a chunk running
  std::optional<Clock::time_point> lost_since_;  // I/O thread: last heard from a broker it then lost
  std::string last_refusal_;                     // I/O thread: the broker's last ERROR, logged once

  detail::ProgressSlot progress_ = detail::ProgressSlot::inherited();  // tells the supervisor what runs
  std::atomic<std::uint64_t> items_started_{0};  // written by the task thread, watched by the I/O thread
  std::uint64_t watched_items_ = 0;              // I/O thread: last value seen, and when it changed
  Clock::time_point watched_since_;
  // Adaptive prefetch: averages of the chunks run (task thread), the prefetch wanted (guarded by
  // mutex_) and the prefetch the broker was told (I/O thread; READY and CREDIT).
  double average_chunk_us_ = -1;
  double average_chunk_bytes_ = 0;
  std::uint32_t prefetch_wanted_ = 1;
  std::uint32_t prefetch_sent_ = 1;
  std::uint64_t progress_ticket_ = 0;  // I/O thread: the chunk last reported, what and when
  std::uint32_t progress_items_ = 0;
  Clock::time_point progress_at_;
};


zmq::socket_t WorkerProcess::Impl::connect(zmq::context_t& context) {
  zmq::socket_t socket(context, zmq::socket_type::dealer);
  wire::configure(socket, {.high_water_mark = 1000, .linger = std::chrono::milliseconds(500),
                           .max_message_bytes = options_.max_message_bytes},
                  false);
  socket.set(zmq::sockopt::reconnect_ivl, 100);       // reconnect to a restarted broker with
  socket.set(zmq::sockopt::reconnect_ivl_max, 1000);  // exponential back-off, 0.1 s to 1 s
  if (curve_) wire::apply_curve_client(socket, *curve_);
  if (!options_.broker_password.empty()) wire::apply_password(socket, options_.broker_password);
  if (!secret_.empty()) wire::apply_secret(socket, secret_);
  retry_at_.reset();
  if (!endpoint().starts_with("inproc://")) handshakes_.emplace(context, socket);
  socket.connect(endpoint());
  // What an earlier connection sent this process and it still holds: the broker this READY reaches
  // (the same one, or its peer that took over) matches them to its chunks by their origin, instead
  // of running them again elsewhere. The first READY lists none.
  std::vector<proto::HeldChunk> held;
  {
    std::lock_guard lock(mutex_);
    if (running_) held.push_back({running_->ticket, running_->origin, true});
    // At most kMaxCredit (1 running + prefetch; the broker never sends more): a chunk beyond, if
    // any, is not listed, and its answer comes as a late one (docs/PROTOCOL.md 5.6).
    for (const auto& task : tasks_) {
      if (held.size() >= proto::kMaxCredit) break;
      held.push_back({task.header.ticket, task.header.origin, false});
    }
  }
  auto ready = wire::make(Command::kReady,
                          proto::Ready{host_, pid_, 1 + prefetch_sent_, instance_, supervisor_, tasks_announced_,
                                       ++connections_, newest_epoch_, std::move(held)});
  // Never blocks: a handshake refused before this line leaves the socket without a pipe (see
  // HandshakeWatch), and the READY of a socket that connects later is queued.
  (void)wire::send(socket, ready, true);
  return socket;
}

void WorkerProcess::Impl::io_loop() {
  zmq::context_t& context = options_.context.impl().zmq;
  zmq::socket_t socket;
  try {
    socket = connect(context);
  } catch (const zmq::error_t& e) {
    log_->error("worker cannot connect to {}: {}", endpoint(), e.what());
    stop();
    return;
  }
  log_->info("worker {} pid {} [{}] connected to {} (tasks: {})", host_, pid_, detail::short_id(instance_),
             endpoint(), join(detail::TaskRegistry::instance().names()));
  auto last_heard = Clock::now();
  // Silence counts only after the broker has answered on this socket: before that the connection
  // may still be forming (a slow or loaded host), and a new socket would only start over. A
  // broker that lost us says so (DISCONNECT) when our heartbeats reach it.
  bool heard = false;
  // This socket's TCP connection (once heard): a broker whose heartbeats queue behind one large
  // TASK on a slow link is silent, yet the bytes of that TASK keep arriving.
  std::optional<wire::ConnectionProbe> broker_link;
  const auto bytes_arriving = [&](std::chrono::milliseconds window) {
    const auto since = broker_link ? broker_link->since_data_received() : std::nullopt;
    return since && *since < window;
  };
  auto last_sent = Clock::now();
  const auto expiry = options_.heartbeat_interval * options_.heartbeat_liveness;
  const auto silence_before_exit = std::max<std::chrono::milliseconds>(
      detail::kSilentPeriodsBeforeExit * expiry, detail::kSilenceBeforeExitAtLeast);
  // When this process last opened a socket to register (reconnect): with a pair, a connection that
  // has no answer for a liveness period turns to the other broker (the first may be down, or
  // unreachable from here). A new socket after a refused handshake does not count: the search goes on.
  auto asked_since = Clock::now();
  // After PASSIVE: the endpoint to turn to, and when (at once, or once the half heartbeat interval
  // since that one too answered PASSIVE has passed: no spinning between two passive brokers).
  struct Turn {
    std::size_t endpoint = 0;
    Clock::time_point at;
  };
  std::optional<Turn> turn;
  // A new socket, to endpoints_[index] (the current one again: a fresh registration there).
  const auto reconnect = [&](std::size_t index) {
    handshakes_.reset();  // before its socket closes (see HandshakeWatch)
    socket.close();
    asked_since = Clock::now();
    current_ = index;
    socket = connect(context);
    resend_unconfirmed(socket);
    last_heard = last_sent = Clock::now();
    heard = false;
    broker_link.reset();
    turn.reset();
  };
  // Says that this process turns to endpoints_[index], and why (which names the current one): at
  // warning the first time since a broker last took it, then at debug (a search of several turns,
  // while a pair has no active broker, is said once).
  const auto log_turn = [&](std::size_t index, const std::string& why) {
    const auto level = switch_logged_ ? spdlog::level::debug : spdlog::level::warn;
    if (index == current_) {  // a single endpoint: nothing to turn to
      log_->log(level, "worker {} pid {} [{}]: {}; registering with it again", host_, pid_,
                detail::short_id(instance_), why);
    } else {
      log_->log(level, "worker {} pid {} [{}]: {}; turning from {} to {}", host_, pid_, detail::short_id(instance_),
                why, endpoint(), endpoints_[index]);
    }
    switch_logged_ = true;
  };

  for (;;) {
    // The handshake watch only until the broker answers on this socket (a socket opened after a
    // silence watches again): every ZeroMQ socket in a poll costs system calls on every turn.
    void* const watch = handshakes_ && !heard ? handshakes_->socket().handle() : nullptr;
    std::array<zmq::pollitem_t, 3> items{{{socket.handle(), 0, ZMQ_POLLIN, 0},
                                          {nullptr, wake_fd_, ZMQ_POLLIN, 0},
                                          {watch, -1, ZMQ_POLLIN, 0}}};
    // The next heartbeat, or just past the broker's liveness period: a loss is noticed then, not an
    // interval later (once past, e.g. while a large TASK still arrives, the heartbeat paces it).
    auto next_beat = last_sent + options_.heartbeat_interval;
    if (const auto lost_at = (heard ? last_heard : asked_since) + expiry + std::chrono::milliseconds(1);
        (heard || endpoints_.size() > 1) && lost_at > Clock::now()) {
      next_beat = std::min(next_beat, lost_at);
    }
    auto wait = std::max(std::chrono::milliseconds(0),
                         std::chrono::duration_cast<std::chrono::milliseconds>(next_beat - Clock::now()));
    {
      std::lock_guard lock(mutex_);
      if (running_ && running_->deadline_ms > 0) {  // look at least 4 times per deadline
        wait = std::min(wait, std::chrono::milliseconds(std::max<std::uint32_t>(1, running_->deadline_ms / 4)));
      }
      // run_here's last chunk started the drain (max_tasks_per_child): say goodbye now.
      if (stopping_ && !running_) wait = std::chrono::milliseconds(0);
      // Busy, or about to be: look again in time to report progress (report_progress).
      if (running_ || !tasks_.empty()) wait = std::min(wait, proto::kProgressInterval);
      if (!options_.prefetch && !stopping_ && tasks_.size() > 1) {  // see hand_back_when_stalled
        // A chunk the task thread has not taken yet is about to start: it counts as started now,
        // else the look at kAdaptiveHold would wait for the next progress report (100 ms).
        const auto started = running_ ? running_->started : Clock::now();
        wait = std::min(wait, std::max(std::chrono::milliseconds(0), std::chrono::ceil<std::chrono::milliseconds>(
                                                                         started + kAdaptiveHold - Clock::now())));
      }
    }
    if (abandoned_) {
      wait = std::min(wait, std::max(std::chrono::milliseconds(0), std::chrono::ceil<std::chrono::milliseconds>(
                                                                       abandoned_->deadline - Clock::now())));
    }
    if (stop_seen_) {
      wait = std::min(wait, std::max(std::chrono::milliseconds(0),
                                     std::chrono::ceil<std::chrono::milliseconds>(*stop_seen_ + options_.stop_timeout -
                                                                                  Clock::now())));
    }
    if (retry_at_) {
      wait = std::min(wait, std::max(std::chrono::milliseconds(0),
                                     std::chrono::ceil<std::chrono::milliseconds>(*retry_at_ - Clock::now())));
    }
    if (turn) {
      wait = std::min(wait, std::max(std::chrono::milliseconds(0),
                                     std::chrono::ceil<std::chrono::milliseconds>(turn->at - Clock::now())));
    }
    zmq::poll(items.data(), items.size(), wait);
    if ((items[2].revents & ZMQ_POLLIN) != 0) {
      // ZeroMQ does not retry a refused handshake: a new socket does, later (a broker may admit
      // the key after a SIGHUP). Said once until the broker answers.
      if (const auto failure = handshakes_->failure(endpoint(), curve_.has_value())) {
        if (!refusal_logged_) {
          log_->error("worker {} pid {} [{}]: {}; trying again every {} s", host_, pid_, detail::short_id(instance_),
                      *failure, wire::kRetryAfterRefusal.count());
        }
        refusal_logged_ = true;
        retry_at_ = Clock::now() + wire::kRetryAfterRefusal;
      }
    }

    if ((items[1].revents & ZMQ_POLLIN) != 0) {
      std::uint64_t value = 0;
      [[maybe_unused]] const auto got = ::read(wake_fd_, &value, sizeof(value));
    }
    bool stopping = false;
    bool busy = false;
    {
      std::lock_guard lock(mutex_);
      stopping = stopping_;
      busy = running_.has_value();
    }
    if (send_results(socket)) last_sent = Clock::now();
    if (!stopping) hand_back_when_stalled(socket);
    std::uint32_t wanted = 0;
    {
      std::lock_guard lock(mutex_);
      wanted = prefetch_wanted_;
    }
    if (wanted != prefetch_sent_ && !stopping) {
      auto frames = wire::make(Command::kCredit, proto::Credit{1 + wanted});
      if (wire::send(socket, frames, true)) prefetch_sent_ = wanted;
    }
    if (stopping && !busy) {
      // Drained: the running chunk (if any) is answered; the broker takes back the rest.
      auto bye = wire::make_empty(Command::kDisconnect);
      (void)wire::send(socket, bye, true);
      return;
    }
    if (stopping) enforce_stop_timeout(socket);
    report_progress(socket);
    enforce_deadline(socket);
    enforce_abandon(socket);

    bool forget_tasks = false;
    bool passive = false;
    // Only when the poll found the socket readable: a receive that finds nothing costs two system
    // calls (ZeroMQ looks at the socket's command pipe).
    while ((items[0].revents & ZMQ_POLLIN) != 0) {
      auto frames = wire::receive(socket);
      if (!frames) break;
      // A broker of an older epoch than one seen has lost its place to its peer, and may not know
      // it yet: what it says is void, and it is not even heard (its silence turns us to the peer).
      const std::uint64_t epoch = proto::epoch_of(wire::view(frames->front()));
      if (epoch < newest_epoch_) {
        log_->debug("worker ignored a message from the broker at {}: its epoch {} is older than {}", endpoint(),
                    epoch, newest_epoch_);
        continue;
      }
      newest_epoch_ = epoch;
      last_heard = Clock::now();
      if (!heard) {
        handshakes_.reset();  // the broker answered: no more handshakes to explain
        broker_link = wire::ConnectionProbe::of(frames->front());
      }
      heard = true;
      refusal_logged_ = false;
      auto command = proto::parse_signature(wire::view((*frames)[0]));
      if (command && command.value() == Command::kPassive) {
        // Not a broker that takes us: the search goes on (and lost_since_ with it).
        passive = true;
        break;  // this socket is closed: the rest of what it holds does not matter
      }
      switch_logged_ = false;
      forget_confirmed(last_heard);  // this broker reads what was sent well before it spoke
      if (lost_since_) {
        log_->info("worker {} pid {} [{}] hears the broker at {} again after {} ms", host_, pid_,
                   detail::short_id(instance_), endpoint(),
                   std::chrono::duration_cast<std::chrono::milliseconds>(last_heard - *lost_since_).count());
        lost_since_.reset();
      }
      if (frames->size() < 2) continue;
      if (!command) {
        log_->warn("worker ignored a message from the broker: {}", command.status().to_string());
        continue;
      }
      if (command.value() == Command::kTask) {
        last_refusal_.clear();  // registered after all
        if (stopping) continue;  // draining: the broker gets it back with our goodbye
        // [signature, header, payload, context] for a chunk whose context comes along, else
        // [signature, then a header and a payload frame for each chunk].
        const std::size_t parts = frames->size();
        const auto run_here_until = Clock::now() + kRunHereAtMost;
        if (parts == 4) {
          accept_task(socket, (*frames)[1], &(*frames)[2], &(*frames)[3]);
        } else if (parts % 2 == 0) {  // a header without its payload: answer it, so the broker gets its credit back
          for (std::size_t i = 1; i + 1 < parts; i += 2) accept_task(socket, (*frames)[i], &(*frames)[i + 1], nullptr);
          accept_task(socket, (*frames)[parts - 1], nullptr, nullptr);
        } else {
          for (std::size_t i = 1; i < parts; i += 2) {
            accept_task(socket, (*frames)[i], &(*frames)[i + 1], nullptr, run_here_until);
          }
        }
        if (ran_here_) {  // answered before the next receive (which, finding nothing, costs two system calls)
          ran_here_ = false;
          if (send_results(socket)) last_sent = Clock::now();
        }
      } else if (command.value() == Command::kAbandon) {
        auto abandon = proto::decode<proto::Abandon>(wire::view((*frames)[1]));
        if (abandon) on_abandon(abandon.value());
      } else if (command.value() == Command::kDisconnect) {
        forget_tasks = true;  // the broker does not know us (restarted, or declared us lost)
      } else if (command.value() == Command::kError) {
        auto error = proto::decode<proto::ErrorReply>(wire::view((*frames)[1]));
        // Said once per reason: a refused registration is tried again every heartbeat interval.
        std::string reason = error ? error.value().message : error.status().to_string();
        if (reason != last_refusal_) {
          log_->error("worker {} pid {} [{}]: the broker at {} refused a message: {}", host_, pid_,
                      detail::short_id(instance_), endpoint(), reason);
          last_refusal_ = std::move(reason);
        }
      }
      // kHeartbeat: nothing to do; hearing anything is what counts.
    }

    const auto now = Clock::now();
    if (passive) {
      passive_at_[current_] = now;
      if (!turn) {  // (a PASSIVE again, to a heartbeat, while waiting to turn: already said)
        const std::size_t next = next_endpoint();
        const auto half = options_.heartbeat_interval / 2;
        auto at = now;
        if (passive_at_[next] && now - *passive_at_[next] < half) at = *passive_at_[next] + half;
        log_turn(next, "the broker at " + endpoint() + " is the passive one of its pair");
        turn = Turn{next, at};
      }
    }
    // A passive broker that answers shows that this process's ZeroMQ context works: for the rule
    // below, that is hearing a broker.
    auto last_answer = lost_since_.value_or(Clock::time_point{});
    for (const auto& at : passive_at_) {
      if (at && *at > last_answer) last_answer = *at;
    }
    if (!heard && lost_since_ && now - last_answer > silence_before_exit) {
      // Registering again for many liveness periods and no broker answers (at any endpoint of a
      // pair). If one runs, this process's ZeroMQ context may be wedged (its I/O thread blocked):
      // nothing in this process can mend that, a fresh process does. Not a crash: the supervisor
      // starts one at once.
      log_->error("worker {} pid {} [{}] heard no broker at {} for {} ms ({} liveness periods) while registering "
                  "again; ending this process so that its supervisor starts a fresh one",
                  host_, pid_, detail::short_id(instance_), join(endpoints_),
                  std::chrono::duration_cast<std::chrono::milliseconds>(now - *lost_since_).count(),
                  detail::kSilentPeriodsBeforeExit);
      log_->flush();
      std::_Exit(detail::kSilenceExitCode);  // never through the context: it may be the wedged part
    }
    if (turn) {
      if (now >= turn->at) {
        reconnect(turn->endpoint);
        continue;
      }
    } else if (forget_tasks) {
      if (!lost_since_) lost_since_ = now;  // heard, but as a stranger: registering again from now
      // After a refusal this repeats every heartbeat interval: the refusal was said once.
      log_->log(last_refusal_.empty() ? spdlog::level::info : spdlog::level::debug,
                "broker asked worker pid {} to register again", pid_);
      {
        std::lock_guard lock(mutex_);
        // The broker has given the queued chunks to others. The running one is listed in READY
        // (Ready::held): its answer may still be wanted.
        tasks_.clear();
      }
      reconnect(current_);
      continue;
    } else if (heard && now - last_heard > expiry && !bytes_arriving(expiry)) {
      // Lost: the chunks held here stay (queued ones run on), and the READY to the next broker (of
      // a pair, the other one) lists them.
      const auto silent_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - last_heard).count();
      const std::size_t next = next_endpoint();
      if (next == current_) {
        log_->warn("worker {} pid {} [{}] heard nothing from the broker at {} for {} ms; registering again", host_,
                   pid_, detail::short_id(instance_), endpoint(), silent_ms);
        switch_logged_ = true;
      } else {
        log_turn(next, "heard nothing from the broker at " + endpoint() + " for " + std::to_string(silent_ms) + " ms");
      }
      if (!lost_since_) lost_since_ = last_heard;
      reconnect(next);
      continue;
    } else if (endpoints_.size() > 1 && !heard && now - asked_since > expiry) {
      // With a single endpoint a connection waits for its broker as long as it takes (a restarted
      // broker comes back there); with a pair, the other one may be the one that runs.
      const auto next = next_endpoint();
      const auto waited_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - asked_since).count();
      log_turn(next, "no answer from the broker at " + endpoint() + " for " + std::to_string(waited_ms) + " ms");
      reconnect(next);
      continue;
    } else if (retry_at_ && now >= *retry_at_) {  // refused: nothing was registered on that socket
      handshakes_.reset();
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

void WorkerProcess::Impl::accept_task(zmq::socket_t& socket, const zmq::message_t& header_frame,
                                      zmq::message_t* payload, zmq::message_t* context,
                                      Clock::time_point run_here_until) {
  auto header = proto::decode<proto::TaskHeader>(wire::view(header_frame));
  if (!header) {
    log_->warn("worker ignored a TASK whose header does not decode: {}", header.status().to_string());
    return;
  }
  if (payload == nullptr) {  // answer it, so the broker gets its credit back
    proto::Outcome outcome{ErrorCode::kMalformed, 0, {}, "TASK without a payload frame", host_, pid_};
    auto reply = wire::make(Command::kWorkerResult, proto::WorkerResult{header.value().ticket, outcome, instance_, 0,
                                                                        header.value().origin});
    reply.emplace_back();
    wire::send(socket, reply, false);
    return;
  }
  PendingTask task{std::move(header.value()), std::move(*payload)};
  if (run_here_until != Clock::time_point{} && run_here(task, run_here_until)) return;
  {
    std::lock_guard lock(mutex_);
    if (context != nullptr && task.header.context_hash != 0) {  // a broadcast context comes along
      if (contexts_.size() >= kContextCacheSize && !contexts_.contains(task.header.context_hash)) {
        contexts_.erase(std::min_element(contexts_.begin(), contexts_.end(), [](const auto& a, const auto& b) {
          return a.second.last_used < b.second.last_used;
        }));
      }
      CachedContext& cached = contexts_[task.header.context_hash];
      cached.bytes = std::move(*context);
      cached.decoded.clear();
      cached.last_used = ++context_clock_;
    }
    tasks_.push_back(std::move(task));
  }
  tasks_ready_.notify_one();
}

bool WorkerProcess::Impl::run_here(PendingTask& task, Clock::time_point until) {
  if (Clock::now() >= until) return false;
  {
    std::lock_guard lock(mutex_);
    if (task.header.deadline_ms != 0 || stopping_ || running_ || !tasks_.empty()) return false;
    const auto streak = quick_streak_.find(task.header.task);
    if (streak == quick_streak_.end() || streak->second < kQuickStreak ||
        kRunHereAtMost * 20 >= options_.heartbeat_interval) {
      return false;
    }
  }
  // The task thread stays idle meanwhile: only this thread gives it work.
  // The I/O thread sends the result when it has read what the socket holds, before it waits again:
  // no wake-up of its own (an eventfd write, read and one more turn of the poll).
  publish_result(run_chunk(task), false);
  ran_here_ = true;
  return true;
}

void WorkerProcess::Impl::publish_result(FinishedTask done, bool wake) {
  bool first_unsent = false;
  {
    std::lock_guard lock(mutex_);
    first_unsent = finished_.empty();
    finished_.push_back(std::move(done));
    running_.reset();
    count_chunk_locked();
  }
  if (first_unsent && wake) wake_io();
}

bool WorkerProcess::Impl::send_results(zmq::socket_t& socket) {
  std::deque<FinishedTask> finished;
  {
    std::lock_guard lock(mutex_);
    finished.swap(finished_);
  }
  wire::ChunkBatch results(Command::kWorkerResult);
  const auto now = Clock::now();
  for (auto& done : finished) {
    if (results.needs_new_message(done.output.size())) {
      auto frames = results.take();
      wire::send(socket, frames, false);
    }
    auto header = wire::header_message(
        proto::WorkerResult{done.ticket, std::move(done.outcome), instance_, done.count, done.origin});
    auto payload = wire::to_message(std::move(done.output));
    if (done.origin.session != 0) {  // one a next broker can match: kept until confirmed
      Unconfirmed& kept = unconfirmed_.emplace_back(Unconfirmed{now, {}, {}});
      kept.header.copy(header);
      kept.payload.copy(payload);  // reference-counted, not a byte copy
      unconfirmed_bytes_ += payload.size();
      while (unconfirmed_.size() > kUnconfirmedMax || unconfirmed_bytes_ > kUnconfirmedBytesMax) {
        unconfirmed_bytes_ -= unconfirmed_.front().payload.size();
        unconfirmed_.pop_front();
      }
    }
    results.add(std::move(header), std::move(payload));
  }
  if (results.empty()) return false;
  auto frames = results.take();
  wire::send(socket, frames, false);
  return true;
}

void WorkerProcess::Impl::forget_confirmed(Clock::time_point broker_heard) {
  const auto margin = options_.heartbeat_interval * options_.heartbeat_liveness;
  while (!unconfirmed_.empty() && unconfirmed_.front().sent < broker_heard - margin) {
    unconfirmed_bytes_ -= unconfirmed_.front().payload.size();
    unconfirmed_.pop_front();
  }
}

void WorkerProcess::Impl::resend_unconfirmed(zmq::socket_t& socket) {
  if (unconfirmed_.empty()) return;
  const auto now = Clock::now();
  wire::ChunkBatch results(Command::kWorkerResult);
  for (Unconfirmed& kept : unconfirmed_) {
    kept.sent = now;
    zmq::message_t header, payload;
    header.copy(kept.header);
    payload.copy(kept.payload);
    if (results.needs_new_message(payload.size())) {
      auto frames = results.take();
      wire::send(socket, frames, false);
    }
    results.add(std::move(header), std::move(payload));
  }
  log_->debug("worker pid {} sent {} results again that its last broker may not have read", pid_, unconfirmed_.size());
  auto frames = results.take();
  if (!frames.empty()) wire::send(socket, frames, false);
}

WorkerProcess::Impl::FinishedTask WorkerProcess::Impl::run_chunk(PendingTask& task) {
  progress_.store(task.header.ticket);
  const auto started = Clock::now();
  FinishedTask done = execute(task);
  const auto took = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started);
  done.outcome.compute_us = static_cast<std::uint64_t>(took.count());
  progress_.store(0);
  if (!options_.prefetch) adapt_prefetch(done.outcome.compute_us, task.payload.size());
  {
    std::lock_guard lock(mutex_);
    if (done.outcome.code == ErrorCode::kOk && took < kRunHereAtMost) {
      auto& streak = quick_streak_[task.header.task];
      streak = std::min(streak + 1, kQuickStreak);
    } else if (const auto streak = quick_streak_.find(task.header.task); streak != quick_streak_.end()) {
      streak->second = 0;
    }
  }
  if (done.outcome.code != ErrorCode::kOk) {
    log_->debug("task {} chunk at item {} failed: {}", task.header.task, task.header.first_index,
                done.outcome.message);
  }
  return done;
}

void WorkerProcess::Impl::count_chunk_locked() {
  if (options_.max_tasks_per_child != 0 && ++chunks_run_ >= options_.max_tasks_per_child) {
    log_->info("worker pid {} ran {} chunks (max tasks per child); handing over to a fresh process", pid_,
               chunks_run_);
    stopping_ = true;  // drain: the I/O thread sends this result, then says goodbye
    tasks_ready_.notify_all();  // the task thread ends too (it may be waiting: run_here ran this one)
  }
}

void WorkerProcess::Impl::enforce_deadline(zmq::socket_t& socket) {
  Running running;
  {
    std::lock_guard lock(mutex_);
    if (!running_ || running_->deadline_ms == 0) return;
    running = *running_;
  }
  const auto now = Clock::now();
  const std::uint64_t started = items_started_.load(std::memory_order_relaxed);
  if (started != watched_items_) {
    watched_items_ = started;
    watched_since_ = now;
    return;
  }
  if (now - watched_since_ < std::chrono::milliseconds(running.deadline_ms)) return;
  // The same item has been running for longer than its deadline. A thread cannot be stopped
  // safely, so this process answers for the item and ends; its supervisor starts a fresh one.
  const std::uint32_t offset = started > running.first_item ? static_cast<std::uint32_t>(started - running.first_item - 1) : 0;
  const std::uint64_t index = running.first_index + offset;
  proto::Outcome outcome{ErrorCode::kDeadlineExceeded, offset, {},
                         "item " + std::to_string(index) + " ran longer than its deadline of " +
                             std::to_string(running.deadline_ms) + " ms; worker " + host_ + " pid " +
                             std::to_string(pid_) + " was replaced",
                         host_, pid_};
  log_->error("{}", outcome.message);
  end_process(socket, running.ticket, running.origin, std::move(outcome));
}

void WorkerProcess::Impl::report_progress(zmq::socket_t& socket) {
  Running running;
  {
    std::lock_guard lock(mutex_);
    if (!running_) return;
    running = *running_;
  }
  const auto now = Clock::now();
  if (running.ticket != progress_ticket_) {
    progress_ticket_ = running.ticket;
    progress_items_ = 0;
    progress_at_ = running.started;
  }
  if (now - progress_at_ < proto::kProgressInterval) return;
  // The item started last is still running: the ones before it are done.
  const std::uint64_t started = items_started_.load(std::memory_order_relaxed);
  if (started <= running.first_item + 1) return;
  const auto done = static_cast<std::uint32_t>(started - running.first_item - 1);
  if (done <= progress_items_) return;
  auto frames = wire::make(Command::kWorkerProgress, proto::WorkerProgress{running.ticket, done});
  (void)wire::send(socket, frames, true);
  progress_items_ = done;
  progress_at_ = now;
}

void WorkerProcess::Impl::hand_back_when_stalled(zmq::socket_t& socket) {
  if (options_.prefetch) return;
  std::vector<std::pair<std::uint64_t, proto::Origin>> handed_back;  // ticket, origin
  {
    std::lock_guard lock(mutex_);
    if (!running_ || tasks_.size() <= 1 || Clock::now() - running_->started < kAdaptiveHold) return;
    while (tasks_.size() > 1) {
      handed_back.emplace_back(tasks_.back().header.ticket, tasks_.back().header.origin);
      tasks_.pop_back();
    }
    prefetch_wanted_ = 1;
  }
  for (const auto& [ticket, origin] : handed_back) {
    proto::Outcome outcome{ErrorCode::kUnavailable, 0, {}, "handed back unstarted: the chunk before it runs long",
                           host_, pid_};
    auto frames = wire::make(Command::kWorkerResult, proto::WorkerResult{ticket, std::move(outcome), instance_, 0,
                                                                          origin});
    frames.emplace_back();
    wire::send(socket, frames, false);
  }
  log_->debug("worker pid {} handed {} waiting chunks back: the running one passed {} us", pid_, handed_back.size(),
              kAdaptiveHold.count());
}

void WorkerProcess::Impl::adapt_prefetch(std::uint64_t compute_us, std::size_t payload_bytes) {
  const auto us = static_cast<double>(compute_us);
  const auto bytes = static_cast<double>(payload_bytes);
  if (average_chunk_us_ < 0) {
    average_chunk_us_ = us;
    average_chunk_bytes_ = bytes;
  } else {  // moving averages over the last few chunks
    average_chunk_us_ += (us - average_chunk_us_) / 4;
    average_chunk_bytes_ += (bytes - average_chunk_bytes_) / 4;
  }
  const double by_time = kAdaptiveHoldUs / std::max(average_chunk_us_, 1.0);
  const double by_bytes = kAdaptiveHoldBytes / std::max(average_chunk_bytes_, 1.0);
  const auto target = static_cast<std::uint32_t>(
      std::clamp(std::min(by_time, by_bytes), 1.0, static_cast<double>(kMaxAdaptivePrefetch)));
  std::lock_guard lock(mutex_);
  if (target >= 2 * prefetch_wanted_ || 2 * target <= prefetch_wanted_) prefetch_wanted_ = target;
}

void WorkerProcess::Impl::end_process(zmq::socket_t& socket, std::uint64_t ticket, const proto::Origin& origin,
                                      proto::Outcome outcome) {
  auto reply =
      wire::make(Command::kWorkerResult, proto::WorkerResult{ticket, std::move(outcome), instance_, 0, origin});
  reply.emplace_back();
  (void)wire::send(socket, reply, true);
  say_goodbye_and_exit(socket);
}

void WorkerProcess::Impl::say_goodbye_and_exit(zmq::socket_t& socket) {
  auto bye = wire::make_empty(Command::kDisconnect);
  (void)wire::send(socket, bye, true);
  handshakes_.reset();                  // before the socket closes (see HandshakeWatch)
  socket.close();                       // lingers until what was sent is out (bounded)
  options_.context.impl().zmq.close();  // waits for that
  // The commands still running (a `poolmap exec` past its deadline) and what they started end with
  // this process: its supervisor kills its process group when it reaps it (supervisor.cpp). With
  // the supervisor gone (this process is stopping because it died) nobody will, so this process
  // kills its group itself, itself included: its exit status has no reader any more.
  if (supervisor_pid_ != 0 && ::getppid() != supervisor_pid_) ::kill(0, SIGKILL);
  std::_Exit(detail::kDeadlineExitCode);
}

void WorkerProcess::Impl::on_abandon(const proto::Abandon& abandon) {
  std::lock_guard lock(mutex_);
  const auto queued = std::find_if(tasks_.begin(), tasks_.end(),
                                   [&](const PendingTask& task) { return task.header.ticket == abandon.ticket; });
  if (queued != tasks_.end()) {
    FinishedTask dropped;
    dropped.ticket = abandon.ticket;
    dropped.origin = queued->header.origin;
    tasks_.erase(queued);
    dropped.outcome = proto::Outcome{ErrorCode::kCancelled, 0, {}, "abandoned before it started", host_, pid_};
    finished_.push_back(std::move(dropped));
    wake_io();  // sent on the next turn of the loop
    return;
  }
  if (running_ && running_->ticket == abandon.ticket) {
    abandoned_ =
        Abandoned{abandon.ticket, running_->origin, Clock::now() + std::chrono::milliseconds(abandon.grace_ms)};
  }
}

void WorkerProcess::Impl::enforce_abandon(zmq::socket_t& socket) {
  if (!abandoned_) return;
  {
    std::lock_guard lock(mutex_);
    if (!running_ || running_->ticket != abandoned_->ticket) {  // it finished in time
      abandoned_.reset();
      return;
    }
  }
  if (Clock::now() < abandoned_->deadline) return;
  log_->info("worker {} pid {} [{}]: the chunk it runs was abandoned by its client and is still running; "
             "ending this process (a fresh one takes its place)",
             host_, pid_, detail::short_id(instance_));
  end_process(socket, abandoned_->ticket, abandoned_->origin,
              proto::Outcome{ErrorCode::kCancelled, 0, {}, "abandoned by its client", host_, pid_});
}

void WorkerProcess::Impl::enforce_stop_timeout(zmq::socket_t& socket) {
  const auto now = Clock::now();
  if (!stop_seen_) {
    stop_seen_ = now;
    return;
  }
  if (now - *stop_seen_ < options_.stop_timeout) return;
  log_->warn("worker {} pid {} [{}]: asked to stop {} ms ago and its chunk is still running; handing it back and "
             "ending this process",
             host_, pid_, detail::short_id(instance_),
             std::chrono::duration_cast<std::chrono::milliseconds>(now - *stop_seen_).count());
  say_goodbye_and_exit(socket);  // the broker hands the chunk to another worker
}

WorkerProcess::Impl::FinishedTask WorkerProcess::Impl::execute(PendingTask& task) {
  FinishedTask done;
  done.ticket = task.header.ticket;
  done.origin = task.header.origin;
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
  // The broadcast context, decoded once per process and task, kept alive for this chunk.
  std::shared_ptr<const void> context;
  if (const std::uint64_t hash = task.header.context_hash; hash != 0) {
    zmq::message_t bytes;  // a reference-counted copy, so the decoding runs without the lock
    {
      std::lock_guard lock(mutex_);
      const auto cached = contexts_.find(hash);
      if (cached == contexts_.end()) {
        done.outcome.code = ErrorCode::kContextMissing;
        done.outcome.message = "context " + std::to_string(hash) + " is not cached here";
        return done;
      }
      cached->second.last_used = ++context_clock_;
      const auto decoded = cached->second.decoded.find(runner);
      if (decoded != cached->second.decoded.end()) {
        context = decoded->second;
      } else {
        bytes.copy(cached->second.bytes);
      }
    }
    if (!context) {
      auto value = runner->decode_context(wire::view(bytes));
      if (!value) {
        done.outcome.code = value.status().code();
        done.outcome.message = value.status().message();
        return done;
      }
      context = std::move(value).value();
      std::lock_guard lock(mutex_);
      const auto cached = contexts_.find(hash);
      if (cached != contexts_.end()) cached->second.decoded[runner] = context;
    }
  }
  detail::TaskFailure failure;
  Status status;
  try {  // run() reports what the task and the codec throw; anything else must not end the process
    status = runner->run(wire::view(task.payload), task.header.count, done.output, failure, &items_started_,
                         context.get());
  } catch (const std::exception& e) {
    status = Status(ErrorCode::kInternal, std::string("task '") + task.header.task + "' failed outside its items: " +
                                              e.what());
  } catch (...) {
    status = Status(ErrorCode::kInternal, "task '" + task.header.task + "' failed outside its items");
  }
  if (status.is_ok() && done.output.size() > static_cast<std::size_t>(options_.max_message_bytes)) {
    // Sent, it would get this worker disconnected and the chunk re-run elsewhere, again and again.
    status = Status(ErrorCode::kInvalidArgument,
                    "the results of items " + std::to_string(task.header.first_index) + ".." +
                        std::to_string(task.header.first_index + task.header.count - 1) + " of task '" +
                        task.header.task + "' encode to " + std::to_string(done.output.size()) +
                        " bytes, more than --max-message-bytes (" + std::to_string(options_.max_message_bytes) +
                        "): use a smaller chunksize, or raise max_message_bytes on every peer");
    failure = {};
  }
  if (status.is_ok()) {
    done.count = task.header.count;
  } else {
    done.output.clear();
    done.outcome.code = status.code();
    done.outcome.message = status.message();
    done.outcome.failed_offset = failure.offset;
    done.outcome.error_type = failure.type;
  }
  return done;
}

void WorkerProcess::Impl::run() {
  detail::keep_freed_memory();  // chunk after chunk of similar size: reuse the pages
  for (const auto initializer : detail::TaskRegistry::instance().initializers()) initializer(options_.init_args);
  std::thread io([this] { io_loop(); });
  for (;;) {
    PendingTask task;
    {
      std::unique_lock lock(mutex_);
      tasks_ready_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
      if (stopping_) {
        tasks_.clear();  // not started: the broker takes them back when we say goodbye
        break;
      }
      task = std::move(tasks_.front());
      tasks_.pop_front();
      running_ = Running{task.header.ticket, task.header.origin, items_started_.load(std::memory_order_relaxed),
                         task.header.first_index, task.header.deadline_ms, Clock::now()};
    }
    publish_result(run_chunk(task));
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
