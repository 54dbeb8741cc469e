#include "peers.hpp"

#include <algorithm>
#include <cstring>

#include "process_info.hpp"
#include "wire.hpp"

namespace poolmap::sim {

namespace {
using proto::Command;

zmq::message_t encode_items(const std::vector<std::uint64_t>& values) {
  return zmq::message_t(values.data(), values.size() * sizeof(std::uint64_t));
}
std::vector<std::uint64_t> decode_items(const zmq::message_t& message) {
  std::vector<std::uint64_t> values(message.size() / sizeof(std::uint64_t));
  if (!values.empty()) std::memcpy(values.data(), message.data(), values.size() * sizeof(std::uint64_t));
  return values;
}
std::uint64_t fnv1a(const std::string& bytes) {
  std::uint64_t hash = 14695981039346656037ULL;
  for (const char c : bytes) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  return hash == 0 ? 1 : hash;
}
template <class Header>
Frames message(Command command, const Header& header) {
  return wire::make(command, header);
}
}  // namespace

// --- WorkerProcess ----------------------------------------------------------------------------

WorkerProcess::WorkerProcess(World& world, Ledger& ledger, Supervisor* supervisor, std::uint64_t supervisor_id,
                             std::vector<proto::TaskInfo> tasks, Kind kind, std::string name)
    : Peer(world, std::move(name)),
      ledger_(ledger),
      supervisor_(supervisor),
      supervisor_id_(supervisor_id),
      tasks_(std::move(tasks)),
      kind_(kind),
      instance_(world.rng().next() | 1),
      pid_(static_cast<std::uint32_t>(1000 + world.rng().below(30000))),
      credit_(static_cast<std::uint32_t>(world.rng().between(1, 3))) {}

void WorkerProcess::start() {
  register_again(nullptr);
  world_.at(world_.heartbeat(), [this] { heartbeat(); }, this);
}

void WorkerProcess::register_again(const char* why) {
  if (why != nullptr) {
    world_.trace(name_ + " registers again: " + why);
    disrupted();  // the broker may count its chunks as lost
  }
  if (socket_ != nullptr) world_.close(socket_);
  socket_ = world_.open(*this, Side::kWorker);
  ++generation_;
  last_heard_ = world_.now();
  proto::Ready ready{"host-" + name_.substr(0, name_.find('/')), pid_, credit_, instance_, supervisor_id_, tasks_,
                     generation_, 0, {}};
  send(message(Command::kReady, ready));
}

void WorkerProcess::send(Frames frames) {
  last_sent_ = world_.now();
  world_.send(*socket_, std::move(frames));
}

void WorkerProcess::heartbeat() {
  const auto expiry = world_.heartbeat() * world_.options().heartbeat_liveness;
  if (world_.now() - last_heard_ > expiry) {
    register_again("no word from the broker");
  } else if (world_.now() - last_sent_ >= world_.heartbeat()) {
    send(wire::make_empty(Command::kHeartbeat));
  }
  if (world_.rng().chance(0.02)) {  // adaptive prefetch
    credit_ = static_cast<std::uint32_t>(world_.rng().between(1, 4));
    send(message(Command::kCredit, proto::Credit{credit_}));
  }
  world_.at(world_.heartbeat(), [this] { heartbeat(); }, this);
}

void WorkerProcess::on_message(Socket& socket, Frames& frames) {
  if (&socket != socket_ || frames.empty()) return;  // an old connection's leftovers
  last_heard_ = world_.now();
  const auto command = proto::parse_signature(wire::view(frames[0]));
  if (!command) return world_.fail(name_ + " got a message without a signature");
  switch (command.value()) {
    case Command::kTask: {
      const bool with_context = frames.size() == 4;
      for (std::size_t i = 1; i + 1 < frames.size(); i += 2) {
        auto header = proto::decode<proto::TaskHeader>(wire::view(frames[i]));
        if (!header) return world_.fail(name_ + " got a TASK header that does not decode");
        const auto task = proto::TaskInfo{header.value().task, header.value().signature};
        if (std::find(tasks_.begin(), tasks_.end(), task) == tasks_.end()) {
          return world_.fail(name_ + " was sent a chunk of task " + task.name + ", which it does not offer");
        }
        const std::uint64_t hash = header.value().context_hash;
        if (hash != 0 && with_context) contexts_.insert(hash);
        if (hash != 0 && !contexts_.contains(hash)) {
          if (frames[i + 1].size() >= sizeof(std::uint64_t)) {
            const auto items = decode_items(frames[i + 1]);
            answered_[header.value().ticket] = key_of(items.front(), header.value().first_index);
          }
          proto::WorkerResult missing{header.value().ticket, {ErrorCode::kContextMissing, 0, {}, "evicted", "", pid_, 0},
                                      instance_, 0, header.value().origin};
          Frames out = message(Command::kWorkerResult, missing);
          out.emplace_back();
          send(std::move(out));
          continue;
        }
        queue_.push_back({header.value(), decode_items(frames[i + 1]), false});
        world_.trace(name_ + " gets ticket " + std::to_string(header.value().ticket % 100000) + " (items " +
                     std::to_string(header.value().first_index) + "+" + std::to_string(header.value().count) + ")");
        if (with_context) break;
      }
      if (world_.rng().chance(0.05) && !contexts_.empty()) contexts_.erase(contexts_.begin());  // evicted
      run_next();
      return;
    }
    case Command::kAbandon: {
      auto abandon = proto::decode<proto::Abandon>(wire::view(frames[1]));
      if (!abandon) return;
      const auto queued = std::find_if(queue_.begin(), queue_.end(),
                                       [&](const Held& held) { return held.header.ticket == abandon.value().ticket; });
      if (queued != queue_.end()) {
        proto::WorkerResult dropped{abandon.value().ticket, {ErrorCode::kCancelled, 0, {}, "abandoned", "", pid_, 0},
                                    instance_, 0, {}};
        queue_.erase(queued);
        Frames out = message(Command::kWorkerResult, dropped);
        out.emplace_back();
        send(std::move(out));
      } else if (running_ && running_->header.ticket == abandon.value().ticket) {
        running_->abandoned = true;
      }
      return;
    }
    case Command::kDisconnect:
      return register_again("the broker said DISCONNECT");
    case Command::kError: {
      auto error = proto::decode<proto::ErrorReply>(wire::view(frames[1]));
      if (error && error.value().code == ErrorCode::kUnavailable) {  // refused READY: try again later
        world_.at(world_.heartbeat(), [this] { register_again("its READY was refused"); }, this);
        return;
      }
      return world_.fail(name_ + " got ERROR from the broker: " + (error ? error.value().message : "?"));
    }
    default:
      return;
  }
}

void WorkerProcess::run_next() {
  if (running_ || queue_.empty()) return;
  running_ = std::move(queue_.front());
  queue_.pop_front();
  const std::uint64_t run = ++runs_;
  const auto& items = running_->items;
  if (!items.empty()) {
    auto& fate = ledger_.fates[key_of(items.front(), running_->header.first_index)];
    if (++fate.executions > 1) ++world_.stats().re_executions;
    ++world_.stats().executions;
  }
  std::int64_t cost = 0;
  bool poison = false;
  for (const std::uint64_t item : items) {
    cost += (item & kSlow) != 0 ? 400 : world_.rng().between(1, 30);
    poison = poison || (item & kPoison) != 0;
  }
  if (poison) {
    world_.at(milliseconds(world_.rng().between(0, std::max<std::int64_t>(cost, 1))),
              [this, run] {
                if (run == runs_ && running_) crash("signal 11 (a poison item)");
              },
              this);
    return;
  }
  if (cost > 100) {
    world_.at(milliseconds(cost / 2), [this, run] {
      if (run != runs_ || !running_) return;
      send(message(Command::kWorkerProgress,
                   proto::WorkerProgress{running_->header.ticket, std::max<std::uint32_t>(1, running_->header.count / 2)}));
    }, this);
  }
  world_.at(milliseconds(cost), [this, run] { finish(running_ ? running_->header.ticket : 0, run); }, this);
}

void WorkerProcess::finish(std::uint64_t ticket, std::uint64_t run) {
  if (run != runs_ || !running_ || running_->header.ticket != ticket) return;
  const Held held = std::move(*running_);
  running_.reset();
  proto::WorkerResult result{ticket, {}, instance_, held.header.count, held.header.origin};
  result.outcome.worker_pid = pid_;
  zmq::message_t payload;
  const auto thrower = std::find_if(held.items.begin(), held.items.end(), [](std::uint64_t i) { return (i & kThrows) != 0; });
  if (thrower != held.items.end()) {
    result.outcome.code = ErrorCode::kTaskFailed;
    result.outcome.failed_offset = static_cast<std::uint32_t>(thrower - held.items.begin());
    result.outcome.error_type = "ValueError";
    result.outcome.message = "the task threw";
    result.count = 0;
  } else if (kind_ == Kind::kLiar) {
    if (!held.items.empty()) ++ledger_.fates[key_of(held.items.front(), held.header.first_index)].liar_answers;
    payload = zmq::message_t("garbage", 7);
    disrupted();  // the broker drops it (REJECT) with what it holds
  } else {
    std::vector<std::uint64_t> values{held.header.first_index};
    for (const std::uint64_t item : held.items) values.push_back(f(item));
    payload = encode_items(values);
  }
  if (!held.items.empty()) {
    if (answered_.size() >= 64) answered_.erase(answered_.begin());
    answered_[ticket] = key_of(held.items.front(), held.header.first_index);
  }
  world_.trace(name_ + " answers ticket " + std::to_string(ticket % 100000) + " (items " +
               std::to_string(held.header.first_index) + "+" + std::to_string(held.header.count) + ")");
  Frames out = message(Command::kWorkerResult, result);
  if (kind_ == Kind::kDuplicator) {
    Frames again = message(Command::kWorkerResult, result);
    again.emplace_back().copy(payload);
    out.push_back(std::move(payload));
    send(std::move(out));
    ++world_.stats().duplicated;
    send(std::move(again));
  } else {
    out.push_back(std::move(payload));
    send(std::move(out));
  }
  run_next();
}

void WorkerProcess::lost_on_the_wire(const Frames& frames) {
  if (frames.size() < 3) return;
  const auto command = proto::parse_signature(wire::view(frames[0]));
  if (!command || command.value() != Command::kWorkerResult) return;
  for (std::size_t i = 1; i + 1 < frames.size(); i += 2) {
    const auto result = proto::decode<proto::WorkerResult>(wire::view(frames[i]));
    if (!result) continue;
    if (const auto key = answered_.find(result.value().ticket); key != answered_.end()) {
      ++ledger_.fates[key->second].disruptions;
    }
  }
}

void WorkerProcess::disrupted() {
  auto hit = [&](const Held& held) {
    if (!held.items.empty()) ++ledger_.fates[key_of(held.items.front(), held.header.first_index)].disruptions;
  };
  for (const Held& held : queue_) hit(held);
  if (running_) hit(*running_);
}

void WorkerProcess::crash(const std::string& cause) {
  if (!alive()) return;
  ++world_.stats().crashes;
  world_.trace("fault: " + name_ + " [" + detail::short_id(instance_) + "] crashes: " + cause);
  // Its supervisor reports the crash and the chunk it was running, which alone is to blame: the
  // chunks it had prefetched lose nothing by it (with no supervisor to report it, see vanish()).
  std::uint64_t running_ticket = 0;
  if (running_) {
    running_ticket = running_->header.ticket;
    if (!running_->items.empty()) {
      auto& fate = ledger_.fates[key_of(running_->items.front(), running_->header.first_index)];
      ++fate.crashes_running;
      ++fate.disruptions;
    }
  }
  std::vector<ChunkKey> prefetched;
  for (const Held& held : queue_) {
    if (!held.items.empty()) prefetched.push_back(key_of(held.items.front(), held.header.first_index));
  }
  world_.kill(*this);
  if (supervisor_ != nullptr) supervisor_->exited(*this, true, cause, running_ticket, std::move(prefetched));
}

// --- Supervisor -------------------------------------------------------------------------------

Supervisor::Supervisor(World& world, Ledger& ledger, std::vector<proto::TaskInfo> tasks, std::size_t processes,
                       WorkerProcess::Kind kind, std::string name, std::vector<std::unique_ptr<Peer>>& owned)
    : Peer(world, std::move(name)),
      ledger_(ledger),
      tasks_(std::move(tasks)),
      wanted_(processes),
      kind_(kind),
      id_(world.rng().next() | 1),
      owned_(owned) {}

void Supervisor::start() {
  socket_ = world_.open(*this, Side::kWorker);
  for (std::size_t i = 0; i < wanted_; ++i) spawn();
}

void Supervisor::spawn() {
  auto process = std::make_unique<WorkerProcess>(world_, ledger_, this, id_, tasks_, kind_,
                                                 name_ + "/p" + std::to_string(++spawned_));
  processes_.push_back(process.get());
  WorkerProcess* started = process.get();
  owned_.push_back(std::move(process));
  started->start();
}

void Supervisor::exited(WorkerProcess& process, bool crashed, std::string cause, std::uint64_t running_ticket,
                        std::vector<ChunkKey> prefetched) {
  std::erase(processes_, &process);
  proto::WorkerExited report{"host-" + name_, 0, process.instance(), id_, crashed, std::move(cause), running_ticket};
  const std::uint64_t number = ++reports_;
  unreported_[number] = std::move(prefetched);
  world_.at(world_.rng().ms(0, 400), [this, report, number] {
    auto keys = unreported_.extract(number);
    if (!keys.empty()) {
      if (reported_.size() >= 64) reported_.erase(reported_.begin());
      reported_[report.instance] = std::move(keys.mapped());
    }
    world_.send(*socket_, message(Command::kWorkerExited, report));
  }, this);
  world_.at(world_.rng().ms(20, 400), [this] { spawn(); }, this);
}

void Supervisor::lost_on_the_wire(const Frames& frames) {
  if (frames.size() < 2) return;
  const auto command = proto::parse_signature(wire::view(frames[0]));
  if (!command || command.value() != Command::kWorkerExited) return;
  const auto report = proto::decode<proto::WorkerExited>(wire::view(frames[1]));
  if (!report) return;
  if (const auto keys = reported_.find(report.value().instance); keys != reported_.end()) {
    for (const ChunkKey& key : keys->second) ++ledger_.fates[key].disruptions;
  }
}

void Supervisor::vanish() {
  world_.trace("fault: supervisor " + name_ + " and its " + std::to_string(processes_.size()) + " processes vanish");
  ++world_.stats().supervisor_losses;
  for (WorkerProcess* process : processes_) {
    process->disrupted();
    world_.kill(*process);
  }
  for (const auto& [number, keys] : unreported_) {  // crashes it never reported: silent losses
    for (const ChunkKey& key : keys) ++ledger_.fates[key].disruptions;
  }
  processes_.clear();
  world_.kill(*this);
}

// --- Client -----------------------------------------------------------------------------------

// Takes each chunk's results as a typed sink does: bytes that are not [first_index, one value per
// item] do not decode (the session REJECTs them and runs the chunk again); values that decode but
// are not this chunk's are a violation at once.
class Client::Sink final : public detail::ChunkSink {
 public:
  Sink(World& world, Client::Job& job, std::string name) : world_(world), job_(job), name_(std::move(name)) {}
  Status take(std::size_t first_index, std::uint32_t count, std::span<const std::byte> bytes) override {
    if (bytes.size() != (std::size_t{count} + 1) * sizeof(std::uint64_t)) {
      ++world_.stats().rejects;
      return Status(ErrorCode::kMalformed, "results that do not decode");
    }
    std::vector<std::uint64_t> values(count + 1);
    std::memcpy(values.data(), bytes.data(), bytes.size());
    bool right = values[0] == first_index && first_index % job_.chunksize == 0;
    for (std::size_t i = 0; right && i < count; ++i) right = values[i + 1] == f(job_.items[first_index + i]);
    if (!right) {
      world_.fail(name_ + " job " + std::to_string(job_.id) + " chunk " + std::to_string(first_index / job_.chunksize) +
                  ": a result that decodes but is not this chunk's (" +
                  (values[0] == first_index ? std::string("its values differ")
                                            : "it is for first index " + std::to_string(values[0]) + ", this chunk's is " +
                                                  std::to_string(first_index)) +
                  ")");
      return Status::ok();
    }
    auto& slot = job_.results[first_index / job_.chunksize];
    if (slot) world_.fail(name_ + " job " + std::to_string(job_.id) + ": a chunk's results were taken twice");
    slot = std::move(values);
    return Status::ok();
  }

