#include "world.hpp"

#include <spdlog/sinks/base_sink.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "wire.hpp"

namespace poolmap::sim {

// A broker's messages go into the simulated network.
class World::Outbox final : public detail::Outbox {
 public:
  Outbox(World& world, Broker& broker) : world_(world), broker_(broker) {}
  bool send(Side side, const std::string& identity, Frames& frames) override {
    return world_.send_from_broker(broker_, side, identity, frames);
  }

 private:
  World& world_;
  Broker& broker_;
};

// What the broker may learn of a connection: its key; no kernel to ask about bytes arriving.
class World::Facts final : public detail::PeerFacts {
 public:
  explicit Facts(const Socket& socket) : socket_(socket) {}
  std::string key() const override { return socket_.key; }
  std::string address() const override { return "sim:" + socket_.owner->name(); }
  std::unique_ptr<detail::LinkWatch> link() const override { return nullptr; }

 private:
  const Socket& socket_;
};

// A broker of a pair publishes its state to the other over the simulated peer link.
class World::Link final : public detail::PairedBroker::PeerLink {
 public:
  Link(World& world, int from) : world_(world), from_(from) {}
  void publish(const proto::PeerState& state) override { world_.publish_peer_state(from_, state); }

 private:
  World& world_;
  int from_;
};

namespace {
// The core's log lines go into the trace.
class TraceSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  TraceSink(World& world, std::string prefix) : world_(world), prefix_(std::move(prefix)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    world_.trace(prefix_ + std::string(msg.payload.data(), msg.payload.size()));
  }
  void flush_() override {}

 private:
  World& world_;
  std::string prefix_;
};
}  // namespace

World::World(std::uint64_t seed, milliseconds heartbeat, bool pair)
    : rng_(seed), now_(Time{} + std::chrono::hours(1)), heartbeat_(heartbeat), pair_(pair) {
  options_.client_endpoint = options_.worker_endpoint = "sim";
  options_.heartbeat_interval = heartbeat;
  endpoints_ = pair ? std::vector<std::string>{"a", "b"} : std::vector<std::string>{"sim"};
  for (std::size_t i = 0; i < endpoints_.size(); ++i) {
    auto broker = std::make_unique<Broker>();
    broker->index = static_cast<int>(i);
    broker->name = endpoints_[i];
    broker->outbox = std::make_unique<Outbox>(*this, *broker);
    broker->link = std::make_unique<Link>(*this, static_cast<int>(i));
    broker->metrics = std::make_unique<detail::Metrics>("");
    const std::string prefix = pair ? "broker " + broker->name + ": " : "broker: ";
    broker->log = std::make_shared<spdlog::logger>(pair ? "sim-" + broker->name : "sim",
                                                   std::make_shared<TraceSink>(*this, prefix));
    broker->log->set_level(std::getenv("POOLMAP_SIM_DEBUG") != nullptr ? spdlog::level::debug : spdlog::level::info);
    brokers_.push_back(std::move(broker));
  }
  client_log_ = std::make_shared<spdlog::logger>("sim-client", std::make_shared<TraceSink>(*this, "client: "));
  client_log_->set_level(spdlog::level::info);
}

World::~World() { brokers_.clear(); }

int World::broker_index(const std::string& endpoint) const {
  for (std::size_t i = 0; i < endpoints_.size(); ++i) {
    if (endpoints_[i] == endpoint) return static_cast<int>(i);
  }
  return 0;
}

detail::BrokerCore* World::core(int broker) {
  Broker& b = *brokers_[broker];
  if (!b.up) return nullptr;
  return b.paired ? b.paired->core() : b.core.get();
}

detail::PairedBroker* World::paired(int broker) {
  Broker& b = *brokers_[broker];
  return b.up ? b.paired.get() : nullptr;
}

bool World::acting(int broker) const {
  const Broker& b = *brokers_[broker];
  return b.up && !b.frozen && (!b.paired || b.paired->active());
}

Peer::Peer(World& world, std::string name) : world_(world), name_(std::move(name)), born_(world.now()) {}

void World::at(milliseconds after, std::function<void()> what, Peer* peer) {
  events_.push(Event{now_ + after, sequence_++, std::move(what), peer});
}

