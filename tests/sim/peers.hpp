// The simulator's peers: worker processes, their supervisors, clients, and misbehaving peers, each
// speaking poolmap's protocol (docs/PROTOCOL.md) to the broker core over the simulated network.
//
// Clients are the real thing: each runs the client's session (client/src/session.hpp, what a Pool's
// I/O thread runs) over a simulated socket, with a sink that checks every result it takes; with a
// pair its endpoints are {"a", "b"} and it turns between them as the session decides. Worker
// processes and supervisors are models that follow the rules of the real programs that matter to
// the broker: workers register (READY, a new generation on each new connection), heartbeat, run
// chunks one at a time with prefetched ones behind, answer kContextMissing for a context they do not
// hold, and register again when the broker is silent or says DISCONNECT; supervisors report their
// processes' exits and start replacements.
//
// With a pair the worker process follows worker/src/worker_process.cpp's rules for a broker list:
// it turns to the other broker when its own is silent for a liveness period (or, before any
// answer on a connection, after a liveness period of asking; it looks just past that period, not
// at its next heartbeat) and on PASSIVE (waiting until half an
// interval after the other one said PASSIVE, if it did less than half an interval ago); it ignores
// a message whose epoch is older than the newest it saw (and such a message is not a sign of life),
// says the newest in Ready::epoch, and lists the chunks it holds (the running one, then the queued
// ones) in Ready::held; it keeps its queued chunks on silence and PASSIVE and drops them on
// DISCONNECT; it echoes each TaskHeader's origin in its WorkerResult; and it keeps every answer it
// sent since a heartbeat interval before its broker last spoke ("unconfirmed"), sending them again
// after READY on each new connection. Its supervisor reports exits to both brokers. (The single
// broker's seeds keep the model as it was before the pair: no held chunks, no unconfirmed answers,
// queued chunks kept on DISCONNECT; see tests/sim/sim.cpp.)
//
// Items carry who they belong to and how they behave: item = client << 40 | job << 24 | index,
// with kPoison (kills the process that runs it), kThrows (the task throws) and kSlow in the top
// bits. A result payload is [first_index, f(item)...]: a client checks every value, so a result
// given to the wrong chunk is seen.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "session.hpp"
#include "world.hpp"

