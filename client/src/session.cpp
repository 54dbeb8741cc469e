// A Pool's session with its broker, without sockets, threads or clocks. See session.hpp.
#include "session.hpp"

#include <algorithm>

#include "poolmap/chunking.hpp"

namespace poolmap::detail {

namespace {
using proto::Command;
}  // namespace

ClientSession::ClientSession(Options options, Port& port, std::shared_ptr<spdlog::logger> log)
    : options_(std::move(options)), port_(port), log_(std::move(log)) {
  if (options_.endpoints.empty()) options_.endpoints.push_back(options_.endpoint);
  passive_at_.resize(options_.endpoints.size());
}

std::unique_ptr<ClientSession::Job> ClientSession::make_job(JobRequest request, std::uint64_t id,
                                                            std::shared_ptr<FutureCore> core, Clock::time_point now) {
  auto job = std::make_unique<Job>();
  job->id = id;
  job->stream = request.stream;
  job->task = std::move(request.task);
  job->signature = std::move(request.signature);
  job->chunks = std::move(request.chunks);
  job->total_items = request.total_items;
  job->deadline_ms = request.deadline_ms;
  job->payloads.resize(job->chunks.size());
  job->retries_left.assign(job->chunks.size(), request.task_retries);
  job->sink = std::move(request.sink);
  if (!job->sink || !job->sink->keeps()) job->results.resize(job->chunks.size());  // a checking sink keeps nothing
  job->have.assign(job->chunks.size(), false);
  job->core = std::move(core);
  if (request.job_deadline.count() > 0) job->deadline = now + request.job_deadline;
  if (request.context) {
    // Zero-copy: the message refers to the caller's encoded context and keeps it alive, so the many
    // jobs of one imap with a context share one buffer.
    auto keep = std::make_unique<std::shared_ptr<const Bytes>>(request.context);
    job->context.emplace(const_cast<std::byte*>(request.context->data()), request.context->size(),
                         [](void*, void* hint) { delete static_cast<std::shared_ptr<const Bytes>*>(hint); },
                         keep.get());
    (void)keep.release();  // owned by the message now
    job->context_hash = request.context_hash;
  }
  return job;
}

void ClientSession::start(Clock::time_point now) { connect(now); }

void ClientSession::reconnect(Clock::time_point now) { connect(now); }

void ClientSession::connect(Clock::time_point now) {
  now_ = now;
  connect_at_.reset();
  port_.open_connection(options_.endpoints[current_]);
  submits_out_.clear();  // for the lost session; every chunk not yet answered is sent after the WELCOME
  options_.hello.epoch = newest_epoch_;
  // A session with no work does not ask a passive broker to take over (`poolmap status` must not
  // make a second active broker while the link between the two is cut).
  options_.hello.flags = jobs_.empty() ? proto::kObserver : 0;
  // A broker taking over from the one we lost runs our resent chunks as soon as this many workers
  // are back with it (they may hold them), rather than after a fixed wait.
  options_.hello.workers_seen = static_cast<std::uint32_t>(std::min<std::size_t>(workers_seen_, UINT32_MAX));
  auto hello = wire::make(Command::kHello, options_.hello);
  (void)port_.send(hello);  // never blocks: a handshake refused before this leaves the connection without a pipe
  for (std::size_t i = 0; i < status_waiting_.size(); ++i) {  // asked of the lost broker: ask this one
    auto request = wire::make_empty(Command::kStatusRequest);
    (void)port_.send(request);
  }
  session_welcomed_ = false;
  ++session_;
  last_sent_ = last_heard_ = now;
}

void ClientSession::lost_broker(Clock::time_point now, const std::string& why) {
  // A new connection is a new peer to the broker: say HELLO, and after its WELCOME send again every
  // chunk not yet answered. Results are matched by (job, chunk), so a chunk answered twice (once
  // before the loss, once after) still reaches the caller once.
  if (!broker_lost_at_) {
    broker_lost_at_ = now;
    // A broker never reached was not lost: the "no answer" warning has said so already.
    if (ever_welcomed_) log_->warn("lost the broker at {} ({}); reconnecting", current_endpoint(), why);
  }
  next_endpoint(now);
}

void ClientSession::next_endpoint(Clock::time_point now) {
  const std::size_t from = current_;
  current_ = (current_ + 1) % options_.endpoints.size();
  if (current_ != from) {
    log_->warn("turning from the broker at {} to the one at {}", options_.endpoints[from], current_endpoint());
  }
  // One that said PASSIVE a moment ago is asked again only half an interval later.
  const auto& passive = passive_at_[current_];
  if (passive && now - *passive < options_.heartbeat_interval / 2) {
    connect_at_ = *passive + options_.heartbeat_interval / 2;
    session_welcomed_ = false;
    last_heard_ = now;
    return;
  }
  connect(now);
}

void ClientSession::add_job(std::unique_ptr<Job> job) {
  // Work for a session that said HELLO without any and was not welcomed (a passive broker): say
  // HELLO again, with work now.
  if (jobs_.empty() && !session_welcomed_ && (options_.hello.flags & proto::kObserver) != 0 && !connect_at_) {
    connect_at_ = now_;
  }
  send_order_.push_back(job->id);
  const std::uint64_t id = job->id;
  jobs_.emplace(id, std::move(job));
}

std::vector<std::uint64_t> ClientSession::job_ids() const {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, job] : jobs_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

void ClientSession::request_status(std::promise<Result<BrokerStatus>> promise) {
  status_waiting_.push_back(std::move(promise));
  auto request = wire::make_empty(Command::kStatusRequest);
  send(request);
}

void ClientSession::goodbye() {
  auto bye = wire::make_empty(Command::kDisconnect);
  (void)port_.send(bye);
}

std::size_t ClientSession::window() const {
  return options_.max_chunks_in_flight != 0 ? options_.max_chunks_in_flight
                                            : automatic_window(workers_seen_, payload_bytes_in_flight_);
}

void ClientSession::forget_in_flight(Job& job) {
  in_flight_ -= job.next_to_send - job.answered;
  payload_bytes_in_flight_ -= job.payload_bytes_in_flight;
  job.payload_bytes_in_flight = 0;
}

void ClientSession::heard_workers(std::size_t workers) {
  if (workers == workers_seen_) return;
  workers_seen_ = workers;
  port_.heard_workers(workers, false);  // wait_for_workers()
}

void ClientSession::finish(std::unique_ptr<Job> job, JobOutcome outcome) {
  port_.job_ended(std::move(job), std::move(outcome));
}

ClientSession::Clock::time_point ClientSession::next_pass() const {
  auto at = last_sent_ + options_.heartbeat_interval;
  // Just past the broker's liveness period: a loss is noticed then, not an interval later (once
  // past, e.g. while a large message still arrives, the interval paces the looks again).
  const auto lost_at =
      last_heard_ + options_.heartbeat_interval * options_.heartbeat_liveness + std::chrono::milliseconds(1);
  if ((!jobs_.empty() || !status_waiting_.empty() || (!session_welcomed_ && options_.endpoints.size() > 1)) &&
      lost_at > now_) {
    at = std::min(at, lost_at);
  }
  if (connect_at_) at = std::min(at, *connect_at_);
  for (const auto& [id, job] : jobs_) {
    if (job->deadline) at = std::min(at, *job->deadline);
  }
  if (!deferred_.empty()) at = std::min(at, deferred_sent_ + options_.heartbeat_interval);
  return at;
}

void ClientSession::pass(Clock::time_point now) {
  now_ = now;
  if (connect_at_ && now >= *connect_at_) connect(now);
  const bool waiting = !jobs_.empty() || !status_waiting_.empty();
  const auto silent = now - last_heard_;
  if (!ever_welcomed_ && !unanswered_logged_ && silent > options_.heartbeat_interval) {
    unanswered_logged_ = true;
    log_->warn("no answer from a poolmap broker at {} after {} ms: is one running there, and is this its client "
               "endpoint (poolmap-broker --clients, port 5555 by default)? Still trying",
               current_endpoint(), std::chrono::duration_cast<std::chrono::milliseconds>(silent).count());
  }
  const auto expiry = options_.heartbeat_interval * options_.heartbeat_liveness;
  // With several brokers, one that has not welcomed this session for a liveness period is passed
  // over even while nothing waits: a Pool waits for a WELCOME before it makes its first job.
  const bool searching = !session_welcomed_ && options_.endpoints.size() > 1;
  if ((waiting || searching) && !connect_at_ && silent > expiry && !port_.bytes_arriving(expiry)) {
    lost_broker(now, "no word for " +
                         std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(silent).count()) + " ms");
  }
  if (broker_lost_at_ && now - *broker_lost_at_ > options_.reconnect_timeout) {
    // Never wait for ever on a broker that is gone.
    if (waiting) {
      fail_all(Status(ErrorCode::kUnavailable, "the poolmap broker at " + options_.endpoint +
                                                   " did not come back within " +
                                                   std::to_string(options_.reconnect_timeout.count()) + " ms"));
    }
    broker_lost_at_ = now;  // later calls get a full reconnect_timeout of their own
  }
  check_deadlines(now);
  send_deferred(now);
  send_chunks();
  flush_submits();
  if (now - last_sent_ >= options_.heartbeat_interval) {
    auto beat = wire::make_empty(Command::kHeartbeat);
    send(beat);
    last_sent_ = now;  // sent or not, the next try is an interval away
  }
  if (send_failed_) {
    send_failed_ = false;
    lost_broker(now, "cannot send to it");
  }
}

