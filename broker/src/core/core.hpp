// Internal (not installed): the broker's core, every decision the broker makes, without I/O.
//
// The core takes events and emits actions. Events: a message from a peer (by routing id, with the
// facts of its connection available on demand), a pass of the event loop ending (dispatch, STARTED,
// announcements), a heartbeat tick, a drain. Every event carries the time; the core reads no clock,
// opens no socket, starts no thread and draws no random number. Actions: messages handed to an
// Outbox (which says at once whether the peer could be reached, as a ROUTER socket with mandatory
// routing does), log lines to the logger it is given, counts to the Metrics it is given. Same
// events in, same actions out: the production broker (broker.cpp, the shell: sockets, ZAP, the poll
// loop) and the deterministic simulator (tests/sim) drive this same code.
//
// The core is one class whose members are defined by concern, one file each:
//   clients.cpp  HELLO, SUBMIT, CONTEXT, CANCEL, REJECT, STATUS; per-client quotas, job records;
//                results gathered per client and sent once per pass
//   contexts.hpp each client's broadcast contexts (ClientContexts): a unit of its own, tested alone
//   workers.cpp  READY, CREDIT, progress, goodbyes, exit reports; the worker registry, probation,
//                liveness (busy is not dead: silent losses are refunded when the worker speaks)
//   ledger.cpp   the chunk ledger: every chunk not yet answered, where each copy was sent, first
//                answer wins, late answers, retries, poison (kills), failure
//   dispatch.cpp what goes to which worker now (the Scheduler decides), TASK batches, STARTED
//   takeover.cpp chunks that outlive a broker: what workers say they hold (READY) is matched to the
//                chunks their clients send again (kResent), and answers to chunks this broker never
//                sent are kept for them a while; resent chunks wait for the workers that hold them
//                to register (as many as the client's last broker had, two intervals at most)
//   core.cpp     construction, the heartbeat tick, sending, errors, the status view
// The dispatch policy itself is the Scheduler (../scheduler.hpp), a unit of its own too.
//
// Thread-safety: none; one thread (the shell's loop, or the simulator) drives it.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <memory_resource>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <spdlog/logger.h>
#include <zmq.hpp>

#include "../metrics.hpp"
#include "contexts.hpp"
#include "log_throttle.hpp"
#include "pair.hpp"
#include "../scheduler.hpp"
#include "poolmap/broker.hpp"
#include "poolmap/error.hpp"
#include "poolmap/protocol.hpp"
#include "wire.hpp"

namespace poolmap::detail {

enum class Side { kClient, kWorker };

// A peer's connection as the kernel sees it: a peer whose heartbeats queue behind one large message
// on a slow link is silent, yet the bytes of that message keep arriving, and that is life too.
class LinkWatch {
 public:
  virtual ~LinkWatch() = default;
  // How long ago data last arrived on the connection; nullopt when that cannot be told.
  virtual std::optional<std::chrono::milliseconds> since_data_received() const = 0;
};

// What the connection one message came on says about its peer, read only where a decision needs it.
class PeerFacts {
 public:
  virtual std::string key() const = 0;      // the name of its CURVE key ("" without CURVE)
  virtual std::string address() const = 0;  // its address ("" where the transport has none)
  virtual std::unique_ptr<LinkWatch> link() const = 0;  // nullptr where the connection cannot be watched

 protected:
  ~PeerFacts() = default;
};

// Where the core's messages go.
class Outbox {
 public:
  // Queues `frames` ([signature, header, ...]) for the peer `identity` of that side. False when the
  // peer is gone or its queue is full: the frames are lost then.
  virtual bool send(Side side, const std::string& identity, std::vector<zmq::message_t>& frames) = 0;
  // A client's chunks were dropped: freed memory may go back to the system now.
  virtual void release_memory() {}

 protected:
  ~Outbox() = default;
};

class BrokerCore {
 public:
  using Clock = std::chrono::steady_clock;

  // `options` as checked by the shell (BrokerOptions' comments say what each one means).
  // `first_ticket`: where this broker's chunk numbers start, drawn at random by the caller (the
  // shell from the system, the simulator from its seed). Workers keep running across a broker
  // restart and answer the chunks they had on their next connection: numbers that started at 1
  // again would make an old chunk's answer look like the answer of a new chunk of the same number.
  BrokerCore(const BrokerOptions& options, Clock::time_point now, Outbox& out, Metrics& metrics,
             std::shared_ptr<spdlog::logger> log, std::uint64_t first_ticket);

