// Internal (not installed): the broker's dispatch policy, which queued chunk goes to which worker.
// Plain data in, decisions out: no sockets and no clock of its own (callers pass `now`), so it is
// unit-tested without daemons (tests/unit/scheduler_test.cpp).
//
// Workers announce credit (how many chunks they accept) and the tasks they can run. Clients queue
// chunks, each of one task kind (name + signature). next() pairs a chunk with a worker:
//  - a worker gets only chunks of a task it announced, with the same signature;
//  - idle workers (nothing in flight) come first, least recently served first; a worker's further
//    credit (prefetch) is used only when no idle worker takes a chunk;
//  - a worker on probation (registered, nothing answered yet) has one unit of credit, used only
//    when no proven worker has a unit of credit that takes the chunk: a stream of workers that
//    register, take chunks and vanish holds at most one chunk each, and only what the proven
//    workers had no room for;
//  - clients take turns (round-robin), so several clients share the workers fairly;
//  - within a client, the chunk at the front of each kind's queue that was queued first goes first
//    (a chunk put back after a loss goes to the front of its queue).
// runnable() says whether some registered worker can run a task kind, and if none can, why: the
// broker fails such chunks instead of keeping them for ever. A kind waits (kWait) while no worker
// is registered at all, for `grace` after the broker started (workers registering again after a
// broker restart), and for `grace` but at least kReplacementGrace after its last capable worker
// left (a worker process being replaced).
//
// Thread-safety: none; the broker's loop thread owns it.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory_resource>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "poolmap/protocol.hpp"

namespace poolmap::detail {

class Scheduler {
 public:
  using Clock = std::chrono::steady_clock;
  using WorkerHandle = std::uint64_t;  // from add_worker; never reused
  using KindId = std::uint32_t;        // from kind(); stable for the scheduler's life
  using Ticket = std::uint64_t;        // a chunk, named by the broker
  using ClientId = std::string;

  enum class Verdict {
    kRunnable,           // a registered worker has the task with this signature
    kWait,               // none now, but one may come (no workers at all, or within the grace)
    kUnknownTask,        // workers are registered and none has a task of this name
    kSignatureMismatch,  // workers have the name, with another signature
  };
  struct Runnability {
    Verdict verdict = Verdict::kRunnable;
    std::string message;  // kUnknownTask / kSignatureMismatch: what the registered workers have
  };
  struct Assignment {
    Ticket ticket = 0;
    WorkerHandle worker = 0;
  };

  // The least a kind whose last capable worker left waits, whatever the heartbeat: a replacement
  // (max_tasks_per_child, a crash) takes a spawn, a library load and a handshake, which a busy host
  // stretches past a short liveness period.
  static constexpr std::chrono::milliseconds kReplacementGrace{2000};

  Scheduler(std::chrono::milliseconds grace, Clock::time_point now) : grace_(grace), started_(now) {}

  // The id of a task kind (interned on first use).
  KindId kind(std::string_view name, std::string_view signature);

  // A worker registered with `credit` chunks and `tasks`. Returns its handle. `on_probation`: it
  // gets one unit of `credit` until prove(), after the proven workers (see the class comment).
  WorkerHandle add_worker(std::uint32_t credit, const std::vector<proto::TaskInfo>& tasks, Clock::time_point now,
                          bool on_probation = false);
  // The worker answered a chunk: its probation ends and it gets the rest of its credit. `idle`: it
  // holds no chunk. No effect on a proven worker.
  void prove(WorkerHandle worker, bool idle);
  bool on_probation(WorkerHandle worker) const;
  // The worker is gone: its credit is dropped; its kinds remember `now` as last seen.
  void remove_worker(WorkerHandle worker, Clock::time_point now);
  // The worker answered a chunk: one unit of credit back (unless it owes some after a lowered
  // credit). `idle`: it holds no other chunk.
  void return_credit(WorkerHandle worker, bool idle);
  // The worker holds a chunk next() did not give it (adopted from an earlier broker): one unit of
  // its credit is in use (owed, when it has none free).
  void take_credit(WorkerHandle worker);
  // The worker's credit changed by `delta` (CREDIT). Raised: the new units are usable at once, as
  // prefetch (an idle worker keeps one entry among the idle). Lowered: units not in use are dropped; the rest are
  // owed and kept back from the next return_credit()s.
  void change_credit(WorkerHandle worker, std::int64_t delta, bool idle);

