// One client's broadcast contexts at the broker (broker/src/core/contexts.hpp), alone: quotas,
// users, eviction of unused contexts oldest first, refusals remembered, expiry.
#include <doctest/doctest.h>

#include <string>

#include "core/contexts.hpp"

using namespace std::chrono_literals;
using poolmap::detail::ClientContexts;
using State = ClientContexts::State;

namespace {
const ClientContexts::Clock::time_point kStart = ClientContexts::Clock::time_point{} + 1h;

zmq::message_t bytes(std::size_t n) { return zmq::message_t(std::string(n, 'x').data(), n); }
}  // namespace

TEST_CASE("Contexts.Quota.KeepsWhatFitsAndFreesTheUnusedOldestFirst" * doctest::timeout(10)) {
  ClientContexts contexts({.contexts = 2, .bytes = 100});
  auto a = bytes(40), b = bytes(40), c = bytes(40);
  CHECK(contexts.keep(1, a, kStart) == State::kHeld);
  CHECK(contexts.keep(2, b, kStart + 1s) == State::kHeld);
  CHECK(contexts.held() == 2);
  CHECK(contexts.bytes() == 80);
  // A third does not fit: the one unused for longest (1) goes.
  CHECK(contexts.keep(3, c, kStart + 2s) == State::kHeld);
  CHECK(contexts.state(1) == State::kMissing);
  CHECK(contexts.state(2) == State::kHeld);
  CHECK(contexts.state(3) == State::kHeld);
  CHECK(contexts.bytes() == 80);
  REQUIRE(contexts.payload(3) != nullptr);
  CHECK(contexts.payload(3)->size() == 40);
  CHECK(contexts.payload(1) == nullptr);
}

TEST_CASE("Contexts.Quota.AContextInUseIsNeverFreedToMakeRoom" * doctest::timeout(10)) {
  ClientContexts contexts({.contexts = 1, .bytes = 100});
  auto a = bytes(10), b = bytes(10);
  CHECK(contexts.keep(1, a, kStart) == State::kHeld);
  contexts.use(1);
  // No room, and the one held is in use: refused for now (the client waits and sends it again).
  CHECK(contexts.keep(2, b, kStart + 1s) == State::kRefusedForNow);
  CHECK(contexts.state(2) == State::kRefusedForNow);
  CHECK(contexts.state(1) == State::kHeld);
  // Its last user answered: now it may go, and 2 is kept when sent again.
  contexts.release(1, kStart + 2s);
  auto again = bytes(10);
  CHECK(contexts.keep(2, again, kStart + 3s) == State::kHeld);
  CHECK(contexts.state(1) == State::kMissing);
}

TEST_CASE("Contexts.Quota.OneLargerThanTheQuotaIsRefusedForEver" * doctest::timeout(10)) {
  ClientContexts contexts({.contexts = 4, .bytes = 100});
  auto huge = bytes(101);
  CHECK(contexts.keep(9, huge, kStart) == State::kRefusedForEver);
  CHECK(contexts.state(9) == State::kRefusedForEver);
  CHECK(contexts.held() == 0);
  CHECK(contexts.refused() == 1);
}

TEST_CASE("Contexts.Expiry.FreesOnlyWhatNoChunkUsedForTheIdleTime" * doctest::timeout(10)) {
  ClientContexts contexts({});
  auto a = bytes(10), b = bytes(10);
  contexts.keep(1, a, kStart);
  contexts.keep(2, b, kStart);
  contexts.use(1);
  contexts.use(1);
  CHECK(contexts.users(1) == 2);
  contexts.expire(kStart + 10s, 3s);
  CHECK(contexts.state(1) == State::kHeld);  // in use
  CHECK(contexts.state(2) == State::kMissing);  // unused for 10 s
  contexts.release(1, kStart + 20s);
  contexts.expire(kStart + 21s, 3s);
  CHECK(contexts.state(1) == State::kHeld);  // one user left
  contexts.release(1, kStart + 22s);
  contexts.expire(kStart + 24s, 3s);
  CHECK(contexts.state(1) == State::kHeld);  // idle for 2 s only
  contexts.expire(kStart + 25s, 3s);
  CHECK(contexts.state(1) == State::kMissing);
  CHECK(contexts.bytes() == 0);
}
