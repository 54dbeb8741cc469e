// The broker core's chunk ledger: every chunk not yet answered, where each copy was sent, first
// answer wins, late answers (only from a process the chunk was sent to, on a connection it is
// known by), retries and their refunds, poison (kills), failure. See core.hpp.
#include <algorithm>

#include "core.hpp"
#include "log.hpp"
#include "process_info.hpp"

namespace poolmap::detail {

namespace {
using proto::Command;
}  // namespace

void BrokerCore::forward_result(std::uint64_t ticket, proto::Outcome&& outcome, zmq::message_t& payload,
                                  std::uint64_t answered_by) {
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end()) return;
  const auto client = clients_by_id_.find(chunk->second.client);
  if (client == clients_by_id_.end()) {
    finish_chunk(ticket);
    return;
  }
  if (outcome.code == ErrorCode::kOk) {
    ++chunks_done_;
    ClientState& owner = client->second;
    if (answered_by != 0) {
      const ClientState::Delivery delivery{chunk->second.header.job, chunk->second.header.chunk, chunk->second.attempt,
                                           answered_by, record_key(chunk->second.header), chunk->second.header.count};
      if (owner.deliveries.size() < kDeliveriesKept) {
        owner.deliveries.push_back(delivery);
      } else {
        owner.deliveries[owner.next_delivery] = delivery;
        owner.next_delivery = (owner.next_delivery + 1) % kDeliveriesKept;
      }
    }
    if (const auto record = owner.job_records.find(record_key(chunk->second.header)); record != owner.job_records.end()) {
      record->second.items_done += chunk->second.header.count;  // done, it stays a liveness period (shown as done)
    }
    metrics_.completed(std::chrono::duration<double>(now_ - chunk->second.received).count());
  } else if (outcome.code != ErrorCode::kContextMissing && outcome.code != ErrorCode::kResourceExhausted) {
    ++chunks_failed_;  // those two are sent again, not failed
    metrics_.failed();
    if (outcome.code != ErrorCode::kCancelled) note_event(proto::kEventFailed, chunk->second, &outcome, outcome.message);
  }
  metrics_.bytes_sent(payload.size());
  const proto::ClientResult forward{chunk->second.header.job, chunk->second.header.chunk, chunk->second.attempt,
                                    std::move(outcome), worker_count()};
  ClientState& owner = client->second;
  if (owner.results_out.needs_new_message(payload.size())) {
    const std::string owner_id = owner.identity;
    send_results(owner);
    if (!clients_by_id_.contains(owner_id)) return;  // dropped (unreachable), and its chunks with it
  }
  if (owner.results_out.empty()) results_pending_.push_back(owner.identity);
  owner.results_out.add(wire::header_message(forward), std::move(payload));
  finish_chunk(ticket);
}

bool BrokerCore::on_worker_result(const std::string& identity, const zmq::message_t& header_frame,
                                  zmq::message_t& payload, const PeerFacts& facts) {
  auto result = proto::decode<proto::WorkerResult>(wire::view(header_frame));
  const auto found = workers_by_id_.find(identity);
  if (found == workers_by_id_.end()) {
    // No registration on this connection. A worker we declared lost may answer on it after all
    // (busy, not dead), but only on the connection it was registered on: an instance id is what
    // the message claims, and a stranger may claim any.
    if (result) {
      const auto silent = silenced_.find(result.value().instance);
      if (silent != silenced_.end() && silent->second.identity == identity &&
          silent->second.key == facts.key()) {
        refund(result.value().instance, "answered");
      }
      (void)accept_late_result(result.value(), payload, identity, false);  // else dropped (also benign: a chunk answered already)
    }
    return true;
  }
  WorkerState& worker = found->second;
  if (!result) {
    reply_error(Side::kWorker, identity, result.status());
    return false;
  }
  metrics_.bytes_received(payload.size());
  const std::uint64_t ticket = ledger_ticket(worker, result.value().ticket, true);
  result.value().ticket = ticket;
  while (!worker.dispatch_order.empty() && !worker.tickets.contains(worker.dispatch_order.front())) {
    worker.dispatch_order.pop_front();  // answered earlier
  }
  if (worker.tickets.erase(ticket) != 0) {
    worker.running_since = now_;  // the next chunk it holds runs from now
  } else {
    // Not a chunk this registration holds: perhaps one it ran before it registered again.
    result.value().instance = worker.instance;  // this registration's process, whatever it says
    if (!accept_late_result(result.value(), payload, identity, true) &&
        !accept_by_origin(worker, result.value(), payload)) {
      log_->debug("worker {} pid {} [{}] returned ticket {} it does not hold", worker.host, worker.pid,
                  short_id(worker.instance), ticket);
    }
    return true;
  }
  scheduler_.return_credit(worker.handle, worker.tickets.empty());
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end()) return true;  // cancelled while running, or answered by another worker
  if (chunk->second.worker != identity) return true;  // put back and sent elsewhere; that copy answers
  if (const auto wrong = wrong_count(result.value(), chunk->second)) {
    // Never delivered: a failed attempt of this chunk on this worker, which is dropped.
    ++bad_messages_;
    const std::string described = *wrong + " (worker " + worker.host + " pid " + std::to_string(worker.pid) +
                                  " [" + short_id(worker.instance) + "])";
    requeue(ticket, described, false, true);
    lose_worker(identity, *wrong, Loss::kBroken);
    return true;  // the rest of its results are late ones now
  }
  if (result.value().outcome.code == ErrorCode::kContextMissing) {
    // The worker evicted the chunk's context: send the chunk again, with the context.
    worker.contexts.erase(chunk->second.header.context_hash);
    chunk->second.worker.clear();
    queue_chunk(ticket, true);
    return true;
  }
  if (result.value().outcome.code == ErrorCode::kUnavailable) {
    // Handed back before it started (the worker's chunk ran long with others waiting behind
    // it): to the front of the queue, for an idle worker, without penalty.
    chunk->second.worker.clear();
    queue_chunk(ticket, true);
    return true;
  }
  if (result.value().outcome.code == ErrorCode::kOk) {
    ++worker.chunks_done;
  } else if (result.value().outcome.code != ErrorCode::kCancelled) {
    ++worker.chunks_failed;
  }
  prove(worker);  // it ran a chunk and answered it
  forward_result(ticket, std::move(result.value().outcome), payload, worker.instance);
  return true;
}