  // Queues a chunk of `client` (at the front of its kind's queue when `front`: a chunk put back).
  void enqueue(const ClientId& client, Ticket ticket, KindId kind, bool front);
  // The chunk is no longer queued (answered, cancelled, failed): next() never returns it.
  void forget(Ticket ticket);
  // Forgets every chunk the client has queued.
  void remove_client(const ClientId& client);

  // The next chunk to send and the worker to send it to, or nullopt when no worker with credit
  // can run any queued chunk. Uses one unit of that worker's credit and dequeues the chunk.
  std::optional<Assignment> next();

  // Whether a registered worker can run `kind` now (see the class comment).
  Runnability runnable(KindId kind, Clock::time_point now) const;
  // Dequeues and returns the queued chunks whose kind no registered worker can run (verdict
  // kUnknownTask or kSignatureMismatch), with the verdict.
  std::vector<std::pair<Ticket, Runnability>> take_unrunnable(Clock::time_point now);

  std::size_t queued() const { return queued_.size(); }
  bool is_queued(Ticket ticket) const { return queued_.contains(ticket); }
  std::size_t workers() const { return workers_.size(); }

 private:
  struct Kind {
    std::string name;
    std::string signature;
    std::uint32_t capable_workers = 0;  // registered workers that announced it
    Clock::time_point last_seen{};      // when the last capable worker left; {} = never
  };
  struct Worker {
    std::uint32_t credit = 0;
    std::uint32_t owed = 0;  // units to keep back from return_credit (a lowered credit)
    bool on_probation = false;
    std::uint32_t withheld = 0;  // on probation: the credit it announced beyond its one unit
    std::vector<KindId> kinds;  // sorted
    bool can_run(KindId kind) const;
  };
  struct ClientQueue {
    std::vector<std::pair<KindId, std::deque<Ticket>>> by_kind;
    bool in_ring = false;
  };

  // Takes the chunk `worker` should run next from `client`, if any.
  std::optional<Ticket> take_from(ClientQueue& client, const Worker& worker);
  bool has_queued(ClientQueue& client);  // also drops forgotten tickets from the fronts

  std::chrono::milliseconds grace_;
  Clock::time_point started_;
  std::unordered_map<std::string, KindId> kind_ids_;  // "name\nsignature"
  std::vector<Kind> kinds_;
  KindId last_kind_ = 0;  // the kind kind() returned last (checked against kinds_.size())
  std::map<WorkerHandle, Worker> workers_;
  WorkerHandle next_worker_ = 1;
  // One entry per unit of credit. A worker with nothing in flight is listed in idle_ (least
  // recently served first); its further units wait in prefetch_, used only when no idle worker
  // takes the chunk. Entries of removed workers are skipped lazily.
  std::deque<WorkerHandle> idle_;
  std::deque<WorkerHandle> prefetch_;
  std::deque<WorkerHandle> probation_;  // the unit of each worker on probation, used last
  std::unordered_map<ClientId, ClientQueue> clients_;
  std::deque<ClientId> ring_;  // clients with queued chunks, next to serve first
  // The queued tickets, in nodes from a pool of their own: one per chunk, made and dropped at
  // the rate of chunks, which glibc's malloc serves slowly in bursts.
  std::pmr::unsynchronized_pool_resource queued_nodes_;
  std::pmr::unordered_set<Ticket> queued_{&queued_nodes_};
};

}  // namespace poolmap::detail