 private:
  World& world_;
  Client::Job& job_;
  std::string name_;
};

Client::Client(World& world, Ledger& ledger, std::uint64_t number, std::size_t window, std::string name)
    : Peer(world, std::move(name)),
      ledger_(ledger),
      number_(number),
      session_(detail::ClientSession::Options{.heartbeat_interval = world.heartbeat(),
                                              .heartbeat_liveness = world.options().heartbeat_liveness,
                                              .reconnect_timeout = std::chrono::seconds(60),
                                              .max_chunks_in_flight = window,
                                              .endpoint = "sim",
                                              .endpoints = {"sim"},
                                              .hello = proto::Hello{"client-host", static_cast<std::uint32_t>(number), 0x5e5510000ULL + number, 0, 0}},
               static_cast<detail::ClientSession::Port&>(*this), world.client_logger()) {}

void Client::start() {
  session_.start(world_.now());
  schedule_pass();
}

void Client::add_job(Job job, milliseconds start_after) {
  job.id = jobs_.size() + 1;  // the session's job ids: 1, 2, ...
  job.results.resize(job.chunks());
  jobs_.reserve(16);  // the sinks refer to their jobs: no reallocation (at most 6 jobs)
  jobs_.push_back(std::move(job));
  const std::size_t index = jobs_.size() - 1;
  world_.at(start_after, [this, index] {
    Job& spec = jobs_[index];
    spec.state = Job::State::kRunning;
    spec.started = world_.now();
    detail::JobRequest request;
    request.task = spec.task.name;
    request.signature = spec.task.signature;
    request.total_items = spec.items.size();
    for (std::size_t first = 0; first < spec.items.size(); first += spec.chunksize) {
      const std::size_t count = std::min(spec.chunksize, spec.items.size() - first);
      Bytes payload(count * sizeof(std::uint64_t));
      std::memcpy(payload.data(), spec.items.data() + first, payload.size());
      request.chunks.push_back({first, static_cast<std::uint32_t>(count), std::move(payload)});
    }
    if (spec.context) {
      auto context = std::make_shared<Bytes>(spec.context->size());
      std::memcpy(context->data(), spec.context->data(), context->size());
      request.context = context;
      request.context_hash = fnv1a(*spec.context);
    }
    request.sink = std::make_shared<Sink>(world_, spec, name_);
    session_.add_job(detail::ClientSession::make_job(std::move(request), spec.id,
                                                     std::make_shared<detail::FutureCore>(), world_.now()));
    pass();
  }, this);
}

bool Client::finished() const {
  return std::all_of(jobs_.begin(), jobs_.end(), [](const Job& job) {
    return job.state != Job::State::kWaiting && job.state != Job::State::kRunning;
  });
}

bool Client::send(std::vector<zmq::message_t>& frames) {
  world_.send(*socket_, std::move(frames));
  frames.clear();
  return true;
}

void Client::open_connection(const std::string&) {
  if (socket_ != nullptr) world_.trace(name_ + " opens a new connection (HELLO, then every unanswered chunk again)");
  world_.close(socket_);
  socket_ = world_.open(*this, Side::kClient);
}

void Client::refused(const Status& why) { world_.fail(name_ + " was refused by the broker: " + why.message()); }

void Client::job_ended(std::unique_ptr<detail::ClientSession::Job> ended, detail::JobOutcome outcome) {
  Job& job = jobs_.at(ended->id - 1);
  if (job.state == Job::State::kCancelled) return;
  job.ended = world_.now();
  if (outcome.error.is_ok()) {
    job.state = Job::State::kDone;
    return;
  }
  job.state = Job::State::kFailed;
  job.error = outcome.error.code();
  job.error_message = outcome.error.message();
  // Which chunk: the one the broker's message or the task error names.
  if (outcome.task_error) {
    job.failed_chunk = static_cast<std::size_t>(outcome.task_error->index) / job.chunksize;
  } else if (const auto at = job.error_message.find("chunk "); at != std::string::npos) {
    job.failed_chunk = std::strtoull(job.error_message.c_str() + at + 6, nullptr, 10);
  }
  world_.trace(name_ + " job " + std::to_string(job.id) + " fails: " + job.error_message);
}

void Client::on_message(Socket& socket, Frames& frames) {
  if (&socket != socket_ || left_) return;
  session_.on_message(world_.now(), frames);
  pass();
}

void Client::pass() {
  if (left_ || !alive()) return;
  session_.pass(world_.now());
  if (session_.chunks_in_flight() > session_.window_now()) {
    world_.fail(name_ + " has " + std::to_string(session_.chunks_in_flight()) + " chunks in flight, its window is " +
                std::to_string(session_.window_now()));
  }
  if (leave_when_done_ && finished()) {
    session_.goodbye();
    left_ = true;
    world_.trace(name_ + " leaves (DISCONNECT)");
    return;
  }
  schedule_pass();
}

void Client::schedule_pass() {
  const Time at = std::max(session_.next_pass(), world_.now() + milliseconds(1));
  if (at == pass_at_) return;
  pass_at_ = at;
  world_.at(std::chrono::ceil<milliseconds>(at - world_.now()), [this, at] {
    if (at == pass_at_) pass();
  }, this);
}

void Client::cancel_one() {
  for (Job& job : jobs_) {
    if (job.state != Job::State::kRunning) continue;
    ++world_.stats().cancels;
    world_.trace(name_ + " cancels job " + std::to_string(job.id));
    job.state = Job::State::kCancelled;
    session_.fail_job(job.id, detail::JobOutcome{{}, Status(ErrorCode::kCancelled, "cancelled"), std::nullopt});
    pass();
    return;
  }
}

void Client::vanish() {
  ++world_.stats().vanished_clients;
  world_.trace("fault: " + name_ + " vanishes without a word");
  vanished_ = true;
  world_.kill(*this);
}

// --- Forger -----------------------------------------------------------------------------------

Forger::Forger(World& world, const std::vector<Supervisor*>& supervisors, std::string name)
    : Peer(world, std::move(name)), supervisors_(supervisors) {}

void Forger::start(Time until) {
  until_ = until;
  socket_ = world_.open(*this, Side::kWorker);
  client_socket_ = world_.open(*this, Side::kClient);
  world_.at(world_.rng().ms(20, 200), [this] { strike(); }, this);
}

void Forger::strike() {
  if (world_.now() > until_) return;
  ++world_.stats().forged;
  // It knows what status shows, the public (high) half of each real instance id, and sometimes a
  // whole one (a neighbour that read it somewhere): neither may make the broker believe it.
  std::uint64_t instance = world_.rng().next();
  std::vector<WorkerProcess*> processes;
  for (const Supervisor* supervisor : supervisors_) {
    if (supervisor->alive()) {
      for (WorkerProcess* p : supervisor->processes()) processes.push_back(p);
    }
  }
  std::uint64_t running = static_cast<std::uint64_t>(world_.rng().between(0, 400));
  if (!processes.empty()) {
    const WorkerProcess* victim = processes[world_.rng().below(processes.size())];
    const std::uint64_t real = victim->instance();
    if (world_.rng().chance(0.5)) running = victim->running_ticket();  // as if it could read the progress slot
    instance = world_.rng().chance(0.5) ? real : (real & 0xffffffff00000000ULL) | (world_.rng().next() & 0xffffffffULL);
  }
  switch (world_.rng().below(5)) {
    case 0: {  // a result for a chunk it was never given
      proto::WorkerResult result{running, {}, instance,
                                 static_cast<std::uint32_t>(world_.rng().between(1, 8)), {}};
      Frames out = message(Command::kWorkerResult, result);
      std::vector<std::uint64_t> values(result.count + 1, 0);
      out.push_back(encode_items(values));
      world_.send(*socket_, std::move(out));
      break;
    }
    case 1: {  // an exit report for a process that is not its own
      proto::WorkerExited report{"forged", 1, instance, world_.rng().next() | 1, true, "forged", running};
      world_.send(*socket_, message(Command::kWorkerExited, report));
      break;
    }
    case 2: {  // garbage
      Frames out;
      out.emplace_back("PMxx", 4);
      out.emplace_back("garbage", 7);
      world_.send(*socket_, std::move(out));
      break;
    }
    case 3:  // a client's command on the worker socket
      world_.send(*socket_, message(Command::kHello, proto::Hello{"forger", 1}));
      break;
    default: {  // a real command with a header of random bytes and random frames, on either socket
      static constexpr Command kCommands[] = {
          Command::kHello,       Command::kSubmit,        Command::kCancel,       Command::kStatusRequest,
          Command::kContext,     Command::kReject,        Command::kReady,        Command::kWorkerResult,
          Command::kWorkerExited, Command::kWorkerProgress, Command::kCredit,      Command::kHeartbeat,
          Command::kDisconnect,  Command::kResult,        Command::kTask};
      Frames out;
      out.push_back(wire::signature_message(kCommands[world_.rng().below(std::size(kCommands))]));
      const auto frames = world_.rng().between(0, 4);
      for (std::int64_t f = 0; f < frames; ++f) {
        std::string bytes(static_cast<std::size_t>(world_.rng().between(0, 48)), '\0');
        for (char& c : bytes) c = static_cast<char>(world_.rng().below(256));
        out.emplace_back(bytes.data(), bytes.size());
      }
      world_.send(world_.rng().chance(0.5) ? *socket_ : *client_socket_, std::move(out));
    }
  }
  world_.at(world_.rng().ms(20, 300), [this] { strike(); }, this);
}

}  // namespace poolmap::sim
