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
// A chunk in the trace: "c1 j2 items 4+2".
std::string describe(const std::vector<std::uint64_t>& items, std::uint64_t first_index, std::uint32_t count) {
  std::string out;
  if (!items.empty()) {
    const ChunkKey key = key_of(items.front(), first_index);
    out = "c" + std::to_string(key.client) + " j" + std::to_string(key.job) + " ";
  }
  return out + "items " + std::to_string(first_index) + "+" + std::to_string(count);
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
      credit_(static_cast<std::uint32_t>(world.rng().between(1, 3))),
      pair_(world.pair()) {
  if (pair_) {
    endpoints_ = world.endpoints();
    passive_at_.resize(endpoints_.size());
  }
}

void WorkerProcess::start() {
  if (pair_) {
    connect_to(0, "");
  } else {
    register_again(nullptr);
  }
  world_.at(world_.heartbeat(), [this] { heartbeat(); }, this);
}

void WorkerProcess::connect_to(std::size_t index, const std::string& why) {
  if (!why.empty()) {
    world_.trace(name_ + (index == current_ ? " registers again with broker " : " turns to broker ") + endpoints_[index] +
                 ": " + why + " (holds " + std::to_string(queue_.size() + (running_ ? 1 : 0)) + " chunks, " +
                 std::to_string(unconfirmed_.size()) + " unconfirmed answers)");
  }
  if (socket_ != nullptr) world_.close(socket_);
  current_ = index;
  socket_ = world_.open(*this, Side::kWorker, endpoints_[index]);
  ++generation_;
  // What an earlier connection sent it and it still holds: the running chunk, then the queued ones.
  std::vector<proto::HeldChunk> held;
  if (running_) {
    held.push_back({running_->header.ticket, running_->header.origin, true});
    running_->listed = generation_;
  }
  for (Held& h : queue_) {
    if (held.size() >= proto::kMaxCredit) break;
    held.push_back({h.header.ticket, h.header.origin, false});
    h.listed = generation_;
  }
  // Known issue: a broker that took over more than the two intervals it holds resent chunks back
  // ago does not wait for this READY: what it holds (and its answers) may run again.
  const int broker = static_cast<int>(index);
  const auto since = world_.active_since(broker);
  // (The READY reaches it a connection's set-up, up to 5 ms, and a network delay from now.)
  if (world_.acting(broker) && since && world_.now() + milliseconds(5) + world_.max_delay > *since + 2 * world_.heartbeat()) {
    for (const Held& h : queue_) {
      if (!h.items.empty()) ledger_.known(key_of(h.items.front(), h.header.first_index), kKnownLateOrphan);
    }
    if (running_ && !running_->items.empty()) {
      ledger_.known(key_of(running_->items.front(), running_->header.first_index), kKnownLateOrphan);
    }
    for (const Unconfirmed& kept : unconfirmed_) {
      if (kept.chunk) ledger_.known(*kept.chunk, kKnownLateOrphan);
    }
  }
  proto::Ready ready{"host-" + name_.substr(0, name_.find('/')), pid_, credit_, instance_, supervisor_id_, tasks_,
                     generation_, newest_epoch_, std::move(held)};
  send(message(Command::kReady, ready));
  // The answers its last broker may not have read, again.
  const Time now = world_.now();
  for (Unconfirmed& kept : unconfirmed_) {
    kept.sent = now;
    note_late_orphan(kept.chunk);
    if (kept.chunk) {
      answers_sent_.push_back({*kept.chunk, broker, world_.incarnation(broker), now});
      if (answers_sent_.size() > 64) answers_sent_.pop_front();
    }
    // Known issue: a kContextMissing for a chunk it holds now (sent to it again since) goes again.
    if (kept.refused) ledger_.known(*kept.refused, kKnownStaleRefusal);
    Frames copy;
    for (const auto& frame : *kept.frames) copy.emplace_back(frame.data(), frame.size());
    send(std::move(copy));
  }
  last_heard_ = last_sent_ = now;
  heard_ = false;
  turn_.reset();
  asked_since_ = now;
  vote_left_ = false;
  schedule_loss_check();
}

void WorkerProcess::on_passive() {
  const Time now = world_.now();
  passive_at_[current_] = now;
  if (turn_) return;  // a PASSIVE again while waiting to turn: already said
  const std::size_t next = (current_ + 1) % endpoints_.size();
  const auto half = world_.heartbeat() / 2;
  Time at = now;
  if (passive_at_[next] && now - *passive_at_[next] < half) at = *passive_at_[next] + half;
  turn_ = Turn{next, at};
  const std::string why = "broker " + endpoints_[current_] + " is the passive one of its pair";
  if (at <= now) return connect_to(next, why);
  world_.at(std::chrono::ceil<milliseconds>(at - now), [this, generation = generation_, why] {
    if (generation == generation_ && turn_ && world_.now() >= turn_->at) connect_to(turn_->endpoint, why);
  }, this);
}

void WorkerProcess::send_answer(Frames frames, const proto::Origin& origin, std::optional<ChunkKey> chunk,
                                std::optional<ChunkKey> refused) {
  if (pair_ && chunk) {
    const int broker = static_cast<int>(current_);
    answers_sent_.push_back({*chunk, broker, world_.incarnation(broker), world_.now()});
    if (answers_sent_.size() > 64) answers_sent_.pop_front();
  }
  if (pair_ && origin.session != 0) {  // one a next broker can match: kept until confirmed
    auto kept = std::make_shared<Frames>();
    for (const auto& frame : frames) kept->emplace_back(frame.data(), frame.size());
    unconfirmed_.push_back({world_.now(), std::move(kept), chunk, refused});
    while (unconfirmed_.size() > 4096) unconfirmed_.pop_front();
  }
  send(std::move(frames));
}

void WorkerProcess::note_late_orphan(const std::optional<ChunkKey>& chunk) {
  if (!chunk) return;
  const int broker = static_cast<int>(current_);
  const auto since = world_.active_since(broker);
  if (world_.acting(broker) && since && world_.now() - *since > 2 * world_.heartbeat() * world_.options().heartbeat_liveness) {
    ledger_.known(*chunk, kKnownLateOrphan);
  }
}

void WorkerProcess::forget_confirmed() {
  // As worker_process.cpp's forget_confirmed(): what was sent a liveness period before the broker
  // last spoke has been read (a loaded broker reads late).
  const auto margin = world_.heartbeat() * world_.options().heartbeat_liveness;
  while (!unconfirmed_.empty() && unconfirmed_.front().sent < last_heard_ - margin) unconfirmed_.pop_front();
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

bool WorkerProcess::look_for_loss() {
  const auto expiry = world_.heartbeat() * world_.options().heartbeat_liveness;
  const Time now = world_.now();
  const std::size_t next = (current_ + 1) % endpoints_.size();
  const auto ms = [](Clock::duration d) { return std::to_string(std::chrono::duration_cast<milliseconds>(d).count()); };
  if (turn_) {
    if (now < turn_->at) return false;
    connect_to(turn_->endpoint, "broker " + endpoints_[current_] + " is the passive one of its pair");
  } else if (heard_ && now - last_heard_ > expiry) {
    // Lost: the chunks it holds stay (queued ones run on); the READY to the other lists them.
    connect_to(next, "heard nothing from broker " + endpoints_[current_] + " for " + ms(now - last_heard_) + " ms");
  } else if (endpoints_.size() > 1 && !heard_ && now - asked_since_ > expiry) {
    connect_to(next, "no answer from broker " + endpoints_[current_] + " for " + ms(now - asked_since_) + " ms");
  } else {
    return false;
  }
  return true;
}

// As the real worker's loop, which wakes just past the broker's liveness period (counted from
// when it was last heard, or asked) to look for its loss, not only at the next heartbeat.
void WorkerProcess::schedule_loss_check() {
  const auto expiry = world_.heartbeat() * world_.options().heartbeat_liveness;
  const Time due = (heard_ ? last_heard_ : asked_since_) + expiry + milliseconds(1);
  if (loss_check_at_ && *loss_check_at_ <= due && *loss_check_at_ >= world_.now()) return;  // it looks again then
  loss_check_at_ = due;
  world_.at(std::chrono::ceil<milliseconds>(due - world_.now()), [this, due] {
    if (!loss_check_at_ || *loss_check_at_ != due) return;
    loss_check_at_.reset();
    if (!look_for_loss()) schedule_loss_check();
  }, this);
}

void WorkerProcess::heartbeat() {
  const auto expiry = world_.heartbeat() * world_.options().heartbeat_liveness;
  if (pair_) {
    const Time now = world_.now();
    const bool turned = look_for_loss();
    if (!turned && now - last_sent_ >= world_.heartbeat()) send(wire::make_empty(Command::kHeartbeat));
    if (world_.rng().chance(0.02)) {  // adaptive prefetch
      credit_ = static_cast<std::uint32_t>(world_.rng().between(1, 4));
      send(message(Command::kCredit, proto::Credit{credit_}));
    }
    world_.at(world_.heartbeat(), [this] { heartbeat(); }, this);
    return;
  }
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
  if (pair_) {
    // A broker of an older epoch than one seen has lost its place to its peer: what it says is
    // void, and it is not even heard (its silence turns this process to the peer).
    const std::uint64_t epoch = proto::epoch_of(wire::view(frames[0]));
    if (epoch < newest_epoch_) {
      if (!stale_logged_) {
        world_.trace(name_ + " ignores broker " + endpoints_[current_] + ": its epoch " + std::to_string(epoch) +
                     " is older than " + std::to_string(newest_epoch_));
        stale_logged_ = true;
      }
      return;
    }
    if (epoch > newest_epoch_) stale_logged_ = false;
    newest_epoch_ = epoch;
  }
  last_heard_ = world_.now();
  const auto command = proto::parse_signature(wire::view(frames[0]));
  if (!command) return world_.fail(name_ + " got a message without a signature");
  if (pair_) {
    heard_ = true;
    schedule_loss_check();
    if (command.value() == Command::kPassive) return on_passive();
    if (command.value() == Command::kDisconnect) {  // known issue: it confirms what no broker read
      const auto margin = world_.heartbeat() * world_.options().heartbeat_liveness;
      for (const Unconfirmed& kept : unconfirmed_) {
        if (kept.sent < last_heard_ - margin && kept.chunk) ledger_.known(*kept.chunk, kKnownDisconnect);
      }
    }
    forget_confirmed();  // this broker read what was sent well before it spoke
  }
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
          std::optional<ChunkKey> refused;
          if (frames[i + 1].size() >= sizeof(std::uint64_t)) {
            refused = key_of(decode_items(frames[i + 1]).front(), header.value().first_index);
          }
          send_answer(std::move(out), header.value().origin, std::nullopt, refused);
          continue;
        }
        queue_.push_back({header.value(), decode_items(frames[i + 1]), false, generation_});
        // What a liar holds is taken back when a client rejects any of its answers, also what it
        // got after the answer the REJECT names (each REJECT drops the liar it names: found when
        // a chunk sent again after a REJECT stopped naming the rejected delivery).
        if (kind_ == Kind::kLiar && !queue_.back().items.empty()) {
          auto& fate = ledger_.fates[key_of(queue_.back().items.front(), header.value().first_index)];
          if (pair_) ++fate.excuses;
          ++fate.disruptions;  // and its loss costs them a retry
        }
        // Known issue: the broker took the vote it held on this connection, which this process is
        // about to leave (told PASSIVE while its vote was held): what it sends here is sent twice.
        if (turn_ && vote_left_ && !queue_.back().items.empty()) {
          ledger_.known(key_of(queue_.back().items.front(), header.value().first_index), kKnownHeldVote);
        }
        world_.trace(name_ + " gets ticket " + std::to_string(header.value().ticket % 100000) + " (" +
                     describe(queue_.back().items, header.value().first_index, header.value().count) + ")");
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
        // The real worker echoes the chunk's origin here too (the single broker's model did not).
        const proto::Origin origin = pair_ ? queued->header.origin : proto::Origin{};
        proto::WorkerResult dropped{abandon.value().ticket, {ErrorCode::kCancelled, 0, {}, "abandoned", "", pid_, 0},
                                    instance_, 0, origin};
        queue_.erase(queued);
        Frames out = message(Command::kWorkerResult, dropped);
        out.emplace_back();
        send_answer(std::move(out), origin, std::nullopt);
      } else if (running_ && running_->header.ticket == abandon.value().ticket) {
        running_->abandoned = true;
      }
      return;
    }
    case Command::kDisconnect:
      if (pair_) {
        if (turn_) return;  // turning to the other broker anyway
        // The broker has given the queued chunks to others; the running one is listed in READY.
        queue_.clear();
        return connect_to(current_, "broker " + endpoints_[current_] + " said DISCONNECT");
      }
      return register_again("the broker said DISCONNECT");
    case Command::kError: {
      auto error = proto::decode<proto::ErrorReply>(wire::view(frames[1]));
      if (error && error.value().code == ErrorCode::kUnavailable) {  // refused READY: try again later
        if (pair_) {
          world_.at(world_.heartbeat(), [this, generation = generation_] {
            if (generation == generation_) connect_to(current_, "its READY was refused");
          }, this);
          return;
        }
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
    if (++fate.executions > 1) {
      ++world_.stats().re_executions;
      const Time now = world_.now();
      if (std::any_of(ledger_.rerun_windows.begin(), ledger_.rerun_windows.end(),
                      [&](const auto& window) { return now >= window.first && now <= window.second; })) {
        ++fate.excuses;
      }
      world_.trace(name_ + " runs ticket " + std::to_string(running_->header.ticket % 100000) + " (" +
                   describe(items, running_->header.first_index, running_->header.count) + "), execution " +
                   std::to_string(fate.executions));
    }
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
  world_.trace(name_ + " answers ticket " + std::to_string(ticket % 100000) + " (" +
               describe(held.items, held.header.first_index, held.header.count) + ")");
  Frames out = message(Command::kWorkerResult, result);
  if (pair_ && held.generation != generation_ && !held.items.empty()) {
    note_late_orphan(key_of(held.items.front(), held.header.first_index));
  }
  if (pair_ && held.listed == generation_ && !held.items.empty()) {
    ledger_.listed_then_answered.insert(key_of(held.items.front(), held.header.first_index));
  }
  if (kind_ == Kind::kDuplicator) {
    Frames again = message(Command::kWorkerResult, result);
    again.emplace_back().copy(payload);
    out.push_back(std::move(payload));
    send_answer(std::move(out), held.header.origin,
                held.items.empty() ? std::nullopt : std::optional(key_of(held.items.front(), held.header.first_index)));
    ++world_.stats().duplicated;
    send(std::move(again));
  } else {
    out.push_back(std::move(payload));
    send_answer(std::move(out), held.header.origin,
                held.items.empty() ? std::nullopt : std::optional(key_of(held.items.front(), held.header.first_index)));
  }
  run_next();
}

void WorkerProcess::lost_on_the_wire(const Frames& frames, Lost why) {
  if (frames.size() < 3) return;
  const auto command = proto::parse_signature(wire::view(frames[0]));
  if (!command || command.value() != Command::kWorkerResult) return;
  for (std::size_t i = 1; i + 1 < frames.size(); i += 2) {
    const auto result = proto::decode<proto::WorkerResult>(wire::view(frames[i]));
    if (!result) continue;
    if (const auto key = answered_.find(result.value().ticket); key != answered_.end()) {
      auto& fate = ledger_.fates[key->second];
      ++fate.disruptions;
      // (pair) Lost with a broker that is gone, or on a connection this process closed to turn to the
      // other: it is sent again after the next READY (unconfirmed), so only a cut link excuses a rerun.
      if (pair_ && why == Lost::kLinkDropped) ++fate.excuses;
    }
  }
}

void WorkerProcess::disrupted(bool excuse) {
  auto hit = [&](const Held& held) {
    if (held.items.empty()) return;
    auto& fate = ledger_.fates[key_of(held.items.front(), held.header.first_index)];
    ++fate.disruptions;
    if (pair_ && excuse) ++fate.excuses;
  };
  if (pair_ && excuse) {  // the answers only it has cannot go to the next broker meanwhile
    for (const Unconfirmed& kept : unconfirmed_) {
      if (kept.chunk) ++ledger_.fates[*kept.chunk].excuses;
    }
  }
  for (const Held& held : queue_) hit(held);
  if (running_) hit(*running_);
}

void WorkerProcess::at_risk(std::uint32_t issue) {
  if (issue == kKnownHeldVote) vote_left_ = true;
  if (issue == kKnownLateOrphan) world_.trace("KNOWN ISSUE: " + name_ + "'s READY comes after the resent chunks' hold");
  auto mark = [&](const Held& held) {
    if (!held.items.empty()) ledger_.known(key_of(held.items.front(), held.header.first_index), issue);
  };
  for (const Held& held : queue_) mark(held);
  if (running_) mark(*running_);
  for (const Unconfirmed& kept : unconfirmed_) {
    if (kept.chunk) ledger_.known(*kept.chunk, issue);
  }
}

void WorkerProcess::core_lost(int broker, std::uint64_t incarnation) {
  const auto recent = world_.now() - 2 * world_.heartbeat() * world_.options().heartbeat_liveness;
  for (const Answered& answer : answers_sent_) {
    if (answer.broker == broker && answer.incarnation == incarnation && answer.when >= recent) {
      ++ledger_.fates[answer.chunk].failover;
    }
  }
}

void WorkerProcess::dies() {
  if (!pair_) return;
  for (const Unconfirmed& kept : unconfirmed_) {
    if (kept.chunk) ++ledger_.fates[*kept.chunk].excuses;
  }
}

void WorkerProcess::crash(const std::string& cause) {
  if (!alive()) return;
  dies();
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
      if (pair_) ++fate.excuses;
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
  if (world_.pair()) {  // a socket per broker, as the real supervisor: only the active one acts on a report
    for (const std::string& endpoint : world_.endpoints()) sockets_.push_back(world_.open(*this, Side::kWorker, endpoint));
  } else {
    sockets_.push_back(world_.open(*this, Side::kWorker));
  }
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
    for (Socket* socket : sockets_) world_.send(*socket, message(Command::kWorkerExited, report));
  }, this);
  world_.at(world_.rng().ms(20, 400), [this] { spawn(); }, this);
}

