// The broker's core without sockets: events in, messages out, with the time given. Each case is a
// bug the simulator (tests/sim) found, replayed as the few events that make it.
#include <doctest/doctest.h>

#include <spdlog/sinks/null_sink.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/core.hpp"
#include "http.hpp"

using namespace std::chrono_literals;
using poolmap::ErrorCode;
using poolmap::detail::BrokerCore;
using poolmap::detail::Side;
namespace proto = poolmap::proto;
namespace wire = poolmap::wire;
using Frames = std::vector<zmq::message_t>;

namespace {

const BrokerCore::Clock::time_point kStart = BrokerCore::Clock::time_point{} + 1h;

class NoFacts final : public poolmap::detail::PeerFacts {
 public:
  std::string key() const override { return ""; }
  std::string address() const override { return "test"; }
  std::unique_ptr<poolmap::detail::LinkWatch> link() const override { return nullptr; }
};

// A broker core with everything it sends recorded, per peer.
class Harness final : public poolmap::detail::Outbox {
 public:
  explicit Harness(poolmap::BrokerOptions options, std::uint64_t first_ticket = 1)
      : options_(std::move(options)),
        metrics_(""),
        core_(options_, kStart, *this, metrics_,
              std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>()), first_ticket) {}

  bool send(Side, const std::string& identity, Frames& frames) override {
    sent[identity].push_back(std::move(frames));
    return true;
  }

  template <class Header>
  void from(Side side, const std::string& identity, proto::Command command, const Header& header,
            std::vector<std::string> payloads = {}) {
    deliver(side, identity, wire::make(command, header), std::move(payloads));
  }
  void from(Side side, const std::string& identity, proto::Command command) {
    deliver(side, identity, wire::make_empty(command), {});
  }
  void deliver(Side side, const std::string& identity, Frames frames, std::vector<std::string> payloads) {
    for (const auto& payload : payloads) frames.emplace_back(payload.data(), payload.size());
    frames.insert(frames.begin(), zmq::message_t(identity.data(), identity.size()));
    if (side == Side::kClient) {
      core_.on_client_message(now, frames, facts_);
    } else {
      core_.on_worker_message(now, frames, facts_);
    }
    core_.end_of_pass(now);
  }

  // The headers of every chunk in the `command` messages sent to `peer` so far ([signature, then a
  // header and a payload per chunk], a TASK with its context as a 4th frame); forgets what was sent.
  template <class Header>
  std::vector<Header> chunks_sent(const std::string& peer, proto::Command command) {
    std::vector<Header> out;
    for (auto& frames : sent[peer]) {
      if (proto::parse_signature(wire::view(frames[0])).value() != command) continue;
      for (std::size_t i = 1; i + 1 < frames.size(); i += 2) {
        out.push_back(proto::decode<Header>(wire::view(frames[i])).value());
        if (command == proto::Command::kTask && frames.size() == 4) break;
      }
    }
    sent[peer].clear();
    return out;
  }
  std::vector<proto::TaskHeader> tasks_to(const std::string& worker) {
    return chunks_sent<proto::TaskHeader>(worker, proto::Command::kTask);
  }
  std::vector<proto::ClientResult> results_to(const std::string& client) {
    return chunks_sent<proto::ClientResult>(client, proto::Command::kResult);
  }

  BrokerCore& core() { return core_; }
  BrokerCore::Clock::time_point now = kStart;
  std::map<std::string, std::vector<Frames>> sent;

 private:
  poolmap::BrokerOptions options_;
  poolmap::detail::Metrics metrics_;
  NoFacts facts_;
  BrokerCore core_;
};

const proto::TaskInfo kTask{"sq", "u64(u64)"};

proto::Submit chunk(std::uint64_t job, std::uint64_t number, std::uint64_t context = 0) {
  return proto::Submit{job, number, number, 1, kTask.name, kTask.signature, 0, context, 0, 0};
}

proto::Ready ready(std::uint64_t instance, std::uint64_t supervisor, std::uint32_t credit, std::uint32_t generation = 1) {
  return proto::Ready{"host", 1, credit, instance, supervisor, {kTask}, generation, 0, {}};
}

proto::WorkerResult ok(std::uint64_t ticket, std::uint64_t instance) {
  return proto::WorkerResult{ticket, {}, instance, 1, {}};
}

}  // namespace

