// Internal (not installed): a Pool's session with its broker, without sockets, threads or clocks.
//
// This is where exactly-once and input order live on the client side: the jobs and their chunks,
// the window of chunks in flight, contexts sent once per broker session, HELLO and the resending
// of every unanswered chunk after a new WELCOME, second answers dropped, results handed to the
// job's sink or kept in chunk order, REJECT for results that do not decode, backpressure
// (kResourceExhausted), contexts sent again (kContextMissing), task retries, deadlines, liveness
// of the broker, heartbeats. With several brokers (a pair, --ha): one at a time, the next one after
// losing it or hearing PASSIVE, epochs (a broker whose epoch is older than one seen is ignored), and
// chunks sent again to a new broker marked kResent (a worker may hold them, or their answer).
//
// The session takes events, each with the time: a job, a cancel, a message from the broker, a pass
// of the I/O loop. It acts through a Port: messages to send, a new connection to open, jobs that
// ended, what it heard of the workers. Pool's I/O thread (pool.cpp) drives it with its socket and
// Clock::now(); the simulator (tests/sim) drives the same code with its network and virtual clock.
//
// Thread-safety: none; one thread drives it.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <future>
#include <map>
#include <set>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <spdlog/logger.h>

#include "poolmap/future.hpp"
#include "poolmap/pool.hpp"
#include "poolmap/protocol.hpp"
#include "wire.hpp"

namespace poolmap::detail {

class ClientSession {
 public:
  using Clock = std::chrono::steady_clock;

  struct Options {
    std::chrono::milliseconds heartbeat_interval{1000};
    int heartbeat_liveness = 3;
    std::chrono::milliseconds reconnect_timeout{60000};  // a lost broker fails what waits after this
    std::size_t max_chunks_in_flight = 0;                // 0 = automatic_window()
    std::string endpoint;                                // for messages: the list as given
    std::vector<std::string> endpoints;                  // the brokers, tried in turn (at least one)
    proto::Hello hello;                                  // who we are (its session: random, not 0)
  };

  // One job: its chunks, what was sent and answered, its results.
  struct Job {
    std::uint64_t id = 0;
    std::uint64_t stream = 0;  // proto::Submit::stream
    std::string task;
    std::string signature;
    std::vector<ChunkRequest> chunks;
    std::uint32_t deadline_ms = 0;
    std::vector<std::optional<zmq::message_t>> payloads;  // sent and not yet answered: kept for resending
    std::vector<std::uint32_t> retries_left;                // task_retries per chunk
    std::size_t next_to_send = 0;
    std::size_t answered = 0;
    std::vector<ChunkResult> results;    // without a sink that keeps them
    std::shared_ptr<ChunkSink> sink;     // takes each chunk's results as they arrive
    std::vector<bool> have;
    std::shared_ptr<FutureCore> core;
    std::optional<Clock::time_point> deadline;  // of the whole job
    std::optional<zmq::message_t> context;      // broadcast context (see contexts_sent_)
    std::uint64_t context_hash = 0;
    std::size_t context_resends = 0;  // chunks the broker answered with kContextMissing
    std::vector<std::uint64_t> submitted;  // per chunk: submits_ when last sent (contexts only)
    // Per chunk (once one was): sent again to a broker after losing one. Its sends for want of room
    // or of the context keep kResent, so that the broker still matches it to a worker holding it.
    std::vector<bool> resent;
    std::vector<std::uint32_t> partial;    // per chunk: items counted from CHUNK_PROGRESS (once one came)
    std::size_t total_items = 0;
    std::uint64_t payload_bytes_in_flight = 0;  // of the chunks sent and not yet answered
    struct Rejections {
      std::uint32_t answers = 0;
      std::set<std::pair<std::string, std::uint32_t>> workers;  // (host, pid) of each that answered so
    };
    std::map<std::size_t, Rejections> rejected;  // per chunk: answers that did not decode (rare)
  };
  // A job made from a request (payloads stay in the request's chunks until sent). `id` must be new.
  static std::unique_ptr<Job> make_job(JobRequest request, std::uint64_t id, std::shared_ptr<FutureCore> core,
                                       Clock::time_point now);