bool World::run_until(Time until, const std::function<bool()>& done) {
  while (!failed() && !events_.empty() && events_.top().when <= until) {
    Event event = events_.top();
    events_.pop();
    now_ = event.when;
    ++events_run;
    if (event.peer != nullptr) {
      if (!event.peer->alive_) continue;
      if (event.peer->stopped_) {
        event.peer->deferred_.push_back(std::move(event.what));
        continue;
      }
    }
    try {
      event.what();
    } catch (const std::exception& e) {  // the broker core (or a peer) threw: a bug
      fail(std::string("an exception escaped: ") + e.what());
    }
    if (done && done()) return !failed();
  }
  if (!failed() && now_ < until && (!done || !done())) now_ = until;
  return !failed();
}

Socket* World::open(Peer& owner, Side side, const std::string& endpoint) {
  sockets_.push_back(std::make_unique<Socket>());
  Socket* socket = sockets_.back().get();
  socket->owner = &owner;
  socket->side = side;
  socket->broker = broker_index(endpoint);
  if (brokers_[socket->broker]->up) at(rng_.ms(1, 5), [this, socket] { connect(*socket); });
  return socket;
}

void World::close(Socket* socket) {
  if (socket == nullptr || socket->closed) return;
  socket->closed = true;
  if (!socket->routing_id.empty()) {
    Broker& broker = *brokers_[socket->broker];
    broker.routes[static_cast<int>(socket->side)].erase(socket->routing_id);
    if (broker.held_voters.erase(socket->routing_id) != 0) socket->owner->at_risk(kHeldVote);
  }
  socket->routing_id.clear();
  ++socket->connection;
  socket->waiting.clear();
}

void World::connect(Socket& socket) {
  Broker& broker = *brokers_[socket.broker];
  if (socket.closed || !broker.up || !socket.routing_id.empty()) return;
  socket.routing_id = std::string(socket.side == Side::kClient ? "c" : "w") + std::to_string(next_routing_id_++);
  ++socket.connection;
  socket.link_dropped = false;
  broker.routes[static_cast<int>(socket.side)][socket.routing_id] = &socket;
  if (pair_) routing_ids_[socket.routing_id] = &socket;
  std::deque<Frames> waiting = std::move(socket.waiting);
  socket.waiting.clear();
  if (pair_ && !waiting.empty()) {
    // What waited in the socket goes out at once, and arrives together (one read for the broker).
    socket.to_broker_fifo = std::max(now_ + rng_.ms(0, max_delay.count()), socket.to_broker_fifo);
    for (auto& frames : waiting) send(socket, std::move(frames), true);
    return;
  }
  for (auto& frames : waiting) send(socket, std::move(frames));
}

void World::send(Socket& socket, Frames frames, bool burst) {
  ++stats_.messages;
  if (socket.closed) return;
  if (socket.routing_id.empty()) {
    // It waits in the socket and goes on the next connection, where the broker knows nobody: for
    // what it answers, as good as lost.
    socket.owner->lost_on_the_wire(frames, socket.link_dropped ? Lost::kLinkDropped : Lost::kBrokerGone);
    if (socket.waiting.size() < 1000) socket.waiting.push_back(std::move(frames));  // ZeroMQ's queue (its HWM)
    return;
  }
  const Time arrival = burst ? socket.to_broker_fifo : std::max(now_ + rng_.ms(0, max_delay.count()), socket.to_broker_fifo);
  socket.to_broker_fifo = arrival;
  auto shared = std::make_shared<Frames>(std::move(frames));
  at(std::chrono::duration_cast<milliseconds>(arrival - now_),
     [this, s = &socket, connection = socket.connection, rid = socket.routing_id,
      incarnation = brokers_[socket.broker]->incarnation, shared] { deliver_to_broker(*s, connection, rid, incarnation, shared); });
}