TEST_CASE("BrokerCore.Tickets.AnAnswerFromBeforeARestartIsNotTakenForANewChunk" * doctest::timeout(10)) {
  // A worker keeps running across a broker restart and answers its chunk on its next connection.
  // The new broker must not take that answer for its own chunk of the same number.
  Harness before({}, 1000);
  before.from(Side::kClient, "c1", proto::Command::kHello, proto::Hello{"host", 1});
  before.from(Side::kWorker, "w1", proto::Command::kReady, ready(7, 70, 1));
  before.from(Side::kClient, "c1", proto::Command::kSubmit, chunk(1, 0), {"A"});
  const auto old_tasks = before.tasks_to("w1");
  REQUIRE(old_tasks.size() == 1);

  Harness after({}, 5000);  // the shell draws a new start at random
  after.from(Side::kClient, "c2", proto::Command::kHello, proto::Hello{"host", 1});
  after.from(Side::kWorker, "w2", proto::Command::kReady, ready(7, 70, 2, 2));
  after.from(Side::kClient, "c2", proto::Command::kSubmit, chunk(9, 0), {"B"});
  const auto new_tasks = after.tasks_to("w2");
  REQUIRE(new_tasks.size() == 1);
  CHECK(new_tasks[0].ticket != old_tasks[0].ticket);
  after.results_to("c2");

  // The old chunk's answer arrives on the worker's new connection: it answers nothing here.
  after.from(Side::kWorker, "w2", proto::Command::kWorkerResult, ok(old_tasks[0].ticket, 7), {"result of A"});
  after.core().flush_results();
  CHECK(after.results_to("c2").empty());
  // The new chunk's own answer is delivered.
  after.from(Side::kWorker, "w2", proto::Command::kWorkerResult, ok(new_tasks[0].ticket, 7), {"result of B"});
  after.core().flush_results();
  const auto results = after.results_to("c2");
  REQUIRE(results.size() == 1);
  CHECK(results[0].job == 9);
  CHECK(results[0].outcome.code == ErrorCode::kOk);
  CHECK(after.core().self_check() == "");
}

TEST_CASE("BrokerCore.Crash.IsCountedOncePerChunkThoughItWentTwiceToThatWorker" * doctest::timeout(10)) {
  // The worker answers kContextMissing (it evicted the context), gets the chunk again with it,
  // and crashes running it: one crash, one kill, however often the chunk went to that worker.
  Harness broker({.poison_kills = 2});
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"host", 1});
  broker.from(Side::kClient, "c", proto::Command::kContext, proto::ContextHeader{42}, {"context"});
  broker.from(Side::kWorker, "w", proto::Command::kReady, ready(7, 70, 1));
  broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(1, 0, 42), {"A"});
  const auto first = broker.tasks_to("w");
  REQUIRE(first.size() == 1);
  proto::WorkerResult missing{first[0].ticket, {ErrorCode::kContextMissing, 0, {}, "evicted", "host", 1, 0}, 7, 0, {}};
  broker.from(Side::kWorker, "w", proto::Command::kWorkerResult, missing, {""});
  const auto again = broker.tasks_to("w");
  REQUIRE(again.size() == 1);
  CHECK(again[0].ticket == first[0].ticket);

  broker.from(Side::kWorker, "supervisor", proto::Command::kWorkerExited,
              proto::WorkerExited{"host", 1, 7, 70, true, "signal 9", first[0].ticket});
  broker.core().flush_results();
  CHECK(broker.results_to("c").empty());  // one kill of two: queued again, not failed
  CHECK(broker.core().chunks_queued() == 1);  // and queued once
  CHECK(broker.core().self_check() == "");
}