void ClientSession::on_message(Clock::time_point now, std::vector<zmq::message_t>& frames) {
  now_ = now;
  if (frames.empty()) return;
  // A broker of a pair says its epoch in every message: one older than an epoch seen is a broker
  // that another has taken over from (frozen, or cut off, while that happened); never heeded.
  const std::uint64_t epoch = proto::epoch_of(wire::view(frames[0]));
  if (epoch < newest_epoch_) {
    if (!stale_logged_) {
      log_->warn("ignoring the broker at {}: its epoch {} is older than epoch {} seen (another broker has taken over)",
                 current_endpoint(), epoch, newest_epoch_);
      stale_logged_ = true;
    }
    return;
  }
  if (epoch > newest_epoch_) {
    newest_epoch_ = epoch;
    stale_logged_ = false;
  }
  last_heard_ = now;
  if (frames.size() < 2) return;
  auto command = proto::parse_signature(wire::view(frames[0]));
  if (!command) {
    log_->warn("ignored a message from the broker: {}", command.status().to_string());
    return;
  }
  const auto header = wire::view(frames[1]);
  switch (command.value()) {
    case Command::kWelcome: {
      auto welcome = proto::decode<proto::Welcome>(header);
      if (!welcome) return;
      workers_seen_ = welcome.value().workers;
      passive_at_[current_].reset();
      port_.heard_workers(workers_seen_, true);
      ever_welcomed_ = true;
      if (!session_welcomed_) {
        session_welcomed_ = true;
        if (broker_lost_at_) {
          deferred_.clear();  // every unanswered chunk is sent again now
          room_ = 0;
          std::size_t resent = 0;
          for (auto& [id, job] : jobs_) {
            for (std::size_t i = 0; i < job->next_to_send; ++i) {
              if (!job->have[i]) {
                send_chunk(*job, i, true);
                ++resent;
              }
            }
          }
          log_->warn("reached the broker at {} again after {} ms; resent {} unanswered chunks", current_endpoint(),
                     std::chrono::duration_cast<std::chrono::milliseconds>(now_ - *broker_lost_at_).count(),
                     resent);
          broker_lost_at_.reset();
        }
      }
      return;
    }
    case Command::kResult: {  // [signature, then a header and a payload frame for each chunk]
      for (std::size_t i = 1; i < frames.size(); i += 2) {
        auto result = proto::decode<proto::ClientResult>(wire::view(frames[i]));
        if (!result || i + 1 == frames.size()) {
          // Its job cannot be told, so waiting for it could be for ever: fail what is waiting.
          const std::string why = result ? "a RESULT without a payload frame" : result.status().message();
          log_->error("the broker at {} sent a RESULT this client cannot read ({})", current_endpoint(), why);
          fail_all(Status(ErrorCode::kMalformed, "the poolmap broker at " + current_endpoint() +
                                                     " sent a RESULT this client cannot read (" + why +
                                                     "); are the broker, workers and client the same poolmap version?"));
          return;
        }
        on_result(result.value(), frames[i + 1]);
      }
      return;
    }
    case Command::kStarted: {
      auto started = proto::decode<proto::Started>(header);
      if (!started) return;
      const auto job = jobs_.find(started.value().job);
      if (job != jobs_.end()) job->second->core->mark_started();
      return;
    }
    case Command::kChunkProgress: {
      auto progress = proto::decode<proto::ChunkProgress>(header);
      if (!progress) return;
      const auto found = jobs_.find(progress.value().job);
      if (found == jobs_.end()) return;
      Job& job = *found->second;
      const auto chunk = progress.value().chunk;
      if (chunk >= job.chunks.size() || job.have[chunk]) return;
      // Counted now; the chunk's RESULT adds only the rest. Never more than the chunk holds.
      if (job.partial.size() != job.chunks.size()) job.partial.resize(job.chunks.size());
      const std::uint32_t items = std::min(progress.value().items_done, job.chunks[chunk].count);
      if (items > job.partial[chunk]) {
        job.core->add_progress(items - job.partial[chunk], 0);
        job.partial[chunk] = items;
      }
      return;
    }
    case Command::kStatusReply: {
      auto reply = proto::decode<proto::StatusReply>(header);
      if (!reply || status_waiting_.empty()) return;
      BrokerStatus status;
      for (const auto& w : reply.value().workers) {
        BrokerStatus::Worker& worker = status.workers.emplace_back();
        worker.host = w.host;
        worker.pid = w.pid;
        worker.chunks_in_flight = w.in_flight;
        worker.chunks_done = w.chunks_done;
        worker.instance = w.instance;
        worker.supervisor = w.supervisor;
        for (const auto& task : w.tasks) worker.tasks.push_back({task.name, task.signature});
        worker.chunks_failed = w.chunks_failed;
        worker.last_seen = std::chrono::milliseconds(w.last_seen_ms);
        worker.credit = w.credit;
        worker.running_task = w.running_task;
        worker.running_job = w.running_job;
        worker.running_first_index = w.running_first_index;
        worker.running_items = w.running_items;
        worker.running_for = std::chrono::milliseconds(w.running_ms);
      }
      for (const auto& j : reply.value().jobs) {
        status.jobs.push_back({j.client_host, j.client_pid, j.job, j.task, j.items_total, j.items_done,
                               j.chunks_queued, j.chunks_in_flight, std::chrono::milliseconds(j.age_ms), j.stream != 0,
                               j.items_failed, j.waiting});
      }
      for (const auto& e : reply.value().events) {
        status.events.push_back({e.kind == proto::kEventFailed ? BrokerStatus::Event::Kind::kFailed
                                                               : BrokerStatus::Event::Kind::kRedispatched,
                                 std::chrono::milliseconds(e.age_ms), e.task, e.client_host, e.client_pid, e.job,
                                 e.item, e.items, e.attempt, e.error, e.message, e.worker_host, e.worker_pid});
      }
      status.clients = reply.value().clients;
      status.chunks_queued = reply.value().chunks_queued;
      status.chunks_in_flight = reply.value().chunks_in_flight;
      status.chunks_done = reply.value().chunks_done;
      status.chunks_failed = reply.value().chunks_failed;
      status.chunks_redispatched = reply.value().chunks_redispatched;
      status.bad_messages = reply.value().bad_messages;
      status.context_bytes_received = reply.value().context_bytes_received;
      status.context_bytes_sent = reply.value().context_bytes_sent;
      status.context_bytes_held = reply.value().context_bytes_held;
      status.role = reply.value().role;
      status.epoch = reply.value().epoch;
      status.peer = reply.value().peer;
      status.peer_silent = std::chrono::milliseconds(reply.value().peer_silent_ms);
      status_waiting_.front().set_value(Result<BrokerStatus>(std::move(status)));
      status_waiting_.pop_front();
      return;
    }
    case Command::kError: {
      auto error = proto::decode<proto::ErrorReply>(header);
      const std::string text = error ? error.value().message : "unreadable error";
      log_->error("the poolmap broker at {} refused a message: {}", current_endpoint(), text);
      const Status refused(error ? error.value().code : ErrorCode::kMalformed,
                           "the poolmap broker at " + current_endpoint() + " refused this client: " + text);
      if (!session_welcomed_) port_.refused(refused);  // it refused our HELLO (e.g. --max-clients): calls fail now
      fail_all(refused);
      return;
    }
    case Command::kDisconnect:
      // The broker is going away, or it does not know us (it restarted): register again.
      lost_broker(now_, "it said goodbye or does not know this client");
      return;
    case Command::kPassive:
      // The passive broker of a pair (or one that just stepped down): the other one serves.
      passive_at_[current_] = now_;
      lost_broker(now_, "it is the passive broker of a pair");
      return;
    case Command::kHeartbeat:
    default:
      return;
  }
}

