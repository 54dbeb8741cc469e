#include "sim.hpp"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "peers.hpp"
#include "wire.hpp"

namespace poolmap::sim {

namespace {

struct Plan {
  int supervisors = 1, clients = 1;
  bool storm = false;  // many short faults, else few long ones
  milliseconds fault_phase{0};
  double faults_per_second = 0;
  bool liar = false, duplicator = false, forger = false;
};

const char* state_name(Client::Job::State state) {
  switch (state) {
    case Client::Job::State::kWaiting: return "waiting";
    case Client::Job::State::kRunning: return "running";
    case Client::Job::State::kDone: return "done";
    case Client::Job::State::kFailed: return "failed";
    case Client::Job::State::kCancelled: return "cancelled";
  }
  return "?";
}

class Run {
 public:
  explicit Run(std::uint64_t seed) : seed_(seed), world_(seed, milliseconds(100)) {}

  RunResult go(std::size_t trace_lines) {
    draw();
    world_.start_broker();
    for (auto* supervisor : supervisors_) supervisor->start();
    if (forger_) forger_->start(world_.now() + plan_.fault_phase);
    for (auto* client : clients_) client->start();
    schedule_faults();
    world_.after_broker_event = [this] { check_step(); };
    world_.on_broker_send = [this](Side side, const std::string& identity, const Frames& frames) {
      check_task_sent(side, identity, frames);
    };
    world_.on_disrupted_delivery = [this](const Frames& frames) { note_disrupted_task(frames); };
    const Time start = world_.now();
    // The faults, then the heal: every fault ends by itself (stops end, links reconnect, the broker
    // comes back, vanished supervisors are replaced); then every map must end within a bound.
    bool ok = world_.run_until(start + plan_.fault_phase);
    const Time healed = start + plan_.fault_phase + kLongestFault;
    const Time deadline = healed + kLivenessBound;
    auto all_done = [this] {
      return std::all_of(clients_.begin(), clients_.end(), [](Client* c) { return c->vanished() || c->finished(); });
    };
    if (ok) ok = world_.run_until(deadline, all_done);
    const Time ended = world_.now();
    if (ok && !all_done()) {
      for (Client* client : clients_) {
        if (client->vanished()) continue;
        for (const auto& job : client->jobs()) {
          if (job.state == Client::Job::State::kRunning || job.state == Client::Job::State::kWaiting) {
            world_.fail("liveness: " + client->name() + " job " + std::to_string(job.id) + " (" +
                        std::to_string(job.items.size()) + " items) has not ended " +
                        std::to_string(std::chrono::duration_cast<milliseconds>(kLivenessBound).count()) +
                        " ms after the last fault healed");
            break;
          }
        }
        if (world_.failed()) break;
      }
      ok = false;
    }
    if (ok) ok = check_jobs();
    // Every client leaves; the broker must then hold nothing for them.
    if (ok) {
      for (Client* client : clients_) client->leave_when_done();
      const auto quiet = 4 * world_.heartbeat() * world_.options().heartbeat_liveness + 3 * world_.heartbeat();
      ok = world_.run_until(std::max(world_.now(), healed) + quiet);
      if (ok) check_broker_empty();
      ok = !world_.failed();
    }
    RunResult result;
    result.passed = ok && !world_.failed();
    result.events = world_.events_run;
    std::ostringstream out;
    out << "seed " << seed_ << ": " << plan_.supervisors << " supervisors, " << clients_.size() << " clients, "
        << (plan_.storm ? "many short faults" : "few long faults") << " for "
        << plan_.fault_phase.count() << " ms" << (plan_.liar ? ", a liar" : "") << (plan_.duplicator ? ", a duplicator" : "")
        << (plan_.forger ? ", a forger" : "") << "; max_retries " << world_.options().max_retries << ", poison_kills "
        << world_.options().poison_kills << ", max_client_chunks " << world_.options().max_client_chunks << "\n";
    const Stats& s = world_.stats();
    out << "  faults: " << s.link_drops << " link drops, " << s.broker_restarts << " broker restarts, " << s.stops
        << " stops, " << s.crashes << " crashes, " << s.supervisor_losses << " supervisors lost, " << s.clock_jumps
        << " clock jumps, " << s.vanished_clients << " clients vanished, " << s.cancels << " cancels, " << s.forged
        << " forged messages, " << s.duplicated << " duplicated results\n";
    out << "  traffic: " << s.messages << " messages, " << s.lost_on_wire << " lost on the wire, " << s.executions
        << " chunk executions (" << s.re_executions << " re-executions), " << s.rejects
        << " results that did not decode; " << world_.events_run << " events, "
        << std::chrono::duration_cast<milliseconds>(ended - start).count() << " ms of virtual time\n";
    for (Client* client : clients_) {
      out << "  " << client->name() << (client->vanished() ? " (vanished)" : "") << ":";
      for (const auto& job : client->jobs()) {
        out << " job " << job.id << " " << job.task.name << " " << job.items.size() << " items " << state_name(job.state);
        if (job.state == Client::Job::State::kFailed) out << " (" << to_string(job.error) << ")";
        out << ";";
      }
      out << "\n";
    }
    out << "  " << (result.passed ? "PASS" : "FAIL") << "\n";
    result.summary = out.str();
    if (!result.passed) {
      result.failure = "seed " + std::to_string(seed_) + " FAILED: " + world_.failure() + "\n  the last " +
                       std::to_string(trace_lines) + " events:\n" + world_.trace_tail(trace_lines);
    }
    return result;
  }

