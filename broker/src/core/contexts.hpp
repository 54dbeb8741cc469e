// Internal (not installed): one client's broadcast contexts at the broker, a unit of the broker's
// core (core.hpp) that does no I/O and takes the time as an argument.
//
// A client sends a context (CONTEXT) once per broker session, before the chunks that name it by
// hash. The broker keeps it while it fits in the client's quotas (a count and a byte total),
// freeing contexts no chunk uses, oldest first, to make room. Each chunk that names a context
// counts as its user until it is answered; a context no chunk uses is freed a while later
// (expire(): the client's next chunks may be on their way), and a chunk naming a freed context is
// answered kContextMissing so that its client sends both again. A context that could not be kept is
// remembered as refused (for now: the quota is full of contexts in use; for ever: it is larger than
// the whole quota), so that its chunks are answered kResourceExhausted (kInvalidArgument) instead
// of kContextMissing, and the client waits (fails) instead of sending it straight back.
//
// Tested alone in tests/unit/contexts_test.cpp.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <unordered_map>

#include <zmq.hpp>

namespace poolmap::detail {

class ClientContexts {
 public:
  using Clock = std::chrono::steady_clock;
  struct Quota {
    std::size_t contexts = 64;
    std::int64_t bytes = 256LL << 20;
  };
  enum class State {
    kHeld,            // kept: chunks may name it
    kMissing,         // never sent, or freed: the client sends it again
    kRefusedForNow,   // not kept, the quota being full of contexts in use
    kRefusedForEver,  // not kept, larger than the whole quota
  };

  explicit ClientContexts(Quota quota) : quota_(quota) {}

  // A CONTEXT arrived: kept if it fits (freeing unused contexts, oldest first), else remembered as
  // refused. Returns the state it is in now. `payload` is moved from when kept.
  State keep(std::uint64_t hash, zmq::message_t& payload, Clock::time_point now);
  State state(std::uint64_t hash) const;
  // A chunk naming a held context starts (use) or stops (release) using it; release() of the last
  // user starts its idle time.
  void use(std::uint64_t hash);
  void release(std::uint64_t hash, Clock::time_point now);
  // The bytes of a held context (nullptr when not held); not const: a message sent shares them
  // (zmq::message_t::copy counts references).
  zmq::message_t* payload(std::uint64_t hash);
  // Frees the contexts no chunk has used for `idle`.
  void expire(Clock::time_point now, Clock::duration idle);

  std::size_t held() const { return held_.size(); }
  std::int64_t bytes() const { return bytes_; }
  std::size_t refused() const { return refused_.size(); }
  std::size_t users(std::uint64_t hash) const;
  // Every held context's hash and users, for checks: calls visit(hash, users, bytes).
  template <class Visit>
  void for_each(Visit&& visit) const {
    for (const auto& [hash, context] : held_) visit(hash, context.users, context.payload.size());
  }

 private:
  struct Context {
    zmq::message_t payload;
    std::size_t users = 0;         // chunks not yet answered that name it
    Clock::time_point idle_since;  // users == 0 since then (or since it arrived)
  };
  // Refusals remembered at most (they are resent anyway, so forgetting is safe).
  static constexpr std::size_t kRefusalsKept = 256;

  Quota quota_;
  std::unordered_map<std::uint64_t, Context> held_;
  std::int64_t bytes_ = 0;
  std::unordered_map<std::uint64_t, bool> refused_;  // hash -> for ever
};

}  // namespace poolmap::detail
