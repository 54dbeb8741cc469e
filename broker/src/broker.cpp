#include "poolmap/broker.hpp"

#include <malloc.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <deque>
#include <map>
#include <memory_resource>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "log.hpp"
#include "metrics.hpp"
#include "poolmap/curve.hpp"
#include "poolmap/error.hpp"
#include "poolmap/protocol.hpp"
#include "process_info.hpp"
#include "scheduler.hpp"
#include "secret.hpp"
#include "security.hpp"
#include "wire.hpp"

namespace poolmap {

namespace {
using Clock = std::chrono::steady_clock;
using proto::Command;

// Most messages read from one socket before the other socket gets its turn.
constexpr int kReceiveBatch = 256;

// STARTED goes to a client once the chunk has been on a worker this long without an answer: a
// chunk answered sooner needs none (its RESULT ends running() anyway), which spares a quick call
// a message, and two wake-ups of the client's threads, while its worker computes.
constexpr auto kStartedAfter = std::chrono::milliseconds(1);

std::chrono::milliseconds since(Clock::time_point then, Clock::time_point now) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(now - then);
}

// Not in the non-draft zmq.h of libzmq 4.3, but honoured by it: a CURVE handshake fails when no
// ZAP handler answers, instead of letting every key in.
#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93
#endif
constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";

// Counts events that are logged at most once per interval, each line saying how many happened
// since the last one: a peer sending garbage must not flood the log.
class LogThrottle {
 public:
  // Counts one event. Returns how many to report when a line is due now, else 0.
  std::uint64_t count(Clock::time_point now, Clock::duration interval) {
    ++unlogged_;
    if (now - logged_ < interval) return 0;
    logged_ = now;
    return std::exchange(unlogged_, 0);
  }

 private:
  std::uint64_t unlogged_ = 0;
  Clock::time_point logged_{};
};

const char* plural(std::uint64_t n) { return n == 1 ? "" : "s"; }

// What a peer that connected to the wrong endpoint is told (the likely mistake, in its words).
constexpr std::string_view kWorkerEndpointMistake =
    "this is the poolmap broker's worker endpoint (poolmap-broker --workers, port 5556 by default); clients "
    "connect to its client endpoint (--clients, port 5555 by default)";
constexpr std::string_view kClientEndpointMistake =
    "this is the poolmap broker's client endpoint (poolmap-broker --clients, port 5555 by default); workers "
    "connect to its worker endpoint (--workers, port 5556 by default)";

bool is_client_command(Command command) {
  return command == Command::kHello || command == Command::kSubmit || command == Command::kCancel ||
         command == Command::kStatusRequest || command == Command::kContext || command == Command::kReject;
}

// The address of the peer a message came from ("" where the transport has none).
std::string peer_address(zmq::message_t& frame) {
  const char* address = zmq_msg_gets(frame.handle(), "Peer-Address");
  return address == nullptr ? std::string() : std::string(address);
}

// The name of the key a message's connection authenticated with ("" without CURVE).
std::string key_name(const zmq::message_t& frame) {
  const char* user = zmq_msg_gets(frame.handle(), "User-Id");
  return user == nullptr ? std::string() : std::string(user);
}

detail::KeyRing read_key_ring(const BrokerOptions& options) {
  return {read_curve_public_dir(options.client_keys_dir), read_curve_public_dir(options.worker_keys_dir), {}, {}};
}
}  // namespace