std::optional<std::string> BrokerCore::wrong_count(const proto::WorkerResult& result, const Chunk& chunk) {
  if (result.outcome.code != ErrorCode::kOk || result.count == chunk.header.count) return std::nullopt;
  return "returned " + std::to_string(result.count) + " results for a chunk of " + std::to_string(chunk.header.count) +
         " items";
}

bool BrokerCore::accept_late_result(proto::WorkerResult& result, zmq::message_t& payload,
                                      const std::string& identity, bool registered) {
  const std::uint64_t ticket = result.ticket;
  const std::uint64_t instance = result.instance;
  proto::Outcome& outcome = result.outcome;
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end() || instance == 0) return false;
  const auto& holders = chunk->second.holders;
  if (std::none_of(holders.begin(), holders.end(), [&](const Chunk::Holder& holder) {
        return holder.instance == instance && (registered || holder.identity == identity);
      })) {
    return false;
  }
  // Not answers: the current holder answers (an evicted context, a hand-back, the kCancelled a
  // worker gives an ABANDON).
  if (outcome.code == ErrorCode::kContextMissing || outcome.code == ErrorCode::kUnavailable ||
      outcome.code == ErrorCode::kCancelled) {
    return false;
  }
  if (wrong_count(result, chunk->second)) return false;
  log_->info("accepted a late result for chunk {} of job {} from worker [{}] (first answer wins)",
             chunk->second.header.chunk, chunk->second.header.job, short_id(instance));
  // If the chunk was sent again, that worker keeps its ticket: it gets its credit back when it
  // answers, and the answer is dropped.
  forward_result(ticket, std::move(outcome), payload, instance);
  return true;
}

void BrokerCore::queue_chunk(std::uint64_t ticket, bool front) {
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end()) return;
  scheduler_.enqueue(chunk->second.client, ticket, chunk->second.kind, front);
}

void BrokerCore::answer_with_error(std::uint64_t ticket, ErrorCode code, const std::string& message) {
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end()) return;
  scheduler_.forget(ticket);
  proto::Outcome outcome;
  outcome.code = code;
  outcome.message = message;
  // One line per interval, not one per chunk: a map of an unknown task refuses every chunk.
  const auto now = now_;
  auto level = spdlog::level::debug;
  if (code != ErrorCode::kContextMissing && now - last_refusal_logged_ >= options_.heartbeat_interval) {
    level = code == ErrorCode::kResourceExhausted ? spdlog::level::info : spdlog::level::warn;  // backpressure
    last_refusal_logged_ = now;
  }
  log_->log(level, "refused chunk {} of job {}: {}", chunk->second.header.chunk, chunk->second.header.job, message);
  zmq::message_t empty;
  forward_result(ticket, std::move(outcome), empty);
}

void BrokerCore::finish_chunk(std::uint64_t ticket) {
  const auto chunk = chunks_.find(ticket);
  if (chunk == chunks_.end()) return;
  const auto client = clients_by_id_.find(chunk->second.client);
  if (client != clients_by_id_.end()) {
    release_context(client->second, chunk->second.header.context_hash);
    --client->second.chunks;
    client->second.chunk_bytes -= static_cast<std::int64_t>(chunk->second.payload.size());
    const auto job = client->second.jobs.find(chunk->second.header.job);
    if (job != client->second.jobs.end()) {
      job->second.erase(ticket);
      if (job->second.empty()) {
        client->second.jobs.erase(job);
        job_gone(client->second, record_key(chunk->second.header), chunk->second.header.job);
      }
    }
  }
  scheduler_.forget(ticket);
  over_budget_.erase(ticket);
  if ((chunk->second.header.flags & proto::kResent) != 0) {
    const auto resent = resent_.find(origin_of(chunk->second));
    if (resent != resent_.end() && resent->second == ticket) resent_.erase(resent);
  }
  chunks_.erase(chunk);
}

