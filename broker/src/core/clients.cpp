// The broker core's side of clients: HELLO, SUBMIT, CONTEXT, CANCEL, REJECT, STATUS, heartbeats and
// goodbyes; per-client quotas, broadcast contexts and job records; results gathered per client and
// sent once per pass. See core.hpp.
#include <algorithm>

#include "core.hpp"
#include "log.hpp"
#include "process_info.hpp"

namespace poolmap::detail {

namespace {
using proto::Command;

// What a peer that connected to the wrong endpoint is told (the likely mistake, in its words).
constexpr std::string_view kClientEndpointMistake =
    "this is the poolmap broker's client endpoint (poolmap-broker --clients, port 5555 by default); workers "
    "connect to its worker endpoint (--workers, port 5556 by default)";
}  // namespace

BrokerCore::ClientState& BrokerCore::touch_client(const std::string& identity) {
  auto [it, inserted] = clients_by_id_.try_emplace(
      identity, &node_pool_, ClientContexts::Quota{options_.max_client_contexts, options_.max_client_context_bytes});
  ClientState& client = it->second;
  const auto now = now_;
  if (inserted) {
    client.identity = identity;
    client.last_sent = now;
    log_->debug("client {} connected", printable_identity(identity));
  }
  client.last_heard = now;
  return client;
}

std::optional<Status> BrokerCore::over_quota(const ClientState& client, std::uint64_t job, std::int64_t bytes) const {
  if (bytes > options_.max_client_bytes) {
    return Status(ErrorCode::kInvalidArgument, "a chunk of " + std::to_string(bytes) +
                                                   " bytes is larger than the broker's per-client quota of " +
                                                   std::to_string(options_.max_client_bytes) +
                                                   " bytes (--max-client-bytes); use a smaller chunksize");
  }
  std::string what;
  if (client.chunks >= options_.max_client_chunks) {
    what = std::to_string(client.chunks) + " chunks (--max-client-chunks " + std::to_string(options_.max_client_chunks) + ")";
  } else if (client.chunk_bytes + bytes > options_.max_client_bytes) {
    what = std::to_string(client.chunk_bytes) + " bytes of chunks (--max-client-bytes " +
           std::to_string(options_.max_client_bytes) + ")";
  } else if (!client.jobs.contains(job) && client.jobs.size() >= options_.max_client_jobs) {
    what = std::to_string(client.jobs.size()) + " jobs (--max-client-jobs " + std::to_string(options_.max_client_jobs) + ")";
  } else {
    return std::nullopt;
  }
  return Status(ErrorCode::kResourceExhausted, "client " + client.host + " pid " + std::to_string(client.pid) +
                                                   " holds its quota at the broker, " + what +
                                                   "; send it again when earlier chunks are answered");
}

void BrokerCore::note_job(ClientState& client, const proto::Submit& submit) {
  auto [record, added] = client.job_records.try_emplace(record_key(submit));
  record->second.live.insert(submit.job);
  if (!added) return;
  record->second.task = printable(submit.task);
  record->second.signature = printable(submit.signature);
  record->second.stream = submit.stream != 0;
  record->second.items_total = submit.stream != 0 ? 0 : submit.job_items;
  record->second.started = record->second.idle_since = now_;
  // Records outlive their tickets by a liveness period; a client that starts jobs very fast must
  // not make that unbounded.
  if (client.job_records.size() > 2 * options_.max_client_jobs) {
    std::erase_if(client.job_records, [&](const auto& entry) { return entry.second.live.empty(); });
  }
}

void BrokerCore::job_gone(ClientState& client, std::uint64_t key, std::uint64_t job) {
  const auto record = client.job_records.find(key);
  if (record == client.job_records.end()) return;
  record->second.live.erase(job);
  if (record->second.live.empty()) record->second.idle_since = now_;
}

void BrokerCore::keep_context(ClientState& client, std::uint64_t hash, zmq::message_t& payload) {
  const std::size_t bytes = payload.size();
  const auto state = client.contexts.keep(hash, payload, now_);
  if (state == ClientContexts::State::kHeld) return;
  log_->log(state == ClientContexts::State::kRefusedForEver ? spdlog::level::warn : spdlog::level::debug,
            "client {} pid {}: not keeping a broadcast context of {} bytes ({} contexts, {} bytes held; quota {} "
            "contexts, {} bytes)",
            client.host, client.pid, bytes, client.contexts.held(), client.contexts.bytes(), options_.max_client_contexts,
            options_.max_client_context_bytes);
}

void BrokerCore::on_client_message(Clock::time_point now, std::vector<zmq::message_t>& frames, const PeerFacts& facts) {
  now_ = now;
  if (frames.size() < 2) return;  // nothing but an identity: cannot even answer
  const std::string identity = wire::to_string(frames[0]);
  auto command = proto::parse_signature(wire::view(frames[1]));
  if (!command) {
    reply_error(Side::kClient, identity, command.status());
    return;
  }
  if (command.value() == Command::kSubmit) {  // [signature, then (header, payload) for each chunk]
    if (frames.size() < 4 || frames.size() % 2 != 0 ||
        frames.size() > 2 + 2 * std::size_t{proto::kMaxChunksPerMessage}) {
      reply_error(Side::kClient, identity,
                  Status(ErrorCode::kMalformed, "SUBMIT needs a header and a payload frame for each of 1.." +
                                                    std::to_string(proto::kMaxChunksPerMessage) + " chunks, got " +
                                                    std::to_string(frames.size() - 2) + " frames after the signature"));
      return;
    }
    for (std::size_t i = 2; i < frames.size(); i += 2) {
      if (!on_submit(identity, frames[i], frames[i + 1])) break;
    }
    return;
  }
  if (frames.size() < 3 || frames.size() > 4) {
    reply_error(Side::kClient, identity,
                Status(ErrorCode::kMalformed, "expected 2 or 3 frames, got " + std::to_string(frames.size() - 1)));
    return;
  }
  const auto header = wire::view(frames[2]);
  // A client we do not know (we restarted, or dropped it as silent) must say HELLO first: its work
  // is not here, and after our WELCOME it resends every chunk not yet answered.
  auto unknown_client = [&] {
    if (clients_by_id_.contains(identity)) return false;
    ask_to_start_over(Side::kClient, identity);
    return true;
  };
  switch (command.value()) {
    case Command::kHello: {
      auto hello = proto::decode<proto::Hello>(header);
      if (!hello) return reply_error(Side::kClient, identity, hello.status());
      if (!clients_by_id_.contains(identity) && clients_by_id_.size() >= options_.max_clients) {
        return refuse_peer(Side::kClient, identity,
                           "the broker serves its maximum of " + std::to_string(options_.max_clients) +
                               " clients (--max-clients)");
      }
      ClientState& client = touch_client(identity);
      client.host = printable(hello.value().client_host);
      client.pid = hello.value().client_pid;
      client.session = hello.value().session;
      client.hold_resent_until = now_ + 2 * options_.heartbeat_interval;
      workers_expected_ = std::max<std::size_t>(workers_expected_, hello.value().workers_seen);
      client.key = facts.key();
      client.link = facts.link();
      log_->info("client {} pid {}{} said hello", client.host, client.pid,
                 client.key.empty() ? "" : " (key " + client.key + ")");
      auto reply = wire::make(Command::kWelcome,
                              proto::Welcome{worker_count(), static_cast<std::uint32_t>(options_.heartbeat_interval.count())});
      send_to_client(client, reply);
      return;
    }
    case Command::kContext: {
      if (frames.size() != 4) {
        return reply_error(Side::kClient, identity, Status(ErrorCode::kMalformed, "CONTEXT without a payload frame"));
      }
      auto context = proto::decode<proto::ContextHeader>(header);
      if (!context) return reply_error(Side::kClient, identity, context.status());
      if (unknown_client()) return;
      ClientState& client = touch_client(identity);
      context_bytes_received_ += frames[3].size();
      metrics_.bytes_received(frames[3].size());
      keep_context(client, context.value().hash, frames[3]);
      return;
    }
    case Command::kReject: {
      auto reject = proto::decode<proto::Reject>(header);
      if (!reject) return reply_error(Side::kClient, identity, reject.status());
      if (unknown_client()) return;
      on_reject(touch_client(identity), reject.value());
      return;
    }
    case Command::kCancel: {
      auto cancel = proto::decode<proto::Cancel>(header);
      if (!cancel) return reply_error(Side::kClient, identity, cancel.status());
      if (unknown_client()) return;
      on_cancel(touch_client(identity), cancel.value().job);
      return;
    }
    case Command::kStatusRequest: {
      auto reply = wire::make(Command::kStatusReply, status_reply());
      const auto known = clients_by_id_.find(identity);
      if (known == clients_by_id_.end()) {  // answered, but a peer that never said HELLO leaves no state
        (void)out_.send(Side::kClient, identity, reply);
        return;
      }
      touch_client(identity);
      send_to_client(known->second, reply);
      return;
    }
    case Command::kHeartbeat:
      if (unknown_client()) return;
      touch_client(identity);
      return;
    case Command::kDisconnect:
      drop_client(identity, "said goodbye");
      return;
    case Command::kReady:
    case Command::kWorkerResult:
    case Command::kWorkerExited:
    case Command::kWorkerProgress:
    case Command::kCredit:
      reply_error(Side::kClient, identity,
                  Status(ErrorCode::kUnknownCommand, std::string(kClientEndpointMistake)));
      return;
    default:
      reply_error(Side::kClient, identity,
                  Status(ErrorCode::kUnknownCommand,
                         "command " + std::to_string(static_cast<int>(command.value())) + " is not a client command"));
  }
}

bool BrokerCore::on_submit(const std::string& identity, const zmq::message_t& header_frame, zmq::message_t& payload) {
  auto submit = proto::decode<proto::Submit>(wire::view(header_frame));
  if (!submit) {
    reply_error(Side::kClient, identity, submit.status());
    return false;
  }
  if (submit.value().count == 0) {
    reply_error(Side::kClient, identity, Status(ErrorCode::kMalformed, "SUBMIT with zero items"));
    return false;
  }
  if (!clients_by_id_.contains(identity)) {  // say HELLO first (see on_client_message)
    ask_to_start_over(Side::kClient, identity);
    return false;
  }
  ClientState& client = touch_client(identity);
  if (draining_) return false;  // draining: the client resends it to the next broker
  const std::uint64_t hash = submit.value().context_hash;
  const auto context = hash == 0 ? ClientContexts::State::kHeld : client.contexts.state(hash);
  const bool context_missing = context != ClientContexts::State::kHeld;
  const auto over = over_quota(client, submit.value().job, static_cast<std::int64_t>(payload.size()));
  if (hash != 0 && !context_missing && !over) client.contexts.use(hash);
  const std::uint64_t ticket = next_ticket_++;
  const auto kind = scheduler_.kind(submit.value().task, submit.value().signature);
  client.jobs[submit.value().job].insert(ticket);
  note_job(client, submit.value());
  Chunk& chunk = chunks_[ticket];
  chunk.client = identity;
  chunk.session = client.session;
  chunk.received = now_;
  metrics_.bytes_received(payload.size());
  chunk.header = std::move(submit.value());
  chunk.payload = std::move(payload);
  chunk.kind = kind;
  ++client.chunks;
  client.chunk_bytes += static_cast<std::int64_t>(chunk.payload.size());
  if (context_missing || over) chunk.header.context_hash = 0;  // holds no reference
  if (over) {
    if (over->code() == ErrorCode::kResourceExhausted) {
      client.refused_for_quota = now_;
      client.quota_refusal = over->message();
    }
    answer_with_error(ticket, over->code(), over->message());
    return true;
  }
  if (context_missing) {
    if (context == ClientContexts::State::kRefusedForEver) {
      answer_with_error(ticket, ErrorCode::kInvalidArgument,
                        "the broadcast context is larger than the broker's per-client quota of " +
                            std::to_string(options_.max_client_context_bytes) + " bytes (--max-client-context-bytes)");
      return true;
    }
    if (context == ClientContexts::State::kRefusedForNow) {
      client.refused_for_quota = now_;
      client.quota_refusal = "client " + client.host + " pid " + std::to_string(client.pid) +
                             " holds its quota of broadcast contexts at the broker (" +
                             std::to_string(client.contexts.held()) + " contexts, " +
                             std::to_string(client.contexts.bytes()) +
                             " bytes; --max-client-contexts, --max-client-context-bytes); "
                             "send it again when earlier work is answered";
      answer_with_error(ticket, ErrorCode::kResourceExhausted, client.quota_refusal);
      return true;
    }
    // Never sent, or freed after it went unused: the client sends it again.
    answer_with_error(ticket, ErrorCode::kContextMissing,
                      "the broker does not hold context " + std::to_string(hash) + "; send it again");
    return true;
  }
  const auto runnable = scheduler_.runnable(kind, now_);
  switch (runnable.verdict) {
    case Scheduler::Verdict::kUnknownTask:
      answer_with_error(ticket, ErrorCode::kUnknownTask, runnable.message);
      return true;
    case Scheduler::Verdict::kSignatureMismatch:
      answer_with_error(ticket, ErrorCode::kSignatureMismatch, runnable.message);
      return true;
    case Scheduler::Verdict::kRunnable:
    case Scheduler::Verdict::kWait:
      place_chunk(ticket);
      return true;
  }
  return true;
}

void BrokerCore::on_reject(ClientState& client, const proto::Reject& reject) {
  // Only a delivery to this client, that this broker made: a client can drop the worker that lied
  // to it, not any worker it names. One not rejected yet: a chunk the client sent again after a
  // REJECT starts at attempt 1 again, so its new delivery has the numbers of the rejected one
  // (found by the simulator: the second liar was never dropped, and the job counted its items twice).
  auto delivery = std::find_if(client.deliveries.begin(), client.deliveries.end(), [&](const auto& d) {
    return d.job == reject.job && d.chunk == reject.chunk && d.attempt == reject.attempt && d.instance != 0;
  });
  if (delivery == client.deliveries.end()) {
    delivery = std::find_if(client.deliveries.begin(), client.deliveries.end(), [&](const auto& d) {
      return d.job == reject.job && d.chunk == reject.chunk && d.attempt == reject.attempt;
    });
  }
  if (delivery == client.deliveries.end()) {
    log_->info("client {} pid {} could not decode chunk {} of job {} (attempt {}), answered before this broker's "
               "memory of deliveries: {}",
               client.host, client.pid, reject.chunk, reject.job, reject.attempt, printable(reject.reason, 256));
    return;
  }
  const std::uint64_t instance = delivery->instance;
  delivery->instance = 0;  // one REJECT per delivery
  if (instance != 0) {
    // Not done after all: the client sends the chunk again, and its answer counts then.
    const auto record = client.job_records.find(delivery->record);
    if (record != client.job_records.end()) {
      record->second.items_done -= std::min<std::uint64_t>(record->second.items_done, delivery->items);
    }
  }
  ++bad_messages_;
  const std::string why = "returned results for chunk " + std::to_string(reject.chunk) + " of job " +
                          std::to_string(reject.job) + " that do not decode at the client (" +
                          printable(reject.reason, 256) + ")";
  const auto registered = identity_by_instance_.find(instance);
  if (instance == 0 || registered == identity_by_instance_.end()) {
    log_->warn("worker [{}] {}; it is gone already", short_id(instance), why);
    return;
  }
  lose_worker(registered->second, why, Loss::kBroken);
}

void BrokerCore::send_results(ClientState& client) {
  if (client.results_out.empty()) return;
  auto frames = client.results_out.take();
  send_to_client(client, frames);  // may drop the client
}

void BrokerCore::flush_results() {
  std::vector<std::string> pending;
  pending.swap(results_pending_);
  for (const std::string& identity : pending) {
    if (const auto client = clients_by_id_.find(identity); client != clients_by_id_.end()) send_results(client->second);
  }
}

void BrokerCore::drop_client(const std::string& identity, const char* why) {
  const auto found = clients_by_id_.find(identity);
  if (found == clients_by_id_.end()) return;
  std::size_t dropped = 0;
  for (const auto& [job, tickets] : found->second.jobs) {
    for (const std::uint64_t ticket : tickets) {
      const auto chunk = chunks_.find(ticket);
      if (chunk == chunks_.end()) continue;
      over_budget_.erase(ticket);
      abandon(ticket, chunk->second);
      chunks_.erase(chunk);  // a worker running it gets its credit back when it answers
      ++dropped;
    }
  }
  log_->info("client {} pid {} gone ({}): {} chunks dropped", found->second.host, found->second.pid, why, dropped);
  scheduler_.remove_client(identity);
  clients_by_id_.erase(found);
  // Dropped payloads were freed into malloc's arenas; hand that memory back to the system now
  // rather than keeping the peak of a client that is gone.
  if (dropped > 0) out_.release_memory();
}

void BrokerCore::on_cancel(ClientState& client, std::uint64_t job_id) {
  const auto job = client.jobs.find(job_id);
  if (job == client.jobs.end()) return;
  std::size_t dropped = 0;
  std::uint64_t key = job_id;
  for (const std::uint64_t ticket : job->second) {
    const auto chunk = chunks_.find(ticket);
    if (chunk == chunks_.end()) continue;
    key = record_key(chunk->second.header);
    // A running chunk stays in its worker's tickets: the worker gets its credit back when it
    // answers, and the answer is then ignored; told to abandon it, it answers soon. The
    // scheduler forgets the queued ones.
    abandon(ticket, chunk->second);
    release_context(client, chunk->second.header.context_hash);
    --client.chunks;
    client.chunk_bytes -= static_cast<std::int64_t>(chunk->second.payload.size());
    scheduler_.forget(ticket);
    over_budget_.erase(ticket);
    chunks_.erase(chunk);
    ++dropped;
  }
  client.jobs.erase(job);
  job_gone(client, key, job_id);
  const auto record = client.job_records.find(key);
  if (record != client.job_records.end() && !record->second.stream) client.job_records.erase(record);
  log_->debug("client {} cancelled job {}: {} chunks dropped", client.host, job_id, dropped);
}

void BrokerCore::release_context(ClientState& client, std::uint64_t hash) const {
  if (hash != 0) client.contexts.release(hash, now_);
}

void BrokerCore::expire_client_state() {
  for (auto& [id, client] : clients_by_id_) {
    std::erase_if(client.job_records, [&](const auto& entry) {
      return entry.second.live.empty() && now_ - entry.second.idle_since >= expiry();
    });
    client.contexts.expire(now_, expiry());
  }
}

}  // namespace poolmap::detail