class Broker::Impl {
 public:
  Impl(BrokerOptions options, Context context)
      : options_(std::move(options)),
        context_(std::move(context)),
        zap_(context_.impl().zmq, zmq::socket_type::rep),
        clients_(context_.impl().zmq, zmq::socket_type::router),
        workers_(context_.impl().zmq, zmq::socket_type::router),
        log_(detail::logger("poolmap.broker")),
        scheduler_(options_.heartbeat_interval * options_.heartbeat_liveness, Clock::now()) {
    if (options_.heartbeat_interval.count() <= 0 || options_.heartbeat_liveness < 1 || options_.max_retries < 0 ||
        options_.poison_kills < 1) {
      throw Error(ErrorCode::kInvalidArgument,
                  "broker options: heartbeat_interval, heartbeat_liveness and poison_kills must be positive, "
                  "max_retries not negative");
    }
    if (options_.max_client_chunks == 0 || options_.max_client_bytes < 1 || options_.max_client_jobs == 0 ||
        options_.max_client_contexts == 0 || options_.max_client_context_bytes < 1 || options_.max_ready_per_second == 0) {
      throw Error(ErrorCode::kInvalidArgument, "broker options: the per-client quotas and max_ready_per_second must be positive");
    }
    // Linger long enough for the goodbyes sent on shutdown to leave, short enough not to hang.
    const wire::SocketLimits limits{.high_water_mark = options_.high_water_mark,
                                    .linger = std::chrono::milliseconds(500),
                                    .max_message_bytes = options_.max_message_bytes};
    wire::configure(clients_, limits, true);
    wire::configure(workers_, limits, true);
    set_up_security();
    client_endpoint_ = bind(clients_, options_.client_endpoint, "client");
    worker_endpoint_ = bind(workers_, options_.worker_endpoint, "worker");
    try {
      metrics_ = std::make_unique<detail::Metrics>(options_.metrics_address);
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kInvalidArgument, std::string("broker: ") + e.what());
    }
    metrics_url_ = metrics_->url();
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw Error(ErrorCode::kInternal, "broker: eventfd failed");
  }

  ~Impl() {
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  void run();
  void stop() noexcept {
    if (stop_requested_.exchange(true)) stop_now_.store(true);
    wake();
  }
  void reload_keys() noexcept {
    reload_requested_.store(true);
    wake();
  }

  std::string client_endpoint_;
  std::string worker_endpoint_;
  std::string metrics_url_;

 private:
  // Per-chunk bookkeeping (chunks_, the tickets of each worker and job) takes its nodes from
  // node_pool_: they are made and dropped at the rate of chunks, in bursts that glibc's malloc
  // serves slowly (its per-thread cache holds 7 blocks of a size).
  struct WorkerState {
    explicit WorkerState(std::pmr::memory_resource* nodes) : tickets(nodes) {}
    std::string identity;
    std::string key;    // the name of its CURVE key ("" without CURVE)
    std::string host;   // as the worker said, made printable
    std::uint32_t pid = 0;
    std::uint64_t instance = 0;    // the process, unique across hosts, pid namespaces and restarts
    std::uint64_t supervisor = 0;  // the supervisor that started it (its exit reports name it)
    std::uint32_t generation = 0;  // its connection number, from READY
    std::vector<proto::TaskInfo> tasks;
    detail::Scheduler::WorkerHandle handle = 0;
    Clock::time_point last_heard;
    Clock::time_point last_sent;
    std::pmr::unordered_set<std::uint64_t> tickets;  // chunks this worker holds
    std::deque<std::uint64_t> dispatch_order;    // tickets in the order sent; the oldest held one runs
    std::unordered_set<std::uint64_t> contexts;  // broadcast contexts it was sent (it may evict them)
    std::uint64_t chunks_done = 0;
    std::uint64_t chunks_failed = 0;  // answered with an error (not counting cancelled ones)
    std::uint32_t credit = 0;         // chunks it accepts at a time (READY, CREDIT)
    std::optional<wire::ConnectionProbe> link;  // its TCP connection: bytes arriving count as life
  };
  struct ClientState {
    explicit ClientState(std::pmr::memory_resource* nodes) : jobs(nodes) {}
    std::string identity;
    std::string key;  // the name of its CURVE key ("" without CURVE)
    std::string host;
    std::uint32_t pid = 0;
    std::optional<wire::ConnectionProbe> link;  // its TCP connection: bytes arriving count as life
    Clock::time_point last_heard;
    Clock::time_point last_sent;
    std::pmr::unordered_map<std::uint64_t, std::pmr::unordered_set<std::uint64_t>> jobs;  // job -> live tickets
    // What `poolmap status` shows of each job: kept while it has live tickets, then for a liveness
    // period (more of a job comes as earlier chunks are answered), until all its items are done
    // or it is cancelled.
    struct JobRecord {
      std::string task;  // printable
      std::uint64_t items_total = 0;
      std::uint64_t items_done = 0;  // in chunks answered
      Clock::time_point started;
      Clock::time_point idle_since;  // no live tickets since then
    };
    std::map<std::uint64_t, JobRecord> job_records;
    struct SharedContext {
      zmq::message_t payload;
      std::size_t live_chunks = 0;  // chunks not yet answered that use it
      Clock::time_point idle_since;  // live_chunks == 0 since then (or since the client sent it);
                                     // freed a liveness period later
    };
    std::unordered_map<std::uint64_t, SharedContext> contexts;  // broadcast contexts by hash
    // RESULT frames not sent yet ([signature, then a header and a payload frame per chunk]): the
    // results of one pass of the loop go in one message (flush_results).
    wire::ChunkBatch results_out{Command::kResult};
    // Who answered its last kDeliveriesKept ok results (a ring): a REJECT names a delivery, and
    // the worker that made it is dropped.
    struct Delivery {
      std::uint64_t job = 0;
      std::uint64_t chunk = 0;
      std::uint32_t attempt = 0;
      std::uint64_t instance = 0;  // the process that answered
    };
    std::vector<Delivery> deliveries;
    std::size_t next_delivery = 0;
    // What it holds, against its quotas (BrokerOptions::max_client_*).
    std::size_t chunks = 0;  // not yet answered
    std::int64_t chunk_bytes = 0;
    std::int64_t context_bytes = 0;
    // Contexts not kept for lack of quota, by hash (true: larger than the whole quota). A SUBMIT
    // naming one is answered kResourceExhausted (kInvalidArgument) rather than kContextMissing,
    // so that its Pool waits (fails) instead of sending the context straight back.
    std::unordered_map<std::uint64_t, bool> refused_contexts;
  };
  struct Chunk {
    std::string client;
    Clock::time_point received;  // its SUBMIT
    proto::Submit header;
    zmq::message_t payload;   // kept until answered, so the chunk can be dispatched again
    detail::Scheduler::KindId kind = 0;
    std::uint32_t attempt = 0;  // dispatches so far
    std::uint32_t kills = 0;    // workers that crashed while running it
    std::uint32_t retries = 0;  // re-dispatches after losses not blamed on it
    std::string worker;         // identity of the holder; empty while queued
    // Every process it was sent to: its instance id and the connection (routing id) it held the
    // chunk on. A late answer counts only from that instance: on that connection, or on the one the
    // same instance registered on since (never by what a message claims).
    struct Holder {
      std::uint64_t instance = 0;
      std::string identity;
    };
    std::vector<Holder> holders;
    std::vector<std::string> lost_causes;
    std::uint32_t items_reported = 0;  // by its worker's WORKER_PROGRESS while it runs
  };
  // A worker declared lost because it was silent. If it speaks again it was busy, not dead: the
  // chunks it held get their retry back (a busy host must not fail maps).
  struct SilentLoss {
    Clock::time_point when;
    std::string host;
    std::uint32_t pid = 0;
    std::uint32_t generation = 0;  // of the registration that was lost
    std::uint64_t supervisor = 0;  // its supervisor's instance, and CURVE key name: who may report its exit
    std::string key;
    std::string identity;  // the connection it was registered on: the only one it may speak on unregistered
    std::vector<std::uint64_t> tickets;
  };
  // Ok deliveries a client's REJECT can name, per client (see ClientState::deliveries).
  static constexpr std::size_t kDeliveriesKept = 4096;
  // How a worker went away, for its chunks.
  enum class Loss {
    kCrash,     // its supervisor saw it die: the running chunk is blamed, the others are not
    kLost,      // silent or unreachable: every chunk it held uses one retry
    kHandback,  // it said goodbye (drain): its chunks go back without penalty
    kBroken,    // it answered a chunk wrongly: like kLost, but no retry comes back if it returns
  };

  void wake() noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(wake_fd_, &one, sizeof(one));
  }
  bool curve() const { return !options_.curve_secret_file.empty(); }
  // CURVE on both sockets with the ZAP handler bound first, or the loopback-only rule.
  void set_up_security();
  // Without CURVE: PLAIN on each socket with a password (the per-user secret, or
  // BrokerOptions::worker_password on the worker socket), checked by the ZAP handler.
  void set_up_passwords();
  // Answers one ZAP request (the handshake of a connection waits for it).
  void serve_zap();
  void apply_reload();

  static std::string bind(zmq::socket_t& socket, const std::string& endpoint, const char* what) {
    try {
      socket.bind(endpoint);
    } catch (const zmq::error_t& e) {
      throw Error(ErrorCode::kInvalidArgument,
                  std::string("broker: cannot bind ") + what + " endpoint '" + endpoint + "': " + e.what());
    }
    return socket.get(zmq::sockopt::last_endpoint);
  }

  void on_client_message(std::vector<zmq::message_t>& frames);
  void on_worker_message(std::vector<zmq::message_t>& frames);
  // One chunk of a SUBMIT (a header frame and its payload) from the client `identity`. Returns
  // false when it answered with ERROR or DISCONNECT (or is draining): the rest are not read.
  bool on_submit(const std::string& identity, const zmq::message_t& header_frame, zmq::message_t& payload);
  // One result of a WORKER_RESULT (a header frame and its payload) from the peer `identity`.
  // Returns false when the header does not decode (an ERROR was sent): the rest are not read.
  bool on_worker_result(const std::string& identity, const zmq::message_t& header_frame, zmq::message_t& payload);
  // Sends `tickets` (assigned to `worker` by the scheduler, in order) in as few TASK messages as
  // the protocol allows and makes them the worker's; appends to `started` those whose client
  // asked for STARTED. A worker that cannot be reached is lost and the chunks queued again.
  void send_tasks(WorkerState& worker, const std::vector<std::uint64_t>& tickets, std::vector<std::uint64_t>& started);
  void dispatch();
  // STARTED (kStartedAfter): the earliest due, after dropping those answered already; and sending
  // those due by `now` whose chunk is still out.
  std::optional<Clock::time_point> next_started_due();
  void send_started(Clock::time_point now);
  void heartbeat_tick();
  void announce_workers();
  // One chunk no longer needs its broadcast context (hash 0: none). A context no chunk uses is
  // kept for a liveness period (the client's next chunks may be on their way), then freed by
  // heartbeat_tick(); a chunk naming a freed context is answered kContextMissing and resent.
  static void release_context(ClientState& client, std::uint64_t hash) {
    const auto context = client.contexts.find(hash);
    if (hash == 0 || context == client.contexts.end() || context->second.live_chunks == 0) return;
    if (--context->second.live_chunks == 0) context->second.idle_since = Clock::now();
  }

  ClientState& touch_client(const std::string& identity);
  // Why a SUBMIT of `bytes` for `job` does not fit in the client's quotas now (kResourceExhausted)
  // or ever (kInvalidArgument), or nullopt when it fits.
  std::optional<Status> over_quota(const ClientState& client, std::uint64_t job, std::int64_t bytes) const;
  // Starts the status record of the job `submit` belongs to, if it is new.
  void note_job(ClientState& client, const proto::Submit& submit);
  // Stores a CONTEXT if it fits in the client's quotas, freeing contexts no chunk uses (oldest
  // first) to make room; else remembers it as refused.
  void keep_context(ClientState& client, std::uint64_t hash, zmq::message_t& payload);
  // A READY from `peer` (its address, or its key with CURVE): false when that peer is over its
  // rate (BrokerOptions::max_ready_per_second).
  bool ready_allowed(const std::string& peer, Clock::time_point now);
  // Queues a chunk for dispatch (`front`: it was put back after a loss) and lets the client know
  // nothing (it waits for the result).
  void queue_chunk(std::uint64_t ticket, bool front);
  // Answers a chunk at once with an error outcome (no worker ran it) and forgets it.
  void answer_with_error(std::uint64_t ticket, ErrorCode code, const std::string& message);
  // A worker declared lost for silence is alive after all: the chunks it held get their retry back.
  void refund(std::uint64_t instance, const char* how);
  // The supervisor of a worker already declared lost (unreachable: its connection went as it
  // died, before this report came) says it crashed: the chunk it was running is blamed for the
  // crash as if the report had come first, so a poison chunk still fails after --poison-kills
  // crashes, not one more.
  void blame_crash_after_loss(const proto::WorkerExited& report, const std::string& key);
  // The result of `ticket` from a process it is no longer assigned to: accepted when the chunk is
  // still open and was sent to that process (first answer wins). Returns true if forwarded.
  // `identity`: the connection it came on; `registered`: result.instance is the instance registered
  // on that connection (else only a holder's own connection may answer for it).
  bool accept_late_result(proto::WorkerResult& result, zmq::message_t& payload, const std::string& identity,
                          bool registered);
  // Why an ok result cannot be the chunk's (its count differs), or nullopt when it can.
  static std::optional<std::string> wrong_count(const proto::WorkerResult& result, const Chunk& chunk);
  // Forwards a worker's answer for a chunk to its client and forgets the chunk. `answered_by`: the
  // instance of the worker process that answered (0: the broker answers itself).
  void forward_result(std::uint64_t ticket, proto::Outcome&& outcome, zmq::message_t& payload,
                      std::uint64_t answered_by = 0);
  // REJECT: the client could not decode the results of one of its chunks.
  void on_reject(ClientState& client, const proto::Reject& reject);
  // Sends the RESULT frames forward_result() gathered for `client` (send_results) or for every
  // client (flush_results, once per pass of the loop).
  void send_results(ClientState& client);
  void flush_results();
  void drop_client(const std::string& identity, const char* why);
  // `running` (kCrash only): the chunk the worker was running, from its supervisor; 0 = none.
  void lose_worker(std::string identity, const std::string& cause, Loss loss,
                   std::uint64_t running = 0);  // by value: callers pass keys it erases
  void finish_chunk(std::uint64_t ticket);
  // Nobody waits for `ticket` any more: its worker, if it holds it, drops it or (running) ends
  // after a grace of one heartbeat interval, so abandoned work does not hold workers.
  void abandon(std::uint64_t ticket, const Chunk& chunk);
  void requeue(std::uint64_t ticket, const std::string& cause, bool blamed, bool counted);
  void fail_chunk(std::uint64_t ticket, const std::string& why);
  void disconnect_everyone();
  void reply_error(zmq::socket_t& socket, const std::string& identity, const Status& status);
  // Answers ERROR kUnavailable to a peer over a cap; logged at most once per interval.
  void refuse_peer(zmq::socket_t& socket, const std::string& identity, const std::string& why);
  // Sends the pending worker-count announcement (at most one per turn of the event loop, however
  // many workers came and went in it).
  void flush_announcement();
  void send_to_client(ClientState& client, std::vector<zmq::message_t>& frames);
  bool send_to_worker(WorkerState& worker, std::vector<zmq::message_t>& frames);
  std::uint32_t worker_count() const { return static_cast<std::uint32_t>(workers_by_id_.size()); }
  proto::StatusReply status_reply() const;

  BrokerOptions options_;
  Context context_;
  // Declared before the endpoints' sockets: bound before them, closed after them, so no handshake
  // ever finds it missing.
  zmq::socket_t zap_;
  bool zap_bound_ = false;  // CURVE or a worker password: ZeroMQ asks zap_ about each handshake
  detail::KeyRing keys_;
  std::atomic<bool> reload_requested_{false};
  zmq::socket_t clients_;
  zmq::socket_t workers_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<detail::Metrics> metrics_;  // does nothing without --metrics
  int wake_fd_ = -1;
  std::atomic<bool> stop_requested_{false};  // drain, then return
  std::atomic<bool> stop_now_{false};        // return without draining

  std::pmr::unsynchronized_pool_resource node_pool_;  // before everything that uses it
  std::unordered_map<std::string, WorkerState> workers_by_id_;
  std::unordered_map<std::string, ClientState> clients_by_id_;
  std::pmr::unordered_map<std::uint64_t, Chunk> chunks_{&node_pool_};  // every chunk not yet answered
  struct StartedDue {
    Clock::time_point due;
    std::uint64_t ticket;
  };
  std::deque<StartedDue> started_due_;  // chunks whose client asked for STARTED, in order of dispatch
  detail::Scheduler scheduler_;                      // which queued chunk goes to which worker
  std::unordered_map<detail::Scheduler::WorkerHandle, std::string> identity_by_handle_;
  std::unordered_map<std::uint64_t, std::string> identity_by_instance_;  // registered processes
  // Supervisors one of whose processes answered a chunk, with their CURVE key name: they vouch for
  // their other processes, which skip probation. A supervisor's whole id is known only to it, its
  // processes and this broker (status shows half), so a stranger cannot claim one.
  std::unordered_map<std::uint64_t, std::string> proven_supervisors_;
  // The worker answered a chunk: it leaves probation, and so do its siblings (same supervisor).
  void prove(WorkerState& worker);
  std::unordered_map<std::uint64_t, SilentLoss> silenced_;  // by instance; forgotten after kSilentMemory
  // Chunks past their retry budget for silent losses, and since when: they fail after two more
  // liveness periods unless a worker they were lost on turns out to be alive (refund).
  std::unordered_map<std::uint64_t, Clock::time_point> over_budget_;
  std::uint64_t next_ticket_ = 1;
  Clock::time_point last_refusal_logged_{};
  LogThrottle bad_message_log_;
  LogThrottle handshake_refusals_;
  LogThrottle cap_refusals_;
  bool announcement_pending_ = false;
  std::unordered_map<std::string, std::uint64_t> bad_by_peer_;  // since the last report
  struct ReadyBudget {
    double tokens = 0;
    Clock::time_point refilled{};
  };
  std::unordered_map<std::string, ReadyBudget> ready_budgets_;  // by peer; idle ones dropped each tick

  std::uint64_t chunks_done_ = 0;
  std::uint64_t chunks_failed_ = 0;
  std::uint64_t chunks_redispatched_ = 0;
  std::uint64_t bad_messages_ = 0;
  std::vector<std::string> results_pending_;  // clients whose results_out is not empty
  std::uint64_t context_bytes_received_ = 0;
  std::uint64_t context_bytes_sent_ = 0;
};

void Broker::Impl::set_up_security() {
  const bool any_curve_option = !options_.curve_secret_file.empty() || !options_.client_keys_dir.empty() ||
                                !options_.worker_keys_dir.empty();
  if (!curve()) {
    if (any_curve_option) {
      throw Error(ErrorCode::kInvalidArgument,
                  "broker: CURVE needs the secret key file (--curve-secret) as well as --client-keys and --worker-keys");
    }
    for (const auto& endpoint : {options_.client_endpoint, options_.worker_endpoint}) {
      if (detail::is_loopback_endpoint(endpoint)) continue;
      if (!options_.insecure) {
        throw Error(ErrorCode::kInvalidArgument,
                    "broker: refusing to bind '" + endpoint +
                        "' without CURVE: anyone who can reach it could run tasks and read every input. Give "
                        "--curve-secret, --client-keys and --worker-keys (see docs/SECURITY.md), bind a loopback "
                        "address such as tcp://127.0.0.1:5555, or pass --insecure on a network you trust");
      }
    }
    set_up_passwords();
    return;
  }
  if (!options_.worker_password.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "broker: a worker password is for a broker without CURVE (CURVE keys "
                                             "authenticate workers already)");
  }
  if (options_.client_keys_dir.empty() || options_.worker_keys_dir.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "broker: CURVE needs both --client-keys and --worker-keys directories");
  }
  const CurveKeyPair own = read_curve_secret_file(options_.curve_secret_file);
  keys_ = read_key_ring(options_);
  if (keys_.clients.empty()) log_->warn("no client keys in {}: no client can connect", options_.client_keys_dir.string());
  if (keys_.workers.empty()) log_->warn("no worker keys in {}: no worker can connect", options_.worker_keys_dir.string());
  try {
    zap_.bind(kZapEndpoint);
    zap_bound_ = true;
  } catch (const zmq::error_t& e) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("broker: cannot start the ZAP handler (another CURVE broker in this context?): ") + e.what());
  }
  const std::pair<zmq::socket_t*, std::string_view> sockets[] = {{&clients_, detail::kClientDomain},
                                                                  {&workers_, detail::kWorkerDomain}};
  for (const auto& [socket, domain] : sockets) {
    socket->set(zmq::sockopt::curve_server, 1);
    socket->set(zmq::sockopt::curve_secretkey, own.secret_key);
    socket->set(zmq::sockopt::zap_domain, std::string(domain));
    const int enforce = 1;
    if (zmq_setsockopt(socket->handle(), ZMQ_ZAP_ENFORCE_DOMAIN, &enforce, sizeof(enforce)) != 0) {
      throw Error(ErrorCode::kInternal, std::string("broker: cannot set ZMQ_ZAP_ENFORCE_DOMAIN: ") +
                                            zmq_strerror(zmq_errno()));
    }
  }
  log_->info("CURVE on: broker key {}, {} client keys, {} worker keys", own.public_key, keys_.clients.size(),
             keys_.workers.size());
}