namespace poolmap::sim {

inline constexpr std::uint64_t kPoison = 1ULL << 63;
inline constexpr std::uint64_t kThrows = 1ULL << 62;
inline constexpr std::uint64_t kSlow = 1ULL << 61;
inline constexpr std::uint64_t kFlags = kPoison | kThrows | kSlow;
inline std::uint64_t make_item(std::uint64_t client, std::uint64_t job, std::uint64_t index) {
  return client << 40 | job << 24 | index;
}
inline std::uint64_t f(std::uint64_t item) { return (item & ~kFlags) * 2654435761ULL + 12345; }

// A chunk as the whole simulation names it: (client, job, first item index).
struct ChunkKey {
  std::uint64_t client = 0, job = 0, first = 0;
  auto operator<=>(const ChunkKey&) const = default;
};
inline ChunkKey key_of(std::uint64_t first_item, std::uint64_t first_index) {
  return {(first_item & ~kFlags) >> 40, ((first_item & ~kFlags) >> 24) & 0xffff, first_index};
}

// What happened to each chunk, to tell a failure the faults justify from one they do not.
struct Ledger {
  struct Fate {
    std::uint32_t crashes_running = 0;  // processes that crashed while running it
    std::uint32_t disruptions = 0;      // faults that hit a process holding it
    std::uint32_t executions = 0;
    std::uint32_t liar_answers = 0;
    std::uint32_t rejected = 0;  // answers its client could not decode (a liar's, perhaps delivered again)
    // (pair) What may make it run again, for the check that every re-execution has a cause: a
    // fault that hit a process holding it or its client (a crash, a stop, a cut link, an answer lost
    // on the way), and, apart, a broker failover the takeover mechanism (held chunks, answers kept
    // and sent again) cannot cover: an answer a superseded broker took and forwarded to a client
    // that had turned away from it or ignored it (an older epoch).
    std::uint32_t excuses = 0;
    std::uint32_t failover = 0;
    // (pair) Runs again that a known product issue explains (reported; a bit per issue, and how
    // many): see kKnown* below.
    std::uint32_t known = 0;
    std::uint32_t known_issues = 0;
  };
  std::map<ChunkKey, Fate> fates;
  // (pair) Chunks a worker listed in a READY (held) and answered on that same connection: if such
  // a chunk's map hangs, it is the known issue of a held chunk adopted after it was answered.
  std::set<ChunkKey> listed_then_answered;
  void known(const ChunkKey& key, std::uint32_t issue) {
    Fate& fate = fates[key];
    ++fate.known;
    fate.known_issues |= issue;
  }
  bool lost_all_capable_workers = false;  // some task had no live process for a while
  std::vector<Time> clock_jumps;  // the broker's clock jumped forward then: every wait it had was cut short
  // (pair) The acting broker's clock jumped forward: until the end of the window, a chunk that
  // starts running again may be one it took from a worker it wrongly thought silent.
  std::vector<std::pair<Time, Time>> rerun_windows;
};

// Known product issues that explain a chunk's running again (the simulator reports them, and
// counts their runs apart rather than failing the seed):
inline constexpr std::uint32_t kKnownLateOrphan = kLateReady;  // a worker's READY (with what it holds, and
                                                              // its answers) reached a broker that took
                                                              // over more than two intervals before: its
                                                              // clients' resent chunks may be queued for
                                                              // other workers already
inline constexpr std::uint32_t kKnownDisconnect = 2;    // a DISCONNECT made a worker forget answers the
                                                         // broker never read
// (4 was a chunk sent again to a new broker without kResent after kResourceExhausted or
// kContextMissing: fixed in issue 25.)
inline constexpr std::uint32_t kKnownHeldVote = kHeldVote;  // a vote held by a passive broker whose
                                                            // voter closed its connection (it turned
                                                            // on silence): taken later on a dead one
inline constexpr std::uint32_t kKnownStaleRefusal = 32;  // a worker's kContextMissing, kept unconfirmed and
                                                          // sent again after READY, taken for the answer
                                                          // of the chunk it holds (adopted) now
inline constexpr std::uint32_t kKnownRefusedVote = kRefusedVote;  // a vote refused by the broker it made
                                                                   // step down (a newer epoch): the voter
                                                                   // goes away for a liveness period

inline const proto::TaskInfo kSquare{"sq", "u64(u64)"};
inline const proto::TaskInfo kWithContext{"ctx", "u64(u64,ctx)"};

class Supervisor;

// One worker process.
class WorkerProcess final : public Peer {
 public:
  enum class Kind { kHonest, kLiar, kDuplicator };
  WorkerProcess(World& world, Ledger& ledger, Supervisor* supervisor, std::uint64_t supervisor_id,
                std::vector<proto::TaskInfo> tasks, Kind kind, std::string name);
  void start();
  void on_message(Socket& socket, Frames& frames) override;
  // Faults: SIGKILL (its supervisor reports it), and its link.
  void crash(const std::string& cause);
  Socket* socket() const { return socket_; }
  std::uint64_t newest_epoch() const { return newest_epoch_; }
  std::uint64_t instance() const { return instance_; }
  std::uint64_t running_ticket() const { return running_ ? running_->header.ticket : 0; }
  const std::vector<proto::TaskInfo>& tasks() const { return tasks_; }
  Kind kind() const { return kind_; }
  // Every chunk it holds (running or prefetched) is hit by a fault. `excuse` (pair): the fault may
  // make them run again (not so a broker's crash or freeze: the takeover mechanism covers those).
  void disrupted(bool excuse = true);
  // (pair) It dies: the answers it kept unconfirmed die with it, and their chunks may run again.
  void dies();
  // (pair) The core of that broker incarnation is gone: an answer it read lately (and kept, for a
  // client that had not sent the chunk there yet) is gone with it, though this process counts it
  // as read.
  void core_lost(int broker, std::uint64_t incarnation);
  // Its answers lost on the wire: their chunks were hit by a fault too.
  void lost_on_the_wire(const Frames& frames, Lost why) override;
  void at_risk(std::uint32_t issue) override;

