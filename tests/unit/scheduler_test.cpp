// The broker's dispatch policy, without sockets: capability, credit order, fairness, put-back
// chunks, and which tasks no registered worker can run.
#include <doctest/doctest.h>

#include <map>

#include "scheduler.hpp"

using namespace std::chrono_literals;
using poolmap::detail::Scheduler;
using Verdict = Scheduler::Verdict;

namespace {

const Scheduler::Clock::time_point kStart{};  // the scheduler's "now" at construction
constexpr auto kGrace = 300ms;

std::vector<poolmap::proto::TaskInfo> tasks(std::initializer_list<const char*> names,
                                            const char* signature = "i64(i64)") {
  std::vector<poolmap::proto::TaskInfo> out;
  for (const char* name : names) out.push_back({name, signature});
  return out;
}

// Every assignment next() makes until it has none, as (ticket, worker).
std::vector<std::pair<Scheduler::Ticket, Scheduler::WorkerHandle>> drain(Scheduler& scheduler) {
  std::vector<std::pair<Scheduler::Ticket, Scheduler::WorkerHandle>> out;
  while (const auto assignment = scheduler.next()) out.emplace_back(assignment->ticket, assignment->worker);
  return out;
}

}  // namespace

TEST_CASE("Scheduler.Capability.ChunksGoOnlyToWorkersWithTheTask" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto square = scheduler.kind("square", "i64(i64)");
  const auto cube = scheduler.kind("cube", "i64(i64)");
  const auto squarer = scheduler.add_worker(4, tasks({"square"}), kStart);
  const auto cuber = scheduler.add_worker(4, tasks({"cube"}), kStart);
  for (Scheduler::Ticket t = 1; t <= 3; ++t) scheduler.enqueue("client", t, square, false);
  for (Scheduler::Ticket t = 11; t <= 13; ++t) scheduler.enqueue("client", t, cube, false);
  const auto assignments = drain(scheduler);
  REQUIRE(assignments.size() == 6);
  for (const auto& [ticket, worker] : assignments) CHECK(worker == (ticket < 10 ? squarer : cuber));
  CHECK(scheduler.queued() == 0);
}

TEST_CASE("Scheduler.Capability.TheSignatureMustMatchToo" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto as_int = scheduler.kind("square", "i64(i64)");
  const auto as_double = scheduler.add_worker(2, tasks({"square"}, "f64(f64)"), kStart);
  scheduler.enqueue("client", 1, as_int, false);
  CHECK_FALSE(scheduler.next().has_value());  // the only worker has another signature
  const auto as_int_worker = scheduler.add_worker(1, tasks({"square"}), kStart);
  const auto assignment = scheduler.next();
  REQUIRE(assignment.has_value());
  CHECK(assignment->worker == as_int_worker);
  CHECK(assignment->worker != as_double);
}

TEST_CASE("Scheduler.Credit.IdleWorkersFirstThenPrefetch" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto square = scheduler.kind("square", "i64(i64)");
  const auto a = scheduler.add_worker(2, tasks({"square"}), kStart);  // 1 running + 1 prefetch
  const auto b = scheduler.add_worker(2, tasks({"square"}), kStart);
  for (Scheduler::Ticket t = 1; t <= 4; ++t) scheduler.enqueue("client", t, square, false);
  const auto assignments = drain(scheduler);
  REQUIRE(assignments.size() == 4);
  // Both idle workers get one before either gets a second (a map of 2 chunks uses both).
  CHECK(assignments[0].second == a);
  CHECK(assignments[1].second == b);
  // Credit returned by b first: b is idle again and goes before a's prefetch slot.
  scheduler.return_credit(b, true);
  scheduler.enqueue("client", 5, square, false);
  const auto next = scheduler.next();
  REQUIRE(next.has_value());
  CHECK(next->worker == b);
  CHECK_FALSE(scheduler.next().has_value());  // no credit left anywhere
}

TEST_CASE("Scheduler.Fairness.ClientsTakeTurns" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto square = scheduler.kind("square", "i64(i64)");
  scheduler.add_worker(6, tasks({"square"}), kStart);
  for (Scheduler::Ticket t = 1; t <= 3; ++t) scheduler.enqueue("first", t, square, false);
  for (Scheduler::Ticket t = 11; t <= 13; ++t) scheduler.enqueue("second", t, square, false);
  std::vector<Scheduler::Ticket> order;
  for (const auto& [ticket, worker] : drain(scheduler)) order.push_back(ticket);
  CHECK(order == std::vector<Scheduler::Ticket>{1, 11, 2, 12, 3, 13});
}

TEST_CASE("Scheduler.Queue.PutBackChunksGoFirstAndForgottenOnesNever" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto square = scheduler.kind("square", "i64(i64)");
  for (Scheduler::Ticket t = 1; t <= 4; ++t) scheduler.enqueue("client", t, square, false);
  scheduler.forget(2);                           // cancelled while queued
  scheduler.enqueue("client", 9, square, true);  // put back after its worker was lost
  CHECK(scheduler.queued() == 4);
  scheduler.add_worker(10, tasks({"square"}), kStart);
  std::vector<Scheduler::Ticket> order;
  for (const auto& [ticket, worker] : drain(scheduler)) order.push_back(ticket);
  CHECK(order == std::vector<Scheduler::Ticket>{9, 1, 3, 4});
}

