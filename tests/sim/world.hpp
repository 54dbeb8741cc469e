// The simulator's world: a virtual clock, one random generator, an event queue, a network of
// sockets between simulated peers and the real broker code (broker/src/core), and a trace.
//
// Everything that happens is an event at a virtual time, run in (time, sequence) order; nothing
// reads a real clock or a real socket, and every random draw comes from the one generator, so a
// seed determines the whole run and replays it exactly.
//
// The network models what ZeroMQ over TCP gives poolmap: a peer's socket connects to a broker (a
// new routing id on every connection), messages on one connection arrive in order after a delay,
// connections to different peers reorder freely, a message sent while the socket is not connected
// waits in the socket and goes once it reconnects (ZeroMQ's DEALER queue), a message on the wire
// when the connection breaks is lost, and a broker sending to a routing id that is gone is told at
// once (ROUTER_MANDATORY).
//
// The brokers. A world has one broker (the BrokerCore, as the daemon without --ha runs it) or a
// pair (World::pair(): two detail::PairedBroker, the primary "a" and the backup "b", as the daemon
// with --ha primary|backup runs them). Each broker has its own routing tables, its own clock
// offset and its own log prefix; a socket connects to the broker its peer named (the endpoint
// "a" or "b"; "sim" is the single broker). The pair's peer link is simulated too: each
// PeerLink::publish reaches the other broker after a delay of its own (in order, as over the
// PUB/SUB connection), is lost when that broker is down, waits while it is frozen, and a
// partition of the link drops what is published meanwhile or holds it until the link heals (TCP
// retransmitting). A broker can crash (its state lost; it comes back later on the same endpoint,
// passive) or freeze (SIGSTOP: it handles nothing, what reaches it waits; when it continues it
// reads its peer's messages first, then the rest in order, as the shell's loop does).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <unordered_map>
#include <vector>

#include <zmq.hpp>

#include "core/core.hpp"
#include "core/paired.hpp"

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

// One ZeroMQ DEALER socket of a peer, connected (or reconnecting) to a broker.
struct Socket {
  Peer* owner = nullptr;
  Side side = Side::kClient;
  int broker = 0;              // the broker it connects to (the endpoint its peer named)
  std::string key;             // the CURVE key name the broker sees ("" here: no CURVE)
  std::string routing_id;      // of the current connection; "" while not connected
  std::uint64_t connection = 0;  // counts connections: what was on the wire of an older one is lost
  bool closed = false;
  std::deque<Frames> waiting;  // sent while not connected: they go when it connects
  bool link_dropped = false;   // a fault cut its connection; not connected again yet
  Time to_broker_fifo{};       // the last arrival scheduled on this connection, each way
  Time to_peer_fifo{};
};

// Why a message never reached the broker.
enum class Lost {
  kBrokerGone,   // the broker crashed (or was down) with it on the way, or it went to a broker that restarted since
  kClosed,       // its peer closed the connection (it turned to another broker, or died)
  kLinkDropped,  // a fault cut the connection
};

// Known issues a broker's answer to a vote shows (see tests/sim/peers.hpp kKnown*).
inline constexpr std::uint32_t kLateReady = 1;
inline constexpr std::uint32_t kHeldVote = 8;
inline constexpr std::uint32_t kRefusedVote = 16;

// A simulated process (client, worker process, supervisor, hostile peer).
class Peer {
 public:
  explicit Peer(World& world, std::string name);
  virtual ~Peer() = default;
  const std::string& name() const { return name_; }
  virtual void on_message(Socket& socket, Frames& frames) = 0;
  bool alive() const { return alive_; }
  bool stopped() const { return stopped_; }
  // A message it sent was lost on the wire (its connection broke, it died before the message left,
  // the broker it went to is gone), or (kLinkDropped, kBrokerGone) waits in its socket for a
  // connection where the broker knows nobody.
  virtual void lost_on_the_wire(const Frames&, Lost) {}
  // (pair) A known product issue (tests/sim/peers.hpp, kKnown*) puts what it holds at risk of
  // running again: it left a connection whose vote a passive broker still holds (told PASSIVE for
  // its next message there, or giving up), its vote was refused by the broker it made step down,
  // its READY reached a broker that no longer holds resent chunks back for it.
  virtual void at_risk(std::uint32_t /*issue*/) {}
  Time born() const { return born_; }
  // Until then a fault keeps it from its broker (stopped, its link cut).
  Time disturbed_until() const { return disturbed_until_; }

 protected:
  friend class World;
  World& world_;
  std::string name_;
  bool alive_ = true;
  bool stopped_ = false;       // SIGSTOP: nothing runs until it is continued
  std::vector<std::function<void()>> deferred_;  // what came due while stopped
  Time born_{};
  Time disturbed_until_{};
};

struct Stats {
  std::uint64_t messages = 0, lost_on_wire = 0, link_drops = 0, broker_restarts = 0, stops = 0, crashes = 0,
                supervisor_losses = 0, clock_jumps = 0, forged = 0, duplicated = 0, executions = 0, re_executions = 0,
                rejects = 0, cancels = 0, vanished_clients = 0;
  // The pair's faults and what they did.
  std::uint64_t broker_freezes = 0, link_partitions = 0, peer_states = 0, peer_states_lost = 0, takeovers = 0,
                step_downs = 0;
};