void World::deliver_to_broker(Socket& socket, std::uint64_t connection, const std::string& routing_id,
                              std::uint64_t incarnation, std::shared_ptr<Frames> shared, bool batch) {
  Broker& broker = *brokers_[socket.broker];
  Frames& frames = *shared;
  // What reached a frozen broker before its peer closed the connection is still read when it
  // continues (the data, then the end of the connection).
  const bool read_before_close = batch && socket.closed && broker.up && broker.incarnation == incarnation;
  if (!read_before_close && (!broker.up || socket.connection != connection || socket.routing_id != routing_id)) {
    ++stats_.lost_on_wire;
    socket.owner->lost_on_the_wire(frames, !broker.up || broker.incarnation != incarnation ? Lost::kBrokerGone
                                           : socket.closed                                  ? Lost::kClosed
                                                                                            : Lost::kLinkDropped);
    return;
  }
  if (broker.frozen) {  // in its socket's queue until it continues
    broker.frozen_messages.push_back({&socket, connection, routing_id, incarnation, std::move(shared)});
    return;
  }
  if (!broker.paired) {
    frames.insert(frames.begin(), zmq::message_t(routing_id.data(), routing_id.size()));
    const Facts facts(socket);
    detail::BrokerCore& core = *broker.core;
    if (socket.side == Side::kClient) {
      core.on_client_message(broker_now(broker), frames, facts);
    } else {
      core.on_worker_message(broker_now(broker), frames, facts);
      core.flush_results();
    }
    core.end_of_pass(broker_now(broker));
    schedule_started(broker, broker.incarnation);
    if (after_broker_event) after_broker_event(broker.index);
    return;
  }
  // One of a pair: a client's HELLO (unless it only observes) or a worker's READY is a vote.
  bool vote = false;
  const bool held_back = broker.paired->active() && broker.active_since &&
                         now_ < *broker.active_since + 2 * heartbeat_;  // its resent chunks wait (no jump)
  if (frames.size() >= 2) {
    const auto command = proto::parse_signature(wire::view(frames[0]));
    if (command && socket.side == Side::kClient && command.value() == proto::Command::kHello) {
      const auto hello = proto::decode<proto::Hello>(wire::view(frames[1]));
      vote = !hello || (hello.value().flags & proto::kObserver) == 0;
      if (hello && held_back) broker.workers_expected = std::max(broker.workers_expected, hello.value().workers_seen);
    } else if (command && socket.side == Side::kWorker && command.value() == proto::Command::kReady) {
      vote = true;
    }
  }
  // Known issue: a READY that comes after the broker stopped holding resent chunks back for the
  // workers that hold them: two intervals after its core's start, or once as many workers are
  // registered as a client's HELLO said its last broker had (registrations of connections their
  // worker has left, and new processes, count too).
  const bool late_ready = vote && socket.side == Side::kWorker && broker.paired->active() &&
                          (broker.released || !held_back);
  frames.insert(frames.begin(), zmq::message_t(routing_id.data(), routing_id.size()));
  const Facts facts(socket);
  begin_event(broker, BrokerEvent::kMessage, vote);
  const Time now = broker_now(broker);
  if (socket.side == Side::kClient) {
    broker.paired->on_client_message(now, frames, facts);
  } else {
    broker.paired->on_worker_message(now, frames, facts);
    broker.paired->flush_results();
  }
  if (!batch) request_pass(broker);
  if (vote && broker.paired->votes_held() > broker.event.held_before) broker.held_voters[routing_id] = &socket;
  if (late_ready) socket.owner->at_risk(kLateReady);
  if (vote && broker.event.active_before && !broker.paired->active()) {
    // Known issue: an active broker that learns of a newer epoch from a vote steps down and refuses
    // that vote (PASSIVE), though it could take over again at once: the voter goes elsewhere.
    trace("KNOWN ISSUE: broker " + broker.name + " steps down on " + socket.owner->name() +
          "'s vote and refuses it");
    socket.owner->at_risk(kRefusedVote);
  }
  schedule_pass(broker);
  end_event(broker);
}

// The end of the pass comes after every message that arrives at this moment (the shell reads what
// its sockets hold, its peer's first, then ends the pass).
void World::request_pass(Broker& broker) {
  if (broker.pass_pending) return;
  broker.pass_pending = true;
  at(milliseconds(0), [this, &broker, incarnation = broker.incarnation] {
    if (incarnation != broker.incarnation) return;
    broker.pass_pending = false;
    if (!broker.up || broker.frozen || !broker.paired) return;
    begin_event(broker, BrokerEvent::kPass);
    broker.paired->end_of_pass(broker_now(broker));
    schedule_pass(broker);
    end_event(broker);
  });
}

