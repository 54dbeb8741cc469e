// The broker core's frame: construction, the passes and ticks the shell drives, sending, errors, and
// the status view. See core.hpp.
#include "core.hpp"
#include "log.hpp"

#include <algorithm>
#include <tuple>

#include "process_info.hpp"

namespace poolmap::detail {

namespace {
using proto::Command;
}  // namespace

BrokerCore::BrokerCore(const BrokerOptions& options, Clock::time_point now, Outbox& out, Metrics& metrics,
                       std::shared_ptr<spdlog::logger> log, std::uint64_t first_ticket)
    : options_(options),
      out_(out),
      metrics_(metrics),
      log_(std::move(log)),
      now_(now),
      scheduler_(options_.heartbeat_interval * options_.heartbeat_liveness, now),
      // Bounded away from 0 and from wrapping round for as many chunks as any broker will see.
      next_ticket_((first_ticket & 0x7fffffffffffffffULL) | 1) {}

void BrokerCore::end_of_pass(Clock::time_point now) {
  now_ = now;
  release_held_back();
  if (!draining_) dispatch();
  flush_results();
  send_started();
  flush_announcement();
  metrics_.set_gauges(workers_by_id_.size(), clients_by_id_.size(), scheduler_.queued(),
                      chunks_.size() - std::min(chunks_.size(), scheduler_.queued()));
}

void BrokerCore::tick(Clock::time_point now) {
  now_ = now;
  check_worker_liveness();
  expire_takeover_state();
  // A client holds no chunk that anyone waits for, and its heartbeats queue behind the large
  // messages it sends (a 50 MB context on a loaded host takes a while): give it four times as long.
  const auto client_expiry = 4 * expiry();
  std::vector<std::string> gone;
  for (auto& [id, client] : clients_by_id_) {
    if (now - client.last_heard > client_expiry && !receiving(client.link)) {
      gone.push_back(id);
    } else if (now - client.last_sent >= options_.heartbeat_interval) {
      auto frames = wire::make_empty(Command::kHeartbeat);
      if (out_.send(Side::kClient, id, frames)) {
        client.last_sent = now;
      } else {
        gone.push_back(id);
      }
    }
  }
  for (const auto& id : gone) drop_client(id, "no heartbeat");
  expire_client_state();
  // A peer whose budget has filled up again needs no entry.
  std::erase_if(ready_budgets_, [&](const auto& entry) { return now - entry.second.refilled >= std::chrono::seconds(1); });
  fail_hopeless_chunks();
  // A worker silent for this long is not coming back to claim a refund.
  const auto memory = std::max<Clock::duration>(std::chrono::seconds(60), 20 * expiry());
  std::erase_if(silenced_, [&](const auto& entry) { return now - entry.second.when > memory; });
}

bool BrokerCore::receiving(const std::unique_ptr<LinkWatch>& link) const {
  if (!link) return false;
  const auto quiet = link->since_data_received();
  return quiet && *quiet < expiry();
}

void BrokerCore::start_drain(Clock::time_point now) {
  now_ = now;
  draining_ = true;
  const std::size_t in_flight = chunks_in_flight();
  log_->info("broker draining: {} chunks in flight, {} queued (handed back to their clients)", in_flight,
             chunks_.size() - in_flight);
}

std::size_t BrokerCore::chunks_in_flight() const {
  return static_cast<std::size_t>(
      std::count_if(chunks_.begin(), chunks_.end(), [](const auto& c) { return !c.second.worker.empty(); }));
}

std::string BrokerCore::summary() const {
  return std::to_string(chunks_done_) + " chunks done, " + std::to_string(chunks_failed_) + " failed, " +
         std::to_string(chunks_redispatched_) + " re-dispatched, " + std::to_string(bad_messages_) + " bad messages";
}

void BrokerCore::disconnect_everyone() {
  // Workers and clients learn at once that we are going: workers register with the next broker,
  // clients resend what was not answered.
  for (auto& [id, worker] : workers_by_id_) {
    auto frames = wire::make_empty(Command::kDisconnect);
    (void)out_.send(Side::kWorker, id, frames);
  }
  for (auto& [id, client] : clients_by_id_) {
    auto frames = wire::make_empty(Command::kDisconnect);
    (void)out_.send(Side::kClient, id, frames);
  }
}

void BrokerCore::reply_error(Side side, const std::string& identity, const Status& status) {
  ++bad_messages_;
  // Counted per peer too (up to 1024 peers per report), so that the line names the worst one.
  if (bad_by_peer_.size() < 1024 || bad_by_peer_.contains(identity)) ++bad_by_peer_[identity];
  if (const auto bad = bad_message_log_.count(now_, options_.heartbeat_interval)) {
    const auto worst = std::max_element(bad_by_peer_.begin(), bad_by_peer_.end(),
                                        [](const auto& a, const auto& b) { return a.second < b.second; });
    log_->warn("{} bad message{} since the last report from {} peer{}, most ({}) from peer {}; latest from peer {}: {}",
               bad, plural(bad), bad_by_peer_.size(), plural(bad_by_peer_.size()), worst->second,
               printable_identity(worst->first).substr(0, 32), printable_identity(identity).substr(0, 32),
               printable(status.to_string(), 200));
    bad_by_peer_.clear();
  }
  auto frames = wire::make(Command::kError, proto::ErrorReply{status.code(), status.message()});
  (void)out_.send(side, identity, frames);
}

void BrokerCore::refuse_peer(Side side, const std::string& identity, const std::string& why) {
  if (const auto refused = cap_refusals_.count(now_, options_.heartbeat_interval)) {
    log_->warn("refused {} peer{} since the last report: {}", refused, plural(refused), why);
  }
  auto frames = wire::make(Command::kError, proto::ErrorReply{ErrorCode::kUnavailable, why});
  (void)out_.send(side, identity, frames);
}

void BrokerCore::ask_to_start_over(Side side, const std::string& identity) {
  auto frames = wire::make_empty(Command::kDisconnect);
  (void)out_.send(side, identity, frames);
}

void BrokerCore::send_to_client(ClientState& client, std::vector<zmq::message_t>& frames) {
  if (out_.send(Side::kClient, client.identity, frames)) {
    client.last_sent = now_;
    return;
  }
  // Gone (EHOSTUNREACH) or not reading (its queue is at the high-water mark). Clients bound what
  // they have in flight well below the HWM, so a full queue means a stuck client: drop it.
  const std::string identity = client.identity;
  drop_client(identity, "unreachable");
}

bool BrokerCore::send_to_worker(WorkerState& worker, std::vector<zmq::message_t>& frames) {
  if (!out_.send(Side::kWorker, worker.identity, frames)) return false;
  worker.last_sent = now_;
  return true;
}

proto::StatusReply BrokerCore::status_reply() const {
  proto::StatusReply reply;
  const auto now = now_;
  const auto clamp_ms = [](std::chrono::milliseconds ms) {
    return static_cast<std::uint32_t>(std::min<std::int64_t>(ms.count(), UINT32_MAX));
  };
  for (const auto& [id, worker] : workers_by_id_) {
    // Only the public half of each id (what logs show): the whole id is what a supervisor proves
    // its exit reports with and a process its registration, so status must not hand it out.
    reply.workers.push_back({worker.host, worker.pid, static_cast<std::uint32_t>(worker.tickets.size()),
                             worker.chunks_done, detail::public_id(worker.instance),
                             detail::public_id(worker.supervisor), worker.tasks,
                             worker.chunks_failed, clamp_ms(since(worker.last_heard, now)), worker.credit});
  }
  for (const auto& [id, client] : clients_by_id_) {
    for (const auto& [job, record] : client.job_records) {
      proto::JobInfo& info = reply.jobs.emplace_back();
      info.client_host = client.host;
      info.client_pid = client.pid;
      info.job = job;
      info.task = record.task;
      info.items_total = record.items_total;
      info.items_done = record.items_done;
      info.age_ms = clamp_ms(since(record.started, now));
      const auto live = client.jobs.find(job);
      if (live == client.jobs.end()) continue;
      for (const std::uint64_t ticket : live->second) {
        const auto chunk = chunks_.find(ticket);
        if (chunk == chunks_.end()) continue;
        if (chunk->second.worker.empty()) {
          ++info.chunks_queued;
        } else {
          ++info.chunks_in_flight;
          info.items_done += chunk->second.items_reported;
        }
      }
    }
  }
  std::sort(reply.jobs.begin(), reply.jobs.end(), [](const auto& a, const auto& b) { return a.age_ms > b.age_ms; });
  if (reply.jobs.size() > proto::kMaxStatusJobs) reply.jobs.resize(proto::kMaxStatusJobs);
  for (const auto& [ticket, chunk] : chunks_) {
    if (!chunk.worker.empty()) ++reply.chunks_in_flight;
  }
  std::sort(reply.workers.begin(), reply.workers.end(),
            [](const auto& a, const auto& b) {
              return std::tie(a.host, a.pid, a.instance) < std::tie(b.host, b.pid, b.instance);
            });
  reply.clients = static_cast<std::uint32_t>(clients_by_id_.size());
  reply.chunks_queued = chunks_.size() - reply.chunks_in_flight;
  reply.chunks_done = chunks_done_;
  reply.chunks_failed = chunks_failed_;
  reply.chunks_redispatched = chunks_redispatched_;
  reply.bad_messages = bad_messages_;
  reply.context_bytes_received = context_bytes_received_;
  reply.context_bytes_sent = context_bytes_sent_;
  for (const auto& [id, client] : clients_by_id_) {
    reply.context_bytes_held += static_cast<std::uint64_t>(client.contexts.bytes());
  }
  reply.role = "active";
  if (pair_ != nullptr) pair_->describe(reply, now);
  return reply;
}


BrokerCore::Footprint BrokerCore::footprint() const {
  Footprint f;
  f.chunks = chunks_.size();
  f.silenced = silenced_.size();
  f.over_budget = over_budget_.size();
  f.started_due = started_due_.size();
  f.clients = clients_by_id_.size();
  f.workers = workers_by_id_.size();
  f.ready_budgets = ready_budgets_.size();
  f.proven_supervisors = proven_supervisors_.size();
  f.resent = resent_.size();
  f.adoptable = adoptable_.size();
  f.orphans = orphans_.size();
  f.held_back = held_back_.size();
  for (const auto& [id, client] : clients_by_id_) {
    f.contexts += client.contexts.held();
    f.job_records += client.job_records.size();
    f.deliveries += client.deliveries.size();
    f.refused_contexts += client.contexts.refused();
  }
  return f;
}

std::string BrokerCore::self_check() const {
  std::unordered_map<std::string, std::size_t> chunks_of;
  std::unordered_map<std::string, std::int64_t> bytes_of;
  std::map<std::pair<std::string, std::uint64_t>, std::size_t> context_users;
  std::size_t queued = 0;
  std::unordered_set<std::uint64_t> held_back;
  for (const HeldBack& held : held_back_) held_back.insert(held.ticket);
  for (const auto& [ticket, chunk] : chunks_) {
    const auto client = clients_by_id_.find(chunk.client);
    if (client == clients_by_id_.end()) return "chunk " + std::to_string(ticket) + " belongs to no client";
    const auto job = client->second.jobs.find(chunk.header.job);
    if (job == client->second.jobs.end() || !job->second.contains(ticket)) {
      return "chunk " + std::to_string(ticket) + " is not in its client's job";
    }
    ++chunks_of[chunk.client];
    bytes_of[chunk.client] += static_cast<std::int64_t>(chunk.payload.size());
    if (chunk.header.context_hash != 0) ++context_users[{chunk.client, chunk.header.context_hash}];
    if (chunk.worker.empty()) {
      if (!held_back.contains(ticket) || scheduler_.is_queued(ticket)) ++queued;
      continue;
    }
    const auto worker = workers_by_id_.find(chunk.worker);
    if (worker == workers_by_id_.end() || !worker->second.tickets.contains(ticket)) {
      return "chunk " + std::to_string(ticket) + " is held by a worker that does not hold it";
    }
  }
  for (const auto& [id, client] : clients_by_id_) {
    std::size_t in_jobs = 0;
    for (const auto& [job, tickets] : client.jobs) in_jobs += tickets.size();
    if (client.chunks != chunks_of[id] || in_jobs != chunks_of[id] || client.chunk_bytes != bytes_of[id]) {
      return "client " + printable_identity(id) + " counts " + std::to_string(client.chunks) + " chunks (" +
             std::to_string(in_jobs) + " in jobs, " + std::to_string(client.chunk_bytes) + " bytes); the ledger has " +
             std::to_string(chunks_of[id]) + " (" + std::to_string(bytes_of[id]) + " bytes)";
    }
    std::int64_t context_bytes = 0;
    std::string wrong;
    client.contexts.for_each([&](std::uint64_t hash, std::size_t users, std::size_t bytes) {
      context_bytes += static_cast<std::int64_t>(bytes);
      const auto named = context_users.find({id, hash});
      if (users != (named == context_users.end() ? 0 : named->second) && wrong.empty()) {
        wrong = "context " + std::to_string(hash) + " counts " + std::to_string(users) + " users";
      }
    });
    if (!wrong.empty()) return wrong;
    if (context_bytes != client.contexts.bytes()) return "client " + printable_identity(id) + " miscounts its context bytes";
    if (client.chunks > options_.max_client_chunks || client.chunk_bytes > options_.max_client_bytes ||
        client.contexts.held() > options_.max_client_contexts ||
        client.contexts.bytes() > options_.max_client_context_bytes) {
      return "client " + printable_identity(id) + " holds more than its quotas (" + std::to_string(client.chunks) +
             " chunks, " + std::to_string(client.contexts.held()) + " contexts)";
    }
  }
  if (queued != scheduler_.queued()) {
    return std::to_string(queued) + " chunks wait for a worker, the scheduler has " + std::to_string(scheduler_.queued());
  }
  return "";
}

const std::vector<proto::TaskInfo>* BrokerCore::tasks_of(const std::string& worker_identity) const {
  const auto worker = workers_by_id_.find(worker_identity);
  return worker == workers_by_id_.end() ? nullptr : &worker->second.tasks;
}
}  // namespace poolmap::detail
