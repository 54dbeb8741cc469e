// Internal (not installed): one broker's part in a pair (--ha primary|backup), decided without I/O.
//
// The shape is the zguide's Binary Star, with epochs. Two brokers, a primary and a backup, publish
// their state to each other every heartbeat interval (PEER_STATE). Exactly one is active and serves
// work; the passive one answers status and tells every client and worker that turns to it to try
// the other broker (PASSIVE). Both start passive.
//
// The vote: a passive broker becomes active only when a client or worker turns to it (its HELLO or
// READY) and either its peer has been silent for a liveness period (heartbeat interval x liveness,
// counted from its own start when the peer was never heard), or its peer is passive too and this
// is the primary. A passive broker whose peer went quiet less than a liveness period ago holds the
// vote (the shell keeps the message) and decides when the period is up or the peer speaks. A
// passive broker never takes over on silence alone: when only the link between the two brokers
// breaks, the clients and workers stay with the active one, and no second active appears.
//
// The epoch: a broker that becomes active takes the next epoch after the newest it knows (its
// peer's, and what the voters saw) of its own parity: odd for the primary, even for the backup, so
// that two brokers never act at one epoch, even when neither hears the other. Every message of an active broker carries its epoch; clients and workers
// ignore a broker whose epoch is older than one they have seen. An active broker steps down when it
// learns of a newer epoch (from its peer, or from a voter that saw one), and when its peer is active
// too: the older epoch steps down (the backup, when equal), and that is logged at error.
//
// Failing back is deliberate: hand_over() (SIGUSR1) makes an active broker passive and asks its
// peer to take over at once.
//
// Thread-safety: none; the shell's loop (or a test) drives it.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "poolmap/protocol.hpp"

namespace poolmap::detail {

class Pair {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Role : std::uint8_t { kPrimary = 1, kBackup = 2 };
  enum class State : std::uint8_t { kActive = 1, kPassive = 2 };
  enum class PeerView { kNeverHeard, kActive, kPassive };

  struct Options {
    Role role = Role::kPrimary;
    std::chrono::milliseconds heartbeat_interval{1000};
    int heartbeat_liveness = 3;
  };

  // What changed with an event; the shell acts on it (and logs `cause` at warning).
  struct Change {
    enum Kind { kNone, kBecameActive, kSteppedDown } kind = kNone;
    std::string cause;
    bool two_actives = false;  // stepped down because both were active (logged at error)
  };

  // A voter's answer: take its message now (this broker is active), answer PASSIVE, or keep it
  // until decide() (the peer went quiet; its liveness period is not over yet).
  enum class Vote { kAccept, kRefuse, kHold };

  Pair(Options options, Clock::time_point now);

  // The peer's PEER_STATE.
  Change on_peer(Clock::time_point now, const proto::PeerState& peer);
  // A client's HELLO or a worker's READY that saw `epoch`. `change` says whether this broker became
  // active (or stepped down: a newer epoch exists) on it.
  Vote on_vote(Clock::time_point now, std::uint64_t epoch, Change& change);
  // Decides held votes (call at next_due(), and each heartbeat): kBecameActive when the peer stayed
  // silent for its liveness period since.
  Change decide(Clock::time_point now);
  // Whether votes held now are to be refused (the peer spoke as active, or they grew too old).
  bool refuse_held(Clock::time_point now) const;
  // The shell answered the held votes (took them, or refused them).
  void forget_held();
  // SIGUSR1: an active broker with a passive peer steps down and asks the peer to take over.
  // Returns kNone with `cause` saying why not, otherwise kSteppedDown.
  Change hand_over(Clock::time_point now);

  // Fills the status reply's role, epoch and peer fields.
  void describe(proto::StatusReply& reply, Clock::time_point now) const;
  // The PEER_STATE to publish now.
  proto::PeerState state_message() const;
  // When held votes must be decided; nullopt: none held.
  std::optional<Clock::time_point> next_due() const;

  bool active() const { return state_ == State::kActive; }
  Role role() const { return options_.role; }
  std::uint64_t epoch() const { return epoch_; }              // this broker's, while active (else the last)
  std::uint64_t newest_epoch() const { return known_epoch_; }  // the newest it knows of
  PeerView peer_view(Clock::time_point now) const;            // kNeverHeard also once silent
  std::chrono::milliseconds peer_silent(Clock::time_point now) const;
  bool peer_silent_long(Clock::time_point now) const;  // for a liveness period (or never heard within one of start)

  static const char* name(Role role) { return role == Role::kPrimary ? "primary" : "backup"; }
  static const char* name(State state) { return state == State::kActive ? "active" : "passive"; }

 private:
  std::chrono::milliseconds liveness() const { return options_.heartbeat_interval * options_.heartbeat_liveness; }
  Change become_active(Clock::time_point now, std::string cause);
  Change step_down(std::string cause, bool two_actives = false);

  Options options_;
  Clock::time_point started_;
  State state_ = State::kPassive;
  std::uint64_t epoch_ = 0;
  std::uint64_t known_epoch_ = 0;
  std::optional<Clock::time_point> peer_heard_;
  State peer_state_ = State::kPassive;
  bool handing_over_ = false;                 // until the peer is seen active
  std::optional<Clock::time_point> held_since_;  // a vote is held since then
};

}  // namespace poolmap::detail