void World::begin_event(Broker& broker, BrokerEvent::Kind kind, bool vote) {
  broker.event.kind = kind;
  broker.event.vote = vote;
  broker.event.held_before = broker.paired ? broker.paired->votes_held() : 0;
  broker.event.active_before = broker.up && (!broker.paired || broker.paired->active());
}

void World::end_event(Broker& broker) {
  if (broker.paired && broker.paired->votes_held() == 0) broker.held_voters.clear();
  if (broker.paired) {
    const bool active = broker.paired->active();
    if (active && !broker.event.active_before) {
      ++stats_.takeovers;
      broker.active_since = now_;
      broker.workers_expected = 0;
      broker.released = false;
    }
    // Whether it has stopped holding resent chunks back (for good, until it takes over again).
    if (active && broker.active_since && !broker.released && broker.paired->core() != nullptr &&
        (now_ >= *broker.active_since + 2 * heartbeat_ ||
         (broker.workers_expected != 0 && broker.paired->core()->workers() >= broker.workers_expected))) {
      broker.released = true;
    }
    if (!active && broker.event.active_before) {
      ++stats_.step_downs;
      broker.active_since.reset();
      if (on_core_lost) on_core_lost(broker.index, broker.incarnation, true);
    }
  }
  if (after_broker_event) after_broker_event(broker.index);
}

bool World::send_from_broker(Broker& broker, Side side, const std::string& identity, Frames& frames) {
  auto& routes = broker.routes[static_cast<int>(side)];
  const auto found = routes.find(identity);
  if (found == routes.end()) {  // EHOSTUNREACH
    if (on_broker_unreachable) {
      const auto known = routing_ids_.find(identity);
      on_broker_unreachable(broker.index, side, known == routing_ids_.end() ? nullptr : known->second, frames);
    }
    return false;
  }
  if (on_broker_send) on_broker_send(broker.index, side, identity, frames);
  Socket& socket = *found->second;
  const auto passive = [&] {
    if (frames.empty()) return false;
    const auto command = proto::parse_signature(wire::view(frames[0]));
    return command && command.value() == proto::Command::kPassive;
  };
  if (std::getenv("POOLMAP_SIM_DEBUG") != nullptr && passive()) {
    trace("broker " + broker.name + " sends PASSIVE to " + socket.owner->name() + " (" + identity + ")");
  }
  // (A PASSIVE to a voter whose vote is held refuses that vote: the broker forgets it with all
  // that voter sent since, and never takes it later.)
  if (passive()) broker.held_voters.erase(identity);
  const Time arrival = std::max(now_ + rng_.ms(0, max_delay.count()), socket.to_peer_fifo);
  socket.to_peer_fifo = arrival;
  auto shared = std::make_shared<Frames>(std::move(frames));
  frames.clear();
  at(std::chrono::duration_cast<milliseconds>(arrival - now_),
     [this, s = &socket, connection = socket.connection, shared] { deliver_to_peer(*s, connection, shared); });
  return true;
}

void World::deliver_to_peer(Socket& socket, std::uint64_t connection, std::shared_ptr<Frames> frames) {
  Peer& peer = *socket.owner;
  if (socket.closed || socket.connection != connection || !peer.alive_) {
    ++stats_.lost_on_wire;
    if (on_disrupted_delivery) on_disrupted_delivery(socket, *frames, false);
    return;
  }
  if (peer.stopped_) {  // it sits in the socket until the process runs again
    if (on_disrupted_delivery) on_disrupted_delivery(socket, *frames, true);
    peer.deferred_.push_back([this, s = &socket, connection, frames] { deliver_to_peer(*s, connection, frames); });
    return;
  }
  peer.on_message(socket, *frames);
}

void World::drop_link(Socket& socket, milliseconds reconnect_after) {
  if (socket.closed || socket.routing_id.empty()) return;
  ++stats_.link_drops;
  trace("fault: the link of " + socket.owner->name() + " (" + socket.routing_id + ") drops");
  brokers_[socket.broker]->routes[static_cast<int>(socket.side)].erase(socket.routing_id);
  socket.routing_id.clear();
  ++socket.connection;
  socket.link_dropped = true;
  socket.owner->disturbed_until_ = std::max(socket.owner->disturbed_until_, now_ + reconnect_after);
  at(reconnect_after, [this, s = &socket] { connect(*s); });
}