TEST_CASE("BrokerCore.Crash.ReportedAfterTheLossCostsThePrefetchedChunksNoRetry" * doctest::timeout(10)) {
  // A proven worker holding a running chunk and a prefetched one dies; its connection's loss is
  // seen first (a silent loss: a retry each), then its supervisor's report: only the running chunk
  // is to blame, and the prefetched one gets its retry back. With --max-retries 0, a retry spent
  // for nothing would fail it.
  Harness broker({.max_retries = 0});
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"host", 1});
  broker.from(Side::kWorker, "w", proto::Command::kReady, ready(7, 70, 3));
  broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(1, 0), {"warm-up"});
  const auto warm = broker.tasks_to("w");
  REQUIRE(warm.size() == 1);
  broker.from(Side::kWorker, "w", proto::Command::kWorkerResult, ok(warm[0].ticket, 7), {"r"});  // proven
  broker.core().flush_results();
  broker.results_to("c");
  broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(2, 0), {"running"});
  broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(3, 0), {"prefetched"});
  const auto held = broker.tasks_to("w");
  REQUIRE(held.size() == 2);

  // Silent for longer than a liveness period: lost (retries spent: both chunks over budget).
  broker.now += 5s;
  broker.core().tick(broker.now);
  broker.core().end_of_pass(broker.now);
  // The report: it crashed running the first.
  broker.from(Side::kWorker, "supervisor", proto::Command::kWorkerExited,
              proto::WorkerExited{"host", 1, 7, 70, true, "signal 9", held[0].ticket});
  // Two liveness periods later, nothing may fail for lost retries.
  for (int i = 0; i < 4; ++i) {
    broker.now += 3s;
    broker.from(Side::kClient, "c", proto::Command::kHeartbeat);  // the client stays
    broker.core().tick(broker.now);
    broker.core().end_of_pass(broker.now);
  }
  for (const auto& result : broker.results_to("c")) {
    CHECK_MESSAGE(result.outcome.code != ErrorCode::kWorkerLost, result.outcome.message);
  }
  CHECK(broker.core().chunks() == 2);
  CHECK(broker.core().self_check() == "");
}

namespace {
constexpr std::uint64_t kSession = 0xC11E27;

proto::Submit resent(std::uint64_t job, std::uint64_t number) {
  proto::Submit submit = chunk(job, number);
  submit.flags = proto::kResent;
  return submit;
}

proto::Ready holding(std::uint64_t instance, std::uint32_t credit, std::vector<proto::HeldChunk> held) {
  proto::Ready out = ready(instance, 0, credit);
  out.held = std::move(held);
  return out;
}
}  // namespace

TEST_CASE("BrokerCore.Takeover.AChunkStillRunningOnItsWorkerIsNotSentToAnother" * doctest::timeout(10)) {
  // The broker that sent chunk 0 of job 1 to w1 (as ticket 777) is gone. Its worker registers here
  // and says it holds that chunk; the client sends the chunk again. It stays on w1, and w1's
  // answer, under the old ticket, is the chunk's.
  Harness broker({}, 5000);
  broker.from(Side::kWorker, "w1", proto::Command::kReady,
              holding(7, 2, {{777, proto::Origin{kSession, 1, 0}, true}}));
  broker.from(Side::kWorker, "w2", proto::Command::kReady, ready(8, 0, 2));
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"host", 1, kSession, 1});
  broker.from(Side::kClient, "c", proto::Command::kSubmit, resent(1, 0), {"A"});
  broker.now += 3s;  // past the hold for resent chunks (two intervals)
  broker.core().end_of_pass(broker.now);
  CHECK(broker.tasks_to("w1").empty());
  CHECK(broker.tasks_to("w2").empty());
  CHECK(broker.core().self_check().empty());
  broker.from(Side::kWorker, "w1", proto::Command::kWorkerResult,
              proto::WorkerResult{777, {}, 7, 1, proto::Origin{kSession, 1, 0}}, {"a"});
  const auto results = broker.results_to("c");
  REQUIRE(results.size() == 1);
  CHECK(results[0].job == 1);
  CHECK(results[0].chunk == 0);
  CHECK(broker.core().chunks() == 0);
  CHECK(broker.core().self_check().empty());
}

TEST_CASE("BrokerCore.Takeover.AResentChunkWaitsForTheWorkerThatHoldsIt" * doctest::timeout(10)) {
  // The client is faster than the worker: its resent chunk waits (a heartbeat interval at most)
  // rather than going to the idle w2, and is the holder's once that registers.
  Harness broker({}, 5000);
  broker.from(Side::kWorker, "w2", proto::Command::kReady, ready(8, 0, 2));
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"host", 1, kSession, 1});
  broker.from(Side::kClient, "c", proto::Command::kSubmit, resent(1, 0), {"A"});
  CHECK(broker.tasks_to("w2").empty());
  CHECK(broker.core().self_check().empty());
  broker.from(Side::kWorker, "w1", proto::Command::kReady,
              holding(7, 2, {{777, proto::Origin{kSession, 1, 0}, false}}));
  broker.now += 3s;
  broker.core().end_of_pass(broker.now);
  CHECK(broker.tasks_to("w2").empty());
  CHECK(broker.core().self_check().empty());
  // A chunk no worker holds goes out once the hold is over.
  broker.from(Side::kClient, "c", proto::Command::kSubmit, resent(1, 1), {"B"});
  CHECK(broker.tasks_to("w2").size() == 1);
}

