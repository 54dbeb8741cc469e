// Internal (not installed): one broker of a pair (--ha), without I/O: the pair's decisions (Pair),
// the core while this broker is active, and what a passive broker does itself.
//
// Events in, as for the core: a client's or worker's message, the peer's PEER_STATE, a pass of the
// loop, a heartbeat tick, a hand-over (SIGUSR1). Actions out: messages to the Outbox given (each
// stamped with this broker's epoch: signature_frame(command, epoch)), PEER_STATEs to publish through
// the PeerLink, log lines, metrics. While passive there is no core: status requests are answered
// with the pair's view (role, epoch, peer), a client's HELLO or a worker's READY is a vote (taken,
// refused with PASSIVE, or kept while the peer's liveness period runs out: then what its voter
// sends next is kept with it, in order), an observer's HELLO and anything else are answered
// PASSIVE. Becoming active makes a new core (its first ticket from the caller's draw); stepping
// down sends every peer the core knows PASSIVE and drops the core, so nothing it held is
// delivered: the clients send their chunks to the new active broker.
//
// The production broker (broker.cpp) and the simulator (tests/sim) drive this same code.
// Thread-safety: none; one thread drives it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "core.hpp"
#include "log_throttle.hpp"
#include "pair.hpp"

namespace poolmap::detail {

class PairedBroker final : private Outbox {
 public:
  using Clock = std::chrono::steady_clock;

  // Where this broker's PEER_STATEs go (a PUB socket, or the simulator's link).
  class PeerLink {
   public:
    virtual void publish(const proto::PeerState& state) = 0;

   protected:
    ~PeerLink() = default;
  };

  // `draw_ticket`: where the chunk numbers of each new core start (at random: see BrokerCore).
  PairedBroker(const BrokerOptions& options, Pair::Options pair, Clock::time_point now, Outbox& out, Metrics& metrics,
               std::shared_ptr<spdlog::logger> log, std::function<std::uint64_t()> draw_ticket, PeerLink& link);

  // Says in the log that this broker starts passive, and publishes its state.
  void start(Clock::time_point now, const std::string& description);
  void on_peer(Clock::time_point now, const proto::PeerState& state);
  void on_client_message(Clock::time_point now, std::vector<zmq::message_t>& frames, const PeerFacts& facts);
  void on_worker_message(Clock::time_point now, std::vector<zmq::message_t>& frames, const PeerFacts& facts);
  // Held votes decided, the state published when due; then the core's end of pass.
  void end_of_pass(Clock::time_point now);
  void flush_results();
  void tick(Clock::time_point now);
  // SIGUSR1: hands the work over to the passive peer (or logs why not).
  void hand_over(Clock::time_point now);
  // When something is due (a held vote, the next PEER_STATE, a STARTED); nullopt: nothing.
  std::optional<Clock::time_point> next_due();

  bool active() const { return pair_.active(); }
  const Pair& pair() const { return pair_; }
  BrokerCore* core() { return core_.get(); }  // nullptr while passive
  const BrokerCore* core() const { return core_.get(); }
  std::size_t votes_held() const { return held_.size(); }

 private:
  // Outbox: the core's messages, stamped with the epoch.
  bool send(Side side, const std::string& identity, std::vector<zmq::message_t>& frames) override;
  void release_memory() override { out_.release_memory(); }

  void on_message(Side side, Clock::time_point now, std::vector<zmq::message_t>& frames, const PeerFacts& facts);
  // Whether the message goes to the core now (see the header comment).
  bool admit(Side side, Clock::time_point now, std::vector<zmq::message_t>& frames, const PeerFacts& facts);
  void feed(Side side, Clock::time_point now, std::vector<zmq::message_t>& frames, const PeerFacts& facts);
  void settle_votes(Clock::time_point now);
  // Keeps a voter's message until its vote is decided (beyond kMaxHeldVotes: answers PASSIVE).
  void hold(Side side, const std::string& identity, std::vector<zmq::message_t>& frames, const PeerFacts& facts);
  static std::string held_key(Side side, const std::string& identity);
  void apply(const Pair::Change& change, Clock::time_point now);
  void publish(Clock::time_point now);
  void send_passive(Side side, const std::string& identity);

  // What a held message's connection said of its peer, kept with it.
  class SavedFacts final : public PeerFacts {
   public:
    explicit SavedFacts(const PeerFacts& facts) : key_(facts.key()), address_(facts.address()), link_(facts.link()) {}
    std::string key() const override { return key_; }
    std::string address() const override { return address_; }
    std::unique_ptr<LinkWatch> link() const override { return std::move(link_); }

   private:
    std::string key_;
    std::string address_;
    mutable std::unique_ptr<LinkWatch> link_;
  };
  struct HeldVote {
    Side side;
    std::vector<zmq::message_t> frames;
    std::unique_ptr<SavedFacts> facts;
  };

  const BrokerOptions& options_;
  Outbox& out_;
  Metrics& metrics_;
  std::shared_ptr<spdlog::logger> log_;
  std::function<std::uint64_t()> draw_ticket_;
  PeerLink& link_;
  Pair pair_;
  std::unique_ptr<BrokerCore> core_;
  std::vector<HeldVote> held_;  // votes and what their voters sent after them, in order
  std::unordered_set<std::string> held_from_;  // held_key of each voter in held_
  Clock::time_point next_state_{};
  LogThrottle refusals_;  // votes refused while passive, logged with a count
  bool peer_heard_ = false;  // said in the log when it changes
};

}  // namespace poolmap::detail
