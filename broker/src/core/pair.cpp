// One broker's part in a pair, decided without I/O. See pair.hpp.
#include "pair.hpp"

#include <algorithm>
#include <cstdint>

namespace poolmap::detail {

namespace {
std::string ms(std::chrono::milliseconds value) { return std::to_string(value.count()) + " ms"; }
}  // namespace

Pair::Pair(Options options, Clock::time_point now) : options_(options), started_(now) {}

std::chrono::milliseconds Pair::peer_silent(Clock::time_point now) const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(now - (peer_heard_ ? *peer_heard_ : started_));
}

bool Pair::peer_silent_long(Clock::time_point now) const { return peer_silent(now) >= liveness(); }

Pair::PeerView Pair::peer_view(Clock::time_point now) const {
  if (!peer_heard_ || peer_silent_long(now)) return PeerView::kNeverHeard;
  return peer_state_ == State::kActive ? PeerView::kActive : PeerView::kPassive;
}

Pair::Change Pair::become_active(Clock::time_point now, std::string cause) {
  state_ = State::kActive;
  // The next epoch of this broker's parity (the primary's are odd, the backup's even): two brokers
  // that become active without hearing each other never take the same one.
  epoch_ = known_epoch_ + 1;
  if (epoch_ % 2 != (options_.role == Role::kPrimary ? 1U : 0U)) ++epoch_;
  known_epoch_ = epoch_;
  handing_over_ = false;
  (void)now;
  return {Change::kBecameActive, std::move(cause), false};
}

Pair::Change Pair::step_down(std::string cause, bool two_actives) {
  state_ = State::kPassive;
  held_since_.reset();
  return {Change::kSteppedDown, std::move(cause), two_actives};
}

Pair::Change Pair::on_peer(Clock::time_point now, const proto::PeerState& peer) {
  peer_heard_ = now;
  peer_state_ = peer.state == static_cast<std::uint8_t>(State::kActive) ? State::kActive : State::kPassive;
  known_epoch_ = std::max(known_epoch_, peer.epoch);
  if (peer_state_ == State::kActive) handing_over_ = false;  // the hand-over is done
  if (state_ == State::kActive) {
    if (peer_state_ == State::kActive) {
      const std::string both = "two active brokers: the peer (" + std::string(name(static_cast<Role>(peer.role))) +
                               ") is active at epoch " + std::to_string(peer.epoch) + ", this one at epoch " +
                               std::to_string(epoch_);
      if (peer.epoch > epoch_ || (peer.epoch == epoch_ && options_.role == Role::kBackup)) {
        return step_down(both + "; this one steps down", true);
      }
      return {Change::kNone, both + "; the peer steps down", true};
    }
    if (peer.epoch > epoch_) {
      return step_down("the peer knows epoch " + std::to_string(peer.epoch) + ", newer than this broker's " +
                       std::to_string(epoch_));
    }
    return {};
  }
  if (peer_state_ == State::kPassive && peer.handing_over != 0 && !handing_over_) {
    return become_active(now, "the peer handed the work over");
  }
  return decide(now);
}

Pair::Vote Pair::on_vote(Clock::time_point now, std::uint64_t epoch, Change& change) {
  change = {};
  known_epoch_ = std::max(known_epoch_, epoch);
  if (state_ == State::kActive) {
    if (epoch > epoch_) {
      change = step_down("a client or worker saw epoch " + std::to_string(epoch) + ", newer than this broker's " +
                         std::to_string(epoch_));
      return Vote::kRefuse;
    }
    return Vote::kAccept;
  }
  if (handing_over_) return Vote::kRefuse;
  if (peer_silent_long(now)) {
    change = become_active(now, "the peer was silent for " + ms(peer_silent(now)) +
                                    (peer_heard_ ? "" : " (never heard since this broker started)") +
                                    " and a client or worker turned to this broker");
    return Vote::kAccept;
  }
  if (peer_heard_ && peer_state_ == State::kPassive) {
    if (options_.role == Role::kPrimary) {
      change = become_active(now, "both brokers were passive and a client or worker turned to the primary");
      return Vote::kAccept;
    }
    return Vote::kRefuse;  // the primary takes it
  }
  if (peer_heard_ && peer_state_ == State::kActive && peer_silent(now) <= options_.heartbeat_interval * 3 / 2) {
    return Vote::kRefuse;  // the peer is active and well
  }
  // The peer went quiet (or was never heard since this broker started): wait for the rest of its
  // liveness period before taking over.
  if (!held_since_) held_since_ = now;
  return Vote::kHold;
}

Pair::Change Pair::decide(Clock::time_point now) {
  if (!held_since_ || state_ == State::kActive) return {};
  if (handing_over_) return {};
  if (peer_silent_long(now)) {
    return become_active(now, "the peer was silent for " + ms(peer_silent(now)) +
                                  (peer_heard_ ? "" : " (never heard since this broker started)") +
                                  " and a client or worker turned to this broker");
  }
  if (peer_heard_ && peer_state_ == State::kPassive && options_.role == Role::kPrimary) {
    return become_active(now, "both brokers were passive and a client or worker turned to the primary");
  }
  return {};
}

bool Pair::refuse_held(Clock::time_point now) const {
  if (!held_since_ || state_ == State::kActive) return false;
  if (handing_over_ || now - *held_since_ > 2 * liveness()) return true;
  if (!peer_heard_ || peer_silent_long(now)) return false;
  if (peer_state_ == State::kPassive) return options_.role == Role::kBackup;
  return peer_silent(now) <= options_.heartbeat_interval * 3 / 2;  // active, and speaking again
}

void Pair::forget_held() { held_since_.reset(); }

Pair::Change Pair::hand_over(Clock::time_point now) {
  if (state_ != State::kActive) return {Change::kNone, "this broker is not the active one", false};
  if (peer_view(now) != PeerView::kPassive) {
    return {Change::kNone, "the peer is not there, passive, to take the work (it was last heard " +
                               ms(peer_silent(now)) + " ago)",
            false};
  }
  handing_over_ = true;
  return step_down("handed the work over to the peer (SIGUSR1)");
}

void Pair::describe(proto::StatusReply& reply, Clock::time_point now) const {
  reply.role = name(state_);
  reply.epoch = state_ == State::kActive ? epoch_ : known_epoch_;
  switch (peer_view(now)) {
    case PeerView::kNeverHeard: reply.peer = "silent"; break;
    case PeerView::kActive: reply.peer = "active"; break;
    case PeerView::kPassive: reply.peer = "passive"; break;
  }
  reply.peer_silent_ms = static_cast<std::uint32_t>(std::min<std::int64_t>(peer_silent(now).count(), UINT32_MAX));
}

proto::PeerState Pair::state_message() const {
  return {static_cast<std::uint8_t>(options_.role), static_cast<std::uint8_t>(state_),
          state_ == State::kActive ? epoch_ : known_epoch_,
          static_cast<std::uint32_t>(options_.heartbeat_interval.count()), static_cast<std::uint8_t>(handing_over_)};
}

std::optional<Pair::Clock::time_point> Pair::next_due() const {
  if (!held_since_ || state_ == State::kActive) return std::nullopt;
  const auto silent_long_at = (peer_heard_ ? *peer_heard_ : started_) + liveness();
  return std::min(silent_long_at, *held_since_ + 2 * liveness());
}

}  // namespace poolmap::detail