 private:
  struct Held {
    proto::TaskHeader header;
    std::vector<std::uint64_t> items;
    bool abandoned = false;
    std::uint32_t generation = 0;  // the connection it came on
    std::uint32_t listed = 0;      // the last connection whose READY listed it (held)
  };
  // (pair) An answer for `chunk` goes to the current broker: note the known issue if that broker
  // has been active so long that it keeps no answer for a chunk its client has not sent yet.
  void note_late_orphan(const std::optional<ChunkKey>& chunk);
  void register_again(const char* why);
  void send(Frames frames);
  void heartbeat();
  void run_next();
  void finish(std::uint64_t ticket, std::uint64_t run);
  // (pair) A new connection to endpoints_[index] with READY (held chunks, newest epoch), then every
  // unconfirmed answer again.
  void connect_to(std::size_t index, const std::string& why);
  void on_passive();
  // (pair) Turns to the other broker if the current one is lost or said PASSIVE; true if it did.
  bool look_for_loss();
  void schedule_loss_check();
  // Sends an answer, kept as unconfirmed (pair) when its origin names a chunk.
  void send_answer(Frames frames, const proto::Origin& origin, std::optional<ChunkKey> chunk,
                   std::optional<ChunkKey> refused = std::nullopt);
  void forget_confirmed();

  Ledger& ledger_;
  Supervisor* supervisor_;
  std::uint64_t supervisor_id_;
  std::vector<proto::TaskInfo> tasks_;
  Kind kind_;
  std::uint64_t instance_;
  std::uint32_t pid_;
  std::uint32_t generation_ = 0;
  std::uint32_t credit_ = 1;
  Socket* socket_ = nullptr;
  Time last_heard_{};
  Time last_sent_{};
  std::deque<Held> queue_;
  std::optional<Held> running_;
  std::uint64_t runs_ = 0;  // counts runs, so a stale finish event is told apart
  std::map<std::uint64_t, ChunkKey> answered_;  // ticket -> chunk, of its last answers
  std::set<std::uint64_t> contexts_;
  // (pair) The broker list and what the real worker keeps to go between them.
  bool pair_ = false;
  std::vector<std::string> endpoints_;
  std::size_t current_ = 0;
  std::vector<std::optional<Time>> passive_at_;
  std::uint64_t newest_epoch_ = 0;
  bool heard_ = false;  // the broker answered on this connection
  Time asked_since_{};
  struct Turn {
    std::size_t endpoint = 0;
    Time at{};
  };
  std::optional<Turn> turn_;
  struct Unconfirmed {
    Time sent;
    std::shared_ptr<const Frames> frames;
    std::optional<ChunkKey> chunk;  // of an answer (a result, or a task's error)
    std::optional<ChunkKey> refused;  // of a chunk it did not run (kContextMissing, kCancelled)
  };
  std::deque<Unconfirmed> unconfirmed_;
  bool stale_logged_ = false;
  bool vote_left_ = false;  // it left this connection's vote with a broker that holds it (known issue)
  struct Answered {
    ChunkKey chunk;
    int broker;
    std::uint64_t incarnation;
    Time when;
  };
  std::deque<Answered> answers_sent_;  // the last ones, to whom
  std::optional<Time> loss_check_at_;  // when it looks for its broker's loss next
};

// A worker supervisor: its processes, their exit reports, replacements.
class Supervisor final : public Peer {
 public:
  Supervisor(World& world, Ledger& ledger, std::vector<proto::TaskInfo> tasks, std::size_t processes,
             WorkerProcess::Kind kind, std::string name, std::vector<std::unique_ptr<Peer>>& owned);
  void start();
  void on_message(Socket&, Frames&) override {}
  // An exit report lost on the wire (the supervisor vanished while it travelled): as if never sent.
  void lost_on_the_wire(const Frames& frames, Lost why) override;
  // One of its processes ended: report it (after `delay`), start a replacement.
  // `prefetched`: the chunks it held besides the running one, which lose nothing by the crash once
  // the report is through (a report never sent leaves them lost to silence).
  void exited(WorkerProcess& process, bool crashed, std::string cause, std::uint64_t running_ticket,
              std::vector<ChunkKey> prefetched);
  // The whole supervisor and its processes vanish, without a word; a new one comes later.
  void vanish();
  std::vector<WorkerProcess*> processes() const { return processes_; }
  std::uint64_t id() const { return id_; }
  const std::vector<proto::TaskInfo>& tasks() const { return tasks_; }