void Broker::Impl::set_up_passwords() {
  if (!options_.worker_password.empty() && !detail::is_loopback_endpoint(options_.worker_endpoint)) {
    throw Error(ErrorCode::kInvalidArgument, "broker: a worker password travels in clear: the worker endpoint '" +
                                                 options_.worker_endpoint + "' must be a loopback one");
  }
  // The per-user secret on every socket that has no password of its own and is not inproc:// (where
  // only this process can connect).
  const bool clients_need_secret = !options_.client_endpoint.starts_with("inproc://");
  const bool workers_need_secret =
      options_.worker_password.empty() && !options_.worker_endpoint.starts_with("inproc://");
  std::string secret;
  std::optional<detail::SecretLocation> location;
  if (clients_need_secret || workers_need_secret) {
    location = detail::locate_secret(options_.secret_file, detail::secret_environment());
    if (location) secret = detail::read_or_create_secret(*location);
  }
  keys_.client_password = clients_need_secret ? secret : std::string();
  keys_.worker_password = workers_need_secret ? secret : options_.worker_password;
  const bool reachable = !(detail::is_loopback_endpoint(options_.client_endpoint) &&
                           detail::is_loopback_endpoint(options_.worker_endpoint));
  if (location) {
    log_->info("without CURVE: clients and workers must give this user's secret from {} (the same user's programs "
               "find it by themselves; others give --secret-file)",
               location->file.string());
    if (options_.insecure && reachable) {
      log_->warn("INSECURE: no CURVE; the secret travels in clear to {} and {}: whoever can read that network can take "
                 "it, then submit work, register as a worker and read every input and result",
                 options_.client_endpoint, options_.worker_endpoint);
    }
  } else if (clients_need_secret || workers_need_secret) {
    log_->warn("{}: no CURVE and no secret (--secret-file none): anyone who can reach {} or {} can submit work, "
               "register as a worker and read every input and result",
               options_.insecure && reachable ? "INSECURE" : "UNPROTECTED", options_.client_endpoint,
               options_.worker_endpoint);
  }
  const std::pair<zmq::socket_t*, const std::string*> sockets[] = {{&clients_, &keys_.client_password},
                                                                   {&workers_, &keys_.worker_password}};
  for (const auto& [socket, password] : sockets) {
    if (password->empty()) continue;
    if (!zap_bound_) {
      try {
        zap_.bind(kZapEndpoint);
        zap_bound_ = true;
      } catch (const zmq::error_t& e) {
        throw Error(ErrorCode::kInvalidArgument,
                    std::string("broker: cannot start the ZAP handler (another broker with keys in this context?): ") +
                        e.what());
      }
    }
    socket->set(zmq::sockopt::plain_server, 1);
    socket->set(zmq::sockopt::zap_domain,
                std::string(socket == &clients_ ? detail::kClientDomain : detail::kWorkerDomain));
    const int enforce = 1;
    if (zmq_setsockopt(socket->handle(), ZMQ_ZAP_ENFORCE_DOMAIN, &enforce, sizeof(enforce)) != 0) {
      throw Error(ErrorCode::kInternal, std::string("broker: cannot set ZMQ_ZAP_ENFORCE_DOMAIN: ") +
                                            zmq_strerror(zmq_errno()));
    }
  }
}

void Broker::Impl::serve_zap() {
  for (int i = 0; i < kReceiveBatch; ++i) {
    auto frames = wire::receive(zap_);
    if (!frames) return;
    std::vector<std::string> request;
    request.reserve(frames->size());
    for (const auto& frame : *frames) request.push_back(wire::to_string(frame));
    const detail::ZapReply reply = detail::decide_zap(request, keys_);
    if (reply.status_code != "200") {
      if (const auto refused = handshake_refusals_.count(Clock::now(), options_.heartbeat_interval)) {
        const std::string domain = request.size() > 2 ? detail::printable(request[2], 32) : "";
        const std::string address = request.size() > 3 ? detail::printable(request[3], 64) : "";
        log_->warn("refused {} connection{} since the last report; latest from {} on {}: {}", refused,
                   plural(refused), address, domain, reply.status_text);
      }
    }
    std::vector<zmq::message_t> out;
    for (const std::string_view part : {std::string_view("1.0"), std::string_view(reply.request_id),
                                        std::string_view(reply.status_code), std::string_view(reply.status_text),
                                        std::string_view(reply.user_id), std::string_view()}) {
      out.emplace_back(part.data(), part.size());
    }
    (void)wire::send(zap_, out, false);
  }
}

void Broker::Impl::apply_reload() {
  if (!reload_requested_.exchange(false) || !curve()) return;
  try {
    keys_ = read_key_ring(options_);
    log_->info("keys reloaded: {} client keys, {} worker keys (connections already made stay)", keys_.clients.size(),
               keys_.workers.size());
  } catch (const std::exception& e) {
    log_->error("keys not reloaded, the old ones stay in use: {}", e.what());
  }
}

void Broker::Impl::run() {
  log_->info("broker serving clients={} workers={} heartbeat={}ms x{}", client_endpoint_, worker_endpoint_,
             options_.heartbeat_interval.count(), options_.heartbeat_liveness);
  // Each ZeroMQ socket in the poll, and each receive that finds nothing, costs two system calls
  // (ZeroMQ looks at the socket's command pipe): the loop polls zap_ only where it is bound, and
  // reads only the sockets the poll found readable (a socket left with messages after
  // kReceiveBatch is readable at the next poll).
  std::array<zmq::pollitem_t, 4> items{{
      {clients_.handle(), 0, ZMQ_POLLIN, 0},
      {workers_.handle(), 0, ZMQ_POLLIN, 0},
      {nullptr, wake_fd_, ZMQ_POLLIN, 0},
      {zap_bound_ ? zap_.handle() : nullptr, -1, ZMQ_POLLIN, 0},
  }};
  auto next_tick = Clock::now() + options_.heartbeat_interval;
  std::optional<Clock::time_point> drain_deadline;
  while (!stop_now_.load()) {
    if (stop_requested_.load() && !drain_deadline) {
      drain_deadline = Clock::now() + options_.drain_timeout;
      log_->info("broker draining: {} chunks in flight, {} queued (handed back to their clients)",
                 std::count_if(chunks_.begin(), chunks_.end(), [](const auto& c) { return !c.second.worker.empty(); }),
                 std::count_if(chunks_.begin(), chunks_.end(), [](const auto& c) { return c.second.worker.empty(); }));
    }
    if (drain_deadline) {
      const bool idle = std::none_of(chunks_.begin(), chunks_.end(), [](const auto& c) { return !c.second.worker.empty(); });
      if (idle || Clock::now() >= *drain_deadline) break;
    }
    auto wait = std::max(std::chrono::milliseconds(0), since(Clock::now(), next_tick));
    if (drain_deadline) wait = std::min(wait, std::chrono::milliseconds(10));
    if (const auto started_due = next_started_due()) {
      wait = std::min(wait, std::max(std::chrono::milliseconds(0),
                                     std::chrono::ceil<std::chrono::milliseconds>(*started_due - Clock::now())));
    }
    zmq::poll(items.data(), items.size(), wait);
    if ((items[2].revents & ZMQ_POLLIN) != 0) {
      std::uint64_t value = 0;
      [[maybe_unused]] const auto got = ::read(wake_fd_, &value, sizeof(value));
    }
    apply_reload();
    if ((items[3].revents & ZMQ_POLLIN) != 0) serve_zap();
    for (int i = 0; (items[1].revents & ZMQ_POLLIN) != 0 && i < kReceiveBatch; ++i) {
      auto frames = wire::receive(workers_);
      if (!frames) break;
      on_worker_message(*frames);
    }
    flush_results();  // the results of those, at once
    for (int i = 0; (items[0].revents & ZMQ_POLLIN) != 0 && i < kReceiveBatch; ++i) {
      auto frames = wire::receive(clients_);
      if (!frames) break;
      on_client_message(*frames);
    }
    if (!drain_deadline) dispatch();
    flush_results();
    send_started(Clock::now());
    flush_announcement();
    metrics_->set_gauges(workers_by_id_.size(), clients_by_id_.size(), scheduler_.queued(),
                         chunks_.size() - std::min(chunks_.size(), scheduler_.queued()));
    if (Clock::now() >= next_tick) {
      heartbeat_tick();
      next_tick = Clock::now() + options_.heartbeat_interval;
    }
  }
  flush_results();
  disconnect_everyone();
  log_->info("broker stopped: {} chunks done, {} failed, {} re-dispatched, {} bad messages", chunks_done_,
             chunks_failed_, chunks_redispatched_, bad_messages_);
}

void Broker::Impl::disconnect_everyone() {
  // Workers and clients learn at once that we are going: workers register with the next broker,
  // clients resend what was not answered.
  for (auto& [id, worker] : workers_by_id_) {
    auto frames = wire::make_empty(Command::kDisconnect);
    (void)wire::send_to(workers_, id, frames);
  }
  for (auto& [id, client] : clients_by_id_) {
    auto frames = wire::make_empty(Command::kDisconnect);
    (void)wire::send_to(clients_, id, frames);
  }
}

void Broker::Impl::reply_error(zmq::socket_t& socket, const std::string& identity, const Status& status) {
  ++bad_messages_;
  // Counted per peer too (up to 1024 peers per report), so that the line names the worst one.
  if (bad_by_peer_.size() < 1024 || bad_by_peer_.contains(identity)) ++bad_by_peer_[identity];
  if (const auto bad = bad_message_log_.count(Clock::now(), options_.heartbeat_interval)) {
    const auto worst = std::max_element(bad_by_peer_.begin(), bad_by_peer_.end(),
                                        [](const auto& a, const auto& b) { return a.second < b.second; });
    log_->warn("{} bad message{} since the last report from {} peer{}, most ({}) from peer {}; latest from peer {}: {}",
               bad, plural(bad), bad_by_peer_.size(), plural(bad_by_peer_.size()), worst->second,
               detail::printable_identity(worst->first).substr(0, 32),
               detail::printable_identity(identity).substr(0, 32), detail::printable(status.to_string(), 200));
    bad_by_peer_.clear();
  }
  auto frames = wire::make(Command::kError, proto::ErrorReply{status.code(), status.message()});
  (void)wire::send_to(socket, identity, frames);
}

void Broker::Impl::refuse_peer(zmq::socket_t& socket, const std::string& identity, const std::string& why) {
  if (const auto refused = cap_refusals_.count(Clock::now(), options_.heartbeat_interval)) {
    log_->warn("refused {} peer{} since the last report: {}", refused, plural(refused), why);
  }
  auto frames = wire::make(Command::kError, proto::ErrorReply{ErrorCode::kUnavailable, why});
  (void)wire::send_to(socket, identity, frames);
}

