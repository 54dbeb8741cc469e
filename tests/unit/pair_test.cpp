// One broker's part in a pair (broker/src/core/pair.hpp), alone: who becomes active and when, the
// epoch, stepping down, the vote held while the peer's liveness period runs out, failing back.
#include <doctest/doctest.h>

#include "core/pair.hpp"

using namespace std::chrono_literals;
using poolmap::detail::Pair;
namespace proto = poolmap::proto;

namespace {
const Pair::Clock::time_point kStart = Pair::Clock::time_point{} + 1h;
constexpr auto kBeat = 100ms;  // liveness 3: a peer is silent after 300 ms

Pair make(Pair::Role role) { return Pair({.role = role, .heartbeat_interval = kBeat, .heartbeat_liveness = 3}, kStart); }

proto::PeerState peer(Pair::Role role, Pair::State state, std::uint64_t epoch, bool handing_over = false) {
  return {static_cast<std::uint8_t>(role), static_cast<std::uint8_t>(state), epoch, 100,
          static_cast<std::uint8_t>(handing_over)};
}
}  // namespace

TEST_CASE("Pair.Start.BothPassiveThePrimaryTakesTheFirstVote" * doctest::timeout(10)) {
  Pair primary = make(Pair::Role::kPrimary);
  Pair backup = make(Pair::Role::kBackup);
  CHECK_FALSE(primary.active());
  CHECK_FALSE(backup.active());
  // Each hears the other, passive.
  CHECK(primary.on_peer(kStart + 10ms, peer(Pair::Role::kBackup, Pair::State::kPassive, 0)).kind == Pair::Change::kNone);
  CHECK(backup.on_peer(kStart + 10ms, peer(Pair::Role::kPrimary, Pair::State::kPassive, 0)).kind == Pair::Change::kNone);
  // A worker turns to the backup first: refused, the primary takes the work.
  Pair::Change change;
  CHECK(backup.on_vote(kStart + 20ms, 0, change) == Pair::Vote::kRefuse);
  CHECK(change.kind == Pair::Change::kNone);
  CHECK(primary.on_vote(kStart + 20ms, 0, change) == Pair::Vote::kAccept);
  CHECK(change.kind == Pair::Change::kBecameActive);
  CHECK(primary.active());
  CHECK(primary.epoch() == 1);
}

TEST_CASE("Pair.Start.AloneItWaitsALivenessPeriodForItsPeer" * doctest::timeout(10)) {
  // A restarted primary must not become active before it could hear an active peer.
  Pair primary = make(Pair::Role::kPrimary);
  Pair::Change change;
  CHECK(primary.on_vote(kStart + 50ms, 4, change) == Pair::Vote::kHold);
  CHECK(primary.next_due().has_value());
  CHECK(primary.decide(kStart + 200ms).kind == Pair::Change::kNone);
  CHECK_FALSE(primary.refuse_held(kStart + 200ms));
  // The peer is heard, active at epoch 4: the held vote is refused; the primary stays passive.
  CHECK(primary.on_peer(kStart + 250ms, peer(Pair::Role::kBackup, Pair::State::kActive, 4)).kind ==
        Pair::Change::kNone);
  CHECK(primary.refuse_held(kStart + 250ms));
  primary.forget_held();
  CHECK(primary.on_vote(kStart + 260ms, 4, change) == Pair::Vote::kRefuse);
  CHECK_FALSE(primary.active());
  CHECK(primary.newest_epoch() == 4);
}

TEST_CASE("Pair.Failover.TheBackupTakesOverWhenThePeerIsSilentAndAVoterComes" * doctest::timeout(10)) {
  Pair backup = make(Pair::Role::kBackup);
  backup.on_peer(kStart, peer(Pair::Role::kPrimary, Pair::State::kActive, 3));
  // Silence alone changes nothing.
  CHECK(backup.decide(kStart + 1s).kind == Pair::Change::kNone);
  CHECK_FALSE(backup.active());
  // A voter while the peer has been quiet for 200 ms: held until the liveness period is over.
  backup.on_peer(kStart + 2s, peer(Pair::Role::kPrimary, Pair::State::kActive, 3));
  Pair::Change change;
  CHECK(backup.on_vote(kStart + 2s + 50ms, 3, change) == Pair::Vote::kRefuse);  // well: refused
  CHECK(backup.on_vote(kStart + 2s + 200ms, 3, change) == Pair::Vote::kHold);
  REQUIRE(backup.next_due().has_value());
  CHECK(*backup.next_due() == kStart + 2s + 300ms);
  CHECK(backup.decide(kStart + 2s + 299ms).kind == Pair::Change::kNone);
  const auto took = backup.decide(kStart + 2s + 300ms);
  CHECK(took.kind == Pair::Change::kBecameActive);
  CHECK(backup.active());
  CHECK(backup.epoch() == 4);  // newer than any it knew of
}