// What a broker of a pair was handling when it changed (for the invariants: a broker becomes
// active only when a client or worker turns to it).
struct BrokerEvent {
  enum Kind { kMessage, kPeerState, kPass, kTick, kLifecycle } kind = kLifecycle;
  bool vote = false;          // a client's HELLO (not an observer's) or a worker's READY
  std::size_t held_before = 0;  // votes it held before the event
  bool active_before = false;
};

class World {
 public:
  // `pair`: two brokers (a primary "a" and a backup "b"), else one ("sim").
  World(std::uint64_t seed, milliseconds heartbeat, bool pair = false);
  ~World();
  bool pair() const { return pair_; }
  int brokers() const { return static_cast<int>(brokers_.size()); }
  const std::vector<std::string>& endpoints() const { return endpoints_; }

  Time now() const { return now_; }
  Rng& rng() { return rng_; }
  Stats& stats() { return stats_; }
  milliseconds heartbeat() const { return heartbeat_; }
  milliseconds max_delay{5};  // of a message on the wire
  milliseconds peer_link_delay{5};  // of a PEER_STATE between the brokers of a pair
  std::size_t events_run = 0;

  // Runs `what` at now + `after` (a peer's event waits while that peer is stopped, and is dropped
  // once it is dead).
  void at(milliseconds after, std::function<void()> what, Peer* peer = nullptr);
  // Runs events until `until` or until `done()` holds (checked after each event). Returns false
  // when an invariant failed (see failure()).
  bool run_until(Time until, const std::function<bool()>& done = {});

  // Sockets. `endpoint`: the broker ("a", "b"; "" or "sim": the first).
  Socket* open(Peer& owner, Side side, const std::string& endpoint = {});
  void close(Socket* socket);  // the peer closes it: its connection goes, what waits in it is lost
  // `burst`: it arrives with the message sent before it on this connection.
  void send(Socket& socket, Frames frames, bool burst = false);

  // Faults.
  void drop_link(Socket& socket, milliseconds reconnect_after);
  void restart_broker(milliseconds down_for) { restart_broker(0, down_for); }
  void restart_broker(int broker, milliseconds down_for);  // kill -9, back on the same endpoint later
  void freeze_broker(int broker, milliseconds for_how_long);  // SIGSTOP, SIGCONT later
  // The link between the brokers of a pair is cut; what is published meanwhile is lost, or
  // (`hold`) arrives when it heals.
  void partition_peer_link(milliseconds for_how_long, bool hold);
  void stop(Peer& peer, milliseconds for_how_long);
  void kill(Peer& peer);  // no goodbye; its sockets close with it
  void jump_broker_clock(milliseconds by) { jump_broker_clock(0, by); }
  void jump_broker_clock(int broker, milliseconds by);

  // The brokers and their view of the world.
  detail::BrokerCore& core() { return *brokers_[0]->core; }  // the single broker's
  // A broker's core: the single broker's, or the active one's of a pair; nullptr when down or passive.
  detail::BrokerCore* core(int broker);
  detail::PairedBroker* paired(int broker);  // nullptr when down, or without a pair
  bool broker_up(int broker) const { return brokers_[broker]->up; }
  bool broker_frozen(int broker) const { return brokers_[broker]->frozen; }
  // Up, not frozen, and active: the broker that serves work (the single broker while up).
  bool acting(int broker) const;
  const BrokerEvent& last_event(int broker) const { return brokers_[broker]->event; }
  std::uint64_t incarnation(int broker) const { return brokers_[broker]->incarnation; }
  // A broker of a pair lost what its core held (it crashed, or stepped down): set by the run.
  std::function<void(int broker, std::uint64_t incarnation, bool stepped_down)> on_core_lost;
  const std::string& broker_name(int broker) const { return brokers_[broker]->name; }
  // Since when a broker of a pair is active (its core's start), if it is.
  std::optional<Time> active_since(int broker) const { return brokers_[broker]->active_since; }
  // Whether a broker of a pair has heard its peer since it (re)started.
  bool heard_peer(int broker) const { return brokers_[broker]->heard_peer; }
  bool peer_link_cut() const { return link_cut_; }
  Time peer_link_healed_at() const { return link_healed_at_; }
  const BrokerOptions& options() const { return options_; }
  // Log lines of the real client code (the session) go into the trace too.
  std::shared_ptr<spdlog::logger> client_logger() const { return client_log_; }
  BrokerOptions& options() { return options_; }
  void start_broker();  // every broker (both of a pair, passive)