 private:
  static constexpr milliseconds kLongestFault{6000};    // a stop, a broker's downtime, a reconnect
  static constexpr milliseconds kLivenessBound{30000};  // every map ends within this after the heal

  void draw() {
    Rng& rng = world_.rng();
    BrokerOptions& options = world_.options();
    options.heartbeat_liveness = 3;
    options.max_retries = static_cast<int>(rng.between(1, 3));
    options.poison_kills = static_cast<int>(rng.between(2, 3));
    if (rng.chance(0.3)) options.max_client_chunks = static_cast<std::size_t>(rng.between(2, 12));
    if (rng.chance(0.2)) options.max_client_contexts = 1;
    world_.max_delay = rng.ms(0, 20);
    plan_.storm = rng.chance(0.5);
    plan_.fault_phase = rng.ms(1000, 8000);
    plan_.faults_per_second = plan_.storm ? 2.0 + rng.uniform() * 6.0 : 0.2 + rng.uniform() * 0.8;
    plan_.supervisors = static_cast<int>(rng.between(1, 3));
    plan_.clients = static_cast<int>(rng.between(1, 3));
    plan_.liar = rng.chance(0.15);
    plan_.duplicator = rng.chance(0.15);
    plan_.forger = rng.chance(0.2);
    for (int i = 0; i < plan_.supervisors; ++i) {
      const bool both = i == 0 || rng.chance(0.7);
      add_supervisor(both ? std::vector{kSquare, kWithContext} : std::vector{kSquare},
                     static_cast<std::size_t>(rng.between(1, 3)), WorkerProcess::Kind::kHonest);
    }
    if (plan_.liar) add_supervisor({kSquare, kWithContext}, 1, WorkerProcess::Kind::kLiar);
    if (plan_.duplicator) add_supervisor({kSquare, kWithContext}, 1, WorkerProcess::Kind::kDuplicator);
    if (plan_.forger) {
      owned_.push_back(std::make_unique<Forger>(world_, supervisors_, "forger"));
      forger_ = static_cast<Forger*>(owned_.back().get());
    }
    for (int c = 1; c <= plan_.clients; ++c) {
      auto client = std::make_unique<Client>(world_, ledger_, c, static_cast<std::size_t>(rng.between(1, 16)),
                                             "client" + std::to_string(c));
      const int jobs = static_cast<int>(rng.between(1, 6));
      for (int j = 1; j <= jobs; ++j) {
        Client::Job job;
        job.task = rng.chance(0.3) ? kWithContext : kSquare;
        const auto items = static_cast<std::size_t>(rng.between(1, 60));
        job.chunksize = static_cast<std::size_t>(rng.between(1, 8));
        for (std::size_t i = 0; i < items; ++i) job.items.push_back(make_item(c, j, i));
        if (rng.chance(0.08)) job.items[rng.below(items)] |= kPoison;
        if (rng.chance(0.08)) job.items[rng.below(items)] |= kThrows;
        if (rng.chance(0.15)) job.items[rng.below(items)] |= kSlow;
        if (job.task == kWithContext) job.context = "context of job " + std::to_string(j) + std::string(rng.below(64), 'x');
        client->add_job(std::move(job), rng.ms(0, plan_.fault_phase.count()));
      }
      if (rng.chance(0.1)) {
        world_.at(rng.ms(0, plan_.fault_phase.count()), [c = client.get()] { c->cancel_one(); }, client.get());
      }
      if (rng.chance(0.1)) {
        world_.at(rng.ms(0, plan_.fault_phase.count()), [c = client.get()] { c->vanish(); }, client.get());
      }
      clients_.push_back(client.get());
      owned_.push_back(std::move(client));
    }
  }