void World::restart_broker(int index, milliseconds down_for) {
  Broker& broker = *brokers_[index];
  if (pair_ && !broker.up) return;
  ++stats_.broker_restarts;
  if (pair_) {
    trace("fault: broker " + broker.name + " crashes (down " + std::to_string(down_for.count()) +
          " ms, its state lost; it comes back passive)");
  } else {
    trace("fault: the broker restarts (down " + std::to_string(down_for.count()) + " ms, its state lost)");
  }
  if (pair_ && broker.paired && broker.paired->active() && on_core_lost) on_core_lost(index, broker.incarnation, false);
  broker.up = false;
  ++broker.incarnation;
  broker.core.reset();
  broker.paired.reset();
  broker.pass_at.reset();
  broker.tick_missed = false;
  broker.heard_peer = false;
  broker.pass_pending = false;
  broker.held_voters.clear();
  broker.active_since.reset();
  broker.frozen = false;
  broker.frozen_peer.clear();
  for (Waiting& waiting : broker.frozen_messages) {  // what it had not read dies with it
    ++stats_.lost_on_wire;
    waiting.socket->owner->lost_on_the_wire(*waiting.frames, Lost::kBrokerGone);
  }
  broker.frozen_messages.clear();
  for (auto& socket : sockets_) {
    if (socket->closed || socket->broker != index) continue;
    socket->routing_id.clear();
    ++socket->connection;
  }
  broker.routes[0].clear();
  broker.routes[1].clear();
  if (pair_ && after_broker_event) after_broker_event(index);
  at(down_for, [this, &broker] { start_broker(broker); });
}

void World::start_broker() {
  for (auto& broker : brokers_) start_broker(*broker);
}

void World::start_broker(Broker& broker) {
  if (!pair_) {
    broker.core = std::make_unique<detail::BrokerCore>(options_, broker_now(broker), *broker.outbox, *broker.metrics,
                                                       broker.log, rng_.next());
    broker.up = true;
    ++broker.incarnation;
    schedule_tick(broker, broker.incarnation);
  } else {
    const detail::Pair::Options pair{broker.index == 0 ? detail::Pair::Role::kPrimary : detail::Pair::Role::kBackup,
                                     options_.heartbeat_interval, options_.heartbeat_liveness};
    broker.paired = std::make_unique<detail::PairedBroker>(options_, pair, broker_now(broker), *broker.outbox,
                                                           *broker.metrics, broker.log, [this] { return rng_.next(); },
                                                           *broker.link);
    broker.up = true;
    ++broker.incarnation;
    begin_event(broker, BrokerEvent::kLifecycle);
    broker.event.active_before = false;
    broker.paired->start(broker_now(broker), "simulated; its peer link is the simulator's");
    schedule_tick(broker, broker.incarnation);
    schedule_pass(broker);
    end_event(broker);
  }
  for (auto& socket : sockets_) {
    if (!socket->closed && socket->broker == broker.index) {
      at(rng_.ms(1, 300), [this, s = socket.get()] { connect(*s); });  // reconnect back-off
    }
  }
}

void World::schedule_tick(Broker& broker, std::uint64_t incarnation) {
  at(heartbeat_, [this, &broker, incarnation] {
    if (incarnation != broker.incarnation) return;
    if (broker.frozen) {  // it ticks when it continues
      broker.tick_missed = true;
      return;
    }
    run_tick(broker);
    schedule_tick(broker, incarnation);
  });
}

void World::run_tick(Broker& broker) {
  const Time now = broker_now(broker);
  if (!broker.paired) {
    broker.core->tick(now);
    broker.core->end_of_pass(now);
    if (after_broker_event) after_broker_event(broker.index);
    return;
  }
  begin_event(broker, BrokerEvent::kTick);
  broker.paired->tick(now);
  broker.paired->end_of_pass(now);
  schedule_pass(broker);
  end_event(broker);
}