void ClientSession::on_result(const proto::ClientResult& result, zmq::message_t& payload) {
  heard_workers(result.workers);
  const auto found = jobs_.find(result.job);
  if (found == jobs_.end()) return;  // a job that already failed: late answers are ignored
  Job& job = *found->second;
  if (result.chunk >= job.chunks.size() || job.have[result.chunk]) return;  // duplicate
  const proto::Outcome& outcome = result.outcome;
  if (outcome.code == ErrorCode::kResourceExhausted) {
    // The broker holds as much of our work as its per-client quotas allow: keep this chunk (it
    // still counts against our window) and send it again as room frees (send_deferred).
    if (!quota_logged_) {
      quota_logged_ = true;
      log_->info("the broker at {} holds as much of this client's work as its quotas allow; sending the rest as "
                 "earlier chunks are answered ({})",
                 current_endpoint(), outcome.message);
    }
    if (job.context) {  // the broker did not keep the context either, perhaps: send it with the chunk
      const auto sent = contexts_sent_.find(job.context_hash);
      if (sent != contexts_sent_.end() && sent->second.at < job.submitted[result.chunk]) contexts_sent_.erase(sent);
    }
    if (deferred_.empty()) deferred_sent_ = now_;
    deferred_.emplace_back(result.job, static_cast<std::size_t>(result.chunk));
    room_ = 0;
    return;
  }
  ++room_;
  // The broker had freed the chunk's context (no chunk used it for a while): send both again, a
  // bounded number of times per job (twice per chunk), so a broker that keeps refusing cannot make
  // us loop: past that the job fails with kContextMissing.
  if (outcome.code == ErrorCode::kContextMissing && job.context && job.context_resends < 2 * job.chunks.size() + 8) {
    ++job.context_resends;
    // Send the context again unless that already happened after this chunk was submitted.
    const auto sent = contexts_sent_.find(job.context_hash);
    if (sent != contexts_sent_.end() && sent->second.at < job.submitted[result.chunk]) contexts_sent_.erase(sent);
    send_chunk(job, result.chunk, was_resent(job, result.chunk));
    return;
  }
  if (outcome.code == ErrorCode::kTaskFailed && job.retries_left[result.chunk] > 0) {
    --job.retries_left[result.chunk];  // the caller asked for task retries: run the chunk again
    send_chunk(job, result.chunk);
    return;
  }
  if (outcome.code != ErrorCode::kOk) {
    JobOutcome failed;
    failed.error = Status(outcome.code, outcome.message);
    if (outcome.code == ErrorCode::kTaskFailed) {
      failed.task_error = TaskError::Details{job.task, job.chunks[result.chunk].first_index + outcome.failed_offset,
                                             outcome.error_type, outcome.message, outcome.worker_host,
                                             outcome.worker_pid};
    }
    fail_job(result.job, std::move(failed));
    return;
  }
  const detail::ChunkRequest& chunk = job.chunks[result.chunk];
  if (job.sink) {
    // Decoded into the output now (or only checked); the received bytes go at the end of this scope.
    Status decoded = job.sink->take(chunk.first_index, chunk.count, wire::view(payload));
    if (!decoded.is_ok()) {
      if (run_again_after_bad_result(job, result, decoded)) return;
      fail_job(result.job, JobOutcome{{}, std::move(decoded), std::nullopt});
      return;
    }
  }
  if (!job.sink || !job.sink->keeps()) {
    auto owned = std::make_shared<zmq::message_t>(std::move(payload));
    job.results[result.chunk] = detail::ChunkResult{wire::view(*owned), owned, chunk.count};
  }
  --in_flight_;
  const std::uint64_t bytes = job.payloads[result.chunk] ? job.payloads[result.chunk]->size() : 0;
  job.payload_bytes_in_flight -= bytes;
  payload_bytes_in_flight_ -= bytes;
  job.payloads[result.chunk].reset();
  job.have[result.chunk] = true;
  const std::uint32_t reported = job.partial.empty() ? 0 : job.partial[result.chunk];
  job.core->add_progress(job.chunks[result.chunk].count - reported, outcome.compute_us);
  if (++job.answered == job.chunks.size()) {
    auto done = std::move(found->second);
    jobs_.erase(found);
    auto results = std::move(done->results);
    finish(std::move(done), JobOutcome{std::move(results), Status::ok(), std::nullopt});
  }
}