  // What the session asks of its driver.
  class Port {
   public:
    // Sends a message to the broker on the current connection, never blocking: false when it
    // could not go (no pipe, a full queue).
    virtual bool send(std::vector<zmq::message_t>& frames) = 0;
    // Drops the current connection and opens a new one to `endpoint` (a new peer to that broker);
    // the session then says HELLO on it.
    virtual void open_connection(const std::string& endpoint) = 0;
    // Whether bytes from the broker arrived within `window` on the current connection (a broker
    // whose heartbeats queue behind one large RESULT on a slow link is silent but alive). Asked
    // only when the broker has been silent for a liveness period.
    virtual bool bytes_arriving(std::chrono::milliseconds window) = 0;
    // A job ended: complete its futures.
    virtual void job_ended(std::unique_ptr<Job> job, JobOutcome outcome) = 0;
    // The broker counts `workers` worker processes; `welcome`: it welcomed this session.
    virtual void heard_workers(std::size_t workers, bool welcome) = 0;
    // The broker refused this session before welcoming it (ERROR): what waits should know why.
    virtual void refused(const Status& why) = 0;

   protected:
    ~Port() = default;
  };

  ClientSession(Options options, Port& port, std::shared_ptr<spdlog::logger> log);

  // Opens the first connection and says HELLO.
  void start(Clock::time_point now);
  // Opens a new connection (the last one's handshake was refused) and says HELLO.
  void reconnect(Clock::time_point now);
  void add_job(std::unique_ptr<Job> job);
  // Ends the job with `outcome` (a cancel, a deadline) and tells the broker to drop its chunks.
  void fail_job(std::uint64_t id, JobOutcome outcome);
  // Ends every job (and status request) with `error`.
  void fail_all(const Status& error);
  void request_status(std::promise<Result<BrokerStatus>> promise);
  // A message from the broker (without routing frame).
  void on_message(Clock::time_point now, std::vector<zmq::message_t>& frames);
  // The rest of a pass of the I/O loop: the broker's liveness, deadlines, deferred and new chunks,
  // heartbeats.
  void pass(Clock::time_point now);
  // Says goodbye (DISCONNECT) to the broker.
  void goodbye();
  // When pass() has something to do next, at the latest.
  Clock::time_point next_pass() const;

  bool welcomed() const { return session_welcomed_; }
  // Chunks sent and not answered, and how many may be (the window).
  std::size_t chunks_in_flight() const { return in_flight_; }
  std::size_t window_now() const { return window(); }
  bool ever_welcomed() const { return ever_welcomed_; }
  std::uint64_t newest_epoch() const { return newest_epoch_; }
  const std::string& current_endpoint() const { return options_.endpoints[current_]; }
  std::vector<std::uint64_t> job_ids() const;
  // After a refused handshake: no "no answer" warning any more (the broker answered with that).
  void answered_by_refusal() { unanswered_logged_ = true; }

  static constexpr std::uint32_t kRejectsPerChunk = 3;