TEST_CASE("BrokerCore.Takeover.AnAnswerThatCameBeforeTheResendIsDelivered" * doctest::timeout(10)) {
  // The worker finished the chunk while no broker could take its answer, and hands it to this one
  // after registering; the client's resend is answered with it, and nothing runs again.
  Harness broker({}, 5000);
  broker.from(Side::kWorker, "w1", proto::Command::kReady, ready(7, 0, 2));
  broker.from(Side::kWorker, "w1", proto::Command::kWorkerResult,
              proto::WorkerResult{777, {}, 7, 1, proto::Origin{kSession, 1, 0}}, {"a"});
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"host", 1, kSession, 1});
  broker.from(Side::kClient, "c", proto::Command::kSubmit, resent(1, 0), {"A"});
  const auto results = broker.results_to("c");
  REQUIRE(results.size() == 1);
  CHECK(results[0].outcome.code == ErrorCode::kOk);
  CHECK(broker.tasks_to("w1").empty());
  CHECK(broker.core().chunks() == 0);
  // Another client that names the same chunk of another session gets nothing of it.
  broker.from(Side::kClient, "d", proto::Command::kHello, proto::Hello{"host", 2, kSession + 1, 1});
  broker.from(Side::kClient, "d", proto::Command::kSubmit, resent(1, 0), {"A"});
  CHECK(broker.results_to("d").empty());
}

TEST_CASE("BrokerCore.Takeover.AResentChunkGoesOutAtOnceWhenAsManyWorkersAsItsClientSawAreBack" * doctest::timeout(10)) {
  // The client's last broker counted one worker; that one is back here and holds nothing of it:
  // the resent chunk need not wait for anyone else.
  Harness broker({}, 5000);
  broker.from(Side::kWorker, "w2", proto::Command::kReady, ready(8, 0, 2));
  proto::Hello hello{"host", 1, kSession, 1};
  hello.workers_seen = 1;
  broker.from(Side::kClient, "c", proto::Command::kHello, hello);
  broker.from(Side::kClient, "c", proto::Command::kSubmit, resent(1, 0), {"A"});
  CHECK(broker.tasks_to("w2").size() == 1);
  // One that saw two workers waits (for the second) until the hold is over.
  Harness waiting({}, 5000);
  waiting.from(Side::kWorker, "w2", proto::Command::kReady, ready(8, 0, 2));
  hello.workers_seen = 2;
  waiting.from(Side::kClient, "c", proto::Command::kHello, hello);
  waiting.from(Side::kClient, "c", proto::Command::kSubmit, resent(1, 0), {"A"});
  CHECK(waiting.tasks_to("w2").empty());
  waiting.from(Side::kWorker, "w3", proto::Command::kReady, ready(9, 0, 2));
  CHECK(waiting.tasks_to("w2").size() + waiting.tasks_to("w3").size() == 1);
}

namespace {
// The status row of `job` (its key: a stream's first job) of the only client, or nullptr.
const proto::JobInfo* job_row(const proto::StatusReply& status, std::uint64_t job) {
  for (const auto& row : status.jobs) {
    if (row.job == job) return &row;
  }
  return nullptr;
}

// The worker `identity` (instance 7) answers a chunk, leaving probation: it gets as many chunks as its credit.
void prove(Harness& broker, const std::string& identity) {
  proto::Submit warm_up = chunk(999, 0);
  warm_up.job_items = 1;  // its status row shows it done for a liveness period
  broker.from(Side::kClient, "c", proto::Command::kSubmit, warm_up, {"w"});
  const auto tasks = broker.tasks_to(identity);
  REQUIRE(tasks.size() == 1);
  broker.from(Side::kWorker, identity, proto::Command::kWorkerResult, ok(tasks[0].ticket, 7), {"r"});
  broker.core().flush_results();
  broker.results_to("c");
}

proto::Submit streamed(std::uint64_t job, std::uint64_t first_index, std::uint64_t stream) {
  proto::Submit submit{job, 0, first_index, 1, kTask.name, kTask.signature, 0, 0, 0, 1};
  submit.stream = stream;
  return submit;
}
}  // namespace