  // One message from a peer: frames[0] is its routing id, then [signature, header, payload...].
  // Payload frames are moved out, never copied.
  void on_client_message(Clock::time_point now, std::vector<zmq::message_t>& frames, const PeerFacts& facts);
  void on_worker_message(Clock::time_point now, std::vector<zmq::message_t>& frames, const PeerFacts& facts);
  // Sends the RESULT messages the messages handled so far gathered (the shell calls it after each
  // batch read from a socket).
  void flush_results();
  // The end of a pass of the event loop: dispatch (unless draining), results, STARTED due by `now`,
  // the worker-count announcement.
  void end_of_pass(Clock::time_point now);
  // Liveness, expiry of idle state, chunks that cannot run or were lost too often. Every
  // heartbeat_interval.
  void tick(Clock::time_point now);
  // When end_of_pass() has a STARTED due; nullopt: none.
  std::optional<Clock::time_point> next_started_due();
  // No more dispatch; SUBMITs are not taken (their clients resend them to the next broker).
  void start_drain(Clock::time_point now);
  // Every peer is told to go (DISCONNECT): workers register with the next broker, clients resend.
  void disconnect_everyone();
  // This broker stepped down (its pair's peer is active): every peer is told to turn to the other
  // broker (PASSIVE). The core is dropped after it.
  void send_everyone_away();
  // The pair this broker belongs to, for the status reply (nullptr: none). It must outlive the core.
  void set_pair(const Pair* pair) { pair_ = pair; }

  std::size_t workers() const { return workers_by_id_.size(); }
  std::size_t clients() const { return clients_by_id_.size(); }
  std::size_t chunks() const { return chunks_.size(); }  // not yet answered
  std::size_t chunks_queued() const { return scheduler_.queued(); }
  std::size_t chunks_in_flight() const;
  // The counters of the run, for the shell's last log line.
  std::string summary() const;
  // What STATUS_REQUEST answers (and the dashboard shows), as of the last event.
  proto::StatusReply status_reply() const;

