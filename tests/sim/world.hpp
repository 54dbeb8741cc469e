// The simulator's world: a virtual clock, one random generator, an event queue, a network of
// sockets between simulated peers and the real broker core (broker/src/core), and a trace.
//
// Everything that happens is an event at a virtual time, run in (time, sequence) order; nothing
// reads a real clock or a real socket, and every random draw comes from the one generator, so a
// seed determines the whole run and replays it exactly.
//
// The network models what ZeroMQ over TCP gives poolmap: a peer's socket connects to the broker
// (a new routing id on every connection), messages on one connection arrive in order after a
// delay, connections to different peers reorder freely, a message sent while the socket is not
// connected waits in the socket and goes once it reconnects (ZeroMQ's DEALER queue), a message on
// the wire when the connection breaks is lost, and a broker sending to a routing id that is gone
// is told at once (ROUTER_MANDATORY).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <string>
#include <unordered_map>
#include <vector>

#include <zmq.hpp>

#include "core/core.hpp"

namespace poolmap::sim {

using Clock = std::chrono::steady_clock;
using Time = Clock::time_point;
using std::chrono::milliseconds;
using Frames = std::vector<zmq::message_t>;
using detail::Side;

// splitmix64: small, fast, the same on every platform (std::uniform_*_distribution are not).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::uint64_t below(std::uint64_t n) { return n == 0 ? 0 : next() % n; }  // [0, n)
  std::int64_t between(std::int64_t low, std::int64_t high) {  // [low, high]
    return low + static_cast<std::int64_t>(below(static_cast<std::uint64_t>(high - low + 1)));
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  bool chance(double p) { return uniform() < p; }
  milliseconds ms(std::int64_t low, std::int64_t high) { return milliseconds(between(low, high)); }

 private:
  std::uint64_t state_;
};

class Peer;
class World;

// One ZeroMQ DEALER socket of a peer, connected (or reconnecting) to the broker.
struct Socket {
  Peer* owner = nullptr;
  Side side = Side::kClient;
  std::string key;             // the CURVE key name the broker sees ("" here: no CURVE)
  std::string routing_id;      // of the current connection; "" while not connected
  std::uint64_t connection = 0;  // counts connections: what was on the wire of an older one is lost
  bool closed = false;
  std::deque<Frames> waiting;  // sent while not connected: they go when it connects
  Time to_broker_fifo{};       // the last arrival scheduled on this connection, each way
  Time to_peer_fifo{};
};

// A simulated process (client, worker process, supervisor, hostile peer).
class Peer {
 public:
  explicit Peer(World& world, std::string name) : world_(world), name_(std::move(name)) {}
  virtual ~Peer() = default;
  const std::string& name() const { return name_; }
  virtual void on_message(Socket& socket, Frames& frames) = 0;
  bool alive() const { return alive_; }
  bool stopped() const { return stopped_; }
  // A message it sent was lost on the wire (its connection broke, it died before the message left).
  virtual void lost_on_the_wire(const Frames&) {}

 protected:
  friend class World;
  World& world_;
  std::string name_;
  bool alive_ = true;
  bool stopped_ = false;       // SIGSTOP: nothing runs until it is continued
  std::vector<std::function<void()>> deferred_;  // what came due while stopped
};

struct Stats {
  std::uint64_t messages = 0, lost_on_wire = 0, link_drops = 0, broker_restarts = 0, stops = 0, crashes = 0,
                supervisor_losses = 0, clock_jumps = 0, forged = 0, duplicated = 0, executions = 0, re_executions = 0,
                rejects = 0, cancels = 0, vanished_clients = 0;
};

class World {
 public:
  World(std::uint64_t seed, milliseconds heartbeat);
  ~World();

  Time now() const { return now_; }
  Rng& rng() { return rng_; }
  Stats& stats() { return stats_; }
  milliseconds heartbeat() const { return heartbeat_; }
  milliseconds max_delay{5};  // of a message on the wire
  std::size_t events_run = 0;

  // Runs `what` at now + `after` (a peer's event waits while that peer is stopped, and is dropped
  // once it is dead).
  void at(milliseconds after, std::function<void()> what, Peer* peer = nullptr);
  // Runs events until `until` or until `done()` holds (checked after each event). Returns false
  // when an invariant failed (see failure()).
  bool run_until(Time until, const std::function<bool()>& done = {});

  // Sockets.
  Socket* open(Peer& owner, Side side);
  void close(Socket* socket);  // the peer closes it: its connection goes, what waits in it is lost
  void send(Socket& socket, Frames frames);

  // Faults.
  void drop_link(Socket& socket, milliseconds reconnect_after);
  void restart_broker(milliseconds down_for);
  void stop(Peer& peer, milliseconds for_how_long);
  void kill(Peer& peer);  // no goodbye; its sockets close with it
  void jump_broker_clock(milliseconds by);

  // The broker core and its view of the world.
  detail::BrokerCore& core() { return *core_; }
  const BrokerOptions& options() const { return options_; }
  // Log lines of the real client code (the session) go into the trace too.
  std::shared_ptr<spdlog::logger> client_logger() const { return client_log_; }
  BrokerOptions& options() { return options_; }
  void start_broker();

  // The trace: the last lines of what happened, printed for a failing seed.
  void trace(const std::string& line);
  std::string trace_tail(std::size_t lines) const;
  void fail(const std::string& why);
  const std::string& failure() const { return failure_; }
  bool failed() const { return !failure_.empty(); }
  // Checked after each event the broker handled (set by the run).
  std::function<void()> after_broker_event;
  std::function<void(Side, const std::string&, const Frames&)> on_broker_send;  // every message the broker sends
  // A message from the broker that a fault kept from its peer: lost on the wire (a dropped link, a
  // dead process) or held while the process was stopped.
  std::function<void(const Frames&)> on_disrupted_delivery;

 private:
  class Outbox;
  class Facts;
  struct Event {
    Time when;
    std::uint64_t sequence;
    std::function<void()> what;
    Peer* peer;
    bool operator>(const Event& other) const {
      return when != other.when ? when > other.when : sequence > other.sequence;
    }
  };
  void connect(Socket& socket);
  void deliver_to_broker(Socket& socket, std::uint64_t connection, const std::string& routing_id, Frames& frames);
  void deliver_to_peer(Socket& socket, std::uint64_t connection, std::shared_ptr<Frames> frames);
  void schedule_tick(std::uint64_t epoch);
  void schedule_started(std::uint64_t epoch);
  Time started_pass_at_{};
  bool send_from_broker(Side side, const std::string& identity, Frames& frames);
  Time broker_now() const { return now_ + broker_clock_offset_; }

  Rng rng_;
  Time now_;
  milliseconds heartbeat_;
  std::uint64_t sequence_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events_;
  std::vector<std::unique_ptr<Socket>> sockets_;
  std::unordered_map<std::string, Socket*> routes_[2];  // the broker's routing ids, per side
  std::uint64_t next_routing_id_ = 1;
  std::uint64_t broker_epoch_ = 0;
  bool broker_up_ = false;
  milliseconds broker_clock_offset_{0};
  BrokerOptions options_;
  std::unique_ptr<Outbox> outbox_;
  std::unique_ptr<detail::Metrics> metrics_;
  std::shared_ptr<spdlog::logger> log_;
  std::shared_ptr<spdlog::logger> client_log_;
  std::unique_ptr<detail::BrokerCore> core_;
  std::deque<std::string> trace_;
  std::string failure_;
  Stats stats_;

  friend class Peer;
};

}  // namespace poolmap::sim
