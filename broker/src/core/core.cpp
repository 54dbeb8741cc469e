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

void BrokerCore::note_event(std::uint8_t kind, const Chunk& chunk, const proto::Outcome* outcome,
                            const std::string& message, const WorkerState* ran_it) {
  constexpr std::size_t kMessageBytes = 1000;
  Event& event = events_.emplace_back();
  event.when = now_;
  proto::EventInfo& info = event.info;
  info.kind = kind;
  info.task = printable(chunk.header.task);
  if (const auto client = clients_by_id_.find(chunk.client); client != clients_by_id_.end()) {
    info.client_host = client->second.host;
    info.client_pid = client->second.pid;
  }
  info.job = record_key(chunk.header);
  info.item = chunk.header.first_index;
  info.items = chunk.header.count;
  info.attempt = chunk.attempt;
  info.message = printable(message, kMessageBytes);
  if (kind == proto::kEventFailed) {
    if (const auto client = clients_by_id_.find(chunk.client); client != clients_by_id_.end()) {
      const auto record = client->second.job_records.find(record_key(chunk.header));
      if (record != client->second.job_records.end()) record->second.items_failed += chunk.header.count;
    }
  }
  if (outcome != nullptr) {
    if (outcome->code == ErrorCode::kTaskFailed && outcome->failed_offset < chunk.header.count) {
      info.item += outcome->failed_offset;
    }
    info.error = outcome->error_type.empty() ? std::string(poolmap::to_string(outcome->code)) : printable(outcome->error_type);
    info.worker_host = printable(outcome->worker_host);
    info.worker_pid = outcome->worker_pid;
  }
  if (ran_it != nullptr) {
    info.worker_host = ran_it->host;
    info.worker_pid = ran_it->pid;
  }
  if (events_.size() > proto::kMaxStatusEvents) events_.pop_front();
}

proto::StatusReply BrokerCore::status_reply() const {
  proto::StatusReply reply;
  const auto now = now_;
  const auto clamp_ms = [](std::chrono::milliseconds ms) {
    return static_cast<std::uint32_t>(std::min<std::int64_t>(ms.count(), UINT32_MAX));
  };
  // Per task name and signature: the workers that offer it, and those of them with room for a chunk.
  struct Offered {
    std::uint32_t workers = 0;
    std::uint32_t with_room = 0;
  };
  std::unordered_map<std::string, Offered> offered;      // name '\0' signature
  std::unordered_map<std::string, std::uint32_t> named;  // by name alone
  for (const auto& [id, worker] : workers_by_id_) {
    // Only the public half of each id (what logs show): the whole id is what a supervisor proves
    // its exit reports with and a process its registration, so status must not hand it out.
    proto::WorkerInfo& info = reply.workers.emplace_back();
    info.host = worker.host;
    info.pid = worker.pid;
    info.in_flight = static_cast<std::uint32_t>(worker.tickets.size());
    info.chunks_done = worker.chunks_done;
    info.instance = detail::public_id(worker.instance);
    info.supervisor = detail::public_id(worker.supervisor);
    info.tasks = worker.tasks;
    info.chunks_failed = worker.chunks_failed;
    info.last_seen_ms = clamp_ms(since(worker.last_heard, now));
    info.credit = worker.credit;
    for (const std::uint64_t ticket : worker.dispatch_order) {  // the oldest it holds runs
      if (!worker.tickets.contains(ticket)) continue;
      const auto chunk = chunks_.find(ticket);
      if (chunk == chunks_.end()) break;  // cancelled while running: it runs nothing of ours
      info.running_task = printable(chunk->second.header.task);
      info.running_job = record_key(chunk->second.header);
      info.running_first_index = chunk->second.header.first_index;
      info.running_items = chunk->second.header.count;
      info.running_ms = clamp_ms(since(worker.running_since, now));
      break;
    }
    const bool room = worker.tickets.size() < worker.credit;
    for (const proto::TaskInfo& task : worker.tasks) {
      Offered& entry = offered[task.name + '\0' + task.signature];
      ++entry.workers;
      if (room) ++entry.with_room;
      ++named[task.name];
    }
  }
  for (const auto& [id, client] : clients_by_id_) {
    const bool at_quota = client.refused_for_quota != Clock::time_point{} && now - client.refused_for_quota < expiry();
    for (const auto& [key, record] : client.job_records) {
      proto::JobInfo& info = reply.jobs.emplace_back();
      info.client_host = client.host;
      info.client_pid = client.pid;
      info.job = key;
      info.task = record.task;
      info.items_total = record.items_total;
      info.items_done = record.items_done;
      info.age_ms = clamp_ms(since(record.started, now));
      info.stream = record.stream ? 1 : 0;
      info.items_failed = record.items_failed;
      std::uint64_t items_here = 0;  // in its chunks at the broker, queued or running
      for (const std::uint64_t job : record.live) {
        const auto live = client.jobs.find(job);
        if (live == client.jobs.end()) continue;
        for (const std::uint64_t ticket : live->second) {
          const auto chunk = chunks_.find(ticket);
          if (chunk == chunks_.end()) continue;
          items_here += chunk->second.header.count;
          if (chunk->second.worker.empty()) {
            ++info.chunks_queued;
          } else {
            ++info.chunks_in_flight;
            info.items_done += chunk->second.items_reported;
            items_here -= chunk->second.items_reported;
          }
        }
      }
      const auto found = offered.find(record.task + '\0' + record.signature);
      const Offered capable = found != offered.end() ? found->second : Offered{};
      if (info.chunks_queued > 0 && capable.workers == 0) {
        info.waiting = workers_by_id_.empty() ? "no worker is registered"
                       : named.contains(record.task)
                           ? "the workers that offer task " + record.task + " offer it with another signature (not " +
                                 record.signature + ")"
                           : "no worker offers task " + record.task + " (" + std::to_string(workers_by_id_.size()) +
                                 " registered)";
      } else if (info.chunks_queued > 0 && capable.with_room == 0) {
        info.waiting = "every worker that offers task " + record.task + " is busy (" + std::to_string(capable.workers) +
                       (capable.workers == 1 ? " worker)" : " workers)");
      } else if (at_quota) {
        info.waiting = client.quota_refusal;
      } else if (info.chunks_queued == 0 && capable.with_room > 0 && record.items_total != 0 &&
                 info.items_done + items_here < record.items_total) {
        info.waiting = "the client's window: " + std::to_string(info.chunks_in_flight) +
                       " chunks at the broker and workers idle; the rest wait in the client (PoolOptions::max_chunks_in_flight)";
      }
    }
  }
  std::sort(reply.jobs.begin(), reply.jobs.end(), [](const auto& a, const auto& b) { return a.age_ms > b.age_ms; });
  if (reply.jobs.size() > proto::kMaxStatusJobs) {
    reply.jobs_omitted = static_cast<std::uint32_t>(reply.jobs.size() - proto::kMaxStatusJobs);
    reply.jobs.resize(proto::kMaxStatusJobs);
  }
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
  for (auto event = events_.rbegin(); event != events_.rend(); ++event) {
    proto::EventInfo& info = reply.events.emplace_back(event->info);
    info.age_ms = clamp_ms(since(event->when, now));
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
    for (const auto& [key, record] : client.job_records) {
      for (const std::uint64_t job : record.live) {
        if (!client.jobs.contains(job)) {
          return "client " + printable_identity(id) + "'s job record " + std::to_string(key) + " counts job " +
                 std::to_string(job) + " live, which has no chunk";
        }
      }
    }
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