  // For the simulator's invariants: a bound on what the core holds (see tests/sim).
  struct Footprint {
    std::size_t chunks = 0, contexts = 0, job_records = 0, silenced = 0, over_budget = 0, started_due = 0,
                deliveries = 0, clients = 0, workers = 0, refused_contexts = 0, ready_budgets = 0,
                proven_supervisors = 0, resent = 0, adoptable = 0, orphans = 0, held_back = 0;
  };
  Footprint footprint() const;
  // Checks the core's own bookkeeping against itself (each client's counts against the ledger and
  // within its quotas, each worker's tickets against the chunks' holders, the scheduler's queue
  // against the queued chunks); returns what is wrong, or "" when all agrees.
  std::string self_check() const;
  // The chunk a worker process (by routing id) was sent, for checks: the tasks it offered.
  const std::vector<proto::TaskInfo>* tasks_of(const std::string& worker_identity) const;

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
    Scheduler::WorkerHandle handle = 0;
    Clock::time_point last_heard;
    Clock::time_point last_sent;
    std::pmr::unordered_set<std::uint64_t> tickets;  // chunks this worker holds
    std::deque<std::uint64_t> dispatch_order;    // tickets in the order sent; the oldest held one runs
    Clock::time_point running_since;  // when the chunk it runs now was sent, or the one before it answered
    std::unordered_set<std::uint64_t> contexts;  // broadcast contexts it was sent (it may evict them)
    std::uint64_t chunks_done = 0;
    std::uint64_t chunks_failed = 0;  // answered with an error (not counting cancelled ones)
    std::uint32_t credit = 0;         // chunks it accepts at a time (READY, CREDIT)
    std::unique_ptr<LinkWatch> link;  // its connection: bytes arriving count as life
    // Chunks adopted from an earlier broker: the ticket the worker knows -> this broker's ticket.
    std::unordered_map<std::uint64_t, std::uint64_t> aliases;
  };
  struct ClientState {
    ClientState(std::pmr::memory_resource* nodes, ClientContexts::Quota quota) : jobs(nodes), contexts(quota) {}
    std::string identity;
    std::string key;  // the name of its CURVE key ("" without CURVE)
    std::string host;
    std::uint32_t pid = 0;
    std::uint64_t session = 0;  // Hello::session: names its chunks across brokers (proto::Origin)
    // Its chunks sent here again (kResent) wait until then for the workers that may hold them to
    // register (or until workers_back()): two heartbeat intervals from its HELLO. Each of them
    // noticed the old broker's loss a liveness period after it last heard it, as this client did,
    // and looks once per interval; the second interval is the margin for a loaded host.
    Clock::time_point hold_resent_until;
    std::unique_ptr<LinkWatch> link;  // its connection: bytes arriving count as life
    Clock::time_point last_heard;
    Clock::time_point last_sent;
    std::pmr::unordered_map<std::uint64_t, std::pmr::unordered_set<std::uint64_t>> jobs;  // job -> live tickets
    // What `poolmap status` shows of each job: kept while it has live tickets, then for a liveness
    // period (more of a job comes as earlier chunks are answered; a job whose items are all done
    // shows as done meanwhile), or until it is cancelled.
    // A record is keyed by record_key(): an imap (a stream of one-chunk jobs) has one record.
    struct JobRecord {
      std::string task;  // printable
      std::string signature;
      std::uint64_t items_total = 0;  // 0 for a stream
      std::uint64_t items_done = 0;  // in chunks answered
      std::uint64_t items_failed = 0;  // in chunks answered with an error
      bool stream = false;
      Clock::time_point started;
      Clock::time_point idle_since;  // no live tickets since then
      std::unordered_set<std::uint64_t> live;  // its jobs with chunks here (keys of `jobs`)
    };
    std::map<std::uint64_t, JobRecord> job_records;
    // Its last SUBMIT refused for its quotas at the broker, and why: status says so for a while.
    Clock::time_point refused_for_quota{};
    std::string quota_refusal;
    ClientContexts contexts;  // its broadcast contexts, within its quotas (contexts.hpp)
    // RESULT frames not sent yet ([signature, then a header and a payload frame per chunk]): the
    // results of one pass of the loop go in one message (flush_results).
    wire::ChunkBatch results_out{proto::Command::kResult};
    // Who answered its last kDeliveriesKept ok results (a ring): a REJECT names a delivery, and
    // the worker that made it is dropped.
    struct Delivery {
      std::uint64_t job = 0;
      std::uint64_t chunk = 0;
      std::uint32_t attempt = 0;
      std::uint64_t instance = 0;  // the process that answered
      std::uint64_t record = 0;    // its job record (record_key) and items, which it counted as done
      std::uint32_t items = 0;
    };
    std::vector<Delivery> deliveries;
    std::size_t next_delivery = 0;
    // What it holds, against its quotas (BrokerOptions::max_client_*).
    std::size_t chunks = 0;  // not yet answered
    std::int64_t chunk_bytes = 0;
  };
  struct Chunk {
    std::string client;
    Clock::time_point received;  // its SUBMIT
    proto::Submit header;
    zmq::message_t payload;  // kept until answered, so the chunk can be dispatched again
    Scheduler::KindId kind = 0;
    std::uint32_t attempt = 0;  // dispatches so far
    std::uint32_t kills = 0;    // workers that crashed while running it
    std::uint32_t retries = 0;  // re-dispatches after losses not blamed on it
    std::string worker;         // identity of the holder; empty while queued
    std::uint64_t worker_ticket = 0;  // the number its holder knows it by, when not the ticket (adopted)
    std::uint64_t session = 0;  // its client's Hello::session (proto::Origin)
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
    bool counted = false;  // the loss cost those chunks a retry each (a proven worker's)
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