TEST_CASE("Scheduler.Queue.ARemovedWorkerOrClientIsSkipped" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto square = scheduler.kind("square", "i64(i64)");
  const auto gone = scheduler.add_worker(3, tasks({"square"}), kStart);
  const auto stays = scheduler.add_worker(1, tasks({"square"}), kStart);
  scheduler.remove_worker(gone, kStart);
  scheduler.enqueue("leaves", 1, square, false);
  scheduler.enqueue("stays", 2, square, false);
  scheduler.remove_client("leaves");
  const auto assignments = drain(scheduler);
  REQUIRE(assignments.size() == 1);
  CHECK(assignments[0] == std::pair<Scheduler::Ticket, Scheduler::WorkerHandle>{2, stays});
}

TEST_CASE("Scheduler.Runnable.WaitsForWorkersThenSaysWhatTheyHave" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto wanted = scheduler.kind("square", "i64(i64)");
  CHECK(scheduler.runnable(wanted, kStart + 1h).verdict == Verdict::kWait);  // no worker at all
  const auto other = scheduler.add_worker(1, tasks({"cube", "shout"}), kStart);
  CHECK(scheduler.runnable(wanted, kStart + 100ms).verdict == Verdict::kWait);  // broker just started
  const auto unknown = scheduler.runnable(wanted, kStart + kGrace);
  CHECK(unknown.verdict == Verdict::kUnknownTask);
  CHECK(unknown.message.find("'square'") != std::string::npos);
  CHECK(unknown.message.find("cube i64(i64)") != std::string::npos);
  CHECK(unknown.message.find("shout i64(i64)") != std::string::npos);

  scheduler.add_worker(1, tasks({"square"}, "f64(f64)"), kStart);
  const auto mismatch = scheduler.runnable(wanted, kStart + kGrace);
  CHECK(mismatch.verdict == Verdict::kSignatureMismatch);
  CHECK(mismatch.message.find("f64(f64)") != std::string::npos);
  CHECK(mismatch.message.find("i64(i64)") != std::string::npos);

  // A capable worker registers, leaves: its task is waited for during the grace, but at least
  // kReplacementGrace (a replacement on a busy host outlasts a short liveness period), then refused.
  static_assert(kGrace < Scheduler::kReplacementGrace);
  const auto capable = scheduler.add_worker(1, tasks({"square"}), kStart + 1s);
  CHECK(scheduler.runnable(wanted, kStart + 1s).verdict == Verdict::kRunnable);
  scheduler.remove_worker(capable, kStart + 2s);
  CHECK(scheduler.runnable(wanted, kStart + 2s + kGrace).verdict == Verdict::kWait);
  CHECK(scheduler.runnable(wanted, kStart + 2s + Scheduler::kReplacementGrace - 1ms).verdict == Verdict::kWait);
  CHECK(scheduler.runnable(wanted, kStart + 2s + Scheduler::kReplacementGrace).verdict == Verdict::kSignatureMismatch);
  scheduler.remove_worker(other, kStart + 3s);
}

TEST_CASE("Scheduler.Runnable.TakeUnrunnableDequeuesOnlyThose" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto square = scheduler.kind("square", "i64(i64)");
  const auto missing = scheduler.kind("missing", "i64(i64)");
  scheduler.enqueue("client", 1, square, false);
  scheduler.enqueue("client", 2, missing, false);
  scheduler.enqueue("client", 3, missing, false);
  CHECK(scheduler.take_unrunnable(kStart + 1h).empty());  // no worker yet: everything waits
  const auto worker = scheduler.add_worker(1, tasks({"square"}), kStart + 1h);
  const auto refused = scheduler.take_unrunnable(kStart + 1h);
  REQUIRE(refused.size() == 2);
  CHECK(refused[0].first == 2);
  CHECK(refused[1].first == 3);
  CHECK(refused[0].second.verdict == Verdict::kUnknownTask);
  CHECK(scheduler.queued() == 1);
  const auto assignment = scheduler.next();
  REQUIRE(assignment.has_value());
  CHECK(assignment->ticket == 1);
  CHECK(assignment->worker == worker);
}

TEST_CASE("Scheduler.Credit.AWorkerThatCanRunNothingKeepsItsPlace" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto square = scheduler.kind("square", "i64(i64)");
  const auto cube = scheduler.kind("cube", "i64(i64)");
  const auto cuber = scheduler.add_worker(1, tasks({"cube"}), kStart);      // idle, first in line
  const auto squarer = scheduler.add_worker(1, tasks({"square"}), kStart);  // idle, second
  scheduler.enqueue("client", 1, square, false);
  auto assignment = scheduler.next();
  REQUIRE(assignment.has_value());
  CHECK(assignment->worker == squarer);
  scheduler.enqueue("client", 2, cube, false);
  assignment = scheduler.next();
  REQUIRE(assignment.has_value());
  CHECK(assignment->worker == cuber);  // it was passed over, not sent to the back or dropped
}

