#include "scheduler.hpp"

#include <algorithm>

namespace poolmap::detail {

namespace {
// Task kinds listed in an error message before "and N more".
constexpr std::size_t kKindsListed = 16;
}  // namespace

bool Scheduler::Worker::can_run(KindId kind) const { return std::binary_search(kinds.begin(), kinds.end(), kind); }

Scheduler::KindId Scheduler::kind(std::string_view name, std::string_view signature) {
  // Chunk after chunk of one job name the same kind: that one is compared first, before the key
  // is built and hashed.
  if (last_kind_ < kinds_.size() && kinds_[last_kind_].name == name && kinds_[last_kind_].signature == signature) {
    return last_kind_;
  }
  std::string key;
  key.reserve(name.size() + signature.size() + 1);
  key.append(name).append(1, '\n').append(signature);
  const auto [it, added] = kind_ids_.try_emplace(std::move(key), static_cast<KindId>(kinds_.size()));
  if (added) kinds_.push_back(Kind{std::string(name), std::string(signature), 0, {}});
  last_kind_ = it->second;
  return it->second;
}

Scheduler::WorkerHandle Scheduler::add_worker(std::uint32_t credit, const std::vector<proto::TaskInfo>& tasks,
                                              Clock::time_point now, bool on_probation) {
  const WorkerHandle handle = next_worker_++;
  Worker worker;
  worker.credit = credit;
  if (on_probation && credit > 0) {
    worker.on_probation = true;
    worker.withheld = credit - 1;
    worker.credit = 1;
  }
  for (const auto& task : tasks) worker.kinds.push_back(kind(task.name, task.signature));
  std::sort(worker.kinds.begin(), worker.kinds.end());
  worker.kinds.erase(std::unique(worker.kinds.begin(), worker.kinds.end()), worker.kinds.end());
  for (const KindId id : worker.kinds) {
    ++kinds_[id].capable_workers;
    kinds_[id].last_seen = now;
  }
  if (worker.on_probation) {
    probation_.push_back(handle);
  } else {
    if (credit > 0) idle_.push_back(handle);
    for (std::uint32_t i = 1; i < credit; ++i) prefetch_.push_back(handle);
  }
  workers_.emplace(handle, std::move(worker));
  return handle;
}

void Scheduler::prove(WorkerHandle handle, bool idle) {
  const auto found = workers_.find(handle);
  if (found == workers_.end() || !found->second.on_probation) return;
  Worker& worker = found->second;
  worker.on_probation = false;
  std::erase(probation_, handle);  // its units are listed anew below
  worker.credit += std::exchange(worker.withheld, 0);
  for (std::uint32_t i = 0; i < worker.credit; ++i) (i == 0 && idle ? idle_ : prefetch_).push_back(handle);
}

bool Scheduler::on_probation(WorkerHandle handle) const {
  const auto found = workers_.find(handle);
  return found != workers_.end() && found->second.on_probation;
}

void Scheduler::remove_worker(WorkerHandle handle, Clock::time_point now) {
  const auto found = workers_.find(handle);
  if (found == workers_.end()) return;
  for (const KindId id : found->second.kinds) {
    --kinds_[id].capable_workers;
    kinds_[id].last_seen = now;
  }
  workers_.erase(found);  // its credit entries are skipped lazily
}

void Scheduler::return_credit(WorkerHandle handle, bool idle) {
  const auto found = workers_.find(handle);
  if (found == workers_.end()) return;
  if (found->second.owed > 0) {
    --found->second.owed;
    return;
  }
  ++found->second.credit;
  (found->second.on_probation ? probation_ : idle ? idle_ : prefetch_).push_back(handle);
}

void Scheduler::take_credit(WorkerHandle handle) {
  const auto found = workers_.find(handle);
  if (found == workers_.end()) return;
  if (found->second.credit > 0) {
    --found->second.credit;  // its entry is skipped lazily
  } else {
    ++found->second.owed;
  }
}

void Scheduler::change_credit(WorkerHandle handle, std::int64_t delta, bool idle) {
  const auto found = workers_.find(handle);
  if (found == workers_.end()) return;
  Worker& worker = found->second;
  if (worker.on_probation) {  // it keeps its one unit; the rest comes with prove()
    worker.withheld = static_cast<std::uint32_t>(
        std::clamp<std::int64_t>(static_cast<std::int64_t>(worker.withheld) + delta, 0, proto::kMaxCredit));
    return;
  }
  if (delta < 0) {
    const auto lowered = static_cast<std::uint64_t>(-delta);
    const auto dropped = std::min<std::uint64_t>(lowered, worker.credit);
    worker.credit -= static_cast<std::uint32_t>(dropped);  // their entries are skipped lazily
    worker.owed += static_cast<std::uint32_t>(lowered - dropped);
    return;
  }
  auto raised = static_cast<std::uint64_t>(delta);
  const auto repaid = std::min<std::uint64_t>(raised, worker.owed);
  worker.owed -= static_cast<std::uint32_t>(repaid);
  raised -= repaid;
  // An idle worker with credit already has its one entry in idle_ (from add_worker or
  // return_credit); one without gets it now. Every other new unit is prefetch.
  const bool needs_idle_entry = idle && worker.credit == 0;
  for (std::uint64_t i = 0; i < raised; ++i) {
    ++worker.credit;
    (needs_idle_entry && i == 0 ? idle_ : prefetch_).push_back(handle);
  }
}

void Scheduler::enqueue(const ClientId& client_id, Ticket ticket, KindId kind_id, bool front) {
  ClientQueue& client = clients_[client_id];
  auto queue = std::find_if(client.by_kind.begin(), client.by_kind.end(),
                            [kind_id](const auto& entry) { return entry.first == kind_id; });
  if (queue == client.by_kind.end()) {
    client.by_kind.emplace_back(kind_id, std::deque<Ticket>{});
    queue = std::prev(client.by_kind.end());
  }
  if (front) {
    queue->second.push_front(ticket);
  } else {
    queue->second.push_back(ticket);
  }
  queued_.insert(ticket);
  if (!client.in_ring) {
    client.in_ring = true;
    if (front) {
      ring_.push_front(client_id);
    } else {
      ring_.push_back(client_id);
    }
  }
}

void Scheduler::forget(Ticket ticket) { queued_.erase(ticket); }

void Scheduler::remove_client(const ClientId& client_id) {
  const auto found = clients_.find(client_id);
  if (found == clients_.end()) return;
  for (const auto& [kind_id, queue] : found->second.by_kind) {
    for (const Ticket ticket : queue) queued_.erase(ticket);
  }
  clients_.erase(found);  // its entry in ring_ is skipped lazily
}

bool Scheduler::has_queued(ClientQueue& client) {
  bool any = false;
  for (auto& [kind_id, queue] : client.by_kind) {
    while (!queue.empty() && !queued_.contains(queue.front())) queue.pop_front();
    any = any || !queue.empty();
  }
  return any;
}

std::optional<Scheduler::Ticket> Scheduler::take_from(ClientQueue& client, const Worker& worker) {
  std::deque<Ticket>* best = nullptr;
  for (auto& [kind_id, queue] : client.by_kind) {
    while (!queue.empty() && !queued_.contains(queue.front())) queue.pop_front();
    if (queue.empty() || !worker.can_run(kind_id)) continue;
    if (best == nullptr || queue.front() < best->front()) best = &queue;
  }
  if (best == nullptr) return std::nullopt;
  const Ticket ticket = best->front();
  best->pop_front();
  queued_.erase(ticket);
  return ticket;
}

std::optional<Scheduler::Assignment> Scheduler::next() {
  if (queued_.empty()) return std::nullopt;
  std::optional<Assignment> chosen;
  std::vector<WorkerHandle> passed;  // credit entries of workers that can run nothing queued now
  for (std::deque<WorkerHandle>* credit : {&idle_, &prefetch_, &probation_}) {
    passed.clear();
    while (!chosen && !credit->empty()) {
      const WorkerHandle handle = credit->front();
      credit->pop_front();
      const auto worker = workers_.find(handle);
      if (worker == workers_.end() || worker->second.credit == 0) continue;  // stale entry
      if (std::find(passed.begin(), passed.end(), handle) != passed.end()) {
        passed.push_back(handle);  // another unit of a worker already passed over
        continue;
      }
      // The first client in turn that has a chunk this worker can run.
      for (std::size_t i = 0; i < ring_.size() && !chosen;) {
        const auto client = clients_.find(ring_[i]);
        if (client == clients_.end() || !has_queued(client->second)) {
          if (client != clients_.end()) client->second.in_ring = false;
          ring_.erase(ring_.begin() + static_cast<std::ptrdiff_t>(i));
          continue;
        }
        if (const auto ticket = take_from(client->second, worker->second)) {
          chosen = Assignment{*ticket, handle};
          --worker->second.credit;
          // Its turn is over: to the back of the ring, or out of it when nothing is left.
          ClientId id = std::move(ring_[i]);
          ring_.erase(ring_.begin() + static_cast<std::ptrdiff_t>(i));
          if (has_queued(client->second)) {
            ring_.push_back(std::move(id));
          } else {
            client->second.in_ring = false;
          }
        } else {
          ++i;
        }
      }
      if (!chosen) passed.push_back(handle);
    }
    // Passed-over entries keep their place, ahead of the others.
    for (auto it = passed.rbegin(); it != passed.rend(); ++it) credit->push_front(*it);
    if (chosen) break;
  }
  return chosen;
}

Scheduler::Runnability Scheduler::runnable(KindId kind_id, Clock::time_point now) const {
  const Kind& wanted = kinds_.at(kind_id);
  if (wanted.capable_workers > 0 || workers_.empty()) {
    return {wanted.capable_workers > 0 ? Verdict::kRunnable : Verdict::kWait, {}};
  }
  if (now - started_ < grace_) return {Verdict::kWait, {}};
  if (wanted.last_seen != Clock::time_point{} && now - wanted.last_seen < std::max(grace_, kReplacementGrace)) {
    return {Verdict::kWait, {}};
  }
  std::vector<const Kind*> same_name;
  std::vector<const Kind*> available;
  for (const Kind& other : kinds_) {
    if (other.capable_workers == 0) continue;
    (other.name == wanted.name ? same_name : available).push_back(&other);
  }
  auto list = [](const std::vector<const Kind*>& kinds, bool with_name) {
    std::string out;
    for (std::size_t i = 0; i < kinds.size() && i < kKindsListed; ++i) {
      out += (i == 0 ? "" : ", ") + (with_name ? kinds[i]->name + " " : std::string()) + kinds[i]->signature;
    }
    if (kinds.size() > kKindsListed) out += " and " + std::to_string(kinds.size() - kKindsListed) + " more";
    return out.empty() ? std::string("none") : out;
  };
  const std::string registered = std::to_string(workers_.size()) + " worker" + (workers_.size() == 1 ? "" : "s");
  if (!same_name.empty()) {
    return {Verdict::kSignatureMismatch,
            "task '" + wanted.name + "' is " + list(same_name, false) + " on the registered workers, but the client " +
                "called it as " + wanted.signature + " (" + registered +
                "; build the client and the task library from the same task declarations)"};
  }
  return {Verdict::kUnknownTask, "no registered worker has task '" + wanted.name + "' (" + registered +
                                     " have: " + list(available, true) + ")"};
}

std::vector<std::pair<Scheduler::Ticket, Scheduler::Runnability>> Scheduler::take_unrunnable(Clock::time_point now) {
  std::vector<std::pair<Ticket, Runnability>> out;
  for (auto& [client_id, client] : clients_) {
    for (auto& [kind_id, queue] : client.by_kind) {
      if (queue.empty()) continue;
      const Runnability verdict = runnable(kind_id, now);
      if (verdict.verdict != Verdict::kUnknownTask && verdict.verdict != Verdict::kSignatureMismatch) continue;
      for (const Ticket ticket : queue) {
        if (queued_.erase(ticket) != 0) out.emplace_back(ticket, verdict);
      }
      queue.clear();
    }
  }
  return out;
}

}  // namespace poolmap::detail