  // clients.cpp
  // One chunk of a SUBMIT (a header frame and its payload) from the client `identity`. Returns
  // false when it answered with ERROR or DISCONNECT (or is draining): the rest are not read.
  bool on_submit(const std::string& identity, const zmq::message_t& header_frame, zmq::message_t& payload);
  void on_cancel(ClientState& client, std::uint64_t job);
  ClientState& touch_client(const std::string& identity);
  // Why a SUBMIT of `bytes` for `job` does not fit in the client's quotas now (kResourceExhausted)
  // or ever (kInvalidArgument), or nullopt when it fits.
  std::optional<Status> over_quota(const ClientState& client, std::uint64_t job, std::int64_t bytes) const;
  // Starts the status record of the job `submit` belongs to, if it is new, and counts the job live.
  void note_job(ClientState& client, const proto::Submit& submit);
  // The job `job` (of the record `key`) has no chunk here any more.
  void job_gone(ClientState& client, std::uint64_t key, std::uint64_t job);
  // The status record a chunk counts in: its stream's (imap), else its job's.
  static std::uint64_t record_key(const proto::Submit& header) { return header.stream != 0 ? header.stream : header.job; }
  // Stores a CONTEXT if it fits in the client's quotas, freeing contexts no chunk uses (oldest
  // first) to make room; else remembers it as refused.
  void keep_context(ClientState& client, std::uint64_t hash, zmq::message_t& payload);
  // One chunk no longer needs its broadcast context (hash 0: none). A context no chunk uses is
  // kept for a liveness period (the client's next chunks may be on their way), then freed by
  // tick(); a chunk naming a freed context is answered kContextMissing and resent.
  void release_context(ClientState& client, std::uint64_t hash) const;
  // REJECT: the client could not decode the results of one of its chunks.
  void on_reject(ClientState& client, const proto::Reject& reject);
  // Sends the RESULT frames forward_result() gathered for `client`.
  void send_results(ClientState& client);
  void drop_client(const std::string& identity, const char* why);
  void expire_client_state();

  // workers.cpp
  void on_ready(const std::string& identity, const zmq::message_t& header_frame, const PeerFacts& facts);
  void on_worker_exited(const std::string& identity, const zmq::message_t& header_frame, const PeerFacts& facts);
  // A READY from `peer` (its address, or its key with CURVE): false when that peer is over its
  // rate (BrokerOptions::max_ready_per_second).
  bool ready_allowed(const std::string& peer);
  // The worker answered a chunk: it leaves probation, and so do its siblings (same supervisor).
  void prove(WorkerState& worker);
  // `running` (kCrash only): the chunk the worker was running, from its supervisor; 0 = none.
  void lose_worker(std::string identity, const std::string& cause, Loss loss,
                   std::uint64_t running = 0);  // by value: callers pass keys it erases
  // A worker declared lost for silence is alive after all: the chunks it held get their retry back.
  void refund(std::uint64_t instance, const char* how);
  // Gives the chunks of a silent loss back the retry it cost them; returns how many got one.
  std::size_t give_back_retries(const SilentLoss& silent);
  // The supervisor of a worker already declared lost (unreachable: its connection went as it
  // died, before this report came) says it crashed: the chunk it was running is blamed for the
  // crash as if the report had come first, so a poison chunk still fails after --poison-kills
  // crashes, not one more.
  void blame_crash_after_loss(const proto::WorkerExited& report, const std::string& key);
  void check_worker_liveness();
  void announce_workers() { announcement_pending_ = true; }
  // Sends the pending worker-count announcement (at most one per pass of the event loop, however
  // many workers came and went in it).
  void flush_announcement();
  std::uint32_t worker_count() const { return static_cast<std::uint32_t>(workers_by_id_.size()); }

  // ledger.cpp
  // One result of a WORKER_RESULT (a header frame and its payload) from the peer `identity`.
  // Returns false when the header does not decode (an ERROR was sent): the rest are not read.
  bool on_worker_result(const std::string& identity, const zmq::message_t& header_frame, zmq::message_t& payload,
                        const PeerFacts& facts);
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
  // Queues a chunk for dispatch (`front`: it was put back after a loss) and lets the client know
  // nothing (it waits for the result).
  void queue_chunk(std::uint64_t ticket, bool front);
  // Answers a chunk at once with an error outcome (no worker ran it) and forgets it.
  void answer_with_error(std::uint64_t ticket, ErrorCode code, const std::string& message);
  void finish_chunk(std::uint64_t ticket);
  // Nobody waits for `ticket` any more: its worker, if it holds it, drops it or (running) ends
  // after a grace of one heartbeat interval, so abandoned work does not hold workers.
  void abandon(std::uint64_t ticket, const Chunk& chunk);
  // `holder`: the worker it was on, where it is no longer registered (lose_worker).
  void requeue(std::uint64_t ticket, const std::string& cause, bool blamed, bool counted,
               const WorkerState* holder = nullptr);
  void fail_chunk(std::uint64_t ticket, const std::string& why);
  // Chunks no worker can run any more, and chunks past their retry budget whose workers stayed gone.
  void fail_hopeless_chunks();