Broker::Impl::ClientState& Broker::Impl::touch_client(const std::string& identity) {
  auto [it, inserted] = clients_by_id_.try_emplace(identity, &node_pool_);
  ClientState& client = it->second;
  const auto now = Clock::now();
  if (inserted) {
    client.identity = identity;
    client.last_sent = now;
    log_->debug("client {} connected", detail::printable_identity(identity));
  }
  client.last_heard = now;
  return client;
}

std::optional<Status> Broker::Impl::over_quota(const ClientState& client, std::uint64_t job, std::int64_t bytes) const {
  if (bytes > options_.max_client_bytes) {
    return Status(ErrorCode::kInvalidArgument, "a chunk of " + std::to_string(bytes) +
                                                   " bytes is larger than the broker's per-client quota of " +
                                                   std::to_string(options_.max_client_bytes) +
                                                   " bytes (--max-client-bytes); use a smaller chunksize");
  }
  std::string what;
  if (client.chunks >= options_.max_client_chunks) {
    what = std::to_string(client.chunks) + " chunks (--max-client-chunks " + std::to_string(options_.max_client_chunks) + ")";
  } else if (client.chunk_bytes + bytes > options_.max_client_bytes) {
    what = std::to_string(client.chunk_bytes) + " bytes of chunks (--max-client-bytes " +
           std::to_string(options_.max_client_bytes) + ")";
  } else if (!client.jobs.contains(job) && client.jobs.size() >= options_.max_client_jobs) {
    what = std::to_string(client.jobs.size()) + " jobs (--max-client-jobs " + std::to_string(options_.max_client_jobs) + ")";
  } else {
    return std::nullopt;
  }
  return Status(ErrorCode::kResourceExhausted, "client " + client.host + " pid " + std::to_string(client.pid) +
                                                   " holds its quota at the broker, " + what +
                                                   "; send it again when earlier chunks are answered");
}

void Broker::Impl::note_job(ClientState& client, const proto::Submit& submit) {
  auto [record, added] = client.job_records.try_emplace(submit.job);
  if (!added) return;
  record->second.task = detail::printable(submit.task);
  record->second.items_total = submit.job_items;
  record->second.started = record->second.idle_since = Clock::now();
  // Records outlive their tickets by a liveness period; a client that starts jobs very fast must
  // not make that unbounded.
  if (client.job_records.size() > 2 * options_.max_client_jobs) {
    std::erase_if(client.job_records, [&](const auto& entry) { return !client.jobs.contains(entry.first); });
  }
}

void Broker::Impl::keep_context(ClientState& client, std::uint64_t hash, zmq::message_t& payload) {
  const auto now = Clock::now();
  if (const auto held = client.contexts.find(hash); held != client.contexts.end()) {
    held->second.idle_since = now;
    return;
  }
  const auto bytes = static_cast<std::int64_t>(payload.size());
  auto remember_refused = [&](bool never) {
    if (client.refused_contexts.size() >= 256) client.refused_contexts.clear();  // bounded; they are resent
    client.refused_contexts[hash] = never;
    log_->log(never ? spdlog::level::warn : spdlog::level::debug,
              "client {} pid {}: not keeping a broadcast context of {} bytes ({} contexts, {} bytes held; quota {} "
              "contexts, {} bytes)",
              client.host, client.pid, bytes, client.contexts.size(), client.context_bytes,
              options_.max_client_contexts, options_.max_client_context_bytes);
  };
  if (bytes > options_.max_client_context_bytes) return remember_refused(true);
  auto fits = [&] {
    return client.contexts.size() < options_.max_client_contexts &&
           client.context_bytes + bytes <= options_.max_client_context_bytes;
  };
  while (!fits()) {  // free the context unused for longest, if any
    auto oldest = client.contexts.end();
    for (auto it = client.contexts.begin(); it != client.contexts.end(); ++it) {
      if (it->second.live_chunks == 0 && (oldest == client.contexts.end() || it->second.idle_since < oldest->second.idle_since)) {
        oldest = it;
      }
    }
    if (oldest == client.contexts.end()) return remember_refused(false);
    client.context_bytes -= static_cast<std::int64_t>(oldest->second.payload.size());
    client.contexts.erase(oldest);
  }
  ClientState::SharedContext& kept = client.contexts[hash];
  kept.payload = std::move(payload);
  kept.idle_since = now;
  client.context_bytes += bytes;
  client.refused_contexts.erase(hash);
}

bool Broker::Impl::ready_allowed(const std::string& peer, Clock::time_point now) {
  const double rate = options_.max_ready_per_second;
  if (ready_budgets_.size() >= 65536 && !ready_budgets_.contains(peer)) ready_budgets_.clear();  // bounded
  auto [entry, added] = ready_budgets_.try_emplace(peer);
  ReadyBudget& budget = entry->second;
  if (added) {
    budget.tokens = rate;
  } else {
    budget.tokens = std::min(rate, budget.tokens + rate * std::chrono::duration<double>(now - budget.refilled).count());
  }
  budget.refilled = now;
  if (budget.tokens < 1) return false;
  budget.tokens -= 1;
  return true;
}

void Broker::Impl::on_client_message(std::vector<zmq::message_t>& frames) {
  if (frames.size() < 2) return;  // nothing but an identity: cannot even answer
  const std::string identity = wire::to_string(frames[0]);
  auto command = proto::parse_signature(wire::view(frames[1]));
  if (!command) {
    reply_error(clients_, identity, command.status());
    return;
  }
  if (command.value() == Command::kSubmit) {  // [signature, then (header, payload) for each chunk]
    if (frames.size() < 4 || frames.size() % 2 != 0 ||
        frames.size() > 2 + 2 * std::size_t{proto::kMaxChunksPerMessage}) {
      reply_error(clients_, identity,
                  Status(ErrorCode::kMalformed, "SUBMIT needs a header and a payload frame for each of 1.." +
                                                    std::to_string(proto::kMaxChunksPerMessage) + " chunks, got " +
                                                    std::to_string(frames.size() - 2) + " frames after the signature"));
      return;
    }
    for (std::size_t i = 2; i < frames.size(); i += 2) {
      if (!on_submit(identity, frames[i], frames[i + 1])) break;
    }
    return;
  }
  if (frames.size() < 3 || frames.size() > 4) {
    reply_error(clients_, identity,
                Status(ErrorCode::kMalformed, "expected 2 or 3 frames, got " + std::to_string(frames.size() - 1)));
    return;
  }
  const auto header = wire::view(frames[2]);
  // A client we do not know (we restarted, or dropped it as silent) must say HELLO first: its work
  // is not here, and after our WELCOME it resends every chunk not yet answered.
  auto unknown_client = [&] {
    if (clients_by_id_.contains(identity)) return false;
    auto again = wire::make_empty(Command::kDisconnect);
    (void)wire::send_to(clients_, identity, again);
    return true;
  };
  switch (command.value()) {
    case Command::kHello: {
      auto hello = proto::decode<proto::Hello>(header);
      if (!hello) return reply_error(clients_, identity, hello.status());
      if (!clients_by_id_.contains(identity) && clients_by_id_.size() >= options_.max_clients) {
        return refuse_peer(clients_, identity,
                           "the broker serves its maximum of " + std::to_string(options_.max_clients) +
                               " clients (--max-clients)");
      }
      ClientState& client = touch_client(identity);
      client.host = detail::printable(hello.value().client_host);
      client.pid = hello.value().client_pid;
      client.key = key_name(frames[1]);
      client.link = wire::ConnectionProbe::of(frames[1]);
      log_->info("client {} pid {}{} said hello", client.host, client.pid,
                 client.key.empty() ? "" : " (key " + client.key + ")");
      auto reply = wire::make(Command::kWelcome,
                              proto::Welcome{worker_count(), static_cast<std::uint32_t>(options_.heartbeat_interval.count())});
      send_to_client(client, reply);
      return;
    }
    case Command::kContext: {
      if (frames.size() != 4) {
        return reply_error(clients_, identity, Status(ErrorCode::kMalformed, "CONTEXT without a payload frame"));
      }
      auto context = proto::decode<proto::ContextHeader>(header);
      if (!context) return reply_error(clients_, identity, context.status());
      if (unknown_client()) return;
      ClientState& client = touch_client(identity);
      context_bytes_received_ += frames[3].size();
      metrics_->bytes_received(frames[3].size());
      keep_context(client, context.value().hash, frames[3]);
      return;
    }
    case Command::kReject: {
      auto reject = proto::decode<proto::Reject>(header);
      if (!reject) return reply_error(clients_, identity, reject.status());
      if (unknown_client()) return;
      on_reject(touch_client(identity), reject.value());
      return;
    }
    case Command::kCancel: {
      auto cancel = proto::decode<proto::Cancel>(header);
      if (!cancel) return reply_error(clients_, identity, cancel.status());
      if (unknown_client()) return;
      ClientState& client = touch_client(identity);
      const auto job = client.jobs.find(cancel.value().job);
      if (job == client.jobs.end()) return;
      std::size_t dropped = 0;
      for (const std::uint64_t ticket : job->second) {
        const auto chunk = chunks_.find(ticket);
        if (chunk == chunks_.end()) continue;
        // A running chunk stays in its worker's tickets: the worker gets its credit back when it
        // answers, and the answer is then ignored; told to abandon it, it answers soon. The
        // scheduler forgets the queued ones.
        abandon(ticket, chunk->second);
        release_context(client, chunk->second.header.context_hash);
        --client.chunks;
        client.chunk_bytes -= static_cast<std::int64_t>(chunk->second.payload.size());
        scheduler_.forget(ticket);
        over_budget_.erase(ticket);
        chunks_.erase(chunk);
        ++dropped;
      }
      client.jobs.erase(job);
      client.job_records.erase(cancel.value().job);
      log_->debug("client {} cancelled job {}: {} chunks dropped", client.host, cancel.value().job, dropped);
      return;
    }
    case Command::kStatusRequest: {
      auto reply = wire::make(Command::kStatusReply, status_reply());
      const auto known = clients_by_id_.find(identity);
      if (known == clients_by_id_.end()) {  // answered, but a peer that never said HELLO leaves no state
        (void)wire::send_to(clients_, identity, reply);
        return;
      }
      touch_client(identity);
      send_to_client(known->second, reply);
      return;
    }
    case Command::kHeartbeat:
      if (unknown_client()) return;
      touch_client(identity);
      return;
    case Command::kDisconnect:
      drop_client(identity, "said goodbye");
      return;
    case Command::kReady:
    case Command::kWorkerResult:
    case Command::kWorkerExited:
    case Command::kWorkerProgress:
    case Command::kCredit:
      reply_error(clients_, identity,
                  Status(ErrorCode::kUnknownCommand, std::string(kClientEndpointMistake)));
      return;
    default:
      reply_error(clients_, identity,
                  Status(ErrorCode::kUnknownCommand,
                         "command " + std::to_string(static_cast<int>(command.value())) + " is not a client command"));
  }
}