TEST_CASE("BrokerCore.Status.AnImapIsOneJobAndItsChunksCountTogether" * doctest::timeout(10)) {
  // An imap sends each chunk as a job of its own, all naming the stream (its first job).
  Harness broker({});
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"host", 1});
  broker.from(Side::kWorker, "w", proto::Command::kReady, ready(7, 70, 2));
  prove(broker, "w");
  for (std::uint64_t i = 0; i < 4; ++i) {
    broker.from(Side::kClient, "c", proto::Command::kSubmit, streamed(5 + i, i, 5), {"x"});
  }
  auto status = broker.core().status_reply();
  REQUIRE(status.jobs.size() == 2);  // the stream, and the warm-up job shown as done
  const proto::JobInfo* row = job_row(status, 5);
  REQUIRE(row != nullptr);
  CHECK(row->stream == 1);
  CHECK(row->items_total == 0);  // a stream's length is not known
  CHECK(row->chunks_in_flight == 2);
  CHECK(row->chunks_queued == 2);
  const proto::JobInfo* warm_up = job_row(status, 999);
  REQUIRE(warm_up != nullptr);
  CHECK(warm_up->items_done == warm_up->items_total);
  // Its first chunk (job 5) answered: the stream's row stays and counts it.
  const auto tasks = broker.tasks_to("w");
  REQUIRE(tasks.size() == 2);
  broker.from(Side::kWorker, "w", proto::Command::kWorkerResult, ok(tasks[0].ticket, 7), {"r"});
  broker.from(Side::kWorker, "w", proto::Command::kWorkerResult, ok(tasks[1].ticket, 7), {"r"});
  status = broker.core().status_reply();
  row = job_row(status, 5);
  REQUIRE(row != nullptr);
  CHECK(row->items_done == 2);
  CHECK(row->chunks_in_flight + row->chunks_queued == 2);
  CHECK(broker.core().self_check() == "");
  // Every chunk answered, then a liveness period idle: the row goes.
  for (const auto& task : broker.tasks_to("w")) {
    broker.from(Side::kWorker, "w", proto::Command::kWorkerResult, ok(task.ticket, 7), {"r"});
  }
  CHECK(job_row(broker.core().status_reply(), 5)->items_done == 4);
  broker.now += 4s;
  broker.from(Side::kClient, "c", proto::Command::kHeartbeat);
  broker.from(Side::kWorker, "w", proto::Command::kHeartbeat);
  broker.core().tick(broker.now);
  CHECK(broker.core().status_reply().jobs.empty());
  CHECK(broker.core().self_check() == "");
}

TEST_CASE("BrokerCore.Status.EachWorkerShowsTheChunkItRunsAndForHowLong" * doctest::timeout(10)) {
  Harness broker({});
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"host", 1});
  broker.from(Side::kWorker, "w", proto::Command::kReady, ready(7, 70, 2));
  prove(broker, "w");
  broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(3, 0), {"a"});
  broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(3, 1), {"b"});
  const auto tasks = broker.tasks_to("w");
  REQUIRE(tasks.size() == 2);
  broker.now += 2500ms;
  broker.from(Side::kWorker, "w", proto::Command::kHeartbeat);
  auto status = broker.core().status_reply();
  REQUIRE(status.workers.size() == 1);
  CHECK(status.workers[0].running_task == "sq");
  CHECK(status.workers[0].running_job == 3);
  CHECK(status.workers[0].running_first_index == 0);  // the oldest it holds runs; the other waits behind it
  CHECK(status.workers[0].running_items == 1);
  CHECK(status.workers[0].running_ms == 2500);
  // The first answered: the second runs from now.
  broker.from(Side::kWorker, "w", proto::Command::kWorkerResult, ok(tasks[0].ticket, 7), {"r"});
  broker.now += 700ms;
  broker.from(Side::kWorker, "w", proto::Command::kHeartbeat);
  status = broker.core().status_reply();
  CHECK(status.workers[0].running_first_index == 1);
  CHECK(status.workers[0].running_ms == 700);
  broker.from(Side::kWorker, "w", proto::Command::kWorkerResult, ok(tasks[1].ticket, 7), {"r"});
  CHECK(broker.core().status_reply().workers[0].running_items == 0);  // idle
}