bool ClientSession::run_again_after_bad_result(Job& job, const proto::ClientResult& result, Status& why) {
  // Results that do not decode to the chunk's items are the worker's fault, not the caller's: the
  // broker drops that worker, and the chunk runs again elsewhere: until kRejectsPerChunk workers
  // have answered it so. The same worker's answer may come again (a broker that took over gets
  // what the worker was not sure the lost broker had read): that counts once, within a bound.
  auto reject = wire::make(Command::kReject, proto::Reject{result.job, result.chunk, result.attempt, why.message()});
  send(reject);
  Job::Rejections& rejected = job.rejected[static_cast<std::size_t>(result.chunk)];
  ++rejected.answers;
  rejected.workers.emplace(result.outcome.worker_host, result.outcome.worker_pid);
  if (rejected.workers.size() > kRejectsPerChunk || rejected.answers > 4 * kRejectsPerChunk) {
    why = Status(ErrorCode::kMalformed, "task '" + job.task + "': " + std::to_string(rejected.workers.size()) +
                                            " workers returned results that do not decode for chunk " +
                                            std::to_string(result.chunk) + " (" + std::to_string(rejected.answers) +
                                            " answers); the last: " + why.message());
    return false;
  }
  log_->warn("a worker returned results for chunk {} of job {} that do not decode ({}); the broker drops it and the "
             "chunk runs again",
             result.chunk, result.job, why.message());
  send_chunk(job, static_cast<std::size_t>(result.chunk));
  return true;
}