bool Broker::Impl::on_submit(const std::string& identity, const zmq::message_t& header_frame, zmq::message_t& payload) {
  auto submit = proto::decode<proto::Submit>(wire::view(header_frame));
  if (!submit) {
    reply_error(clients_, identity, submit.status());
    return false;
  }
  if (submit.value().count == 0) {
    reply_error(clients_, identity, Status(ErrorCode::kMalformed, "SUBMIT with zero items"));
    return false;
  }
  if (!clients_by_id_.contains(identity)) {  // say HELLO first (see on_client_message)
    auto again = wire::make_empty(Command::kDisconnect);
    (void)wire::send_to(clients_, identity, again);
    return false;
  }
  ClientState& client = touch_client(identity);
  if (stop_requested_.load()) return false;  // draining: the client resends it to the next broker
  const std::uint64_t hash = submit.value().context_hash;
  const auto context = hash == 0 ? client.contexts.end() : client.contexts.find(hash);
  const bool context_missing = hash != 0 && context == client.contexts.end();
  const auto over = over_quota(client, submit.value().job, static_cast<std::int64_t>(payload.size()));
  if (hash != 0 && !context_missing && !over) ++context->second.live_chunks;
  const std::uint64_t ticket = next_ticket_++;
  const auto kind = scheduler_.kind(submit.value().task, submit.value().signature);
  client.jobs[submit.value().job].insert(ticket);
  note_job(client, submit.value());
  Chunk& chunk = chunks_[ticket];
  chunk.client = identity;
  chunk.received = Clock::now();
  metrics_->bytes_received(payload.size());
  chunk.header = std::move(submit.value());
  chunk.payload = std::move(payload);
  chunk.kind = kind;
  ++client.chunks;
  client.chunk_bytes += static_cast<std::int64_t>(chunk.payload.size());
  if (context_missing || over) chunk.header.context_hash = 0;  // holds no reference
  if (over) {
    answer_with_error(ticket, over->code(), over->message());
    return true;
  }
  if (context_missing) {
    if (const auto refused = client.refused_contexts.find(hash); refused != client.refused_contexts.end()) {
      if (refused->second) {
        answer_with_error(ticket, ErrorCode::kInvalidArgument,
                          "the broadcast context is larger than the broker's per-client quota of " +
                              std::to_string(options_.max_client_context_bytes) + " bytes (--max-client-context-bytes)");
      } else {
        answer_with_error(ticket, ErrorCode::kResourceExhausted,
                          "client " + client.host + " pid " + std::to_string(client.pid) +
                              " holds its quota of broadcast contexts at the broker (" +
                              std::to_string(client.contexts.size()) + " contexts, " +
                              std::to_string(client.context_bytes) +
                              " bytes; --max-client-contexts, --max-client-context-bytes); "
                              "send it again when earlier work is answered");
      }
      return true;
    }
    // Never sent, or freed after it went unused: the client sends it again.
    answer_with_error(ticket, ErrorCode::kContextMissing,
                      "the broker does not hold context " + std::to_string(hash) + "; send it again");
    return true;
  }
  const auto runnable = scheduler_.runnable(kind, Clock::now());
  switch (runnable.verdict) {
    case detail::Scheduler::Verdict::kUnknownTask:
      answer_with_error(ticket, ErrorCode::kUnknownTask, runnable.message);
      return true;
    case detail::Scheduler::Verdict::kSignatureMismatch:
      answer_with_error(ticket, ErrorCode::kSignatureMismatch, runnable.message);
      return true;
    case detail::Scheduler::Verdict::kRunnable:
    case detail::Scheduler::Verdict::kWait:
      queue_chunk(ticket, false);
      return true;
  }
  return true;
}

void Broker::Impl::on_worker_message(std::vector<zmq::message_t>& frames) {
  if (frames.size() < 2) return;
  const std::string identity = wire::to_string(frames[0]);
  auto command = proto::parse_signature(wire::view(frames[1]));
  if (!command) {
    reply_error(workers_, identity, command.status());
    return;
  }
  if (command.value() == Command::kWorkerResult) {  // [signature, then (header, payload) for each result]
    if (frames.size() < 4 || frames.size() % 2 != 0 ||
        frames.size() > 2 + 2 * std::size_t{proto::kMaxChunksPerMessage}) {
      reply_error(workers_, identity,
                  Status(ErrorCode::kMalformed, "WORKER_RESULT needs a header and a payload frame for each of 1.." +
                                                    std::to_string(proto::kMaxChunksPerMessage) + " results, got " +
                                                    std::to_string(frames.size() - 2) + " frames after the signature"));
      return;
    }
    const auto known = workers_by_id_.find(identity);
    const bool was_known = known != workers_by_id_.end();
    if (was_known) known->second.last_heard = Clock::now();
    for (std::size_t i = 2; i < frames.size(); i += 2) {
      if (!on_worker_result(identity, frames[i], frames[i + 1])) break;
    }
    if (!was_known) {
      // A worker we do not know (we restarted, or we declared it lost): ask it to register again.
      auto frames_out = wire::make_empty(Command::kDisconnect);
      (void)wire::send_to(workers_, identity, frames_out);
    }
    return;
  }
  if (frames.size() < 3 || frames.size() > 4) {
    reply_error(workers_, identity,
                Status(ErrorCode::kMalformed, "expected 2 or 3 frames, got " + std::to_string(frames.size() - 1)));
    return;
  }
  const auto header = wire::view(frames[2]);
  const auto now = Clock::now();

  if (command.value() == Command::kWorkerExited) {
    // From a supervisor, about one of its processes: faster and more precise than a heartbeat. It
    // is matched by the process's instance id, never by (host, pid), which containers repeat, and
    // taken only from the supervisor that process named when it registered.
    auto exited = proto::decode<proto::WorkerExited>(header);
    if (!exited) return reply_error(workers_, identity, exited.status());
    const auto& report = exited.value();
    const auto registered = identity_by_instance_.find(report.instance);
    if (registered == identity_by_instance_.end()) {  // lost already, said goodbye, or never registered
      blame_crash_after_loss(report, key_name(frames[1]));
      return;
    }
    const WorkerState& worker = workers_by_id_.at(registered->second);
    if (report.supervisor == 0 || worker.supervisor != report.supervisor || worker.key != key_name(frames[1])) {
      ++bad_messages_;
      log_->warn("ignored an exit report for worker {} pid {} [{}] from a peer that is not its supervisor", worker.host,
                 worker.pid, detail::short_id(worker.instance));
      return;
    }
    lose_worker(registered->second, "worker process " + detail::printable(report.cause, 128),
                report.crashed ? Loss::kCrash : Loss::kLost, report.running_ticket);
    return;
  }
  if (command.value() == Command::kReady) {
    auto ready = proto::decode<proto::Ready>(header);
    if (!ready) return reply_error(workers_, identity, ready.status());
    if (ready.value().credit == 0 || ready.value().credit > proto::kMaxCredit) {
      return reply_error(workers_, identity,
                         Status(ErrorCode::kMalformed, "READY credit must be 1.." + std::to_string(proto::kMaxCredit)));
    }
    if (ready.value().instance == 0 || ready.value().tasks.size() > proto::kMaxTasksPerWorker) {
      return reply_error(workers_, identity,
                         Status(ErrorCode::kMalformed, "READY needs an instance id and at most " +
                                                           std::to_string(proto::kMaxTasksPerWorker) + " tasks"));
    }
    const std::uint64_t instance = ready.value().instance;
    const std::uint32_t generation = ready.value().generation;
    // A process registers again on a new connection when it thought we were gone. Its READY from
    // an older connection can arrive after the newer one (ZeroMQ orders messages per connection
    // only): that one is stale, and its connection is closed.
    const auto earlier = identity_by_instance_.find(instance);
    const auto silent = silenced_.find(instance);
    if ((earlier != identity_by_instance_.end() && earlier->second != identity &&
         workers_by_id_.at(earlier->second).generation >= generation) ||
        (silent != silenced_.end() && silent->second.generation >= generation)) {
      log_->debug("ignored a stale READY (connection {}) from worker [{}]", generation, detail::short_id(instance));
      return;
    }
    if (const std::string key = key_name(frames[1]), peer = key.empty() ? peer_address(frames[1]) : "key " + key;
        !ready_allowed(peer, now)) {
      return refuse_peer(workers_, identity,
                         "too many registrations from " + detail::printable(peer, 64) + " (more than " +
                             std::to_string(options_.max_ready_per_second) +
                             " per second, --max-ready-per-second); try again later");
    }
    if (!workers_by_id_.contains(identity) && !identity_by_instance_.contains(instance) &&
        workers_by_id_.size() >= options_.max_workers) {
      return refuse_peer(workers_, identity,
                         "the broker has its maximum of " + std::to_string(options_.max_workers) +
                             " workers registered (--max-workers)");
    }
    if (workers_by_id_.contains(identity)) lose_worker(identity, "registered again", Loss::kLost);
    if (const auto older = identity_by_instance_.find(instance); older != identity_by_instance_.end()) {
      // The same process on a new connection: its old registration's chunks go back without
      // penalty; the one it is running may still answer (late result).
      lose_worker(older->second, "registered again on a new connection", Loss::kHandback);
    }
    refund(instance, "registered again");
    WorkerState& worker = workers_by_id_.try_emplace(identity, &node_pool_).first->second;
    worker.identity = identity;
    worker.host = detail::printable(ready.value().host);
    worker.key = key_name(frames[1]);
    worker.pid = ready.value().pid;
    worker.instance = instance;
    worker.supervisor = ready.value().supervisor;
    worker.generation = generation;
    for (const auto& task : ready.value().tasks) {  // shown by `poolmap status`: printable and short
      worker.tasks.push_back({detail::printable(task.name, 256), detail::printable(task.signature, 256)});
    }
    worker.last_heard = now;
    worker.last_sent = now;
    worker.link = wire::ConnectionProbe::of(frames[1]);
    // On probation until it answers a chunk: one chunk at a time, and only what the proven
    // workers have no credit for (a stream of peers that register, take chunks and vanish must
    // not starve the clients); its losses spend no chunk's retries.
    const auto vouched = proven_supervisors_.find(worker.supervisor);
    const bool on_probation =
        worker.supervisor == 0 || vouched == proven_supervisors_.end() || vouched->second != worker.key;
    worker.handle = scheduler_.add_worker(ready.value().credit, ready.value().tasks, now, on_probation);
    worker.credit = ready.value().credit;
    identity_by_handle_[worker.handle] = identity;
    identity_by_instance_[instance] = identity;
    log_->info("worker {} pid {} [{}]{} ready (credit {}, {} tasks, {} workers)", worker.host, worker.pid,
               detail::short_id(instance), worker.key.empty() ? "" : " (key " + worker.key + ")",
               ready.value().credit, worker.tasks.size(), workers_by_id_.size());
    announce_workers();
    return;
  }

  const auto found = workers_by_id_.find(identity);
  if (found == workers_by_id_.end()) {
    if (is_client_command(command.value())) {  // a client pointed at the worker endpoint
      return reply_error(workers_, identity, Status(ErrorCode::kUnknownCommand, std::string(kWorkerEndpointMistake)));
    }
    if (command.value() != Command::kDisconnect) {
      // A worker we do not know (we restarted, or we declared it lost): ask it to register again.
      auto frames_out = wire::make_empty(Command::kDisconnect);
      (void)wire::send_to(workers_, identity, frames_out);
    }
    return;
  }
  WorkerState& worker = found->second;
  worker.last_heard = now;

  switch (command.value()) {
    case Command::kCredit: {
      auto credit = proto::decode<proto::Credit>(header);
      if (!credit) return reply_error(workers_, identity, credit.status());
      if (credit.value().credit == 0 || credit.value().credit > proto::kMaxCredit) {
        return reply_error(workers_, identity,
                           Status(ErrorCode::kMalformed, "CREDIT must be 1.." + std::to_string(proto::kMaxCredit)));
      }
      scheduler_.change_credit(worker.handle,
                               static_cast<std::int64_t>(credit.value().credit) - static_cast<std::int64_t>(worker.credit),
                               worker.tickets.empty());
      log_->debug("worker {} pid {} [{}] credit {} -> {}", worker.host, worker.pid, detail::short_id(worker.instance),
                  worker.credit, credit.value().credit);
      worker.credit = credit.value().credit;
      return;
    }
    case Command::kWorkerProgress: {
      auto progress = proto::decode<proto::WorkerProgress>(header);
      if (!progress) return reply_error(workers_, identity, progress.status());
      const auto chunk = chunks_.find(progress.value().ticket);
      // Only the worker that holds the chunk now speaks for it, and only forward.
      if (chunk == chunks_.end() || chunk->second.worker != identity) return;
      const std::uint32_t items = progress.value().items_done;
      if (items <= chunk->second.items_reported || items >= chunk->second.header.count) return;
      chunk->second.items_reported = items;
      const auto client = clients_by_id_.find(chunk->second.client);
      if (client == clients_by_id_.end()) return;
      auto out = wire::make(Command::kChunkProgress,
                            proto::ChunkProgress{chunk->second.header.job, chunk->second.header.chunk, items});
      send_to_client(client->second, out);
      return;
    }
    case Command::kHeartbeat:
      return;
    case Command::kDisconnect:
      lose_worker(identity, "worker said goodbye", Loss::kHandback);
      return;
    default:
      reply_error(workers_, identity,
                  Status(ErrorCode::kUnknownCommand,
                         "command " + std::to_string(static_cast<int>(command.value())) + " is not a worker command"));
  }
}