  // takeover.cpp
  struct OriginHash {
    std::size_t operator()(const proto::Origin& origin) const noexcept {
      return std::hash<std::uint64_t>{}(origin.session * 0x9E3779B97F4A7C15ULL ^ origin.job * 0xC2B2AE3D27D4EB4FULL ^
                                        origin.chunk);
    }
  };
  // A chunk a worker said it holds (READY) that no client has sent here yet.
  struct Adoptable {
    std::string worker;  // identity
    std::uint64_t instance = 0;
    std::uint64_t ticket = 0;  // as the worker knows it
    bool running = false;
    Clock::time_point since;
  };
  // An answer to a chunk this broker never sent, from a registered worker, kept for its client's resend.
  struct Orphan {
    proto::WorkerResult result;
    zmq::message_t payload;
    std::string worker;
    Clock::time_point since;
  };
  static proto::Origin origin_of(const Chunk& chunk) { return {chunk.session, chunk.header.job, chunk.header.chunk}; }
  // A new chunk that can run: queued, or matched to a worker's answer or to the worker that holds it
  // (a chunk its client sends again, kResent), or held back for the workers to register first.
  void place_chunk(std::uint64_t ticket);
  // READY's held chunks: adopted where this broker has the chunk and nobody runs it, remembered
  // for the client's resend otherwise.
  void adopt_held(WorkerState& worker, const std::vector<proto::HeldChunk>& held);
  // The chunk `ticket` is the worker's from now on, which knows it as `worker_ticket`.
  void adopt_chunk(std::uint64_t ticket, WorkerState& worker, std::uint64_t worker_ticket);
  // A registered worker answered a ticket it does not hold here: matched by origin to a resent
  // chunk (first answer wins), else kept as an orphan. Returns true if used.
  bool accept_by_origin(WorkerState& worker, proto::WorkerResult& result, zmq::message_t& payload);
  // This broker's ticket for the ticket a worker sent (aliases of adopted chunks).
  static std::uint64_t ledger_ticket(WorkerState& worker, std::uint64_t ticket, bool forget);
  // The live chunk sent here again (kResent) with this origin, if any.
  std::optional<std::uint64_t> resent_ticket(const proto::Origin& origin);
  // Resent chunks whose hold is over go to the queue; old orphans and adoptables go.
  void release_held_back();
  void expire_takeover_state();

  // dispatch.cpp
  void dispatch();
  // Sends `tickets` (assigned to `worker` by the scheduler, in order) in as few TASK messages as
  // the protocol allows and makes them the worker's; appends to `started` those whose client
  // asked for STARTED. A worker that cannot be reached is lost and the chunks queued again.
  void send_tasks(WorkerState& worker, const std::vector<std::uint64_t>& tickets, std::vector<std::uint64_t>& started);
  void send_started();

  // core.cpp
  void reply_error(Side side, const std::string& identity, const Status& status);
  // Answers ERROR kUnavailable to a peer over a cap; logged at most once per interval.
  void refuse_peer(Side side, const std::string& identity, const std::string& why);
  // DISCONNECT to a peer we do not know: it says HELLO (registers) again.
  void ask_to_start_over(Side side, const std::string& identity);
  void send_to_client(ClientState& client, std::vector<zmq::message_t>& frames);
  bool send_to_worker(WorkerState& worker, std::vector<zmq::message_t>& frames);
  std::chrono::milliseconds expiry() const { return options_.heartbeat_interval * options_.heartbeat_liveness; }
  // Whether bytes arrived on that connection within expiry() (a silent peer still receiving is alive).
  bool receiving(const std::unique_ptr<LinkWatch>& link) const;
  static std::chrono::milliseconds since(Clock::time_point then, Clock::time_point now) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(now - then);
  }

  const BrokerOptions options_;
  Outbox& out_;
  Metrics& metrics_;
  std::shared_ptr<spdlog::logger> log_;
  Clock::time_point now_;  // of the event being handled
  bool draining_ = false;