void Supervisor::lost_on_the_wire(const Frames& frames, Lost) {
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
    process->dies();
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
  Sink(World& world, Ledger& ledger, const Client& client, Client::Job& job, std::string name)
      : world_(world), ledger_(ledger), client_(client), job_(job), name_(std::move(name)) {}
  Status take(std::size_t first_index, std::uint32_t count, std::span<const std::byte> bytes) override {
    if (client_.stale_) {
      world_.fail(name_ + " job " + std::to_string(job_.id) + " chunk " + std::to_string(first_index / job_.chunksize) +
                  ": took a result from a broker whose epoch is older than one it saw");
    }
    if (bytes.size() != (std::size_t{count} + 1) * sizeof(std::uint64_t)) {
      ++world_.stats().rejects;
      ++ledger_.fates[{client_.number(), job_.id, first_index}].rejected;
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
  Ledger& ledger_;
  const Client& client_;
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
                                              .endpoint = world.pair() ? "a,b" : "sim",
                                              .endpoints = world.endpoints(),
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
    request.sink = std::make_shared<Sink>(world_, ledger_, *this, spec, name_);
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
  if (world_.pair() && frames.size() >= 3) {
    const auto command = proto::parse_signature(wire::view(frames[0]));
    for (std::size_t i = 1; command && command.value() == Command::kSubmit && i + 1 < frames.size(); i += 2) {
      const auto submit = proto::decode<proto::Submit>(wire::view(frames[i]));
      if (!submit) continue;
      const bool resent = (submit.value().flags & proto::kResent) != 0;
      auto& last = submitted_[{submit.value().job, submit.value().chunk}];
      // Sent to an earlier connection (or marked resent on this one), and now again without
      // kResent (a task retry, or after a rejected answer: those must run again); after
      // kResourceExhausted or kContextMissing the client keeps the mark (issue 25 fixed that).
      last = {connections_, resent || (last.second && last.first == connections_)};
      // Sent again while two brokers act (the link between them cut): its worker, or the answer,
      // may be with the other one, which nothing can reach.
      if (resent && world_.acting(0) && world_.acting(1)) {
        if (const auto key = key_of_chunk(submit.value().job, submit.value().chunk)) ++ledger_.fates[*key].failover;
      }
      // Known issue: resent to a broker that became active more than the two heartbeat intervals
      // it holds resent chunks back ago (it took over on an earlier vote, or while the link
      // between the two was cut): it does not wait for the worker that holds the chunk.
      const auto since = world_.active_since(socket_->broker);
      if (resent && world_.acting(socket_->broker) && since && world_.now() - *since > 2 * world_.heartbeat()) {
        if (const auto key = key_of_chunk(submit.value().job, submit.value().chunk)) ledger_.known(*key, kKnownLateOrphan);
      }
    }
  }
  world_.send(*socket_, std::move(frames));
  frames.clear();
  return true;
}

void Client::open_connection(const std::string& endpoint) {
  if (socket_ != nullptr) {
    world_.trace(name_ + " opens a new connection" + (world_.pair() ? " to broker " + endpoint : std::string()) +
                 " (HELLO, then every unanswered chunk again)");
  }
  world_.close(socket_);
  socket_ = world_.open(*this, Side::kClient, endpoint);
  ++connections_;
}

void Client::disrupted() {
  for (const Job& job : jobs_) {
    if (job.state != Job::State::kRunning) continue;
    for (std::size_t c = 0; c < job.chunks(); ++c) {
      if (!job.results[c]) ++ledger_.fates[{number_, job.id, c * job.chunksize}].excuses;
    }
  }
}

void Client::at_risk(std::uint32_t issue) {
  for (const Job& job : jobs_) {
    if (job.state != Job::State::kRunning) continue;
    for (std::size_t c = 0; c < job.chunks(); ++c) {
      if (!job.results[c]) ledger_.known({number_, job.id, c * job.chunksize}, issue);
    }
  }
}

std::optional<ChunkKey> Client::key_of_chunk(std::uint64_t job, std::uint64_t chunk) const {
  if (job == 0 || job > jobs_.size()) return std::nullopt;
  const Job& spec = jobs_[job - 1];
  if (chunk >= spec.chunks()) return std::nullopt;
  return ChunkKey{number_, job, chunk * spec.chunksize};
}

void Client::refused(const Status& why) { world_.fail(name_ + " was refused by the broker: " + why.message()); }

void Client::job_ended(std::unique_ptr<detail::ClientSession::Job> ended, detail::JobOutcome outcome) {
  Job& job = jobs_.at(ended->id - 1);
  if (stale_) world_.fail(name_ + " job " + std::to_string(job.id) + " ended on a message of an older epoch than one it saw");
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
  if (world_.pair() && !frames.empty()) {
    // A broker of an older epoch than one the session saw: the session must not act on it. Its
    // answers are lost to the client: their chunks run again at the broker that took over.
    stale_ = proto::epoch_of(wire::view(frames[0])) < session_.newest_epoch();
    if (stale_) {
      const auto command = proto::parse_signature(wire::view(frames[0]));
      if (command && command.value() == Command::kResult) {
        for (std::size_t i = 1; i + 1 < frames.size(); i += 2) {
          const auto result = proto::decode<proto::ClientResult>(wire::view(frames[i]));
          if (!result) continue;
          if (const auto key = key_of_chunk(result.value().job, result.value().chunk)) ++ledger_.fates[*key].failover;
        }
      }
    }
  }
  session_.on_message(world_.now(), frames);
  stale_ = false;
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
  for (const std::string& endpoint : world_.endpoints()) sockets_.push_back(world_.open(*this, Side::kWorker, endpoint));
  for (const std::string& endpoint : world_.endpoints()) {
    client_sockets_.push_back(world_.open(*this, Side::kClient, endpoint));
  }
  world_.at(world_.rng().ms(20, 200), [this] { strike(); }, this);
}

void Forger::strike() {
  if (world_.now() > until_) return;
  ++world_.stats().forged;
  // With a pair, at either broker.
  const std::size_t at = sockets_.size() > 1 ? world_.rng().below(sockets_.size()) : 0;
  Socket* const worker_socket = sockets_[at];
  Socket* const client_socket = client_sockets_[at];
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
      world_.send(*worker_socket, std::move(out));
      break;
    }
    case 1: {  // an exit report for a process that is not its own
      proto::WorkerExited report{"forged", 1, instance, world_.rng().next() | 1, true, "forged", running};
      world_.send(*worker_socket, message(Command::kWorkerExited, report));
      break;
    }
    case 2: {  // garbage
      Frames out;
      out.emplace_back("PMxx", 4);
      out.emplace_back("garbage", 7);
      world_.send(*worker_socket, std::move(out));
      break;
    }
    case 3:  // a client's command on the worker socket
      world_.send(*worker_socket, message(Command::kHello, proto::Hello{"forger", 1}));
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
      world_.send(world_.rng().chance(0.5) ? *worker_socket : *client_socket, std::move(out));
    }
  }
  world_.at(world_.rng().ms(20, 300), [this] { strike(); }, this);
}

}  // namespace poolmap::sim