  Supervisor* add_supervisor(std::vector<proto::TaskInfo> tasks, std::size_t processes, WorkerProcess::Kind kind) {
    owned_.push_back(std::make_unique<Supervisor>(world_, ledger_, std::move(tasks), processes, kind,
                                                  "s" + std::to_string(++supervisors_made_), owned_));
    auto* supervisor = static_cast<Supervisor*>(owned_.back().get());
    supervisors_.push_back(supervisor);
    return supervisor;
  }

  std::vector<WorkerProcess*> live_processes() const {
    std::vector<WorkerProcess*> all;
    for (const Supervisor* s : supervisors_) {
      if (!s->alive()) continue;
      for (WorkerProcess* p : s->processes()) {
        if (p->alive()) all.push_back(p);
      }
    }
    return all;
  }

  // Faults at random moments of the fault phase, each healing by itself within kLongestFault.
  void schedule_faults() {
    Rng& rng = world_.rng();
    const double mean_gap_ms = 1000.0 / plan_.faults_per_second;
    for (double t = rng.uniform() * mean_gap_ms; t < static_cast<double>(plan_.fault_phase.count());
         t += mean_gap_ms * (0.2 + 1.6 * rng.uniform())) {
      world_.at(milliseconds(static_cast<std::int64_t>(t)), [this] { fault(); });
    }
  }

  void fault() {
    Rng& rng = world_.rng();
    const bool short_fault = plan_.storm;
    const auto processes = live_processes();
    switch (rng.below(10)) {
      case 0:
      case 1: {  // a link drops and reconnects
        std::vector<Socket*> sockets;
        for (WorkerProcess* p : processes) sockets.push_back(p->socket());
        if (!sockets.empty()) {
          Socket* socket = sockets[rng.below(sockets.size())];
          static_cast<WorkerProcess*>(socket->owner)->disrupted();
          world_.drop_link(*socket, short_fault ? rng.ms(1, 300) : rng.ms(200, 3000));
        }
        break;
      }
      case 2: {  // a client stops for a while, or its link drops
        std::vector<Client*> live;
        for (Client* c : clients_) {
          if (c->alive() && !c->left()) live.push_back(c);
        }
        if (live.empty()) break;
        Client* client = live[rng.below(live.size())];
        if (rng.chance(0.5)) {
          world_.stop(*client, short_fault ? rng.ms(10, 400) : rng.ms(300, 4000));
        } else {
          world_.drop_link(*client->socket(), short_fault ? rng.ms(1, 300) : rng.ms(200, 3000));
        }
        break;
      }
      case 3:
      case 4:  // a worker process stops (SIGSTOP) and continues
        if (!processes.empty()) {
          WorkerProcess* p = processes[rng.below(processes.size())];
          p->disrupted();
          world_.stop(*p, short_fault ? rng.ms(10, 500) : rng.ms(300, 5000));
        }
        break;
      case 5:
      case 6:  // a worker process crashes
        if (!processes.empty()) processes[rng.below(processes.size())]->crash("signal 9 (killed)");
        break;
      case 7: {  // a whole supervisor vanishes; another takes its place later
        std::vector<Supervisor*> live;
        for (Supervisor* s : supervisors_) {
          if (s->alive()) live.push_back(s);
        }
        if (live.size() > 1 || rng.chance(0.5)) {
          Supervisor* gone = live.empty() ? nullptr : live[rng.below(live.size())];
          if (gone == nullptr) break;
          const auto tasks = gone->tasks();
          const auto count = std::max<std::size_t>(1, gone->processes().size());
          gone->vanish();
          world_.at(short_fault ? rng.ms(50, 500) : rng.ms(500, 3000), [this, tasks, count] {
            add_supervisor(tasks, count, WorkerProcess::Kind::kHonest)->start();
          });
        }
        break;
      }
      case 8:  // the broker restarts, its state lost
        ledger_.lost_all_capable_workers = true;  // registrations are lost with it
        for (WorkerProcess* p : processes) p->disrupted();
        world_.restart_broker(short_fault ? rng.ms(1, 300) : rng.ms(300, 3000));
        break;
      default:  // the broker's clock jumps forward (a VM paused, a suspended host)
        for (WorkerProcess* p : processes) p->disrupted();
        ledger_.clock_jumps.push_back(world_.now());
        world_.jump_broker_clock(short_fault ? rng.ms(100, 600) : rng.ms(500, 3000));
        break;
    }
    note_capable_workers();
  }