void World::schedule_started(Broker& broker, std::uint64_t incarnation) {
  const auto due = broker.core->next_started_due();
  if (!due) return;
  const Time when = *due - broker.clock_offset;
  if (when <= now_ || when == broker.started_pass_at) return;
  broker.started_pass_at = when;
  at(std::chrono::ceil<milliseconds>(when - now_), [this, &broker, incarnation] {
    if (incarnation != broker.incarnation) return;
    broker.core->end_of_pass(broker_now(broker));
    schedule_started(broker, incarnation);
    if (after_broker_event) after_broker_event(broker.index);
  });
}

// One of a pair: a pass of its loop when something is due (a PEER_STATE to publish, a held vote to
// decide, a STARTED), as the shell's poll wakes for it.
void World::schedule_pass(Broker& broker) {
  if (!broker.up || !broker.paired) return;
  const auto due = broker.paired->next_due();
  if (!due) return;
  Time when = *due - broker.clock_offset;
  if (when <= now_) when = now_ + milliseconds(1);
  when = now_ + std::chrono::ceil<milliseconds>(when - now_);
  if (broker.pass_at && *broker.pass_at >= now_ && *broker.pass_at <= when) return;  // an earlier one comes
  broker.pass_at = when;
  at(std::chrono::duration_cast<milliseconds>(when - now_), [this, &broker, incarnation = broker.incarnation, when] {
    if (incarnation != broker.incarnation || !broker.pass_at || *broker.pass_at != when) return;
    broker.pass_at.reset();
    if (broker.frozen) return;  // it passes when it continues
    begin_event(broker, BrokerEvent::kPass);
    broker.paired->end_of_pass(broker_now(broker));
    schedule_pass(broker);
    end_event(broker);
  });
}

void World::freeze_broker(int index, milliseconds for_how_long) {
  Broker& broker = *brokers_[index];
  if (!broker.up || broker.frozen) return;
  ++stats_.broker_freezes;
  trace("fault: broker " + broker.name + " freezes (SIGSTOP) for " + std::to_string(for_how_long.count()) + " ms");
  broker.frozen = true;
  if (after_broker_event) after_broker_event(index);
  at(for_how_long, [this, &broker, incarnation = broker.incarnation] {
    if (incarnation != broker.incarnation || !broker.frozen) return;
    thaw(broker);
  });
}

void World::thaw(Broker& broker) {
  broker.frozen = false;
  trace("broker " + broker.name + " continues (SIGCONT): " + std::to_string(broker.frozen_peer.size()) +
        " peer states and " + std::to_string(broker.frozen_messages.size()) + " messages waited for it");
  auto peer = std::move(broker.frozen_peer);
  auto messages = std::move(broker.frozen_messages);
  broker.frozen_peer.clear();
  broker.frozen_messages.clear();
  if (after_broker_event) after_broker_event(broker.index);
  // As the shell's loop: its peer's messages first, then the workers' and clients'.
  for (const proto::PeerState& state : peer) {
    if (!broker.up || broker.frozen) break;
    handle_peer_state(broker, state, true);
  }
  // Then what waited in its sockets, in one pass as the shell's loop reads it: the workers' first,
  // then the clients', then the end of the pass.
  for (const Side side : {Side::kWorker, Side::kClient}) {
    for (Waiting& waiting : messages) {
      if (!broker.up || broker.frozen) break;
      if (waiting.socket->side != side) continue;
      deliver_to_broker(*waiting.socket, waiting.connection, waiting.routing_id, waiting.incarnation, waiting.frames,
                        broker.paired != nullptr);
    }
  }
  if (broker.up && broker.paired) {
    begin_event(broker, BrokerEvent::kPass);
    broker.paired->end_of_pass(broker_now(broker));
    end_event(broker);
  }
  if (broker.up && broker.tick_missed) {
    broker.tick_missed = false;
    run_tick(broker);
    schedule_tick(broker, broker.incarnation);
  }
  schedule_pass(broker);
}

void World::publish_peer_state(int from, const proto::PeerState& state) {
  if (link_cut_) {
    if (link_hold_) {
      link_held_[from].push_back(state);
    } else {
      ++stats_.peer_states_lost;
    }
    return;
  }
  send_peer_state(from, state);
}

