// The simulator's peers: worker processes, their supervisors, clients, and misbehaving peers, each
// speaking poolmap's protocol (docs/PROTOCOL.md) to the broker core over the simulated network.
//
// Clients are the real thing: each runs the client's session (client/src/session.hpp, what a Pool's
// I/O thread runs) over a simulated socket, with a sink that checks every result it takes. Worker
// processes and supervisors are models that follow the rules of the real programs that matter to
// the broker: workers register (READY, a new generation on each new connection), heartbeat, run
// chunks one at a time with prefetched ones behind, answer kContextMissing for a context they do not
// hold, and register again when the broker is silent or says DISCONNECT; supervisors report their
// processes' exits and start replacements.
//
// Items carry who they belong to and how they behave: item = client << 40 | job << 24 | index,
// with kPoison (kills the process that runs it), kThrows (the task throws) and kSlow in the top
// bits. A result payload is [first_index, f(item)...]: a client checks every value, so a result
// given to the wrong chunk is seen.
#pragma once

#include <map>
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
  };
  std::map<ChunkKey, Fate> fates;
  bool lost_all_capable_workers = false;  // some task had no live process for a while
  std::vector<Time> clock_jumps;  // the broker's clock jumped forward then: every wait it had was cut short
};

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
  std::uint64_t instance() const { return instance_; }
  std::uint64_t running_ticket() const { return running_ ? running_->header.ticket : 0; }
  const std::vector<proto::TaskInfo>& tasks() const { return tasks_; }
  Kind kind() const { return kind_; }
  // Every chunk it holds (running or prefetched) is hit by a fault.
  void disrupted();
  // Its answers lost on the wire: their chunks were hit by a fault too.
  void lost_on_the_wire(const Frames& frames) override;

 private:
  struct Held {
    proto::TaskHeader header;
    std::vector<std::uint64_t> items;
    bool abandoned = false;
  };
  void register_again(const char* why);
  void send(Frames frames);
  void heartbeat();
  void run_next();
  void finish(std::uint64_t ticket, std::uint64_t run);

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
};

// A worker supervisor: its processes, their exit reports, replacements.
class Supervisor final : public Peer {
 public:
  Supervisor(World& world, Ledger& ledger, std::vector<proto::TaskInfo> tasks, std::size_t processes,
             WorkerProcess::Kind kind, std::string name, std::vector<std::unique_ptr<Peer>>& owned);
  void start();
  void on_message(Socket&, Frames&) override {}
  // An exit report lost on the wire (the supervisor vanished while it travelled): as if never sent.
  void lost_on_the_wire(const Frames& frames) override;
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
  Socket* socket_ = nullptr;
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
  Socket* socket_ = nullptr;         // on the worker endpoint
  Socket* client_socket_ = nullptr;  // on the client endpoint
};

}  // namespace poolmap::sim