 private:
  void spawn();
  Ledger& ledger_;
  std::vector<proto::TaskInfo> tasks_;
  std::size_t wanted_;
  WorkerProcess::Kind kind_;
  std::uint64_t id_;
  std::vector<Socket*> sockets_;  // one per broker (a pair: both, as the real supervisor)
  std::vector<WorkerProcess*> processes_;
  std::vector<std::unique_ptr<Peer>>& owned_;
  std::uint64_t spawned_ = 0;
  std::map<std::uint64_t, std::vector<ChunkKey>> unreported_;  // reports not sent yet
  std::map<std::uint64_t, std::vector<ChunkKey>> reported_;    // by instance: sent, perhaps lost on the way
  std::uint64_t reports_ = 0;
};

// A client with its maps: the real client session (client/src/session.hpp, what a Pool's I/O
// thread runs) over a simulated socket, with a sink that checks every result it takes.
class Client final : public Peer, private detail::ClientSession::Port {
 public:
  struct Job {
    std::uint64_t id = 0;
    proto::TaskInfo task;
    std::vector<std::uint64_t> items;
    std::size_t chunksize = 1;
    std::optional<std::string> context;  // payload
    enum class State { kWaiting, kRunning, kDone, kFailed, kCancelled } state = State::kWaiting;
    std::vector<std::optional<std::vector<std::uint64_t>>> results;  // per chunk, as the sink took them
    ErrorCode error = ErrorCode::kOk;
    std::string error_message;
    std::size_t failed_chunk = 0;  // the chunk the error names (kWorkerLost, kTaskFailed, kMalformed)
    Time started{}, ended{};
    std::size_t chunks() const { return (items.size() + chunksize - 1) / chunksize; }
  };
  Client(World& world, Ledger& ledger, std::uint64_t number, std::size_t window, std::string name);
  void add_job(Job job, milliseconds start_after);
  void start();
  void on_message(Socket& socket, Frames& frames) override;
  void cancel_one();
  void vanish();
  // Says goodbye (DISCONNECT) once every job has ended.
  void leave_when_done() { leave_when_done_ = true; }
  const std::vector<Job>& jobs() const { return jobs_; }
  bool vanished() const { return vanished_; }
  bool finished() const;  // every job ended
  bool left() const { return left_; }
  std::uint64_t number() const { return number_; }
  Socket* socket() const { return socket_; }
  // (pair) A fault hit it (stopped, its link cut): its unanswered chunks may run again.
  void disrupted();
  void at_risk(std::uint32_t issue) override;
  // The chunk of job `job` (1, 2, ...) with index `chunk`, as the ledger names it.
  std::optional<ChunkKey> key_of_chunk(std::uint64_t job, std::uint64_t chunk) const;
  bool has_work() const { return !finished() && !left_ && !vanished_; }
  // Its session, for a failure's message: chunks in flight, the window, welcomed, the broker.
  std::string describe_session() const {
    return std::to_string(session_.chunks_in_flight()) + " chunks in flight, window " +
           std::to_string(session_.window_now()) + (session_.welcomed() ? ", welcomed by " : ", not welcomed by ") +
           session_.current_endpoint();
  }

 private:
  class Sink;
  // detail::ClientSession::Port
  bool send(std::vector<zmq::message_t>& frames) override;
  void open_connection(const std::string& endpoint) override;
  bool bytes_arriving(std::chrono::milliseconds) override { return false; }
  void job_ended(std::unique_ptr<detail::ClientSession::Job> job, detail::JobOutcome outcome) override;
  void heard_workers(std::size_t, bool) override {}
  void refused(const Status& why) override;
  // The I/O loop's pass after each event, and at the session's next_pass() at the latest.
  void pass();
  void schedule_pass();

  Ledger& ledger_;
  std::uint64_t number_;
  detail::ClientSession session_;
  Socket* socket_ = nullptr;
  std::vector<Job> jobs_;
  Time pass_at_{};
  bool leave_when_done_ = false;
  bool left_ = false;
  bool vanished_ = false;
  bool stale_ = false;  // handing the session a message of an older epoch than it saw: it must ignore it
  // (pair) Each chunk's last SUBMIT: on which connection, and whether marked kResent.
  std::uint64_t connections_ = 0;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::pair<std::uint64_t, bool>> submitted_;
};

// A peer that never registers and lies: results for chunks it was never given and exit reports for
// processes that are not its own (naming real instance ids, whole or by their public half, and the
// tickets they run), and real commands with random headers and frames on both endpoints.
class Forger final : public Peer {
 public:
  Forger(World& world, const std::vector<Supervisor*>& supervisors, std::string name);
  // Strikes at random moments until `until` (it is one of the faults: the heal ends it).
  void start(Time until);
  void on_message(Socket&, Frames&) override {}

 private:
  void strike();
  Time until_{};
  const std::vector<Supervisor*>& supervisors_;
  std::vector<Socket*> sockets_;         // on the worker endpoint (of each broker)
  std::vector<Socket*> client_sockets_;  // on the client endpoint (of each broker)
};

}  // namespace poolmap::sim
