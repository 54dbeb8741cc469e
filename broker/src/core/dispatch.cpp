// The broker core's dispatch: what the Scheduler assigns now goes to its workers in as few TASK
// messages as the protocol allows (a context travels with the first chunk of it a worker gets), and
// STARTED goes to clients that asked for it. See core.hpp.
#include <algorithm>

#include "core.hpp"
#include "log.hpp"

namespace poolmap::detail {

namespace {
using proto::Command;

// STARTED goes to a client once the chunk has been on a worker this long without an answer: a
// chunk answered sooner needs none (its RESULT ends running() anyway), which spares a quick call
// a message, and two wake-ups of the client's threads, while its worker computes.
constexpr auto kStartedAfter = std::chrono::milliseconds(1);
}  // namespace

void BrokerCore::dispatch() {
  // What the scheduler assigns now, by worker, in order: the chunks for one worker go in one TASK
  // message (a header and a payload frame each), except one whose context that worker lacks,
  // which goes alone with it (section 5.4 of docs/PROTOCOL.md).
  std::vector<std::pair<Scheduler::WorkerHandle, std::vector<std::uint64_t>>> batches;
  while (const auto assignment = scheduler_.next()) {
    auto batch = std::find_if(batches.begin(), batches.end(),
                              [&](const auto& entry) { return entry.first == assignment->worker; });
    if (batch == batches.end()) batch = batches.insert(batches.end(), {assignment->worker, {}});
    batch->second.push_back(assignment->ticket);
  }
  std::vector<std::uint64_t> started;  // chunks whose client asked to hear when they reach a worker
  for (const auto& [handle, tickets] : batches) {
    const auto identity = identity_by_handle_.find(handle);
    if (identity == identity_by_handle_.end()) continue;  // the scheduler forgets neither
    send_tasks(workers_by_id_.at(identity->second), tickets, started);
  }
  if (started.empty()) return;
  const auto due = now_ + kStartedAfter;
  for (const std::uint64_t ticket : started) started_due_.push_back({due, ticket});
}

std::optional<BrokerCore::Clock::time_point> BrokerCore::next_started_due() {
  while (!started_due_.empty() && !chunks_.contains(started_due_.front().ticket)) started_due_.pop_front();
  if (started_due_.empty()) return std::nullopt;
  return started_due_.front().due;
}

void BrokerCore::send_started() {
  const auto now = now_;
  while (!started_due_.empty() && started_due_.front().due <= now) {
    const std::uint64_t ticket = started_due_.front().ticket;
    started_due_.pop_front();
    const auto chunk = chunks_.find(ticket);
    if (chunk == chunks_.end()) continue;  // answered: its RESULT says more
    if (const auto client = clients_by_id_.find(chunk->second.client); client != clients_by_id_.end()) {
      auto frames = wire::make(Command::kStarted, proto::Started{chunk->second.header.job, chunk->second.header.chunk});
      send_to_client(client->second, frames);  // may drop the client and its chunks: looked up again each time
    }
  }
}

void BrokerCore::send_tasks(WorkerState& worker, const std::vector<std::uint64_t>& tickets,
                              std::vector<std::uint64_t>& started) {
  wire::ChunkBatch batch(Command::kTask);
  std::vector<std::uint64_t> sending;  // the tickets in `batch`
  // Sends `frames` (the chunks `sending`); after it, the chunks are the worker's, or, when it
  // vanished, queued again for others.
  auto send = [&](std::vector<zmq::message_t>& frames) -> bool {
    if (!send_to_worker(worker, frames)) {
      // The worker vanished between its last message and now: give its chunks to someone else.
      for (const std::uint64_t ticket : sending) queue_chunk(ticket, true);
      sending.clear();
      return false;
    }
    for (const std::uint64_t ticket : sending) {
      Chunk& chunk = chunks_.at(ticket);
      metrics_.dispatched();
      metrics_.bytes_sent(chunk.payload.size());
      ++chunk.attempt;
      chunk.worker = worker.identity;
      chunk.worker_ticket = 0;
      if (std::none_of(chunk.holders.begin(), chunk.holders.end(),
                       [&](const Chunk::Holder& h) { return h.instance == worker.instance && h.identity == worker.identity; })) {
        chunk.holders.push_back({worker.instance, worker.identity});
      }
      if (worker.tickets.empty()) worker.running_since = now_;
      worker.tickets.insert(ticket);
      worker.dispatch_order.push_back(ticket);
      if (chunk.attempt == 1 && (chunk.header.flags & proto::kNotifyStarted) != 0) started.push_back(ticket);
    }
    sending.clear();
    return true;
  };
  auto send_batch = [&]() -> bool {
    if (batch.empty()) return true;
    auto frames = batch.take();
    return send(frames);
  };
  auto give_up = [&](std::size_t from) {  // the worker is unreachable: the rest go to others
    for (std::size_t j = from; j < tickets.size(); ++j) queue_chunk(tickets[j], true);
    lose_worker(worker.identity, "unreachable", Loss::kLost);
  };
  for (std::size_t i = 0; i < tickets.size(); ++i) {
    const auto chunk_it = chunks_.find(tickets[i]);
    if (chunk_it == chunks_.end()) continue;  // the scheduler forgets none
    Chunk& chunk = chunk_it->second;
    const std::uint64_t context_hash = chunk.header.context_hash;
    auto header = wire::header_message(proto::TaskHeader{tickets[i], chunk.header.first_index, chunk.header.count,
                                                         chunk.header.task, chunk.header.signature,
                                                         chunk.header.deadline_ms, context_hash,
                                                         origin_of(chunk)});
    zmq::message_t payload;
    payload.copy(chunk.payload);  // reference-counted, not a byte copy
    if (context_hash != 0 && !worker.contexts.contains(context_hash)) {
      // The first chunk of this context for this worker carries it, alone: [signature, header,
      // payload, context], after the chunks gathered before it.
      if (!send_batch()) return give_up(i);
      zmq::message_t* context = clients_by_id_.at(chunk.client).contexts.payload(context_hash);
      if (context == nullptr) {  // never: a queued chunk keeps its context (the self-check holds it)
        answer_with_error(tickets[i], ErrorCode::kContextMissing, "the broker lost the chunk's context; send it again");
        continue;
      }
      std::vector<zmq::message_t> frames;
      frames.push_back(wire::signature_message(Command::kTask));
      frames.push_back(std::move(header));
      frames.push_back(std::move(payload));
      frames.emplace_back();
      frames.back().copy(*context);
      const std::size_t context_bytes = context->size();
      sending.push_back(tickets[i]);
      if (!send(frames)) return give_up(i + 1);
      worker.contexts.insert(context_hash);
      context_bytes_sent_ += context_bytes;
      metrics_.bytes_sent(context_bytes);
      continue;
    }
    if (batch.needs_new_message(payload.size()) && !send_batch()) return give_up(i);
    batch.add(std::move(header), std::move(payload));
    sending.push_back(tickets[i]);
  }
  if (!send_batch()) lose_worker(worker.identity, "unreachable", Loss::kLost);
}

}  // namespace poolmap::detail