  // The trace: the last lines of what happened, printed for a failing seed.
  void trace(const std::string& line);
  std::string trace_tail(std::size_t lines) const;
  void fail(const std::string& why);
  const std::string& failure() const { return failure_; }
  bool failed() const { return !failure_.empty(); }
  // Checked after each event a broker handled, and after a broker crashed, froze, continued or
  // started (set by the run).
  std::function<void(int broker)> after_broker_event;
  // Every message a broker sends, and (unreachable) every one it could not: its peer's connection is gone.
  std::function<void(int broker, Side, const std::string&, const Frames&)> on_broker_send;
  std::function<void(int broker, Side, const Socket*, const Frames&)> on_broker_unreachable;
  // A message from a broker that a fault kept from its peer: lost on the wire (a dropped link, a
  // dead process, a connection its peer closed) or held while the process was stopped (`held`).
  std::function<void(const Socket&, const Frames&, bool held)> on_disrupted_delivery;

 private:
  class Outbox;
  class Facts;
  class Link;
  struct Event {
    Time when;
    std::uint64_t sequence;
    std::function<void()> what;
    Peer* peer;
    bool operator>(const Event& other) const {
      return when != other.when ? when > other.when : sequence > other.sequence;
    }
  };
  // A message that reached a frozen broker: handled when it continues.
  struct Waiting {
    Socket* socket;
    std::uint64_t connection;
    std::string routing_id;
    std::uint64_t incarnation;
    std::shared_ptr<Frames> frames;
  };
  // One broker process.
  struct Broker {
    int index = 0;
    std::string name;
    bool up = false;
    bool frozen = false;
    std::uint64_t incarnation = 0;  // counts its starts and stops: an event of an earlier one is void
    milliseconds clock_offset{0};
    std::unordered_map<std::string, Socket*> routes[2];  // its routing ids, per side
    std::unique_ptr<Outbox> outbox;
    std::unique_ptr<Link> link;
    std::unique_ptr<detail::Metrics> metrics;
    std::shared_ptr<spdlog::logger> log;
    std::unique_ptr<detail::BrokerCore> core;      // one broker
    std::unique_ptr<detail::PairedBroker> paired;  // one of a pair
    Time started_pass_at{};                          // one broker: the STARTED pass scheduled
    std::optional<Time> pass_at;                     // one of a pair: the pass scheduled at next_due()
    bool tick_missed = false;                        // a tick came due while frozen
    bool heard_peer = false;                         // since it (re)started
    bool pass_pending = false;                       // an end of pass is scheduled for this moment
    std::unordered_map<std::string, Socket*> held_voters;  // the connections whose votes it holds
    std::optional<Time> active_since;
    std::uint32_t workers_expected = 0;  // the most workers a client's HELLO said (while resent chunks wait)
    bool released = false;               // it no longer holds resent chunks back
    std::deque<proto::PeerState> frozen_peer;        // what reached it while frozen: its peer's first,
    std::deque<Waiting> frozen_messages;             // then the rest in order
    BrokerEvent event;
  };
  void connect(Socket& socket);
  // `batch`: one of the messages a broker reads in one pass of its loop (no end of pass after it).
  void deliver_to_broker(Socket& socket, std::uint64_t connection, const std::string& routing_id,
                         std::uint64_t incarnation, std::shared_ptr<Frames> frames, bool batch = false);
  void deliver_to_peer(Socket& socket, std::uint64_t connection, std::shared_ptr<Frames> frames);
  void schedule_tick(Broker& broker, std::uint64_t incarnation);
  void schedule_started(Broker& broker, std::uint64_t incarnation);
  void schedule_pass(Broker& broker);  // a pair's: at its next_due()
  void run_tick(Broker& broker);
  void start_broker(Broker& broker);
  void thaw(Broker& broker);
  void publish_peer_state(int from, const proto::PeerState& state);
  void send_peer_state(int from, const proto::PeerState& state);
  void handle_peer_state(Broker& broker, const proto::PeerState& state, bool batch = false);
  void request_pass(Broker& broker);
  void begin_event(Broker& broker, BrokerEvent::Kind kind, bool vote = false);
  void end_event(Broker& broker);
  bool send_from_broker(Broker& broker, Side side, const std::string& identity, Frames& frames);
  Time broker_now(const Broker& broker) const { return now_ + broker.clock_offset; }
  int broker_index(const std::string& endpoint) const;

  Rng rng_;
  Time now_;
  milliseconds heartbeat_;
  bool pair_ = false;
  std::vector<std::string> endpoints_;
  std::uint64_t sequence_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events_;
  std::vector<std::unique_ptr<Socket>> sockets_;
  std::uint64_t next_routing_id_ = 1;
  std::unordered_map<std::string, Socket*> routing_ids_;  // every one ever given (pair: whose it was)
  BrokerOptions options_;
  std::vector<std::unique_ptr<Broker>> brokers_;
  std::shared_ptr<spdlog::logger> client_log_;
  // The pair's peer link: cut or not, what a cut holds per direction, the last arrival each way.
  bool link_cut_ = false;
  bool link_hold_ = false;
  std::uint64_t link_cuts_ = 0;
  Time link_healed_at_{};
  std::deque<proto::PeerState> link_held_[2];
  Time link_fifo_[2]{};
  std::deque<std::string> trace_;
  std::string failure_;
  Stats stats_;

  friend class Peer;
};

}  // namespace poolmap::sim