void ClientSession::fail_job(std::uint64_t id, JobOutcome outcome) {
  const auto found = jobs_.find(id);
  if (found == jobs_.end()) return;
  Job& job = *found->second;
  // Chunks sent but not answered no longer count against the window.
  forget_in_flight(job);
  // Fail fast: the broker drops the job's queued chunks and ignores the running ones' results.
  auto cancel = wire::make(Command::kCancel, proto::Cancel{id});
  send(cancel);
  auto done = std::move(found->second);
  jobs_.erase(found);
  finish(std::move(done), std::move(outcome));
}

void ClientSession::send_chunk(Job& job, std::size_t index, bool resent) {
  if (job.context) {  // the broker needs the context before the chunk
    const auto sent = contexts_sent_.find(job.context_hash);
    if (sent == contexts_sent_.end() || sent->second.session != session_) {
      auto frames = wire::make(Command::kContext, proto::ContextHeader{job.context_hash});
      frames.emplace_back();
      frames.back().copy(*job.context);
      send(frames);
      contexts_sent_[job.context_hash] = ContextSent{session_, ++submits_};
    }
    if (job.submitted.size() != job.chunks.size()) job.submitted.resize(job.chunks.size());
    job.submitted[index] = ++submits_;
  }
  if (resent) {
    if (job.resent.size() != job.chunks.size()) job.resent.resize(job.chunks.size());
    job.resent[index] = true;
  }
  detail::ChunkRequest& chunk = job.chunks[index];
  auto& payload = job.payloads[index];
  if (!payload) payload = wire::to_message(std::move(chunk.payload));
  // The first chunk asks the broker to say when it reaches a worker (Future::running()).
  if (submits_out_.needs_new_message(payload->size())) flush_submits();
  zmq::message_t shared;
  shared.copy(*payload);  // reference-counted: the payload stays here until answered
  submits_out_.add(wire::header_message(proto::Submit{job.id, index, chunk.first_index, chunk.count, job.task,
                                                      job.signature, job.deadline_ms, job.context_hash,
                                                      (index == 0 ? proto::kNotifyStarted : 0) |
                                                          (resent ? proto::kResent : 0),
                                                      static_cast<std::uint64_t>(job.total_items), job.stream}),
                   std::move(shared));
}