TEST_CASE("BrokerCore.Status.FailuresAndRedispatchesAreListedNewestFirstWithTheirCause" * doctest::timeout(10)) {
  Harness broker({});
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"client-host", 42});
  broker.from(Side::kWorker, "w", proto::Command::kReady, ready(7, 70, 1));
  proto::Submit three = chunk(1, 0);
  three.first_index = 30;
  three.count = 3;
  three.job_items = 3;
  broker.from(Side::kClient, "c", proto::Command::kSubmit, three, {"abc"});
  auto tasks = broker.tasks_to("w");
  REQUIRE(tasks.size() == 1);
  // The task threw on the chunk's second item.
  proto::WorkerResult threw{tasks[0].ticket, {ErrorCode::kTaskFailed, 1, "ValueError", "no square of 31", "host", 1, 0},
                            7, 0, {}};
  broker.from(Side::kWorker, "w", proto::Command::kWorkerResult, threw, {""});
  // Another chunk, whose worker then falls silent: lost, the chunk queued again.
  broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(2, 0), {"d"});
  REQUIRE(broker.tasks_to("w").size() == 1);
  broker.now += 4s;
  broker.from(Side::kClient, "c", proto::Command::kHeartbeat);
  broker.core().tick(broker.now);
  const auto status = broker.core().status_reply();
  REQUIRE(status.events.size() == 2);
  const proto::EventInfo& lost = status.events[0];  // the newest first
  CHECK(lost.kind == proto::kEventRedispatched);
  CHECK(lost.job == 2);
  CHECK(lost.attempt == 1);
  CHECK(lost.worker_host == "host");
  CHECK(lost.message.find("no heartbeat") != std::string::npos);
  CHECK(lost.age_ms == 0);
  const proto::EventInfo& failed = status.events[1];
  CHECK(failed.kind == proto::kEventFailed);
  CHECK(failed.task == "sq");
  CHECK(failed.client_host == "client-host");
  CHECK(failed.client_pid == 42);
  CHECK(failed.job == 1);
  CHECK(failed.item == 31);  // the failing item, not the chunk's first
  CHECK(failed.items == 3);
  CHECK(failed.error == "ValueError");
  CHECK(failed.message == "no square of 31");
  CHECK(failed.age_ms == 4000);
  CHECK(status.chunks_redispatched == 1);
  // The job that failed shows its failed items (its row lasts a liveness period).
  const proto::JobInfo* row = job_row(broker.core().status_reply(), 1);
  if (row != nullptr) CHECK(row->items_failed == 3);
}

TEST_CASE("BrokerCore.Status.EventsAreBoundedAndTheOldestGoFirst" * doctest::timeout(10)) {
  Harness broker({});
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"host", 1});
  broker.from(Side::kWorker, "w", proto::Command::kReady, ready(7, 70, 1));
  for (std::uint64_t job = 1; job <= proto::kMaxStatusEvents + 20; ++job) {
    broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(job, 0), {"x"});
    const auto tasks = broker.tasks_to("w");
    REQUIRE(tasks.size() == 1);
    proto::WorkerResult threw{tasks[0].ticket,
                              {ErrorCode::kTaskFailed, 0, "E", std::string(5000, 'm'), "host", 1, 0}, 7, 0, {}};
    broker.from(Side::kWorker, "w", proto::Command::kWorkerResult, threw, {""});
  }
  const auto status = broker.core().status_reply();
  REQUIRE(status.events.size() == proto::kMaxStatusEvents);
  CHECK(status.events.front().job == proto::kMaxStatusEvents + 20);
  CHECK(status.events.back().job == 21);
  CHECK(status.events.front().message.size() <= 1100);  // a long message is cut
}