TEST_CASE("Pair.SplitBrain.TheOlderEpochStepsDownAndTwoActivesAreSaid" * doctest::timeout(10)) {
  // The primary was frozen while the backup took over at epoch 4; it wakes, still active at 3.
  Pair primary = make(Pair::Role::kPrimary);
  primary.on_peer(kStart, peer(Pair::Role::kBackup, Pair::State::kPassive, 2));
  Pair::Change change;
  REQUIRE(primary.on_vote(kStart + 10ms, 2, change) == Pair::Vote::kAccept);
  REQUIRE(primary.epoch() == 3);
  const auto woke = primary.on_peer(kStart + 5s, peer(Pair::Role::kBackup, Pair::State::kActive, 4));
  CHECK(woke.kind == Pair::Change::kSteppedDown);
  CHECK(woke.two_actives);
  CHECK_FALSE(primary.active());
  // The one that stays says so too.
  Pair backup = make(Pair::Role::kBackup);
  backup.on_peer(kStart, peer(Pair::Role::kPrimary, Pair::State::kActive, 3));
  backup.on_vote(kStart + 1s, 3, change);  // silent 1 s: takes over at 4
  REQUIRE(backup.active());
  REQUIRE(backup.epoch() == 4);
  const auto stays = backup.on_peer(kStart + 2s, peer(Pair::Role::kPrimary, Pair::State::kActive, 3));
  CHECK(stays.kind == Pair::Change::kNone);
  CHECK(stays.two_actives);
  CHECK(backup.active());
}

TEST_CASE("Pair.Epochs.ThePrimaryTakesOddEpochsAndTheBackupEvenOnesSoTheyNeverShareOne" * doctest::timeout(10)) {
  // Both saw epoch 4 and neither hears the other (a partition, a restart): each takes over for its
  // own voters, at different epochs, so the newer one wins at every client and worker.
  Pair primary = make(Pair::Role::kPrimary);
  Pair backup = make(Pair::Role::kBackup);
  Pair::Change change;
  REQUIRE(primary.on_vote(kStart + 1s, 4, change) == Pair::Vote::kAccept);  // never heard its peer
  REQUIRE(backup.on_vote(kStart + 1s, 4, change) == Pair::Vote::kAccept);
  CHECK(primary.epoch() == 5);
  CHECK(backup.epoch() == 6);
  // From an epoch of the other's parity and of its own.
  Pair primary2 = make(Pair::Role::kPrimary);
  REQUIRE(primary2.on_vote(kStart + 1s, 5, change) == Pair::Vote::kAccept);
  CHECK(primary2.epoch() == 7);
  Pair backup2 = make(Pair::Role::kBackup);
  REQUIRE(backup2.on_vote(kStart + 1s, 5, change) == Pair::Vote::kAccept);
  CHECK(backup2.epoch() == 6);
  // When they meet, the older steps down.
  CHECK(primary.on_peer(kStart + 2s, backup.state_message()).kind == Pair::Change::kSteppedDown);
  CHECK(backup.on_peer(kStart + 2s, primary2.state_message()).kind == Pair::Change::kSteppedDown);
}

TEST_CASE("Pair.SplitBrain.AVoterThatSawANewerEpochMakesTheActiveStepDown" * doctest::timeout(10)) {
  Pair primary = make(Pair::Role::kPrimary);
  primary.on_peer(kStart, peer(Pair::Role::kBackup, Pair::State::kPassive, 0));
  Pair::Change change;
  REQUIRE(primary.on_vote(kStart + 10ms, 0, change) == Pair::Vote::kAccept);
  REQUIRE(primary.epoch() == 1);
  CHECK(primary.on_vote(kStart + 20ms, 2, change) == Pair::Vote::kRefuse);
  CHECK(change.kind == Pair::Change::kSteppedDown);
  CHECK_FALSE(primary.active());
}

TEST_CASE("Pair.FailBack.HandOverAsksThePassivePeerToTakeOverAtOnce" * doctest::timeout(10)) {
  Pair backup = make(Pair::Role::kBackup);
  Pair primary = make(Pair::Role::kPrimary);
  backup.on_peer(kStart, peer(Pair::Role::kPrimary, Pair::State::kActive, 1));
  Pair::Change change;
  backup.on_vote(kStart + 1s, 1, change);  // the primary died: the backup serves at epoch 2
  REQUIRE(backup.active());
  // The primary comes back: passive while an active peer exists.
  primary.on_peer(kStart + 2s, backup.state_message());
  CHECK(primary.on_vote(kStart + 2s + 10ms, 2, change) == Pair::Vote::kRefuse);
  CHECK_FALSE(primary.active());
  backup.on_peer(kStart + 2s, primary.state_message());
  // SIGUSR1 to the backup: it steps down and says so; the primary takes over without waiting.
  const auto handed = backup.hand_over(kStart + 2s + 20ms);
  CHECK(handed.kind == Pair::Change::kSteppedDown);
  CHECK(backup.state_message().handing_over == 1);
  CHECK(backup.on_vote(kStart + 2s + 30ms, 2, change) == Pair::Vote::kRefuse);  // no bouncing back
  const auto took = primary.on_peer(kStart + 2s + 30ms, backup.state_message());
  CHECK(took.kind == Pair::Change::kBecameActive);
  CHECK(primary.epoch() == 3);
  // Without a passive peer there is nobody to hand over to.
  Pair lonely = make(Pair::Role::kPrimary);
  lonely.on_vote(kStart + 1s, 0, change);
  REQUIRE(lonely.active());
  CHECK(lonely.hand_over(kStart + 1s).kind == Pair::Change::kNone);
  CHECK(lonely.active());
}