void ClientSession::send_deferred(Clock::time_point now) {
  if (!session_welcomed_) return;
  while (!deferred_.empty() && (room_ > 0 || now - deferred_sent_ >= options_.heartbeat_interval)) {
    if (room_ > 0) --room_;
    deferred_sent_ = now;
    const auto [id, index] = deferred_.front();
    deferred_.pop_front();
    const auto job = jobs_.find(id);
    if (job == jobs_.end() || job->second->have[index]) continue;  // ended meanwhile
    send_chunk(*job->second, index, was_resent(*job->second, index));
  }
}

bool ClientSession::was_resent(const Job& job, std::size_t index) {
  return index < job.resent.size() && job.resent[index];
}

void ClientSession::send_chunks() {
  if (!session_welcomed_) return;  // a broker that has not welcomed us would refuse them
  while (in_flight_ < window() && !send_order_.empty()) {
    const std::uint64_t id = send_order_.front();
    send_order_.pop_front();
    const auto found = jobs_.find(id);
    if (found == jobs_.end()) continue;
    Job& job = *found->second;
    if (job.next_to_send >= job.chunks.size()) continue;
    const std::size_t index = job.next_to_send++;
    send_chunk(job, index);
    ++in_flight_;
    const std::uint64_t bytes = job.payloads[index]->size();
    job.payload_bytes_in_flight += bytes;
    payload_bytes_in_flight_ += bytes;
    if (job.next_to_send < job.chunks.size()) send_order_.push_back(id);
  }
}