  // Whether some task has no process that can serve it now (alive, running, and not the liar, which
  // the broker drops each time it answers): the broker may then rightly fail its chunks as
  // kUnknownTask once its grace has passed. Checked after every fault and every broker event.
  void note_capable_workers() {
    if (ledger_.lost_all_capable_workers) return;
    for (const proto::TaskInfo& task : {kSquare, kWithContext}) {
      bool any = false;
      for (WorkerProcess* p : live_processes()) {
        any = any || (!p->stopped() && p->kind() != WorkerProcess::Kind::kLiar &&
                      std::find(p->tasks().begin(), p->tasks().end(), task) != p->tasks().end());
      }
      if (!any) ledger_.lost_all_capable_workers = true;
    }
  }

  // After every event the broker handled: its bookkeeping agrees with itself, and what it holds is
  // bounded by the work outstanding.
  void check_step() {
    if (world_.failed()) return;
    note_capable_workers();
    detail::BrokerCore& core = world_.core();
    if (const std::string wrong = core.self_check(); !wrong.empty()) return world_.fail("broker bookkeeping: " + wrong);
    const auto f = core.footprint();
    const BrokerOptions& o = world_.options();
    const std::size_t clients = f.clients;
    if (f.chunks > clients * o.max_client_chunks) {
      return world_.fail("the broker holds " + std::to_string(f.chunks) + " chunks for " + std::to_string(clients) +
                         " clients (quota " + std::to_string(o.max_client_chunks) + " each)");
    }
    if (f.contexts > clients * o.max_client_contexts || f.job_records > clients * (2 * o.max_client_jobs + 1) ||
        f.over_budget > f.chunks || f.deliveries > clients * 4096 || f.refused_contexts > clients * 256) {
      return world_.fail("the broker's memory is not bounded by the work outstanding (contexts " +
                         std::to_string(f.contexts) + ", job records " + std::to_string(f.job_records) +
                         ", over budget " + std::to_string(f.over_budget) + ")");
    }
    if (f.workers > 64 || f.silenced > 4096) world_.fail("the broker's worker registry grows without bound");
  }

  // A chunk goes only to a worker that offers its task.
  void check_task_sent(Side side, const std::string& identity, const Frames& frames) {
    if (side != Side::kWorker || frames.size() < 3) return;
    const auto command = proto::parse_signature(wire::view(frames[0]));
    if (!command || command.value() != proto::Command::kTask) return;
    const auto* tasks = world_.core().tasks_of(identity);
    for (std::size_t i = 1; i + 1 < frames.size(); i += 2) {
      const auto header = proto::decode<proto::TaskHeader>(wire::view(frames[i]));
      if (!header) return world_.fail("the broker sent a TASK header that does not decode");
      const proto::TaskInfo task{header.value().task, header.value().signature};
      if (tasks == nullptr || std::find(tasks->begin(), tasks->end(), task) == tasks->end()) {
        return world_.fail("the broker sent a chunk of " + task.name + " to " + identity + ", which does not offer it");
      }
      if (frames.size() == 4) break;
    }
  }

  // The chunks of a TASK that a fault kept from its worker (lost, or held while it was stopped).
  void note_disrupted_task(const Frames& frames) {
    if (frames.size() < 3) return;
    const auto command = proto::parse_signature(wire::view(frames[0]));
    if (!command || command.value() != proto::Command::kTask) return;
    for (std::size_t i = 1; i + 1 < frames.size(); i += 2) {
      const auto header = proto::decode<proto::TaskHeader>(wire::view(frames[i]));
      if (!header || frames[i + 1].size() < sizeof(std::uint64_t)) continue;
      std::uint64_t first_item = 0;
      std::memcpy(&first_item, frames[i + 1].data(), sizeof(first_item));
      ++ledger_.fates[key_of(first_item, header.value().first_index)].disruptions;
      if (frames.size() == 4) break;
    }
  }