  std::pmr::unsynchronized_pool_resource node_pool_;  // before everything that uses it
  std::unordered_map<std::string, WorkerState> workers_by_id_;
  std::unordered_map<std::string, ClientState> clients_by_id_;
  std::pmr::unordered_map<std::uint64_t, Chunk> chunks_{&node_pool_};  // every chunk not yet answered
  struct StartedDue {
    Clock::time_point due;
    std::uint64_t ticket;
  };
  std::deque<StartedDue> started_due_;  // chunks whose client asked for STARTED, in order of dispatch
  Scheduler scheduler_;                 // which queued chunk goes to which worker
  std::unordered_map<Scheduler::WorkerHandle, std::string> identity_by_handle_;
  std::unordered_map<std::uint64_t, std::string> identity_by_instance_;  // registered processes
  // Supervisors one of whose processes answered a chunk, with their CURVE key name: they vouch for
  // their other processes, which skip probation. A supervisor's whole id is known only to it, its
  // processes and this broker (status shows half), so a stranger cannot claim one.
  std::unordered_map<std::uint64_t, std::string> proven_supervisors_;
  std::unordered_map<std::uint64_t, SilentLoss> silenced_;  // by instance; forgotten after a while
  // Chunks past their retry budget for silent losses, and since when: they fail after two more
  // liveness periods unless a worker they were lost on turns out to be alive (refund).
  std::unordered_map<std::uint64_t, Clock::time_point> over_budget_;
  std::uint64_t next_ticket_;  // never 0 (0 names no chunk)
  Clock::time_point last_refusal_logged_{};
  LogThrottle bad_message_log_;
  LogThrottle cap_refusals_;
  bool announcement_pending_ = false;
  std::unordered_map<std::string, std::uint64_t> bad_by_peer_;  // since the last report
  struct ReadyBudget {
    double tokens = 0;
    Clock::time_point refilled{};
  };
  std::unordered_map<std::string, ReadyBudget> ready_budgets_;  // by peer; idle ones dropped each tick

  const Pair* pair_ = nullptr;
  // takeover.cpp
  std::unordered_map<proto::Origin, std::uint64_t, OriginHash> resent_;  // kResent chunks not answered
  std::unordered_map<proto::Origin, Adoptable, OriginHash> adoptable_;
  std::unordered_map<proto::Origin, Orphan, OriginHash> orphans_;
  std::int64_t orphan_bytes_ = 0;
  struct HeldBack {
    std::uint64_t ticket = 0;
    Clock::time_point until;  // its client's ClientState::hold_resent_until
  };
  std::vector<HeldBack> held_back_;  // resent chunks waiting for the workers that may hold them
  // The most worker processes a client's HELLO said its last broker counted: once that many are
  // registered here, resent chunks need not wait for more (0: wait until each client's hold_resent_until).
  std::size_t workers_expected_ = 0;
  bool workers_back() const { return workers_expected_ != 0 && workers_by_id_.size() >= workers_expected_; }
  std::uint64_t chunks_adopted_ = 0;  // chunks that kept running on their worker across brokers
  std::uint64_t orphans_delivered_ = 0;

  // The latest failures and re-dispatches, for the status (at most proto::kMaxStatusEvents, oldest first).
  struct Event {
    Clock::time_point when;
    proto::EventInfo info;  // age_ms filled in by status_reply()
  };
  std::deque<Event> events_;
  // Remembers a failure (kEventFailed) or a re-dispatch of `chunk`. `outcome`: what failed, or
  // nullptr with `message` the re-dispatch's cause.
  // `ran_it`: the worker that held it, where known.
  void note_event(std::uint8_t kind, const Chunk& chunk, const proto::Outcome* outcome, const std::string& message,
                  const WorkerState* ran_it = nullptr);

  std::uint64_t chunks_done_ = 0;
  std::uint64_t chunks_failed_ = 0;
  std::uint64_t chunks_redispatched_ = 0;
  std::uint64_t bad_messages_ = 0;
  std::vector<std::string> results_pending_;  // clients whose results_out is not empty
  std::uint64_t context_bytes_received_ = 0;
  std::uint64_t context_bytes_sent_ = 0;
};

}  // namespace poolmap::detail