void Broker::Impl::forward_result(std::uint64_t ticket, proto::Outcome&& outcome, zmq::message_t& payload,
                                  std::uint64_t answered_by) {
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end()) return;
  const auto client = clients_by_id_.find(chunk->second.client);
  if (client == clients_by_id_.end()) {
    finish_chunk(ticket);
    return;
  }
  if (outcome.code == ErrorCode::kOk) {
    ++chunks_done_;
    ClientState& owner = client->second;
    if (answered_by != 0) {
      const ClientState::Delivery delivery{chunk->second.header.job, chunk->second.header.chunk, chunk->second.attempt,
                                           answered_by};
      if (owner.deliveries.size() < kDeliveriesKept) {
        owner.deliveries.push_back(delivery);
      } else {
        owner.deliveries[owner.next_delivery] = delivery;
        owner.next_delivery = (owner.next_delivery + 1) % kDeliveriesKept;
      }
    }
    if (const auto record = owner.job_records.find(chunk->second.header.job); record != owner.job_records.end()) {
      record->second.items_done += chunk->second.header.count;
      if (record->second.items_total != 0 && record->second.items_done >= record->second.items_total) {
        owner.job_records.erase(record);
      }
    }
    metrics_->completed(std::chrono::duration<double>(Clock::now() - chunk->second.received).count());
  } else if (outcome.code != ErrorCode::kContextMissing && outcome.code != ErrorCode::kResourceExhausted) {
    ++chunks_failed_;  // those two are sent again, not failed
    metrics_->failed();
  }
  metrics_->bytes_sent(payload.size());
  const proto::ClientResult forward{chunk->second.header.job, chunk->second.header.chunk, chunk->second.attempt,
                                    std::move(outcome), worker_count()};
  ClientState& owner = client->second;
  if (owner.results_out.needs_new_message(payload.size())) {
    const std::string owner_id = owner.identity;
    send_results(owner);
    if (!clients_by_id_.contains(owner_id)) return;  // dropped (unreachable), and its chunks with it
  }
  if (owner.results_out.empty()) results_pending_.push_back(owner.identity);
  owner.results_out.add(wire::header_message(forward), std::move(payload));
  finish_chunk(ticket);
}

void Broker::Impl::prove(WorkerState& worker) {
  if (!scheduler_.on_probation(worker.handle)) return;
  scheduler_.prove(worker.handle, worker.tickets.empty());
  if (worker.supervisor == 0) return;
  if (proven_supervisors_.size() >= 65536) proven_supervisors_.clear();  // bounded; they prove themselves again
  proven_supervisors_.try_emplace(worker.supervisor, worker.key);
  for (auto& [id, sibling] : workers_by_id_) {
    if (sibling.supervisor == worker.supervisor && sibling.key == worker.key) {
      scheduler_.prove(sibling.handle, sibling.tickets.empty());
    }
  }
}

void Broker::Impl::on_reject(ClientState& client, const proto::Reject& reject) {
  // Only a delivery to this client, that this broker made: a client can drop the worker that lied
  // to it, not any worker it names.
  const auto delivery = std::find_if(client.deliveries.begin(), client.deliveries.end(), [&](const auto& d) {
    return d.job == reject.job && d.chunk == reject.chunk && d.attempt == reject.attempt;
  });
  if (delivery == client.deliveries.end()) {
    log_->info("client {} pid {} could not decode chunk {} of job {} (attempt {}), answered before this broker's "
               "memory of deliveries: {}",
               client.host, client.pid, reject.chunk, reject.job, reject.attempt, detail::printable(reject.reason, 256));
    return;
  }
  const std::uint64_t instance = delivery->instance;
  delivery->instance = 0;  // one REJECT per delivery
  ++bad_messages_;
  const std::string why = "returned results for chunk " + std::to_string(reject.chunk) + " of job " +
                          std::to_string(reject.job) + " that do not decode at the client (" +
                          detail::printable(reject.reason, 256) + ")";
  const auto registered = identity_by_instance_.find(instance);
  if (instance == 0 || registered == identity_by_instance_.end()) {
    log_->warn("worker [{}] {}; it is gone already", detail::short_id(instance), why);
    return;
  }
  lose_worker(registered->second, why, Loss::kBroken);
}

void Broker::Impl::send_results(ClientState& client) {
  if (client.results_out.empty()) return;
  auto frames = client.results_out.take();
  send_to_client(client, frames);  // may drop the client
}

void Broker::Impl::flush_results() {
  std::vector<std::string> pending;
  pending.swap(results_pending_);
  for (const std::string& identity : pending) {
    if (const auto client = clients_by_id_.find(identity); client != clients_by_id_.end()) send_results(client->second);
  }
}

bool Broker::Impl::on_worker_result(const std::string& identity, const zmq::message_t& header_frame,
                                    zmq::message_t& payload) {
  auto result = proto::decode<proto::WorkerResult>(wire::view(header_frame));
  const auto found = workers_by_id_.find(identity);
  if (found == workers_by_id_.end()) {
    // No registration on this connection. A worker we declared lost may answer on it after all
    // (busy, not dead), but only on the connection it was registered on: an instance id is what
    // the message claims, and a stranger may claim any.
    if (result) {
      const auto silent = silenced_.find(result.value().instance);
      if (silent != silenced_.end() && silent->second.identity == identity &&
          silent->second.key == key_name(header_frame)) {
        refund(result.value().instance, "answered");
      }
      (void)accept_late_result(result.value(), payload, identity, false);  // else dropped (also benign: a chunk answered already)
    }
    return true;
  }
  WorkerState& worker = found->second;
  if (!result) {
    reply_error(workers_, identity, result.status());
    return false;
  }
  metrics_->bytes_received(payload.size());
  const std::uint64_t ticket = result.value().ticket;
  while (!worker.dispatch_order.empty() && !worker.tickets.contains(worker.dispatch_order.front())) {
    worker.dispatch_order.pop_front();  // answered earlier
  }
  if (worker.tickets.erase(ticket) == 0) {
    // Not a chunk this registration holds: perhaps one it ran before it registered again.
    result.value().instance = worker.instance;  // this registration's process, whatever it says
    if (!accept_late_result(result.value(), payload, identity, true)) {
      log_->debug("worker {} pid {} [{}] returned ticket {} it does not hold", worker.host, worker.pid,
                  detail::short_id(worker.instance), ticket);
    }
    return true;
  }
  scheduler_.return_credit(worker.handle, worker.tickets.empty());
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end()) return true;  // cancelled while running, or answered by another worker
  if (chunk->second.worker != identity) return true;  // put back and sent elsewhere; that copy answers
  if (const auto wrong = wrong_count(result.value(), chunk->second)) {
    // Never delivered: a failed attempt of this chunk on this worker, which is dropped.
    ++bad_messages_;
    const std::string described = *wrong + " (worker " + worker.host + " pid " + std::to_string(worker.pid) +
                                  " [" + detail::short_id(worker.instance) + "])";
    requeue(ticket, described, false, true);
    lose_worker(identity, *wrong, Loss::kBroken);
    return true;  // the rest of its results are late ones now
  }
  if (result.value().outcome.code == ErrorCode::kContextMissing) {
    // The worker evicted the chunk's context: send the chunk again, with the context.
    worker.contexts.erase(chunk->second.header.context_hash);
    chunk->second.worker.clear();
    queue_chunk(ticket, true);
    return true;
  }
  if (result.value().outcome.code == ErrorCode::kUnavailable) {
    // Handed back before it started (the worker's chunk ran long with others waiting behind
    // it): to the front of the queue, for an idle worker, without penalty.
    chunk->second.worker.clear();
    queue_chunk(ticket, true);
    return true;
  }
  if (result.value().outcome.code == ErrorCode::kOk) {
    ++worker.chunks_done;
  } else if (result.value().outcome.code != ErrorCode::kCancelled) {
    ++worker.chunks_failed;
  }
  prove(worker);  // it ran a chunk and answered it
  forward_result(ticket, std::move(result.value().outcome), payload, worker.instance);
  return true;
}

std::optional<std::string> Broker::Impl::wrong_count(const proto::WorkerResult& result, const Chunk& chunk) {
  if (result.outcome.code != ErrorCode::kOk || result.count == chunk.header.count) return std::nullopt;
  return "returned " + std::to_string(result.count) + " results for a chunk of " + std::to_string(chunk.header.count) +
         " items";
}

bool Broker::Impl::accept_late_result(proto::WorkerResult& result, zmq::message_t& payload,
                                      const std::string& identity, bool registered) {
  const std::uint64_t ticket = result.ticket;
  const std::uint64_t instance = result.instance;
  proto::Outcome& outcome = result.outcome;
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end() || instance == 0) return false;
  const auto& holders = chunk->second.holders;
  if (std::none_of(holders.begin(), holders.end(), [&](const Chunk::Holder& holder) {
        return holder.instance == instance && (registered || holder.identity == identity);
      })) {
    return false;
  }
  if (outcome.code == ErrorCode::kContextMissing) return false;  // the current holder will answer
  if (wrong_count(result, chunk->second)) return false;
  log_->info("accepted a late result for chunk {} of job {} from worker [{}] (first answer wins)",
             chunk->second.header.chunk, chunk->second.header.job, detail::short_id(instance));
  // If the chunk was sent again, that worker keeps its ticket: it gets its credit back when it
  // answers, and the answer is dropped.
  forward_result(ticket, std::move(outcome), payload, instance);
  return true;
}

void Broker::Impl::refund(std::uint64_t instance, const char* how) {
  const auto found = silenced_.find(instance);
  if (found == silenced_.end()) return;
  std::size_t refunded = 0;
  for (const std::uint64_t ticket : found->second.tickets) {
    const auto chunk = chunks_.find(ticket);
    if (chunk == chunks_.end() || chunk->second.retries == 0) continue;
    --chunk->second.retries;
    ++refunded;
    if (chunk->second.retries <= static_cast<std::uint32_t>(options_.max_retries)) over_budget_.erase(ticket);
  }
  log_->info("worker {} pid {} [{}] {} {} ms after it was declared lost: busy, not dead; {} chunks get their retry back",
             found->second.host, found->second.pid, detail::short_id(instance), how,
             since(found->second.when, Clock::now()).count(), refunded);
  silenced_.erase(found);
}

void Broker::Impl::blame_crash_after_loss(const proto::WorkerExited& report, const std::string& key) {
  const auto found = silenced_.find(report.instance);
  if (found == silenced_.end()) return;
  const SilentLoss& silent = found->second;
  if (report.supervisor == 0 || silent.supervisor != report.supervisor || silent.key != key) {
    ++bad_messages_;
    log_->warn("ignored an exit report for worker {} pid {} [{}] from a peer that is not its supervisor", silent.host,
               silent.pid, detail::short_id(report.instance));
    return;
  }
  const auto chunk = chunks_.find(report.running_ticket);
  const bool held = std::find(silent.tickets.begin(), silent.tickets.end(), report.running_ticket) != silent.tickets.end();
  if (report.crashed && report.running_ticket != 0 && held && chunk != chunks_.end()) {
    Chunk& blamed = chunk->second;
    // Its attempt on that worker counted as a silent loss: it was a crash.
    const std::string on = " (worker " + silent.host + " pid " + std::to_string(silent.pid) + " [" +
                           detail::short_id(report.instance) + "])";
    for (auto& cause : blamed.lost_causes) {
      if (cause.ends_with(on)) {
        cause = "worker process " + detail::printable(report.cause, 128) + on;
        break;
      }
    }
    if (blamed.retries > 0) --blamed.retries;
    if (blamed.retries <= static_cast<std::uint32_t>(options_.max_retries)) over_budget_.erase(report.running_ticket);
    ++blamed.kills;
    log_->info("worker {} pid {} [{}], declared lost, had crashed: chunk {} of job {} is blamed ({} of {} kills)",
               silent.host, silent.pid, detail::short_id(report.instance), blamed.header.chunk, blamed.header.job,
               blamed.kills, options_.poison_kills);
    if (blamed.kills >= static_cast<std::uint32_t>(options_.poison_kills)) {
      // Queued again or running elsewhere: dropped either way, as a cancelled chunk is.
      fail_chunk(report.running_ticket, "killed " + std::to_string(blamed.kills) + " worker processes");
    }
  }
  silenced_.erase(found);  // dead: it will not speak again
}

