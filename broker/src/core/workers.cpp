// The broker core's side of workers: READY, CREDIT, progress, goodbyes and exit reports; the worker
// registry, probation, and liveness (busy is not dead: a worker declared lost for silence that
// speaks again gets its chunks' retries back). See core.hpp.
#include <algorithm>

#include "core.hpp"
#include "log.hpp"
#include "process_info.hpp"

namespace poolmap::detail {

namespace {
using proto::Command;

// What a peer that connected to the wrong endpoint is told (the likely mistake, in its words).
constexpr std::string_view kWorkerEndpointMistake =
    "this is the poolmap broker's worker endpoint (poolmap-broker --workers, port 5556 by default); clients "
    "connect to its client endpoint (--clients, port 5555 by default)";

bool is_client_command(Command command) {
  return command == Command::kHello || command == Command::kSubmit || command == Command::kCancel ||
         command == Command::kStatusRequest || command == Command::kContext || command == Command::kReject;
}
}  // namespace

bool BrokerCore::ready_allowed(const std::string& peer) {
  const auto now = now_;
  const double rate = options_.max_ready_per_second;
  if (ready_budgets_.size() >= 65536 && !ready_budgets_.contains(peer)) ready_budgets_.clear();  // bounded
  auto [entry, added] = ready_budgets_.try_emplace(peer);
  ReadyBudget& budget = entry->second;
  if (added) {
    budget.tokens = rate;
  } else {
    budget.tokens = std::min(rate, budget.tokens + rate * std::chrono::duration<double>(now - budget.refilled).count());
  }
  budget.refilled = now;
  if (budget.tokens < 1) return false;
  budget.tokens -= 1;
  return true;
}

void BrokerCore::on_worker_message(Clock::time_point now, std::vector<zmq::message_t>& frames, const PeerFacts& facts) {
  now_ = now;
  if (frames.size() < 2) return;
  const std::string identity = wire::to_string(frames[0]);
  auto command = proto::parse_signature(wire::view(frames[1]));
  if (!command) {
    reply_error(Side::kWorker, identity, command.status());
    return;
  }
  if (command.value() == Command::kWorkerResult) {  // [signature, then (header, payload) for each result]
    if (frames.size() < 4 || frames.size() % 2 != 0 ||
        frames.size() > 2 + 2 * std::size_t{proto::kMaxChunksPerMessage}) {
      reply_error(Side::kWorker, identity,
                  Status(ErrorCode::kMalformed, "WORKER_RESULT needs a header and a payload frame for each of 1.." +
                                                    std::to_string(proto::kMaxChunksPerMessage) + " results, got " +
                                                    std::to_string(frames.size() - 2) + " frames after the signature"));
      return;
    }
    const auto known = workers_by_id_.find(identity);
    const bool was_known = known != workers_by_id_.end();
    if (was_known) known->second.last_heard = now_;
    for (std::size_t i = 2; i < frames.size(); i += 2) {
      if (!on_worker_result(identity, frames[i], frames[i + 1], facts)) break;
    }
    if (!was_known) {
      // A worker we do not know (we restarted, or we declared it lost): ask it to register again.
      ask_to_start_over(Side::kWorker, identity);
    }
    return;
  }
  if (frames.size() < 3 || frames.size() > 4) {
    reply_error(Side::kWorker, identity,
                Status(ErrorCode::kMalformed, "expected 2 or 3 frames, got " + std::to_string(frames.size() - 1)));
    return;
  }
  if (command.value() == Command::kWorkerExited) return on_worker_exited(identity, frames[2], facts);
  if (command.value() == Command::kReady) return on_ready(identity, frames[2], facts);
  const auto header = wire::view(frames[2]);

  const auto found = workers_by_id_.find(identity);
  if (found == workers_by_id_.end()) {
    if (is_client_command(command.value())) {  // a client pointed at the worker endpoint
      return reply_error(Side::kWorker, identity, Status(ErrorCode::kUnknownCommand, std::string(kWorkerEndpointMistake)));
    }
    if (command.value() != Command::kDisconnect) {
      // A worker we do not know (we restarted, or we declared it lost): ask it to register again.
      ask_to_start_over(Side::kWorker, identity);
    }
    return;
  }
  WorkerState& worker = found->second;
  worker.last_heard = now_;

  switch (command.value()) {
    case Command::kCredit: {
      auto credit = proto::decode<proto::Credit>(header);
      if (!credit) return reply_error(Side::kWorker, identity, credit.status());
      if (credit.value().credit == 0 || credit.value().credit > proto::kMaxCredit) {
        return reply_error(Side::kWorker, identity,
                           Status(ErrorCode::kMalformed, "CREDIT must be 1.." + std::to_string(proto::kMaxCredit)));
      }
      scheduler_.change_credit(worker.handle,
                               static_cast<std::int64_t>(credit.value().credit) - static_cast<std::int64_t>(worker.credit),
                               worker.tickets.empty());
      log_->debug("worker {} pid {} [{}] credit {} -> {}", worker.host, worker.pid, short_id(worker.instance),
                  worker.credit, credit.value().credit);
      worker.credit = credit.value().credit;
      return;
    }
    case Command::kWorkerProgress: {
      auto progress = proto::decode<proto::WorkerProgress>(header);
      if (!progress) return reply_error(Side::kWorker, identity, progress.status());
      const auto chunk = chunks_.find(ledger_ticket(worker, progress.value().ticket, false));
      // Only the worker that holds the chunk now speaks for it, and only forward.
      if (chunk == chunks_.end() || chunk->second.worker != identity) return;
      const std::uint32_t items = progress.value().items_done;
      if (items <= chunk->second.items_reported || items >= chunk->second.header.count) return;
      chunk->second.items_reported = items;
      const auto client = clients_by_id_.find(chunk->second.client);
      if (client == clients_by_id_.end()) return;
      auto out = wire::make(Command::kChunkProgress,
                            proto::ChunkProgress{chunk->second.header.job, chunk->second.header.chunk, items});
      send_to_client(client->second, out);
      return;
    }
    case Command::kHeartbeat:
      return;
    case Command::kDisconnect:
      lose_worker(identity, "worker said goodbye", Loss::kHandback);
      return;
    default:
      reply_error(Side::kWorker, identity,
                  Status(ErrorCode::kUnknownCommand,
                         "command " + std::to_string(static_cast<int>(command.value())) + " is not a worker command"));
  }
}

void BrokerCore::on_worker_exited(const std::string& identity, const zmq::message_t& header_frame, const PeerFacts& facts) {
  // From a supervisor, about one of its processes: faster and more precise than a heartbeat. It
  // is matched by the process's instance id, never by (host, pid), which containers repeat, and
  // taken only from the supervisor that process named when it registered.
  auto exited = proto::decode<proto::WorkerExited>(wire::view(header_frame));
  if (!exited) return reply_error(Side::kWorker, identity, exited.status());
  const auto& report = exited.value();
  const auto registered = identity_by_instance_.find(report.instance);
  if (registered == identity_by_instance_.end()) {  // lost already, said goodbye, or never registered
    blame_crash_after_loss(report, facts.key());
    return;
  }
  WorkerState& worker = workers_by_id_.at(registered->second);
  if (report.supervisor == 0 || worker.supervisor != report.supervisor || worker.key != facts.key()) {
    ++bad_messages_;
    log_->warn("ignored an exit report for worker {} pid {} [{}] from a peer that is not its supervisor", worker.host,
               worker.pid, short_id(worker.instance));
    return;
  }
  lose_worker(registered->second, "worker process " + printable(report.cause, 128),
              report.crashed ? Loss::kCrash : Loss::kLost, ledger_ticket(worker, report.running_ticket, false));
  return;
}

void BrokerCore::on_ready(const std::string& identity, const zmq::message_t& header_frame, const PeerFacts& facts) {
  auto ready = proto::decode<proto::Ready>(wire::view(header_frame));
  const auto now = now_;
  if (!ready) return reply_error(Side::kWorker, identity, ready.status());
  if (ready.value().credit == 0 || ready.value().credit > proto::kMaxCredit) {
    return reply_error(Side::kWorker, identity,
                       Status(ErrorCode::kMalformed, "READY credit must be 1.." + std::to_string(proto::kMaxCredit)));
  }
  if (ready.value().instance == 0 || ready.value().tasks.size() > proto::kMaxTasksPerWorker ||
      ready.value().held.size() > proto::kMaxCredit) {
    return reply_error(Side::kWorker, identity,
                       Status(ErrorCode::kMalformed, "READY needs an instance id, at most " +
                                                         std::to_string(proto::kMaxTasksPerWorker) + " tasks and at most " +
                                                         std::to_string(proto::kMaxCredit) + " held chunks"));
  }
  const std::uint64_t instance = ready.value().instance;
  const std::uint32_t generation = ready.value().generation;
  // A process registers again on a new connection when it thought we were gone. Its READY from
  // an older connection can arrive after the newer one (ZeroMQ orders messages per connection
  // only): that one is stale, and its connection is closed.
  const auto earlier = identity_by_instance_.find(instance);
  const auto silent = silenced_.find(instance);
  if ((earlier != identity_by_instance_.end() && earlier->second != identity &&
       workers_by_id_.at(earlier->second).generation >= generation) ||
      (silent != silenced_.end() && silent->second.generation >= generation)) {
    log_->debug("ignored a stale READY (connection {}) from worker [{}]", generation, short_id(instance));
    return;
  }
  if (const std::string key = facts.key(), peer = key.empty() ? facts.address() : "key " + key;
      !ready_allowed(peer)) {
    return refuse_peer(Side::kWorker, identity,
                       "too many registrations from " + printable(peer, 64) + " (more than " +
                           std::to_string(options_.max_ready_per_second) +
                           " per second, --max-ready-per-second); try again later");
  }
  if (!workers_by_id_.contains(identity) && !identity_by_instance_.contains(instance) &&
      workers_by_id_.size() >= options_.max_workers) {
    return refuse_peer(Side::kWorker, identity,
                       "the broker has its maximum of " + std::to_string(options_.max_workers) +
                           " workers registered (--max-workers)");
  }
  if (workers_by_id_.contains(identity)) lose_worker(identity, "registered again", Loss::kLost);
  if (const auto older = identity_by_instance_.find(instance); older != identity_by_instance_.end()) {
    // The same process on a new connection: its old registration's chunks go back without
    // penalty; the one it is running may still answer (late result).
    lose_worker(older->second, "registered again on a new connection", Loss::kHandback);
  }
  refund(instance, "registered again");
  WorkerState& worker = workers_by_id_.try_emplace(identity, &node_pool_).first->second;
  worker.identity = identity;
  worker.host = printable(ready.value().host);
  worker.key = facts.key();
  worker.pid = ready.value().pid;
  worker.instance = instance;
  worker.supervisor = ready.value().supervisor;
  worker.generation = generation;
  for (const auto& task : ready.value().tasks) {  // shown by `poolmap status`: printable and short
    worker.tasks.push_back({printable(task.name, 256), printable(task.signature, 256)});
  }
  worker.last_heard = now;
  worker.last_sent = now;
  worker.link = facts.link();
  // On probation until it answers a chunk: one chunk at a time, and only what the proven
  // workers have no credit for (a stream of peers that register, take chunks and vanish must
  // not starve the clients); its losses spend no chunk's retries.
  const auto vouched = proven_supervisors_.find(worker.supervisor);
  const bool on_probation =
      worker.supervisor == 0 || vouched == proven_supervisors_.end() || vouched->second != worker.key;
  worker.handle = scheduler_.add_worker(ready.value().credit, ready.value().tasks, now, on_probation);
  worker.credit = ready.value().credit;
  identity_by_handle_[worker.handle] = identity;
  identity_by_instance_[instance] = identity;
  log_->info("worker {} pid {} [{}]{} ready (credit {}, {} tasks, {} workers)", worker.host, worker.pid,
             short_id(instance), worker.key.empty() ? "" : " (key " + worker.key + ")",
             ready.value().credit, worker.tasks.size(), workers_by_id_.size());
  announce_workers();
  adopt_held(worker, ready.value().held);
  return;
}

void BrokerCore::prove(WorkerState& worker) {
  if (!scheduler_.on_probation(worker.handle)) return;
  scheduler_.prove(worker.handle, worker.tickets.empty());
  if (worker.supervisor == 0) return;
  if (proven_supervisors_.size() >= 65536) proven_supervisors_.clear();  // bounded; they prove themselves again
  proven_supervisors_.try_emplace(worker.supervisor, worker.key);
  for (auto& [id, sibling] : workers_by_id_) {
    if (sibling.supervisor == worker.supervisor && sibling.key == worker.key) {
      scheduler_.prove(sibling.handle, sibling.tickets.empty());
    }
  }
}

std::size_t BrokerCore::give_back_retries(const SilentLoss& silent) {
  if (!silent.counted) return 0;  // its loss spent no retries (it was on probation)
  std::size_t given = 0;
  for (const std::uint64_t ticket : silent.tickets) {
    const auto chunk = chunks_.find(ticket);
    if (chunk == chunks_.end() || chunk->second.retries == 0) continue;
    --chunk->second.retries;
    ++given;
    if (chunk->second.retries <= static_cast<std::uint32_t>(options_.max_retries)) over_budget_.erase(ticket);
  }
  return given;
}

void BrokerCore::refund(std::uint64_t instance, const char* how) {
  const auto found = silenced_.find(instance);
  if (found == silenced_.end()) return;
  const std::size_t refunded = give_back_retries(found->second);
  log_->info("worker {} pid {} [{}] {} {} ms after it was declared lost: busy, not dead; {} chunks get their retry back",
             found->second.host, found->second.pid, short_id(instance), how,
             since(found->second.when, now_).count(), refunded);
  silenced_.erase(found);
}

void BrokerCore::blame_crash_after_loss(const proto::WorkerExited& report, const std::string& key) {
  const auto found = silenced_.find(report.instance);
  if (found == silenced_.end()) return;
  const SilentLoss& silent = found->second;
  if (report.supervisor == 0 || silent.supervisor != report.supervisor || silent.key != key) {
    ++bad_messages_;
    log_->warn("ignored an exit report for worker {} pid {} [{}] from a peer that is not its supervisor", silent.host,
               silent.pid, short_id(report.instance));
    return;
  }
  // It crashed: its loss was not a silent one after all. The chunks it held get back the retry that
  // loss cost them (those it had prefetched are not to blame, as when the report comes first), and
  // the one it was running is blamed for the crash instead (found by the simulator: a chunk
  // prefetched by processes that other chunks crashed failed for lost retries).
  give_back_retries(silent);
  const auto chunk = chunks_.find(report.running_ticket);
  const bool held = std::find(silent.tickets.begin(), silent.tickets.end(), report.running_ticket) != silent.tickets.end();
  if (report.crashed && report.running_ticket != 0 && held && chunk != chunks_.end()) {
    Chunk& blamed = chunk->second;
    // Its attempt on that worker counted as a silent loss: it was a crash.
    const std::string on = " (worker " + silent.host + " pid " + std::to_string(silent.pid) + " [" +
                           short_id(report.instance) + "])";
    for (auto& cause : blamed.lost_causes) {
      if (cause.ends_with(on)) {
        cause = "worker process " + printable(report.cause, 128) + on;
        break;
      }
    }
    ++blamed.kills;
    log_->info("worker {} pid {} [{}], declared lost, had crashed: chunk {} of job {} is blamed ({} of {} kills)",
               silent.host, silent.pid, short_id(report.instance), blamed.header.chunk, blamed.header.job,
               blamed.kills, options_.poison_kills);
    if (blamed.kills >= static_cast<std::uint32_t>(options_.poison_kills)) {
      // Queued again or running elsewhere: dropped either way, as a cancelled chunk is.
      fail_chunk(report.running_ticket, "killed " + std::to_string(blamed.kills) + " worker processes");
    }
  }
  silenced_.erase(found);  // dead: it will not speak again
}

void BrokerCore::lose_worker(std::string identity, const std::string& cause, Loss loss, std::uint64_t running) {
  const auto found = workers_by_id_.find(identity);
  if (found == workers_by_id_.end()) return;
  WorkerState worker = std::move(found->second);
  workers_by_id_.erase(found);
  const auto now = now_;
  // A worker that never answered a chunk spends no chunk's retries by vanishing or lying (a crash
  // its supervisor reports is still blamed, and counts towards --poison-kills).
  const bool proven = !scheduler_.on_probation(worker.handle);
  scheduler_.remove_worker(worker.handle, now);
  identity_by_handle_.erase(worker.handle);
  if (const auto by_instance = identity_by_instance_.find(worker.instance);
      by_instance != identity_by_instance_.end() && by_instance->second == identity) {
    identity_by_instance_.erase(by_instance);
  }
  const std::string id = short_id(worker.instance);
  if (loss == Loss::kHandback) {
    log_->info("worker left host={} pid={} id={} chunks handed back={} ({}; {} workers)", worker.host, worker.pid, id,
               worker.tickets.size(), cause, workers_by_id_.size());
  } else {
    log_->warn("worker lost host={} pid={} id={} chunks={} cause={} ({} workers)", worker.host, worker.pid, id,
               worker.tickets.size(), cause, workers_by_id_.size());
  }
  if (loss == Loss::kLost) {
    // If it speaks again it was busy, not dead, and these chunks get their retry back.
    SilentLoss& silent = silenced_[worker.instance];
    silent.when = now;
    silent.host = worker.host;
    silent.pid = worker.pid;
    silent.generation = worker.generation;
    silent.supervisor = worker.supervisor;
    silent.key = worker.key;
    silent.identity = identity;
    silent.tickets.assign(worker.tickets.begin(), worker.tickets.end());
    silent.counted = proven;
  }
  const std::string described =
      cause + " (worker " + worker.host + " pid " + std::to_string(worker.pid) + " [" + id + "])";
  // A crash is blamed on the chunk its supervisor saw running, and on no other: the chunks
  // prefetched beside it go back without penalty.
  // A ticket appears in dispatch_order once per time it was sent: a chunk answered kContextMissing
  // or handed back may go to the same worker again. Each chunk goes back once (found by the
  // simulator: a crash counted twice against --poison-kills, and the chunk queued twice).
  for (const std::uint64_t ticket : worker.dispatch_order) {
    if (worker.tickets.erase(ticket) == 0) continue;
    const bool blamed = loss == Loss::kCrash && running != 0 && running == ticket;
    const bool counted = proven && (loss == Loss::kLost || loss == Loss::kBroken);
    requeue(ticket, blamed ? described : (loss == Loss::kCrash ? "prefetched by a crashed " + described : described),
            blamed, counted, &worker);
  }
  announce_workers();
}

void BrokerCore::flush_announcement() {
  // Clients size their chunks by the worker count: tell them when it changed. Once per turn of
  // the loop: workers that register and vanish by the thousand must not cost a message to every
  // client each time.
  if (!announcement_pending_) return;
  announcement_pending_ = false;
  std::vector<std::string> unreachable;
  for (auto& [id, client] : clients_by_id_) {
    auto frames = wire::make(Command::kWelcome, proto::Welcome{worker_count(), static_cast<std::uint32_t>(
                                                                                   options_.heartbeat_interval.count())});
    if (out_.send(Side::kClient, id, frames)) {
      client.last_sent = now_;
    } else {
      unreachable.push_back(id);
    }
  }
  for (const auto& id : unreachable) drop_client(id, "unreachable");
}

void BrokerCore::check_worker_liveness() {
  const auto now = now_;
  std::vector<std::pair<std::string, std::string>> lost;  // identity, cause
  for (auto& [id, worker] : workers_by_id_) {
    if (now - worker.last_heard > expiry() && !receiving(worker.link)) {
      lost.emplace_back(id, "no heartbeat for " + std::to_string(since(worker.last_heard, now).count()) + " ms");
    } else if (now - worker.last_sent >= options_.heartbeat_interval) {
      auto frames = wire::make_empty(Command::kHeartbeat);
      if (!send_to_worker(worker, frames)) lost.emplace_back(id, "unreachable (its connection is gone)");
    }
  }
  for (const auto& [id, cause] : lost) lose_worker(id, cause, Loss::kLost);
}

}  // namespace poolmap::detail
