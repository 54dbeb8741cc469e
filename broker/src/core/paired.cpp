// One broker of a pair, without I/O. See paired.hpp.
#include "paired.hpp"

#include <algorithm>

namespace poolmap::detail {

namespace {
// Most client and worker messages kept while a vote is held (beyond: answered PASSIVE).
constexpr std::size_t kMaxHeldVotes = 10000;
}  // namespace

PairedBroker::PairedBroker(const BrokerOptions& options, Pair::Options pair, Clock::time_point now, Outbox& out,
                           Metrics& metrics, std::shared_ptr<spdlog::logger> log,
                           std::function<std::uint64_t()> draw_ticket, PeerLink& link)
    : options_(options),
      out_(out),
      metrics_(metrics),
      log_(std::move(log)),
      draw_ticket_(std::move(draw_ticket)),
      link_(link),
      pair_(pair, now) {}

void PairedBroker::start(Clock::time_point now, const std::string& description) {
  log_->warn("this broker ({}) starts PASSIVE ({}): it becomes active when a client or worker turns to it and the "
             "peer is passive (this being the primary) or silent for {} ms",
             Pair::name(pair_.role()), description,
             (options_.heartbeat_interval * options_.heartbeat_liveness).count());
  publish(now);
}

bool PairedBroker::send(Side side, const std::string& identity, std::vector<zmq::message_t>& frames) {
  if (!frames.empty() && frames[0].size() == 4) {
    const auto command = static_cast<proto::Command>(static_cast<const std::uint8_t*>(frames[0].data())[3]);
    const auto stamped = proto::signature_frame(command, pair_.active() ? pair_.epoch() : pair_.newest_epoch());
    frames[0].rebuild(stamped.data(), stamped.size());
  }
  return out_.send(side, identity, frames);
}

void PairedBroker::send_passive(Side side, const std::string& identity) {
  auto frames = wire::make_empty(proto::Command::kPassive);
  (void)send(side, identity, frames);
}

void PairedBroker::publish(Clock::time_point now) {
  link_.publish(pair_.state_message());
  next_state_ = now + options_.heartbeat_interval;
  metrics_.set_pair(pair_.active(), pair_.active() ? pair_.epoch() : pair_.newest_epoch(),
                    pair_.peer_view(now) != Pair::PeerView::kNeverHeard);
}

void PairedBroker::apply(const Pair::Change& change, Clock::time_point now) {
  if (change.two_actives && change.kind == Pair::Change::kNone) log_->error("{}", change.cause);
  switch (change.kind) {
    case Pair::Change::kNone:
      return;
    case Pair::Change::kBecameActive:
      log_->warn("this broker ({}) is now ACTIVE at epoch {}: {}", Pair::name(pair_.role()), pair_.epoch(), change.cause);
      metrics_.transition();
      core_ = std::make_unique<BrokerCore>(options_, now, static_cast<Outbox&>(*this), metrics_, log_, draw_ticket_());
      core_->set_pair(&pair_);
      break;
    case Pair::Change::kSteppedDown:
      log_->log(change.two_actives ? spdlog::level::err : spdlog::level::warn,
                "this broker ({}) is now PASSIVE (it was active at epoch {}): {}", Pair::name(pair_.role()),
                pair_.epoch(), change.cause);
      metrics_.transition();
      if (core_) {
        // Nothing it holds is delivered: its clients send their chunks to the active broker.
        core_->send_everyone_away();
        core_.reset();
      }
      break;
  }
  publish(now);
}

void PairedBroker::on_peer(Clock::time_point now, const proto::PeerState& state) {
  if (state.role == static_cast<std::uint8_t>(pair_.role())) {
    log_->error("the peer is also the {}: one broker of a pair must be --ha primary, the other --ha backup",
                Pair::name(pair_.role()));
  }
  apply(pair_.on_peer(now, state), now);
  settle_votes(now);
}

void PairedBroker::hand_over(Clock::time_point now) {
  const auto change = pair_.hand_over(now);
  if (change.kind == Pair::Change::kNone) log_->warn("not handing the work over: {}", change.cause);
  apply(change, now);
}

void PairedBroker::on_client_message(Clock::time_point now, std::vector<zmq::message_t>& frames,
                                     const PeerFacts& facts) {
  on_message(Side::kClient, now, frames, facts);
}

void PairedBroker::on_worker_message(Clock::time_point now, std::vector<zmq::message_t>& frames,
                                     const PeerFacts& facts) {
  on_message(Side::kWorker, now, frames, facts);
}

void PairedBroker::on_message(Side side, Clock::time_point now, std::vector<zmq::message_t>& frames,
                              const PeerFacts& facts) {
  if (frames.size() < 2) return;
  if (admit(side, now, frames, facts)) feed(side, now, frames, facts);
}

void PairedBroker::feed(Side side, Clock::time_point now, std::vector<zmq::message_t>& frames, const PeerFacts& facts) {
  if (side == Side::kClient) {
    core_->on_client_message(now, frames, facts);
  } else {
    core_->on_worker_message(now, frames, facts);
  }
}

bool PairedBroker::admit(Side side, Clock::time_point now, std::vector<zmq::message_t>& frames,
                         const PeerFacts& facts) {
  const auto command = proto::parse_signature(wire::view(frames[1]));
  const std::string identity = wire::to_string(frames[0]);
  const bool vote = command && frames.size() >= 3 &&
                    ((side == Side::kClient && command.value() == proto::Command::kHello) ||
                     (side == Side::kWorker && command.value() == proto::Command::kReady));
  if (vote) {
    std::uint64_t epoch = 0;
    bool observer = false;
    if (side == Side::kClient) {
      if (const auto hello = proto::decode<proto::Hello>(wire::view(frames[2]))) {
        epoch = hello.value().epoch;
        observer = (hello.value().flags & proto::kObserver) != 0;
      }
    } else if (const auto ready = proto::decode<proto::Ready>(wire::view(frames[2]))) {
      epoch = ready.value().epoch;
    }
    if (observer && !core_) {  // asks for status only: no vote
      send_passive(side, identity);
      return false;
    }
    Pair::Change change;
    const auto verdict = pair_.on_vote(now, epoch, change);
    apply(change, now);
    switch (verdict) {
      case Pair::Vote::kAccept:
        settle_votes(now);  // those held before it go first
        return true;
      case Pair::Vote::kRefuse:
        if (const auto refused = refusals_.count(now, options_.heartbeat_interval)) {
          log_->info("stays passive ({}): the peer is {}; {} client{} or worker{} sent to it", Pair::name(pair_.role()),
                     pair_.peer_view(now) == Pair::PeerView::kActive ? "active" : "passive and the primary", refused,
                     plural(refused), plural(refused));
        }
        send_passive(side, identity);
        return false;
      case Pair::Vote::kHold:
        hold(side, identity, frames, facts);
        return false;
    }
  }
  if (core_) return true;
  if (!command) return false;
  if (held_from_.contains(held_key(side, identity))) {
    // Its voter waits for the vote: what it sends meanwhile (heartbeats, answers) follows its vote.
    // A PASSIVE now would send it to the other broker just before this one takes it.
    hold(side, identity, frames, facts);
    return false;
  }
  if (side == Side::kClient && command.value() == proto::Command::kStatusRequest) {
    proto::StatusReply reply;
    pair_.describe(reply, now);
    auto out = wire::make(proto::Command::kStatusReply, reply);
    (void)send(Side::kClient, identity, out);
  } else if (command.value() != proto::Command::kDisconnect) {
    send_passive(side, identity);
  }
  return false;
}

std::string PairedBroker::held_key(Side side, const std::string& identity) {
  std::string key(1, side == Side::kClient ? 'c' : 'w');
  key += identity;
  return key;
}

void PairedBroker::hold(Side side, const std::string& identity, std::vector<zmq::message_t>& frames,
                        const PeerFacts& facts) {
  if (held_.size() >= kMaxHeldVotes) {
    send_passive(side, identity);
    return;
  }
  held_from_.insert(held_key(side, identity));
  held_.push_back({side, std::move(frames), std::make_unique<SavedFacts>(facts)});
  log_->debug("kept a {} message until the vote is decided ({} kept)", side == Side::kClient ? "client" : "worker",
              held_.size());
}

void PairedBroker::settle_votes(Clock::time_point now) {
  if (held_.empty()) return;
  if (pair_.active() && core_) {
    log_->debug("takes the {} messages kept for the vote", held_.size());
    auto held = std::move(held_);
    held_.clear();
    held_from_.clear();
    pair_.forget_held();
    for (auto& vote : held) feed(vote.side, now, vote.frames, *vote.facts);
    return;
  }
  if (pair_.refuse_held(now)) {
    log_->debug("refuses the {} messages kept for the vote", held_.size());
    for (auto& vote : held_) {
      // One PASSIVE for each voter, however many of its messages were kept.
      if (held_from_.erase(held_key(vote.side, wire::to_string(vote.frames[0]))) > 0) {
        send_passive(vote.side, wire::to_string(vote.frames[0]));
      }
    }
    held_.clear();
    held_from_.clear();
    pair_.forget_held();
  }
}

void PairedBroker::end_of_pass(Clock::time_point now) {
  const bool heard = pair_.peer_view(now) != Pair::PeerView::kNeverHeard;
  if (heard != peer_heard_) {
    peer_heard_ = heard;
    if (heard) {
      log_->info("the peer broker is heard ({})", pair_.peer_view(now) == Pair::PeerView::kActive ? "active" : "passive");
    } else {
      log_->warn("the peer broker has been silent for {} ms; this one is {} (a passive broker takes over only when a "
                 "client or worker turns to it)",
                 pair_.peer_silent(now).count(), Pair::name(pair_.active() ? Pair::State::kActive : Pair::State::kPassive));
    }
  }
  apply(pair_.decide(now), now);
  settle_votes(now);
  if (now >= next_state_) publish(now);
  if (core_) core_->end_of_pass(now);
}

void PairedBroker::flush_results() {
  if (core_) core_->flush_results();
}

void PairedBroker::tick(Clock::time_point now) {
  if (core_) core_->tick(now);
}

std::optional<PairedBroker::Clock::time_point> PairedBroker::next_due() {
  auto due = next_state_;
  if (const auto vote = pair_.next_due()) due = std::min(due, *vote);
  if (core_) {
    if (const auto started = core_->next_started_due()) due = std::min(due, *started);
  }
  return due;
}

}  // namespace poolmap::detail