void Broker::Impl::queue_chunk(std::uint64_t ticket, bool front) {
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end()) return;
  scheduler_.enqueue(chunk->second.client, ticket, chunk->second.kind, front);
}

void Broker::Impl::answer_with_error(std::uint64_t ticket, ErrorCode code, const std::string& message) {
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end()) return;
  scheduler_.forget(ticket);
  proto::Outcome outcome;
  outcome.code = code;
  outcome.message = message;
  // One line per interval, not one per chunk: a map of an unknown task refuses every chunk.
  const auto now = Clock::now();
  auto level = spdlog::level::debug;
  if (code != ErrorCode::kContextMissing && now - last_refusal_logged_ >= options_.heartbeat_interval) {
    level = code == ErrorCode::kResourceExhausted ? spdlog::level::info : spdlog::level::warn;  // backpressure
    last_refusal_logged_ = now;
  }
  log_->log(level, "refused chunk {} of job {}: {}", chunk->second.header.chunk, chunk->second.header.job, message);
  zmq::message_t empty;
  forward_result(ticket, std::move(outcome), empty);
}

void Broker::Impl::finish_chunk(std::uint64_t ticket) {
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end()) return;
  const auto client = clients_by_id_.find(chunk->second.client);
  if (client != clients_by_id_.end()) {
    release_context(client->second, chunk->second.header.context_hash);
    --client->second.chunks;
    client->second.chunk_bytes -= static_cast<std::int64_t>(chunk->second.payload.size());
    const auto job = client->second.jobs.find(chunk->second.header.job);
    if (job != client->second.jobs.end()) {
      job->second.erase(ticket);
      if (job->second.empty()) {
        if (const auto record = client->second.job_records.find(job->first); record != client->second.job_records.end()) {
          record->second.idle_since = Clock::now();
        }
        client->second.jobs.erase(job);
      }
    }
  }
  scheduler_.forget(ticket);
  over_budget_.erase(ticket);
  chunks_.erase(chunk);
}

void Broker::Impl::send_to_client(ClientState& client, std::vector<zmq::message_t>& frames) {
  if (wire::send_to(clients_, client.identity, frames)) {
    client.last_sent = Clock::now();
    return;
  }
  // Gone (EHOSTUNREACH) or not reading (its queue is at the high-water mark). Clients bound what
  // they have in flight well below the HWM, so a full queue means a stuck client: drop it.
  const std::string identity = client.identity;
  drop_client(identity, "unreachable");
}

bool Broker::Impl::send_to_worker(WorkerState& worker, std::vector<zmq::message_t>& frames) {
  if (!wire::send_to(workers_, worker.identity, frames)) return false;
  worker.last_sent = Clock::now();
  return true;
}

void Broker::Impl::drop_client(const std::string& identity, const char* why) {
  const auto found = clients_by_id_.find(identity);
  if (found == clients_by_id_.end()) return;
  std::size_t dropped = 0;
  for (const auto& [job, tickets] : found->second.jobs) {
    for (const std::uint64_t ticket : tickets) {
      const auto chunk = chunks_.find(ticket);
      if (chunk == chunks_.end()) continue;
      over_budget_.erase(ticket);
      abandon(ticket, chunk->second);
      chunks_.erase(chunk);  // a worker running it gets its credit back when it answers
      ++dropped;
    }
  }
  log_->info("client {} pid {} gone ({}): {} chunks dropped", found->second.host, found->second.pid, why, dropped);
  scheduler_.remove_client(identity);
  clients_by_id_.erase(found);
  // Dropped payloads were freed into malloc's arenas; hand that memory back to the system now
  // rather than keeping the peak of a client that is gone.
  if (dropped > 0) ::malloc_trim(0);
}

void Broker::Impl::abandon(std::uint64_t ticket, const Chunk& chunk) {
  if (chunk.worker.empty()) return;
  const auto worker = workers_by_id_.find(chunk.worker);
  if (worker == workers_by_id_.end()) return;
  auto frames = wire::make(Command::kAbandon,
                           proto::Abandon{ticket, static_cast<std::uint32_t>(options_.heartbeat_interval.count())});
  (void)send_to_worker(worker->second, frames);  // one that is gone is dealt with by liveness
}

void Broker::Impl::fail_chunk(std::uint64_t ticket, const std::string& why) {
  const auto found = chunks_.find(ticket);
  if (found == chunks_.end()) return;
  Chunk& chunk = found->second;
  const auto client = clients_by_id_.find(chunk.client);
  std::string causes;
  for (std::size_t i = 0; i < chunk.lost_causes.size(); ++i) {
    causes += (i == 0 ? "" : "; ") + std::string("attempt ") + std::to_string(i + 1) + ": " + chunk.lost_causes[i];
  }
  proto::Outcome outcome;
  outcome.code = ErrorCode::kWorkerLost;
  outcome.message = "chunk " + std::to_string(chunk.header.chunk) + " (items " +
                    std::to_string(chunk.header.first_index) + ".." +
                    std::to_string(chunk.header.first_index + chunk.header.count - 1) + ") " + why + " (" + causes + ")";
  ++chunks_failed_;
  metrics_->failed();
  log_->warn("giving up on a chunk: {}", outcome.message);
  auto out = wire::make(Command::kResult, proto::ClientResult{chunk.header.job, chunk.header.chunk, chunk.attempt,
                                                              std::move(outcome), worker_count()});
  out.emplace_back();
  finish_chunk(ticket);
  if (client != clients_by_id_.end()) send_to_client(client->second, out);
}

void Broker::Impl::requeue(std::uint64_t ticket, const std::string& cause, bool blamed, bool counted) {
  const auto found = chunks_.find(ticket);
  if (found == chunks_.end()) return;
  Chunk& chunk = found->second;
  chunk.worker.clear();
  // Bounded: losses that spend no retry (hand-backs, workers on probation) may repeat many times.
  if (chunk.lost_causes.size() < 2 * static_cast<std::size_t>(std::max(options_.max_retries, options_.poison_kills)) + 8) {
    chunk.lost_causes.push_back(cause);
  }
  if (!clients_by_id_.contains(chunk.client)) {
    over_budget_.erase(ticket);
    chunks_.erase(found);
    return;
  }
  if (blamed && ++chunk.kills >= static_cast<std::uint32_t>(options_.poison_kills)) {
    return fail_chunk(ticket, "killed " + std::to_string(chunk.kills) + " worker processes");
  }
  if (!blamed && counted && ++chunk.retries > static_cast<std::uint32_t>(options_.max_retries)) {
    // Past its budget of silent losses. A busy host looks silent too, so the chunk goes on and
    // fails only if none of those workers turns out to be alive in the next liveness periods.
    over_budget_.try_emplace(ticket, Clock::now());
  }
  ++chunks_redispatched_;
  metrics_->redispatched();
  queue_chunk(ticket, true);
}

void Broker::Impl::lose_worker(std::string identity, const std::string& cause, Loss loss, std::uint64_t running) {
  const auto found = workers_by_id_.find(identity);
  if (found == workers_by_id_.end()) return;
  WorkerState worker = std::move(found->second);
  workers_by_id_.erase(found);
  const auto now = Clock::now();
  // A worker that never answered a chunk spends no chunk's retries by vanishing or lying (a crash
  // its supervisor reports is still blamed, and counts towards --poison-kills).
  const bool proven = !scheduler_.on_probation(worker.handle);
  scheduler_.remove_worker(worker.handle, now);
  identity_by_handle_.erase(worker.handle);
  if (const auto by_instance = identity_by_instance_.find(worker.instance);
      by_instance != identity_by_instance_.end() && by_instance->second == identity) {
    identity_by_instance_.erase(by_instance);
  }
  const std::string id = detail::short_id(worker.instance);
  if (loss == Loss::kHandback) {
    log_->info("worker left host={} pid={} id={} chunks handed back={} ({}; {} workers)", worker.host, worker.pid, id,
               worker.tickets.size(), cause, workers_by_id_.size());
  } else {
    log_->warn("worker lost host={} pid={} id={} chunks={} cause={} ({} workers)", worker.host, worker.pid, id,
               worker.tickets.size(), cause, workers_by_id_.size());
  }
  if (loss == Loss::kLost) {
    // If it speaks again it was busy, not dead, and these chunks get their retry back.
    SilentLoss& silent = silenced_[worker.instance];
    silent.when = now;
    silent.host = worker.host;
    silent.pid = worker.pid;
    silent.generation = worker.generation;
    silent.supervisor = worker.supervisor;
    silent.key = worker.key;
    silent.identity = identity;
    silent.tickets.assign(worker.tickets.begin(), worker.tickets.end());
  }
  const std::string described =
      cause + " (worker " + worker.host + " pid " + std::to_string(worker.pid) + " [" + id + "])";
  // A crash is blamed on the chunk its supervisor saw running, and on no other: the chunks
  // prefetched beside it go back without penalty.
  for (const std::uint64_t ticket : worker.dispatch_order) {
    if (!worker.tickets.contains(ticket)) continue;
    const bool blamed = loss == Loss::kCrash && running != 0 && running == ticket;
    const bool counted = proven && (loss == Loss::kLost || loss == Loss::kBroken);
    requeue(ticket, blamed ? described : (loss == Loss::kCrash ? "prefetched by a crashed " + described : described),
            blamed, counted);
  }
  announce_workers();
}

void Broker::Impl::announce_workers() { announcement_pending_ = true; }

void Broker::Impl::flush_announcement() {
  // Clients size their chunks by the worker count: tell them when it changed. Once per turn of
  // the loop: workers that register and vanish by the thousand must not cost a message to every
  // client each time.
  if (!announcement_pending_) return;
  announcement_pending_ = false;
  std::vector<std::string> unreachable;
  for (auto& [id, client] : clients_by_id_) {
    auto frames = wire::make(Command::kWelcome, proto::Welcome{worker_count(), static_cast<std::uint32_t>(
                                                                                   options_.heartbeat_interval.count())});
    if (wire::send_to(clients_, id, frames)) {
      client.last_sent = Clock::now();
    } else {
      unreachable.push_back(id);
    }
  }
  for (const auto& id : unreachable) drop_client(id, "unreachable");
}

void Broker::Impl::dispatch() {
  // What the scheduler assigns now, by worker, in order: the chunks for one worker go in one TASK
  // message (a header and a payload frame each), except one whose context that worker lacks,
  // which goes alone with it (section 5.4 of docs/PROTOCOL.md).
  std::vector<std::pair<detail::Scheduler::WorkerHandle, std::vector<std::uint64_t>>> batches;
  while (const auto assignment = scheduler_.next()) {
    auto batch = std::find_if(batches.begin(), batches.end(),
                              [&](const auto& entry) { return entry.first == assignment->worker; });
    if (batch == batches.end()) batch = batches.insert(batches.end(), {assignment->worker, {}});
    batch->second.push_back(assignment->ticket);
  }
  std::vector<std::uint64_t> started;  // chunks whose client asked to hear when they reach a worker
  for (const auto& [handle, tickets] : batches) {
    const auto identity = identity_by_handle_.find(handle);
    if (identity == identity_by_handle_.end()) continue;  // the scheduler forgets neither
    send_tasks(workers_by_id_.at(identity->second), tickets, started);
  }
  if (started.empty()) return;
  const auto due = Clock::now() + kStartedAfter;
  for (const std::uint64_t ticket : started) started_due_.push_back({due, ticket});
}

