#include "world.hpp"

#include <spdlog/sinks/base_sink.h>

#include <algorithm>
#include <cstdio>

namespace poolmap::sim {

// The core's messages go into the simulated network.
class World::Outbox final : public detail::Outbox {
 public:
  explicit Outbox(World& world) : world_(world) {}
  bool send(Side side, const std::string& identity, Frames& frames) override {
    return world_.send_from_broker(side, identity, frames);
  }

 private:
  World& world_;
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

World::World(std::uint64_t seed, milliseconds heartbeat)
    : rng_(seed), now_(Time{} + std::chrono::hours(1)), heartbeat_(heartbeat) {
  options_.client_endpoint = options_.worker_endpoint = "sim";
  options_.heartbeat_interval = heartbeat;
  outbox_ = std::make_unique<Outbox>(*this);
  metrics_ = std::make_unique<detail::Metrics>("");
  log_ = std::make_shared<spdlog::logger>("sim", std::make_shared<TraceSink>(*this, "broker: "));
  log_->set_level(spdlog::level::info);
  client_log_ = std::make_shared<spdlog::logger>("sim-client", std::make_shared<TraceSink>(*this, "client: "));
  client_log_->set_level(spdlog::level::info);
}

World::~World() { core_.reset(); }

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

Socket* World::open(Peer& owner, Side side) {
  sockets_.push_back(std::make_unique<Socket>());
  Socket* socket = sockets_.back().get();
  socket->owner = &owner;
  socket->side = side;
  if (broker_up_) at(rng_.ms(1, 5), [this, socket] { connect(*socket); });
  return socket;
}

void World::close(Socket* socket) {
  if (socket == nullptr || socket->closed) return;
  socket->closed = true;
  if (!socket->routing_id.empty()) routes_[static_cast<int>(socket->side)].erase(socket->routing_id);
  socket->routing_id.clear();
  ++socket->connection;
  socket->waiting.clear();
}

void World::connect(Socket& socket) {
  if (socket.closed || !broker_up_ || !socket.routing_id.empty()) return;
  socket.routing_id = std::string(socket.side == Side::kClient ? "c" : "w") + std::to_string(next_routing_id_++);
  ++socket.connection;
  routes_[static_cast<int>(socket.side)][socket.routing_id] = &socket;
  std::deque<Frames> waiting = std::move(socket.waiting);
  socket.waiting.clear();
  for (auto& frames : waiting) send(socket, std::move(frames));
}

void World::send(Socket& socket, Frames frames) {
  ++stats_.messages;
  if (socket.closed) return;
  if (socket.routing_id.empty()) {
    // It waits in the socket and goes on the next connection, where the broker knows nobody: for
    // what it answers, as good as lost.
    socket.owner->lost_on_the_wire(frames);
    if (socket.waiting.size() < 1000) socket.waiting.push_back(std::move(frames));  // ZeroMQ's queue (its HWM)
    return;
  }
  const Time arrival = std::max(now_ + rng_.ms(0, max_delay.count()), socket.to_broker_fifo);
  socket.to_broker_fifo = arrival;
  auto shared = std::make_shared<Frames>(std::move(frames));
  at(std::chrono::duration_cast<milliseconds>(arrival - now_),
     [this, s = &socket, connection = socket.connection, rid = socket.routing_id, shared] {
       deliver_to_broker(*s, connection, rid, *shared);
     });
}

void World::deliver_to_broker(Socket& socket, std::uint64_t connection, const std::string& routing_id, Frames& frames) {
  if (!broker_up_ || socket.connection != connection || socket.routing_id != routing_id) {
    ++stats_.lost_on_wire;
    socket.owner->lost_on_the_wire(frames);
    return;
  }
  frames.insert(frames.begin(), zmq::message_t(routing_id.data(), routing_id.size()));
  const Facts facts(socket);
  if (socket.side == Side::kClient) {
    core_->on_client_message(broker_now(), frames, facts);
  } else {
    core_->on_worker_message(broker_now(), frames, facts);
    core_->flush_results();
  }
  core_->end_of_pass(broker_now());
  schedule_started(broker_epoch_);
  if (after_broker_event) after_broker_event();
}

bool World::send_from_broker(Side side, const std::string& identity, Frames& frames) {
  auto& routes = routes_[static_cast<int>(side)];
  const auto found = routes.find(identity);
  if (found == routes.end()) return false;  // EHOSTUNREACH
  if (on_broker_send) on_broker_send(side, identity, frames);
  Socket& socket = *found->second;
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
    if (on_disrupted_delivery) on_disrupted_delivery(*frames);
    return;
  }
  if (peer.stopped_) {  // it sits in the socket until the process runs again
    if (on_disrupted_delivery) on_disrupted_delivery(*frames);
    peer.deferred_.push_back([this, s = &socket, connection, frames] { deliver_to_peer(*s, connection, frames); });
    return;
  }
  peer.on_message(socket, *frames);
}

void World::drop_link(Socket& socket, milliseconds reconnect_after) {
  if (socket.closed || socket.routing_id.empty()) return;
  ++stats_.link_drops;
  trace("fault: the link of " + socket.owner->name() + " (" + socket.routing_id + ") drops");
  routes_[static_cast<int>(socket.side)].erase(socket.routing_id);
  socket.routing_id.clear();
  ++socket.connection;
  at(reconnect_after, [this, s = &socket] { connect(*s); });
}

void World::restart_broker(milliseconds down_for) {
  ++stats_.broker_restarts;
  trace("fault: the broker restarts (down " + std::to_string(down_for.count()) + " ms, its state lost)");
  broker_up_ = false;
  ++broker_epoch_;
  core_.reset();
  for (auto& socket : sockets_) {
    if (socket->closed) continue;
    socket->routing_id.clear();
    ++socket->connection;
  }
  routes_[0].clear();
  routes_[1].clear();
  at(down_for, [this] { start_broker(); });
}

void World::start_broker() {
  core_ = std::make_unique<detail::BrokerCore>(options_, broker_now(), *outbox_, *metrics_, log_, rng_.next());
  broker_up_ = true;
  ++broker_epoch_;
  schedule_tick(broker_epoch_);
  for (auto& socket : sockets_) {
    if (!socket->closed) at(rng_.ms(1, 300), [this, s = socket.get()] { connect(*s); });  // reconnect back-off
  }
}

void World::schedule_tick(std::uint64_t epoch) {
  at(heartbeat_, [this, epoch] {
    if (epoch != broker_epoch_) return;
    core_->tick(broker_now());
    core_->end_of_pass(broker_now());
    if (after_broker_event) after_broker_event();
    schedule_tick(epoch);
  });
}

void World::schedule_started(std::uint64_t epoch) {
  const auto due = core_->next_started_due();
  if (!due) return;
  const Time when = *due - broker_clock_offset_;
  if (when <= now_ || when == started_pass_at_) return;
  started_pass_at_ = when;
  at(std::chrono::ceil<milliseconds>(when - now_), [this, epoch] {
    if (epoch != broker_epoch_) return;
    core_->end_of_pass(broker_now());
    schedule_started(epoch);
    if (after_broker_event) after_broker_event();
  });
}

void World::stop(Peer& peer, milliseconds for_how_long) {
  if (!peer.alive_ || peer.stopped_) return;
  ++stats_.stops;
  trace("fault: " + peer.name() + " stopped for " + std::to_string(for_how_long.count()) + " ms");
  peer.stopped_ = true;
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

void World::jump_broker_clock(milliseconds by) {
  ++stats_.clock_jumps;
  trace("fault: the broker's clock jumps " + std::to_string(by.count()) + " ms forward");
  broker_clock_offset_ += by;
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