 private:
  void connect(Clock::time_point now);
  void lost_broker(Clock::time_point now, const std::string& why);
  // The next broker to turn to after losing the current one (the same with one broker).
  void next_endpoint(Clock::time_point now);
  void on_result(const proto::ClientResult& result, zmq::message_t& payload);
  // A chunk's results did not decode (`why`): tells the broker (REJECT) and sends the chunk again;
  // false once more than kRejectsPerChunk workers' answers of it (or 4x as many answers) were
  // rejected (`why` then says so: the job fails).
  bool run_again_after_bad_result(Job& job, const proto::ClientResult& result, Status& why);
  void finish(std::unique_ptr<Job> job, JobOutcome outcome);
  void check_deadlines(Clock::time_point now);
  void send_chunks();
  // Sends again chunks the broker had no room for (kResourceExhausted): one per chunk of ours
  // answered since, so what we hold there stays at its quota, and one per heartbeat interval in
  // any case (room also frees as contexts expire).
  void send_deferred(Clock::time_point now);
  static bool was_resent(const Job& job, std::size_t index);
  // `resent`: sent before to a broker this session lost (SUBMIT kResent).
  void send_chunk(Job& job, std::size_t index, bool resent = false);
  // Sends a message, after the SUBMITs gathered so far (so that messages leave in the order they
  // were made).
  void send(std::vector<zmq::message_t>& frames);
  // Sends the SUBMITs send_chunk() gathered, in one message.
  void flush_submits();
  void send_now(std::vector<zmq::message_t>& frames);
  void heard_workers(std::size_t workers);
  // How many chunks may be in flight now (PoolOptions::max_chunks_in_flight).
  std::size_t window() const;
  // Out of the window: the job's chunks in flight are no longer ours to count.
  void forget_in_flight(Job& job);

  Options options_;
  Port& port_;
  std::shared_ptr<spdlog::logger> log_;
  Clock::time_point now_{};

  std::unordered_map<std::uint64_t, std::unique_ptr<Job>> jobs_;
  std::deque<std::uint64_t> send_order_;  // jobs with chunks left to send, round-robin
  std::deque<std::promise<Result<BrokerStatus>>> status_waiting_;
  std::size_t in_flight_ = 0;
  std::uint64_t payload_bytes_in_flight_ = 0;  // the sum of the jobs' payload_bytes_in_flight
  std::size_t workers_seen_ = 0;
  // SUBMIT frames not sent yet ([signature, then a header and a payload frame per chunk]): the
  // chunks sent in one pass of the I/O loop go in one message.
  wire::ChunkBatch submits_out_{proto::Command::kSubmit};
  std::deque<std::pair<std::uint64_t, std::size_t>> deferred_;  // (job, chunk) over the broker's quota
  std::size_t room_ = 0;             // chunks of ours answered since the broker last said it had no room
  Clock::time_point deferred_sent_;  // when a deferred chunk was last sent
  bool quota_logged_ = false;        // said once per Pool that the broker applies backpressure
  bool ever_welcomed_ = false;       // a broker has answered this Pool at least once
  bool unanswered_logged_ = false;   // warned that no broker answers at the endpoint
  Clock::time_point last_sent_;
  Clock::time_point last_heard_;
  // Broadcast contexts the broker has (as far as we know), by hash, with the session_ they were
  // sent in: sent once per broker session, not per job. The broker frees a context no chunk has
  // used for a while and then answers a chunk naming it with kContextMissing: we send it again.
  struct ContextSent {
    std::uint64_t session = 0;
    std::uint64_t at = 0;  // submits_ when sent
  };
  std::unordered_map<std::uint64_t, ContextSent> contexts_sent_;
  std::uint64_t submits_ = 0;                        // SUBMITs and CONTEXTs sent, to order them
  bool session_welcomed_ = false;                    // WELCOME received on the current connection
  std::uint64_t session_ = 0;                        // counts connections opened (broker sessions)
  std::optional<Clock::time_point> broker_lost_at_;  // set while trying to reach the broker again
  bool send_failed_ = false;                         // a message of a welcomed session was not sent
  // Several brokers (a pair): which one now, the newest epoch heard, when each last said PASSIVE,
  // and a connection put off until then (two passive brokers are not asked in a busy loop).
  std::size_t current_ = 0;
  std::uint64_t newest_epoch_ = 0;
  std::vector<std::optional<Clock::time_point>> passive_at_;
  std::optional<Clock::time_point> connect_at_;
  bool stale_logged_ = false;  // said once that an older broker's messages are ignored
};

}  // namespace poolmap::detail