std::optional<Clock::time_point> Broker::Impl::next_started_due() {
  while (!started_due_.empty() && !chunks_.contains(started_due_.front().ticket)) started_due_.pop_front();
  if (started_due_.empty()) return std::nullopt;
  return started_due_.front().due;
}

void Broker::Impl::send_started(Clock::time_point now) {
  while (!started_due_.empty() && started_due_.front().due <= now) {
    const std::uint64_t ticket = started_due_.front().ticket;
    started_due_.pop_front();
    const auto chunk = chunks_.find(ticket);
    if (chunk == chunks_.end()) continue;  // answered: its RESULT says more
    if (const auto client = clients_by_id_.find(chunk->second.client); client != clients_by_id_.end()) {
      auto frames = wire::make(Command::kStarted, proto::Started{chunk->second.header.job, chunk->second.header.chunk});
      send_to_client(client->second, frames);  // may drop the client and its chunks: looked up again each time
    }
  }
}

void Broker::Impl::send_tasks(WorkerState& worker, const std::vector<std::uint64_t>& tickets,
                              std::vector<std::uint64_t>& started) {
  wire::ChunkBatch batch(Command::kTask);
  std::vector<std::uint64_t> sending;  // the tickets in `batch`
  // Sends `frames` (the chunks `sending`); after it, the chunks are the worker's, or, when it
  // vanished, queued again for others.
  auto send = [&](std::vector<zmq::message_t>& frames) -> bool {
    if (!send_to_worker(worker, frames)) {
      // The worker vanished between its last message and now: give its chunks to someone else.
      for (const std::uint64_t ticket : sending) queue_chunk(ticket, true);
      sending.clear();
      return false;
    }
    for (const std::uint64_t ticket : sending) {
      Chunk& chunk = chunks_.at(ticket);
      metrics_->dispatched();
      metrics_->bytes_sent(chunk.payload.size());
      ++chunk.attempt;
      chunk.worker = worker.identity;
      if (std::none_of(chunk.holders.begin(), chunk.holders.end(),
                       [&](const Chunk::Holder& h) { return h.instance == worker.instance && h.identity == worker.identity; })) {
        chunk.holders.push_back({worker.instance, worker.identity});
      }
      worker.tickets.insert(ticket);
      worker.dispatch_order.push_back(ticket);
      if (chunk.attempt == 1 && (chunk.header.flags & proto::kNotifyStarted) != 0) started.push_back(ticket);
    }
    sending.clear();
    return true;
  };
  auto send_batch = [&]() -> bool {
    if (batch.empty()) return true;
    auto frames = batch.take();
    return send(frames);
  };
  auto give_up = [&](std::size_t from) {  // the worker is unreachable: the rest go to others
    for (std::size_t j = from; j < tickets.size(); ++j) queue_chunk(tickets[j], true);
    lose_worker(worker.identity, "unreachable", Loss::kLost);
  };
  for (std::size_t i = 0; i < tickets.size(); ++i) {
    const auto chunk_it = chunks_.find(tickets[i]);
    if (chunk_it == chunks_.end()) continue;  // the scheduler forgets none
    Chunk& chunk = chunk_it->second;
    const std::uint64_t context_hash = chunk.header.context_hash;
    auto header = wire::header_message(proto::TaskHeader{tickets[i], chunk.header.first_index, chunk.header.count,
                                                         chunk.header.task, chunk.header.signature,
                                                         chunk.header.deadline_ms, context_hash});
    zmq::message_t payload;
    payload.copy(chunk.payload);  // reference-counted, not a byte copy
    if (context_hash != 0 && !worker.contexts.contains(context_hash)) {
      // The first chunk of this context for this worker carries it, alone: [signature, header,
      // payload, context], after the chunks gathered before it.
      if (!send_batch()) return give_up(i);
      zmq::message_t& context = clients_by_id_.at(chunk.client).contexts.at(context_hash).payload;
      std::vector<zmq::message_t> frames;
      frames.push_back(wire::signature_message(Command::kTask));
      frames.push_back(std::move(header));
      frames.push_back(std::move(payload));
      frames.emplace_back();
      frames.back().copy(context);
      const std::size_t context_bytes = context.size();
      sending.push_back(tickets[i]);
      if (!send(frames)) return give_up(i + 1);
      worker.contexts.insert(context_hash);
      context_bytes_sent_ += context_bytes;
      metrics_->bytes_sent(context_bytes);
      continue;
    }
    if (batch.needs_new_message(payload.size()) && !send_batch()) return give_up(i);
    batch.add(std::move(header), std::move(payload));
    sending.push_back(tickets[i]);
  }
  if (!send_batch()) lose_worker(worker.identity, "unreachable", Loss::kLost);
}

void Broker::Impl::heartbeat_tick() {
  const auto now = Clock::now();
  const auto expiry = options_.heartbeat_interval * options_.heartbeat_liveness;
  std::vector<std::pair<std::string, std::string>> lost;  // identity, cause
  // A peer whose heartbeats queue behind one large message on a slow link is silent, yet the bytes
  // of that message keep arriving: that is life too.
  const auto receiving = [&](const std::optional<wire::ConnectionProbe>& link) {
    if (!link) return false;
    const auto since = link->since_data_received();
    return since && *since < expiry;
  };
  for (auto& [id, worker] : workers_by_id_) {
    if (now - worker.last_heard > expiry && !receiving(worker.link)) {
      lost.emplace_back(id, "no heartbeat for " + std::to_string(since(worker.last_heard, now).count()) + " ms");
    } else if (now - worker.last_sent >= options_.heartbeat_interval) {
      auto frames = wire::make_empty(Command::kHeartbeat);
      if (!send_to_worker(worker, frames)) lost.emplace_back(id, "unreachable (its connection is gone)");
    }
  }
  for (const auto& [id, cause] : lost) lose_worker(id, cause, Loss::kLost);
  // A client holds no chunk that anyone waits for, and its heartbeats queue behind the large
  // messages it sends (a 50 MB context on a loaded host takes a while): give it four times as long.
  const auto client_expiry = 4 * expiry;
  std::vector<std::string> gone;
  for (auto& [id, client] : clients_by_id_) {
    if (now - client.last_heard > client_expiry && !receiving(client.link)) {
      gone.push_back(id);
    } else if (now - client.last_sent >= options_.heartbeat_interval) {
      auto frames = wire::make_empty(Command::kHeartbeat);
      if (wire::send_to(clients_, id, frames)) {
        client.last_sent = now;
      } else {
        gone.push_back(id);
      }
    }
  }
  for (const auto& id : gone) drop_client(id, "no heartbeat");
  for (auto& [id, client] : clients_by_id_) {
    std::erase_if(client.job_records, [&](const auto& entry) {
      return !client.jobs.contains(entry.first) && now - entry.second.idle_since >= expiry;
    });
    std::erase_if(client.contexts, [&](const auto& entry) {
      const bool unused = entry.second.live_chunks == 0 && now - entry.second.idle_since >= expiry;
      if (unused) client.context_bytes -= static_cast<std::int64_t>(entry.second.payload.size());
      return unused;
    });
  }
  // A peer whose budget has filled up again needs no entry.
  std::erase_if(ready_budgets_, [&](const auto& entry) { return now - entry.second.refilled >= std::chrono::seconds(1); });

  // Chunks no registered worker can run (the capable ones left, or never came) fail now.
  for (auto& [ticket, runnable] : scheduler_.take_unrunnable(now)) {
    answer_with_error(ticket, runnable.verdict == detail::Scheduler::Verdict::kSignatureMismatch
                                  ? ErrorCode::kSignatureMismatch
                                  : ErrorCode::kUnknownTask,
                      runnable.message);
  }
  // Chunks past their budget of silent losses whose workers did not come back.
  std::vector<std::uint64_t> give_up;
  for (const auto& [ticket, since_when] : over_budget_) {
    const auto chunk = chunks_.find(ticket);
    if (chunk != chunks_.end() && chunk->second.worker.empty() && now - since_when >= 2 * expiry) {
      give_up.push_back(ticket);
    }
  }
  for (const std::uint64_t ticket : give_up) {
    fail_chunk(ticket, "lost its worker " + std::to_string(chunks_.at(ticket).retries) + " times");
  }
  // A worker silent for this long is not coming back to claim a refund.
  const auto memory = std::max<Clock::duration>(std::chrono::seconds(60), 20 * expiry);
  std::erase_if(silenced_, [&](const auto& entry) { return now - entry.second.when > memory; });
}

proto::StatusReply Broker::Impl::status_reply() const {
  proto::StatusReply reply;
  const auto now = Clock::now();
  const auto clamp_ms = [](std::chrono::milliseconds ms) {
    return static_cast<std::uint32_t>(std::min<std::int64_t>(ms.count(), UINT32_MAX));
  };
  for (const auto& [id, worker] : workers_by_id_) {
    // Only the public half of each id (what logs show): the whole id is what a supervisor proves
    // its exit reports with and a process its registration, so status must not hand it out.
    reply.workers.push_back({worker.host, worker.pid, static_cast<std::uint32_t>(worker.tickets.size()),
                             worker.chunks_done, detail::public_id(worker.instance),
                             detail::public_id(worker.supervisor), worker.tasks,
                             worker.chunks_failed, clamp_ms(since(worker.last_heard, now)), worker.credit});
  }
  for (const auto& [id, client] : clients_by_id_) {
    for (const auto& [job, record] : client.job_records) {
      proto::JobInfo& info = reply.jobs.emplace_back();
      info.client_host = client.host;
      info.client_pid = client.pid;
      info.job = job;
      info.task = record.task;
      info.items_total = record.items_total;
      info.items_done = record.items_done;
      info.age_ms = clamp_ms(since(record.started, now));
      const auto live = client.jobs.find(job);
      if (live == client.jobs.end()) continue;
      for (const std::uint64_t ticket : live->second) {
        const auto chunk = chunks_.find(ticket);
        if (chunk == chunks_.end()) continue;
        if (chunk->second.worker.empty()) {
          ++info.chunks_queued;
        } else {
          ++info.chunks_in_flight;
          info.items_done += chunk->second.items_reported;
        }
      }
    }
  }
  std::sort(reply.jobs.begin(), reply.jobs.end(), [](const auto& a, const auto& b) { return a.age_ms > b.age_ms; });
  if (reply.jobs.size() > proto::kMaxStatusJobs) reply.jobs.resize(proto::kMaxStatusJobs);
  for (const auto& [ticket, chunk] : chunks_) {
    if (!chunk.worker.empty()) ++reply.chunks_in_flight;
  }
  std::sort(reply.workers.begin(), reply.workers.end(),
            [](const auto& a, const auto& b) {
              return std::tie(a.host, a.pid, a.instance) < std::tie(b.host, b.pid, b.instance);
            });
  reply.clients = static_cast<std::uint32_t>(clients_by_id_.size());
  reply.chunks_queued = chunks_.size() - reply.chunks_in_flight;
  reply.chunks_done = chunks_done_;
  reply.chunks_failed = chunks_failed_;
  reply.chunks_redispatched = chunks_redispatched_;
  reply.bad_messages = bad_messages_;
  reply.context_bytes_received = context_bytes_received_;
  reply.context_bytes_sent = context_bytes_sent_;
  for (const auto& [id, client] : clients_by_id_) {
    for (const auto& [hash, context] : client.contexts) reply.context_bytes_held += context.payload.size();
  }
  return reply;
}

Broker::Broker(BrokerOptions options, Context context)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(context))) {}
Broker::~Broker() = default;
const std::string& Broker::client_endpoint() const noexcept { return impl_->client_endpoint_; }
const std::string& Broker::worker_endpoint() const noexcept { return impl_->worker_endpoint_; }
const std::string& Broker::metrics_url() const noexcept { return impl_->metrics_url_; }
void Broker::run() { impl_->run(); }
void Broker::stop() noexcept { impl_->stop(); }
void Broker::reload_keys() noexcept { impl_->reload_keys(); }

}  // namespace poolmap