TEST_CASE("BrokerCore.Status.SaysWhyAJobWaits" * doctest::timeout(10)) {
  Harness broker({.max_client_chunks = 3});
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"host", 1});
  broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(1, 0), {"a"});
  CHECK(job_row(broker.core().status_reply(), 1)->waiting == "no worker is registered");
  // A worker with other tasks, then one with the task under another signature.
  proto::Ready other = ready(8, 80, 1);
  other.tasks = {{"cube", "u64(u64)"}};
  broker.from(Side::kWorker, "w-other", proto::Command::kReady, other);
  CHECK(job_row(broker.core().status_reply(), 1)->waiting == "no worker offers task sq (1 registered)");
  proto::Ready mismatched = ready(9, 90, 1);
  mismatched.tasks = {{"sq", "f64(f64)"}};
  broker.from(Side::kWorker, "w-mismatched", proto::Command::kReady, mismatched);
  CHECK(job_row(broker.core().status_reply(), 1)->waiting.find("another signature") != std::string::npos);
  // A worker that offers it, busy with one chunk: the next two wait for it.
  broker.from(Side::kWorker, "w", proto::Command::kReady, ready(7, 70, 1));
  CHECK(broker.tasks_to("w").size() == 1);
  CHECK(job_row(broker.core().status_reply(), 1)->waiting.empty());  // running, none queued
  broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(1, 1), {"b"});
  broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(1, 2), {"c"});
  CHECK(job_row(broker.core().status_reply(), 1)->waiting == "every worker that offers task sq is busy (1 worker)");
  // A fourth chunk is over the client's quota of 3: refused, and status says why.
  broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(2, 0), {"d"});
  broker.core().flush_results();
  const auto refused = broker.results_to("c");
  REQUIRE(refused.size() == 1);
  CHECK(refused[0].outcome.code == ErrorCode::kResourceExhausted);
  const auto status = broker.core().status_reply();
  CHECK(job_row(status, 1)->waiting == "every worker that offers task sq is busy (1 worker)");  // the nearer cause
  const proto::JobInfo* refused_job = job_row(status, 2);
  REQUIRE(refused_job != nullptr);
  CHECK(refused_job->waiting.find("holds its quota at the broker, 3 chunks (--max-client-chunks 3)") != std::string::npos);
  CHECK(broker.core().self_check() == "");
}

TEST_CASE("BrokerCore.Status.SaysWhenTheClientsWindowHoldsAJobBack" * doctest::timeout(10)) {
  // A map of 10 items sent a chunk at a time (the client's window is 1) while a worker idles.
  Harness broker({});
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"host", 1});
  broker.from(Side::kWorker, "w1", proto::Command::kReady, ready(7, 70, 1));
  broker.from(Side::kWorker, "w2", proto::Command::kReady, ready(8, 70, 1));
  proto::Submit first = chunk(1, 0);
  first.job_items = 10;
  broker.from(Side::kClient, "c", proto::Command::kSubmit, first, {"a"});
  const std::string waiting = job_row(broker.core().status_reply(), 1)->waiting;
  CHECK(waiting.find("the client's window") != std::string::npos);
  CHECK(waiting.find("max_chunks_in_flight") != std::string::npos);
}

TEST_CASE("BrokerCore.Status.WithTenThousandWorkersAndJobsTheDashboardsAnswerStaysBounded" * doctest::timeout(60)) {
  Harness broker({.max_client_chunks = 20000, .max_client_jobs = 20000, .max_ready_per_second = 100000});
  broker.from(Side::kClient, "c", proto::Command::kHello, proto::Hello{"host", 1});
  for (std::uint64_t i = 1; i <= 10000; ++i) {
    proto::Ready one = ready(i, 1, 1);
    one.host = "worker-host-" + std::to_string(i);
    broker.from(Side::kWorker, "w" + std::to_string(i), proto::Command::kReady, one);
  }
  for (std::uint64_t job = 1; job <= 10000; ++job) {
    proto::Submit submit = chunk(job, 0);
    submit.job_items = 1;
    broker.from(Side::kClient, "c", proto::Command::kSubmit, submit, {"x"});
  }
  // Jobs beyond the workers: queued.
  for (std::uint64_t job = 10001; job <= 10000 + proto::kMaxStatusEvents; ++job) {
    broker.from(Side::kClient, "c", proto::Command::kSubmit, chunk(job, 0), {"x"});
  }
  broker.sent.clear();
  const auto status = broker.core().status_reply();
  CHECK(status.workers.size() == 10000);
  CHECK(status.jobs.size() == proto::kMaxStatusJobs);
  CHECK(status.jobs_omitted == 10000 + proto::kMaxStatusEvents - proto::kMaxStatusJobs);
  const std::string json = poolmap::detail::status_json(status, "tcp://127.0.0.1:5555", 1000ms, 1000ms);
  CHECK(json.size() < 3'000'000);
  CHECK(json.find("\"workers_omitted\":" + std::to_string(10000 - poolmap::detail::kMaxWorkersShown)) != std::string::npos);
  CHECK(json.find("\"jobs_omitted\":" + std::to_string(status.jobs_omitted)) != std::string::npos);
  MESSAGE("the API's answer with 10,000 workers and 10,050 jobs: " << json.size() << " bytes");
}