void BrokerCore::abandon(std::uint64_t ticket, const Chunk& chunk) {
  if (chunk.worker.empty()) return;
  const auto worker = workers_by_id_.find(chunk.worker);
  if (worker == workers_by_id_.end()) return;
  const std::uint64_t known_as = chunk.worker_ticket != 0 ? chunk.worker_ticket : ticket;
  auto frames = wire::make(Command::kAbandon,
                           proto::Abandon{known_as, static_cast<std::uint32_t>(options_.heartbeat_interval.count())});
  (void)send_to_worker(worker->second, frames);  // one that is gone is dealt with by liveness
}

void BrokerCore::fail_chunk(std::uint64_t ticket, const std::string& why) {
  const auto found = chunks_.find(ticket);
  if (found == chunks_.end()) return;
  Chunk& chunk = found->second;
  const auto client = clients_by_id_.find(chunk.client);
  std::string causes;
  for (std::size_t i = 0; i < chunk.lost_causes.size(); ++i) {
    causes += (i == 0 ? "" : "; ") + std::string("attempt ") + std::to_string(i + 1) + ": " + chunk.lost_causes[i];
  }
  proto::Outcome outcome;
  outcome.code = ErrorCode::kWorkerLost;
  outcome.message = "chunk " + std::to_string(chunk.header.chunk) + " (items " +
                    std::to_string(chunk.header.first_index) + ".." +
                    std::to_string(chunk.header.first_index + chunk.header.count - 1) + ") " + why + " (" + causes + ")";
  ++chunks_failed_;
  metrics_.failed();
  note_event(proto::kEventFailed, chunk, &outcome, outcome.message);
  log_->warn("giving up on a chunk: {}", outcome.message);
  auto out = wire::make(Command::kResult, proto::ClientResult{chunk.header.job, chunk.header.chunk, chunk.attempt,
                                                              std::move(outcome), worker_count()});
  out.emplace_back();
  finish_chunk(ticket);
  if (client != clients_by_id_.end()) send_to_client(client->second, out);
}

void BrokerCore::requeue(std::uint64_t ticket, const std::string& cause, bool blamed, bool counted,
                         const WorkerState* holder) {
  const auto found = chunks_.find(ticket);
  if (found == chunks_.end()) return;
  Chunk& chunk = found->second;
  const auto registered = workers_by_id_.find(chunk.worker);
  const WorkerState* ran_it = holder != nullptr ? holder : registered != workers_by_id_.end() ? &registered->second : nullptr;
  chunk.worker.clear();
  // Bounded: losses that spend no retry (hand-backs, workers on probation) may repeat many times.
  if (chunk.lost_causes.size() < 2 * static_cast<std::size_t>(std::max(options_.max_retries, options_.poison_kills)) + 8) {
    chunk.lost_causes.push_back(cause);
  }
  if (!clients_by_id_.contains(chunk.client)) {
    over_budget_.erase(ticket);
    chunks_.erase(found);
    return;
  }
  if (blamed && ++chunk.kills >= static_cast<std::uint32_t>(options_.poison_kills)) {
    return fail_chunk(ticket, "killed " + std::to_string(chunk.kills) + " worker processes");
  }
  if (!blamed && counted && ++chunk.retries > static_cast<std::uint32_t>(options_.max_retries)) {
    // Past its budget of silent losses. A busy host looks silent too, so the chunk goes on and
    // fails only if none of those workers turns out to be alive in the next liveness periods.
    over_budget_.try_emplace(ticket, now_);
  }
  ++chunks_redispatched_;
  metrics_.redispatched();
  note_event(proto::kEventRedispatched, chunk, nullptr, cause, ran_it);
  queue_chunk(ticket, true);
}

void BrokerCore::fail_hopeless_chunks() {
  // Chunks no registered worker can run (the capable ones left, or never came) fail now.
  for (auto& [ticket, runnable] : scheduler_.take_unrunnable(now_)) {
    answer_with_error(ticket, runnable.verdict == Scheduler::Verdict::kSignatureMismatch ? ErrorCode::kSignatureMismatch
                                                                                          : ErrorCode::kUnknownTask,
                      runnable.message);
  }
  // Chunks past their budget of silent losses whose workers did not come back.
  std::vector<std::uint64_t> give_up;
  for (const auto& [ticket, since_when] : over_budget_) {
    const auto chunk = chunks_.find(ticket);
    if (chunk != chunks_.end() && chunk->second.worker.empty() && now_ - since_when >= 2 * expiry()) {
      give_up.push_back(ticket);
    }
  }
  for (const std::uint64_t ticket : give_up) {
    fail_chunk(ticket, "lost its worker " + std::to_string(chunks_.at(ticket).retries) + " times");
  }
}

}  // namespace poolmap::detail