  // At the end: each map returned every item once, in order, or failed with an error its faults
  // justify.
  bool check_jobs() {
    const BrokerOptions& o = world_.options();
    for (Client* client : clients_) {
      if (client->vanished()) continue;
      for (const auto& job : client->jobs()) {
        if (job.state == Client::Job::State::kDone) {
          for (std::size_t c = 0; c < job.chunks(); ++c) {
            const std::size_t first = c * job.chunksize;
            const auto& values = job.results[c];
            if (!values || values->size() != std::min(job.chunksize, job.items.size() - first) + 1) {
              world_.fail(client->name() + " job " + std::to_string(job.id) + " is done without chunk " + std::to_string(c));
              return false;
            }
          }
          continue;
        }
        if (job.state != Client::Job::State::kFailed) continue;
        const std::size_t first = job.failed_chunk * job.chunksize;
        const ChunkKey key{client->number(), job.id, first};
        const Ledger::Fate fate = ledger_.fates.contains(key) ? ledger_.fates.at(key) : Ledger::Fate{};
        const auto begin = job.items.begin() + static_cast<std::ptrdiff_t>(first);
        const auto end = job.items.begin() + static_cast<std::ptrdiff_t>(std::min(first + job.chunksize, job.items.size()));
        const bool throws = std::any_of(begin, end, [](std::uint64_t i) { return (i & kThrows) != 0; });
        bool justified = false;
        std::string because;
        switch (job.error) {
          case ErrorCode::kTaskFailed:
            justified = throws;
            because = "its chunk has no item that throws";
            break;
          case ErrorCode::kWorkerLost:
            if (job.error_message.find("lost its worker") == std::string::npos) {
              justified = fate.crashes_running >= static_cast<std::uint32_t>(o.poison_kills);
              because = "it crashed only " + std::to_string(fate.crashes_running) + " processes";
            } else {
              // A clock jump while the job ran cut short the broker's wait for word of a lost holder
              // (a late crash report, a worker coming back): it counts as one more fault.
              const bool jumped = std::any_of(ledger_.clock_jumps.begin(), ledger_.clock_jumps.end(),
                                              [&](Time t) { return t >= job.started && t <= job.ended; });
              const std::uint32_t faults = fate.disruptions + (jumped ? 1 : 0);
              justified = faults >= static_cast<std::uint32_t>(o.max_retries) + 1;
              because = "faults hit its holders only " + std::to_string(faults) + " times";
            }
            break;
          case ErrorCode::kMalformed:
            justified = fate.liar_answers >= 4;
            because = "a liar answered it " + std::to_string(fate.liar_answers) + " times";
            break;
          case ErrorCode::kUnknownTask:
          case ErrorCode::kSignatureMismatch:
            justified = ledger_.lost_all_capable_workers;
            because = "capable workers were there all along";
            break;
          default:
            because = "no fault justifies that error";
        }
        if (!justified) {
          world_.fail(client->name() + " job " + std::to_string(job.id) + " failed (" + job.error_message +
                      ") but " + because);
          return false;
        }
      }
    }
    return true;
  }

  void check_broker_empty() {
    const auto f = world_.core().footprint();
    if (f.clients != 0 || f.chunks != 0 || f.contexts != 0 || f.job_records != 0 || f.over_budget != 0) {
      world_.fail("every client has left, yet the broker holds " + std::to_string(f.clients) + " clients, " +
                  std::to_string(f.chunks) + " chunks, " + std::to_string(f.contexts) + " contexts, " +
                  std::to_string(f.job_records) + " job records");
    }
  }

  std::uint64_t seed_;
  World world_;
  Plan plan_;
  Ledger ledger_;
  std::vector<std::unique_ptr<Peer>> owned_;
  std::vector<Supervisor*> supervisors_;
  std::vector<Client*> clients_;
  Forger* forger_ = nullptr;
  int supervisors_made_ = 0;
};

}  // namespace

RunResult run_seed(std::uint64_t seed, std::size_t trace_lines) {
  Run run(seed);
  return run.go(trace_lines);
}

}  // namespace poolmap::sim