void World::send_peer_state(int from, const proto::PeerState& state) {
  Broker& to = *brokers_[1 - from];
  if (!to.up) {  // PUB drops what no subscriber takes
    ++stats_.peer_states_lost;
    return;
  }
  const Time arrival = std::max(now_ + rng_.ms(0, peer_link_delay.count()), link_fifo_[from]);
  link_fifo_[from] = arrival;
  at(std::chrono::duration_cast<milliseconds>(arrival - now_), [this, from, incarnation = to.incarnation, state] {
    Broker& peer = *brokers_[1 - from];
    if (!peer.up || peer.incarnation != incarnation) {
      ++stats_.peer_states_lost;
      return;
    }
    if (peer.frozen) {
      peer.frozen_peer.push_back(state);
      return;
    }
    handle_peer_state(peer, state);
  });
}

void World::handle_peer_state(Broker& broker, const proto::PeerState& state, bool batch) {
  ++stats_.peer_states;
  broker.heard_peer = true;
  begin_event(broker, BrokerEvent::kPeerState);
  const Time now = broker_now(broker);
  broker.paired->on_peer(now, state);
  if (!batch) request_pass(broker);
  end_event(broker);
}

void World::partition_peer_link(milliseconds for_how_long, bool hold) {
  if (link_cut_) return;
  ++stats_.link_partitions;
  trace("fault: the link between the brokers is cut for " + std::to_string(for_how_long.count()) + " ms (" +
        (hold ? "what is published meanwhile arrives when it heals" : "what is published meanwhile is lost") + ")");
  link_cut_ = true;
  link_hold_ = hold;
  const std::uint64_t cut = ++link_cuts_;
  at(for_how_long, [this, cut] {
    if (cut != link_cuts_ || !link_cut_) return;
    link_cut_ = false;
    link_healed_at_ = now_;
    trace("the link between the brokers heals");
    for (int from = 0; from < 2; ++from) {
      auto held = std::move(link_held_[from]);
      link_held_[from].clear();
      for (const auto& state : held) send_peer_state(from, state);
    }
  });
}

void World::stop(Peer& peer, milliseconds for_how_long) {
  if (!peer.alive_ || peer.stopped_) return;
  ++stats_.stops;
  trace("fault: " + peer.name() + " stopped for " + std::to_string(for_how_long.count()) + " ms");
  peer.stopped_ = true;
  peer.disturbed_until_ = std::max(peer.disturbed_until_, now_ + for_how_long);
  at(for_how_long, [this, p = &peer] {
    if (!p->alive_) return;
    p->stopped_ = false;
    trace(p->name() + " continues");
    auto deferred = std::move(p->deferred_);
    p->deferred_.clear();
    for (auto& what : deferred) {
      if (!p->alive_ || p->stopped_) {
        p->deferred_.push_back(std::move(what));
        continue;
      }
      what();
    }
  });
}

void World::kill(Peer& peer) {
  if (!peer.alive_) return;
  peer.alive_ = false;
  peer.deferred_.clear();
  for (auto& socket : sockets_) {
    if (socket->owner == &peer) close(socket.get());
  }
}

void World::jump_broker_clock(int index, milliseconds by) {
  ++stats_.clock_jumps;
  Broker& broker = *brokers_[index];
  if (pair_) {
    trace("fault: broker " + broker.name + "'s clock jumps " + std::to_string(by.count()) + " ms forward");
  } else {
    trace("fault: the broker's clock jumps " + std::to_string(by.count()) + " ms forward");
  }
  broker.clock_offset += by;
}

void World::trace(const std::string& line) {
  char stamp[32];
  const auto ms = std::chrono::duration_cast<milliseconds>(now_ - (Time{} + std::chrono::hours(1))).count();
  std::snprintf(stamp, sizeof(stamp), "[%7.3fs] ", static_cast<double>(ms) / 1000.0);
  trace_.push_back(stamp + line);
  if (trace_.size() > 4000) trace_.pop_front();
}

std::string World::trace_tail(std::size_t lines) const {
  std::string out;
  const std::size_t from = trace_.size() > lines ? trace_.size() - lines : 0;
  for (std::size_t i = from; i < trace_.size(); ++i) out += "  " + trace_[i] + "\n";
  return out;
}

void World::fail(const std::string& why) {
  if (failure_.empty()) {
    failure_ = why;
    trace("VIOLATION: " + why);
  }
}

}  // namespace poolmap::sim