void ClientSession::send(std::vector<zmq::message_t>& frames) {
  flush_submits();
  send_now(frames);
}

void ClientSession::flush_submits() {
  if (submits_out_.empty()) return;
  auto frames = submits_out_.take();
  send_now(frames);
}

void ClientSession::send_now(std::vector<zmq::message_t>& frames) {
  // Never blocks: a socket whose handshake failed (a CURVE key the broker refused) has no pipe, and
  // a blocking send would hang this thread and every caller. What could not be sent in a welcomed
  // session is sent again on a new one (every chunk not yet answered is); before the WELCOME only
  // HELLO, heartbeats and status requests go out, which need no resending.
  if (port_.send(frames)) {
    last_sent_ = now_;
  } else if (session_welcomed_) {
    send_failed_ = true;
  }
}

void ClientSession::check_deadlines(Clock::time_point now) {
  std::vector<std::uint64_t> late;
  for (const auto& [id, job] : jobs_) {
    if (job->deadline && *job->deadline <= now) late.push_back(id);
  }
  for (const std::uint64_t id : late) {
    const std::string task = jobs_.at(id)->task;
    fail_job(id, JobOutcome{{}, Status(ErrorCode::kDeadlineExceeded, "task '" + task + "' did not finish within its deadline"),
                            std::nullopt});
  }
}

void ClientSession::fail_all(const Status& error) {
  for (auto& [id, job] : jobs_) {
    forget_in_flight(*job);
    finish(std::move(job), JobOutcome{{}, error, std::nullopt});
  }
  jobs_.clear();
  send_order_.clear();
  for (auto& waiting : status_waiting_) waiting.set_value(error);
  status_waiting_.clear();
}

}  // namespace poolmap::detail
