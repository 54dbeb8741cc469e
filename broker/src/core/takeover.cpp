// The broker core's chunks that outlive a broker (a failover to the other broker of a pair, a
// restart, a worker that registers again): what workers say they hold (READY) is matched to the
// chunks their clients send again (SUBMIT with kResent), by origin (client session, job, chunk), so
// that a chunk running on a worker keeps running there and is not sent to a second one; answers to
// chunks this broker never sent are kept for their client's resend. See core.hpp.
#include <algorithm>

#include "core.hpp"
#include "log.hpp"
#include "process_info.hpp"

namespace poolmap::detail {

namespace {
using proto::Command;

// Most orphan answers kept at once (their bytes count against max_client_bytes too).
constexpr std::size_t kMaxOrphans = 65536;
// Most chunks remembered as held by workers, waiting for their clients' resends.
constexpr std::size_t kMaxAdoptable = 65536;
}  // namespace

std::uint64_t BrokerCore::ledger_ticket(WorkerState& worker, std::uint64_t ticket, bool forget) {
  if (worker.aliases.empty()) return ticket;
  const auto alias = worker.aliases.find(ticket);
  if (alias == worker.aliases.end()) return ticket;
  const std::uint64_t mine = alias->second;
  if (forget) worker.aliases.erase(alias);
  return mine;
}

std::optional<std::uint64_t> BrokerCore::resent_ticket(const proto::Origin& origin) {
  const auto resent = resent_.find(origin);
  if (resent == resent_.end()) return std::nullopt;
  const auto chunk = chunks_.find(resent->second);
  if (chunk == chunks_.end() || !(origin_of(chunk->second) == origin)) {  // dropped with its client
    resent_.erase(resent);
    return std::nullopt;
  }
  return resent->second;
}

void BrokerCore::place_chunk(std::uint64_t ticket) {
  Chunk& chunk = chunks_.at(ticket);
  if ((chunk.header.flags & proto::kResent) == 0 || chunk.session == 0) return queue_chunk(ticket, false);
  const proto::Origin origin = origin_of(chunk);
  resent_[origin] = ticket;
  if (const auto orphan = orphans_.find(origin); orphan != orphans_.end()) {
    // A worker answered it while no broker could take the answer: deliver that, run nothing.
    Orphan found = std::move(orphan->second);
    orphans_.erase(orphan);
    orphan_bytes_ -= static_cast<std::int64_t>(found.payload.size());
    const auto worker = workers_by_id_.find(found.worker);
    if (!wrong_count(found.result, chunk)) {
      ++chunk.attempt;
      chunk.holders.push_back({found.result.instance, found.worker});
      if (worker != workers_by_id_.end() && found.result.outcome.code == ErrorCode::kOk) ++worker->second.chunks_done;
      ++orphans_delivered_;
      log_->debug("chunk {} of job {}: answered by worker [{}] before this broker had it", chunk.header.chunk,
                  chunk.header.job, short_id(found.result.instance));
      forward_result(ticket, std::move(found.result.outcome), found.payload, found.result.instance);
      return;
    }
    ++bad_messages_;  // a wrong answer: the chunk runs again
  }
  if (const auto held = adoptable_.find(origin); held != adoptable_.end()) {
    const Adoptable adoptable = held->second;
    adoptable_.erase(held);
    const auto worker = workers_by_id_.find(adoptable.worker);
    if (worker != workers_by_id_.end() && worker->second.instance == adoptable.instance) {
      adopt_chunk(ticket, worker->second, adoptable.ticket);
      return;
    }
  }
  if (const auto client = clients_by_id_.find(chunk.client);
      client != clients_by_id_.end() && now_ < client->second.hold_resent_until && !workers_back()) {
    held_back_.push_back({ticket, client->second.hold_resent_until});  // its worker may not have registered yet
    return;
  }
  queue_chunk(ticket, false);
}

void BrokerCore::adopt_chunk(std::uint64_t ticket, WorkerState& worker, std::uint64_t worker_ticket) {
  Chunk& chunk = chunks_.at(ticket);
  scheduler_.forget(ticket);  // if it was queued
  scheduler_.take_credit(worker.handle);
  ++chunk.attempt;
  chunk.worker = worker.identity;
  chunk.worker_ticket = worker_ticket == ticket ? 0 : worker_ticket;
  if (std::none_of(chunk.holders.begin(), chunk.holders.end(), [&](const Chunk::Holder& h) {
        return h.instance == worker.instance && h.identity == worker.identity;
      })) {
    chunk.holders.push_back({worker.instance, worker.identity});
  }
  if (worker.tickets.empty()) worker.running_since = now_;
  worker.tickets.insert(ticket);
  worker.dispatch_order.push_back(ticket);
  if (worker_ticket != ticket) worker.aliases[worker_ticket] = ticket;
  ++chunks_adopted_;
  log_->debug("chunk {} of job {} stays on worker [{}], which held it already", chunk.header.chunk, chunk.header.job,
              short_id(worker.instance));
}

void BrokerCore::adopt_held(WorkerState& worker, const std::vector<proto::HeldChunk>& held) {
  const std::string identity = worker.identity;
  for (const proto::HeldChunk& h : held) {
    if (h.origin.session == 0 || h.ticket == 0) continue;
    // This broker's own chunk (the worker registered again here): it must be the same chunk, sent
    // to this very process.
    std::optional<std::uint64_t> mine;
    if (const auto own = chunks_.find(h.ticket); own != chunks_.end() && origin_of(own->second) == h.origin &&
                                                 std::any_of(own->second.holders.begin(), own->second.holders.end(),
                                                             [&](const Chunk::Holder& holder) {
                                                               return holder.instance == worker.instance;
                                                             })) {
      mine = h.ticket;
    } else {
      mine = resent_ticket(h.origin);
    }
    if (mine) {
      const Chunk& chunk = chunks_.at(*mine);
      if (chunk.worker.empty()) {
        adopt_chunk(*mine, worker, h.ticket);
      } else if (chunk.worker != identity && !h.running) {
        // Sent to another worker meanwhile: this copy is not needed (a running one may still answer
        // first, and is left alone).
        auto frames = wire::make(Command::kAbandon, proto::Abandon{h.ticket, 0});
        if (!send_to_worker(worker, frames)) return;
      }
      continue;
    }
    if (adoptable_.size() >= kMaxAdoptable) continue;  // it may run twice: at least once still holds
    adoptable_[h.origin] = Adoptable{identity, worker.instance, h.ticket, h.running, now_};
  }
}

bool BrokerCore::accept_by_origin(WorkerState& worker, proto::WorkerResult& result, zmq::message_t& payload) {
  const proto::Origin& origin = result.origin;
  if (origin.session == 0) return false;
  result.instance = worker.instance;  // the process registered on this connection, whatever it says
  if (const auto resent = resent_ticket(origin)) {
    const std::uint64_t ticket = *resent;
    Chunk& chunk = chunks_.at(ticket);
    if (result.outcome.code == ErrorCode::kContextMissing || result.outcome.code == ErrorCode::kUnavailable ||
        result.outcome.code == ErrorCode::kCancelled || wrong_count(result, chunk)) {
      return false;  // not an answer: the chunk's own dispatch answers it
    }
    if (!chunk.worker.empty() && chunk.worker != worker.identity) abandon(ticket, chunk);  // first answer wins
    chunk.holders.push_back({worker.instance, worker.identity});
    if (chunk.attempt == 0) chunk.attempt = 1;
    if (result.outcome.code == ErrorCode::kOk) ++worker.chunks_done;
    ++orphans_delivered_;
    forward_result(ticket, std::move(result.outcome), payload, worker.instance);
    return true;
  }
  if (result.outcome.code == ErrorCode::kContextMissing || result.outcome.code == ErrorCode::kUnavailable ||
      result.outcome.code == ErrorCode::kCancelled) {
    return false;
  }
  // An answer of a chunk no client sent here (yet): its client may still come over from a broker
  // that is gone, however long this core has run (a client turns when it notices, a worker's
  // answer can wait in its queue), so it is kept for two liveness periods (expire_takeover_state),
  // within kMaxOrphans and max_client_bytes. A chunk this very worker said it holds is no longer
  // adoptable: its client's resend must find the answer, not adopt it onto a worker that has
  // answered already (that map would wait for ever).
  if (const auto held = adoptable_.find(origin);
      held != adoptable_.end() && held->second.instance == worker.instance) {
    adoptable_.erase(held);
  }
  if (orphans_.size() >= kMaxOrphans ||
      orphan_bytes_ + static_cast<std::int64_t>(payload.size()) > options_.max_client_bytes) {
    return false;  // the chunk runs again when its client sends it
  }
  orphan_bytes_ += static_cast<std::int64_t>(payload.size());
  auto [slot, inserted] = orphans_.try_emplace(origin);
  if (!inserted) orphan_bytes_ -= static_cast<std::int64_t>(slot->second.payload.size());
  slot->second = Orphan{std::move(result), std::move(payload), worker.identity, now_};
  return true;
}

void BrokerCore::release_held_back() {
  if (held_back_.empty()) return;
  const bool all = workers_back();
  std::erase_if(held_back_, [&](const HeldBack& held) {
    if (!all && now_ < held.until) return false;
    const auto chunk = chunks_.find(held.ticket);
    if (chunk != chunks_.end() && chunk->second.worker.empty() && !scheduler_.is_queued(held.ticket)) {
      queue_chunk(held.ticket, false);
    }
    return true;
  });
}

void BrokerCore::expire_takeover_state() {
  const auto too_old = now_ - 2 * expiry();
  std::erase_if(resent_, [&](const auto& entry) { return !chunks_.contains(entry.second); });  // dropped with a client
  std::erase_if(adoptable_, [&](const auto& entry) { return entry.second.since < too_old; });
  for (auto orphan = orphans_.begin(); orphan != orphans_.end();) {
    if (orphan->second.since < too_old) {
      orphan_bytes_ -= static_cast<std::int64_t>(orphan->second.payload.size());
      orphan = orphans_.erase(orphan);
    } else {
      ++orphan;
    }
  }
}

void BrokerCore::send_everyone_away() {
  for (auto& [identity, client] : clients_by_id_) {
    auto frames = wire::make_empty(Command::kPassive);
    (void)out_.send(Side::kClient, identity, frames);
  }
  for (auto& [identity, worker] : workers_by_id_) {
    auto frames = wire::make_empty(Command::kPassive);
    (void)out_.send(Side::kWorker, identity, frames);
  }
}

}  // namespace poolmap::detail