TEST_CASE("Scheduler.Credit.RaisedCreditIsPrefetchAndIdleWorkersStillComeFirst" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto square = scheduler.kind("square", "i64(i64)");
  const auto first = scheduler.add_worker(2, tasks({"square"}), kStart);
  const auto second = scheduler.add_worker(2, tasks({"square"}), kStart);
  // Both ran one chunk, answered it (idle again) and raised their credit to 10 (CREDIT).
  scheduler.enqueue("client", 1, square, false);
  scheduler.enqueue("client", 2, square, false);
  CHECK(drain(scheduler).size() == 2);
  scheduler.return_credit(first, true);
  scheduler.change_credit(first, 8, true);
  scheduler.return_credit(second, true);
  scheduler.change_credit(second, 8, true);
  // Two chunks go to the two idle workers, not both to the first one's new units.
  scheduler.enqueue("client", 3, square, false);
  scheduler.enqueue("client", 4, square, false);
  const auto two = drain(scheduler);
  REQUIRE(two.size() == 2);
  CHECK(two[0].second != two[1].second);
  // The raised credit is usable: 18 more chunks fit (10 per worker, 1 each in flight).
  for (Scheduler::Ticket t = 5; t < 30; ++t) scheduler.enqueue("client", t, square, false);
  CHECK(drain(scheduler).size() == 18);
}

TEST_CASE("Scheduler.Credit.LoweredCreditIsKeptBackFromAnswersUntilRepaid" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto square = scheduler.kind("square", "i64(i64)");
  const auto worker = scheduler.add_worker(4, tasks({"square"}), kStart);
  for (Scheduler::Ticket t = 1; t <= 10; ++t) scheduler.enqueue("client", t, square, false);
  CHECK(drain(scheduler).size() == 4);  // it holds 4
  scheduler.change_credit(worker, -3, false);  // credit 4 -> 1: it owes 3 of the 4 it holds
  scheduler.return_credit(worker, false);
  scheduler.return_credit(worker, false);
  scheduler.return_credit(worker, false);
  CHECK(drain(scheduler).empty());  // 3 answers repaid what it owed; it still holds 1
  scheduler.return_credit(worker, true);
  CHECK(drain(scheduler).size() == 1);  // now holds 1, its new credit
  scheduler.change_credit(worker, 2, false);  // and raised again to 3
  CHECK(drain(scheduler).size() == 2);
}

TEST_CASE("Scheduler.Probation.ANewcomerGetsOneChunkAndOnlyWhatProvenWorkersHaveNoRoomFor" * doctest::timeout(10)) {
  // Issue 23: peers that registered, took chunks and vanished, ten a second, starved a good
  // client, because an idle newcomer went before the proven workers' prefetch slots.
  Scheduler scheduler(kGrace, kStart);
  const auto square = scheduler.kind("square", "i64(i64)");
  const auto proven = scheduler.add_worker(3, tasks({"square"}), kStart);
  const auto newcomer = scheduler.add_worker(20, tasks({"square"}), kStart, /*on_probation=*/true);
  CHECK(scheduler.on_probation(newcomer));
  CHECK_FALSE(scheduler.on_probation(proven));
  for (Scheduler::Ticket t = 1; t <= 6; ++t) scheduler.enqueue("client", t, square, false);
  const auto assignments = drain(scheduler);
  // The proven worker's 3 units first (its prefetch before the idle newcomer), then the
  // newcomer's single unit; 2 chunks wait.
  REQUIRE(assignments.size() == 4);
  for (std::size_t i = 0; i < 3; ++i) CHECK(assignments[i].second == proven);
  CHECK(assignments[3].second == newcomer);
  CHECK(scheduler.queued() == 2);
  // Its CREDIT is kept for later; the unit it returns stays its only one.
  scheduler.change_credit(newcomer, 5, false);
  scheduler.return_credit(newcomer, true);
  const auto again = drain(scheduler);
  REQUIRE(again.size() == 1);
  CHECK(again[0].second == newcomer);
}

TEST_CASE("Scheduler.Probation.ItsFirstAnswerGivesItTheCreditItAnnounced" * doctest::timeout(10)) {
  Scheduler scheduler(kGrace, kStart);
  const auto square = scheduler.kind("square", "i64(i64)");
  const auto worker = scheduler.add_worker(4, tasks({"square"}), kStart, /*on_probation=*/true);
  for (Scheduler::Ticket t = 1; t <= 10; ++t) scheduler.enqueue("client", t, square, false);
  CHECK(drain(scheduler).size() == 1);  // alone, but on probation: one chunk
  scheduler.return_credit(worker, true);
  scheduler.prove(worker, true);
  CHECK_FALSE(scheduler.on_probation(worker));
  CHECK(drain(scheduler).size() == 4);  // now the 4 it announced
  scheduler.prove(worker, true);        // no effect on a proven worker
  CHECK(drain(scheduler).empty());
}
