// The poolmap wire protocol, version 7: message structs and their codec. docs/PROTOCOL.md is the
// prose version of this file; keep the two in step.
//
// Every message is a ZeroMQ multipart message (after the ROUTER identity frame on the broker side):
//   frame 0  signature: 4 bytes 'P' 'M' <version> <command>, or 12 from a broker of a pair (--ha):
//            the same 4, then the broker's epoch (uint64, little-endian): see epoch_of()
//   frame 1  header: the command's struct below, encoded with poolmap::OutputArchive (may be empty)
//   frame 2  payload (SUBMIT, TASK, RESULT only): opaque encoded items or results; the broker moves
//            it from one socket to the other without reading or copying it
//
// decode_*() never throw and never allocate more than the bytes present: a malformed, truncated or
// oversized message is an error Status.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "poolmap/archive.hpp"
#include "poolmap/status.hpp"

namespace poolmap::proto {

inline constexpr std::byte kTag0{'P'};
inline constexpr std::byte kTag1{'M'};
inline constexpr std::uint8_t kVersion = 8;

// One byte after the tag and version. Values are part of the protocol: never renumber.
enum class Command : std::uint8_t {
  // client -> broker
  kHello = 0x01,          // Hello; answered with Welcome
  kSubmit = 0x02,         // Submit + payload: one chunk of a job
  kCancel = 0x03,         // Cancel: drop every chunk of a job not yet answered
  kStatusRequest = 0x04,  // (empty); answered with StatusReply
  kContext = 0x05,        // ContextHeader + payload: a broadcast context, sent once per job
  kReject = 0x06,         // Reject: a chunk's results did not decode at the client (the worker lied)
  // broker -> client
  kWelcome = 0x11,      // Welcome
  kResult = 0x12,       // ClientResult + payload
  kStatusReply = 0x13,  // StatusReply
  kError = 0x14,        // ErrorReply: the broker refused a message (also sent to workers)
  kStarted = 0x15,      // Started: a chunk that asked for it (kNotifyStarted) went to a worker
  kChunkProgress = 0x16,  // ChunkProgress: items of a running chunk done so far
  // worker -> broker
  kReady = 0x21,         // Ready: registration with initial credit
  kWorkerResult = 0x22,  // WorkerResult + payload; returns one credit
  // worker supervisor -> broker (no registration needed)
  kWorkerExited = 0x23,  // WorkerExited: a worker process of this host ended
  // worker -> broker
  kWorkerProgress = 0x24,  // WorkerProgress: items of the running chunk done so far
  kCredit = 0x25,          // Credit: the chunks it accepts from now on
  // broker -> worker
  kTask = 0x31,     // TaskHeader + payload
  kAbandon = 0x32,  // Abandon: nobody waits for this chunk any more (its client left or cancelled)
  // both directions, all peers
  kHeartbeat = 0x40,   // (empty)
  kDisconnect = 0x41,  // (empty): "forget me" / "I do not know you, register again"
  // broker -> client, worker
  kPassive = 0x42,  // (empty): "I am the passive broker of a pair: turn to the other one"
  // broker -> broker of the same pair
  kPeerState = 0x51,  // PeerState
};

// The 4-byte signature frame for `command`.
std::array<std::byte, 4> signature_frame(Command command) noexcept;

// The signature frame of a broker of a pair at `epoch`: signature_frame(command), then the epoch.
std::array<std::byte, 12> signature_frame(Command command, std::uint64_t epoch) noexcept;

// The epoch a signature frame carries: 0 for a 4-byte one (a broker that is not one of a pair, a
// client, a worker). A broker of a pair counts its epoch up each time it becomes active; clients
// and workers ignore a broker whose epoch is older than one they have seen (docs/PROTOCOL.md).
std::uint64_t epoch_of(std::span<const std::byte> frame) noexcept;

// Checks a signature frame. Returns the command, kBadVersion for another tag or version, or
// kMalformed for a frame that is not 4 or 12 bytes. An unknown command byte is returned as-is; the broker
// answers it with ERROR kUnknownCommand, workers and clients ignore it.
Result<Command> parse_signature(std::span<const std::byte> frame);

// How a chunk ended, as reported by a worker and forwarded to the client.
struct Outcome {
  ErrorCode code = ErrorCode::kOk;
  std::uint32_t failed_offset = 0;  // kTaskFailed: index of the failing item within the chunk
  std::string error_type;           // kTaskFailed: remote exception type
  std::string message;              // anything but kOk: what went wrong
  std::string worker_host;          // the worker that produced this outcome
  std::uint32_t worker_pid = 0;
  std::uint64_t compute_us = 0;     // time the worker spent running the chunk's items

  template <class Archive>
  void serialize(Archive& ar) {
    ar(code, failed_offset, error_type, message, worker_host, worker_pid, compute_us);
  }
};

struct Hello {
  std::string client_host;
  std::uint32_t client_pid = 0;
  std::uint64_t session = 0;  // random id of this Pool, the same on every connection it opens; 0 = none
  std::uint64_t epoch = 0;    // the newest broker epoch this client has seen
  std::uint32_t flags = 0;    // kObserver
  std::uint32_t workers_seen = 0;  // worker processes the broker it last talked to counted (0: none, unknown)
  template <class Archive>
  void serialize(Archive& ar) {
    ar(client_host, client_pid, session, epoch, flags, workers_seen);
  }
};
// Hello::flags: this client has no work (it asks for status): a passive broker of a pair does not
// count its HELLO as a vote to take over.
inline constexpr std::uint32_t kObserver = 1;

// A chunk as its client names it: the same at every broker it is sent to, so a broker that takes
// over from another can match a worker's answer to the chunk the client sends again.
struct Origin {
  std::uint64_t session = 0;  // Hello::session of the client; 0 = none (no matching)
  std::uint64_t job = 0;
  std::uint64_t chunk = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(session, job, chunk);
  }
  friend bool operator==(const Origin&, const Origin&) = default;
};

struct Welcome {
  std::uint32_t workers = 0;             // worker processes registered now
  std::uint32_t heartbeat_interval_ms = 0;  // the broker's interval, for information
  template <class Archive>
  void serialize(Archive& ar) {
    ar(workers, heartbeat_interval_ms);
  }
};

struct Submit {
  std::uint64_t job = 0;          // unique per client connection
  std::uint64_t chunk = 0;        // 0-based chunk number within the job
  std::uint64_t first_index = 0;  // index of the chunk's first item in the job's input
  std::uint32_t count = 0;        // items in the payload
  std::string task;               // task name
  std::string signature;          // task signature, e.g. "i64(i64)"
  std::uint32_t deadline_ms = 0;  // per item; 0 = none
  std::uint64_t context_hash = 0; // the job's broadcast context (a CONTEXT sent before); 0 = none
  std::uint32_t flags = 0;        // kNotifyStarted
  std::uint64_t job_items = 0;    // items in the whole job (for `poolmap status`); 0 = not known
  // The stream (imap) this job is one chunk of, named by the job number of its first chunk; status
  // shows a stream as one job. 0 = none.
  std::uint64_t stream = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(job, chunk, first_index, count, task, signature, deadline_ms, context_hash, flags, job_items, stream);
  }
};
// Submit::flags: answer with STARTED once the chunk's first dispatch has been on a worker for 1 ms
// unanswered (Future::running(); a chunk answered sooner gets its RESULT alone).
inline constexpr std::uint32_t kNotifyStarted = 1;
// Submit::flags: sent before, to a broker this client then lost: a worker may hold it or its answer.
inline constexpr std::uint32_t kResent = 2;

struct Started {
  std::uint64_t job = 0;
  std::uint64_t chunk = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(job, chunk);
  }
};

// Broker -> client: `items_done` items of chunk `chunk` of job `job` have their results on the
// worker that runs it (sent while a long chunk runs; the RESULT brings the rest).
struct ChunkProgress {
  std::uint64_t job = 0;
  std::uint64_t chunk = 0;
  std::uint32_t items_done = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(job, chunk, items_done);
  }
};

struct ContextHeader {
  std::uint64_t hash = 0;  // FNV-1a 64 of the payload
  template <class Archive>
  void serialize(Archive& ar) {
    ar(hash);
  }
};

struct Cancel {
  std::uint64_t job = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(job);
  }
};

// Broker -> worker: drop chunk `ticket` if it has not started (answer it kCancelled, which returns
// its credit); if it is running, give it `grace_ms` to finish, then end the process (its
// supervisor starts a fresh one), so that abandoned work does not hold the worker.
struct Abandon {
  std::uint64_t ticket = 0;
  std::uint32_t grace_ms = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(ticket, grace_ms);
  }
};

struct ClientResult {
  std::uint64_t job = 0;
  std::uint64_t chunk = 0;
  std::uint32_t attempt = 0;  // 1 for the first dispatch
  Outcome outcome;
  std::uint32_t workers = 0;  // worker processes registered now
  template <class Archive>
  void serialize(Archive& ar) {
    ar(job, chunk, attempt, outcome, workers);
  }
};

// Client -> broker: the results of chunk `chunk` of job `job` that attempt `attempt` returned do
// not decode to the chunk's items (too few, too many, or not the task's result type). That is the
// worker's fault, not the caller's: the broker drops the worker that answered it (if it still
// knows which one), and the client sends the chunk again itself, as a new SUBMIT.
struct Reject {
  std::uint64_t job = 0;
  std::uint64_t chunk = 0;
  std::uint32_t attempt = 0;
  std::string reason;  // what the client's decoder said
  template <class Archive>
  void serialize(Archive& ar) {
    ar(job, chunk, attempt, reason);
  }
};

struct ErrorReply {
  ErrorCode code = ErrorCode::kOk;
  std::string message;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(code, message);
  }
};

// A task a worker can run: its name and signature ("i64(i64)").
struct TaskInfo {
  std::string name;
  std::string signature;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, signature);
  }
  friend bool operator==(const TaskInfo&, const TaskInfo&) = default;
  friend auto operator<=>(const TaskInfo&, const TaskInfo&) = default;
};

// A chunk a worker holds (READY): the ticket it was sent with, and its origin.
struct HeldChunk {
  std::uint64_t ticket = 0;
  Origin origin;
  bool running = false;  // started (else queued behind the running one)
  template <class Archive>
  void serialize(Archive& ar) {
    ar(ticket, origin, running);
  }
};

// Most tasks one worker may announce in READY.
inline constexpr std::size_t kMaxTasksPerWorker = 4096;

struct Ready {
  std::string host;
  std::uint32_t pid = 0;
  std::uint32_t credit = 1;  // chunks the worker accepts before its first result (slots + prefetch)
  std::uint64_t instance = 0;    // random id of this worker process, unique across hosts, pid namespaces
                                 // and restarts; never 0. It stays the same when the process registers again.
  std::uint64_t supervisor = 0;  // instance id of the supervisor that started it; 0 = none
  std::vector<TaskInfo> tasks;   // what it can run (at most kMaxTasksPerWorker)
  std::uint32_t generation = 0;  // counts this process's connections (1, 2, ...): a READY from an
                                 // older connection that arrives late is stale and ignored
  std::uint64_t epoch = 0;       // the newest broker epoch this worker has seen
  std::vector<HeldChunk> held;   // chunks an earlier broker sent it, still queued or running here
                                 // (at most kMaxCredit)
  template <class Archive>
  void serialize(Archive& ar) {
    ar(host, pid, credit, instance, supervisor, tasks, generation, epoch, held);
  }
};

struct TaskHeader {
  std::uint64_t ticket = 0;       // broker-assigned; echoed in WorkerResult
  std::uint64_t first_index = 0;  // for error messages
  std::uint32_t count = 0;
  std::string task;
  std::string signature;
  std::uint32_t deadline_ms = 0;  // per item; 0 = none
  std::uint64_t context_hash = 0; // 0 = none; the context's bytes come as frame 3 the first time
  Origin origin;                  // echoed in WorkerResult, and in READY while held
  template <class Archive>
  void serialize(Archive& ar) {
    ar(ticket, first_index, count, task, signature, deadline_ms, context_hash, origin);
  }
};

struct WorkerResult {
  std::uint64_t ticket = 0;
  Outcome outcome;
  std::uint64_t instance = 0;  // the worker process's instance id (as in its READY)
  std::uint32_t count = 0;     // results in the payload: the chunk's item count when ok, else 0
  Origin origin;               // as the chunk's TaskHeader said
  template <class Archive>
  void serialize(Archive& ar) {
    ar(ticket, outcome, instance, count, origin);
  }
};

// Worker -> broker: `items_done` items of the chunk `ticket` it runs are done (at most every
// kProgressInterval, while a chunk runs longer than that).
struct WorkerProgress {
  std::uint64_t ticket = 0;
  std::uint32_t items_done = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(ticket, items_done);
  }
};
inline constexpr std::chrono::milliseconds kProgressInterval{100};

// Worker -> broker: from now on the worker accepts `credit` chunks at a time (1 running + prefetch),
// replacing what its READY (or last CREDIT) said. Chunks it holds beyond a lowered credit stay
// with it; it gets no new one until it holds fewer than `credit`.
struct Credit {
  std::uint32_t credit = 1;  // 1..kMaxCredit
  template <class Archive>
  void serialize(Archive& ar) {
    ar(credit);
  }
};
// Most credit a worker may announce (READY, CREDIT).
inline constexpr std::uint32_t kMaxCredit = 1024;
// Most chunks (a header and a payload frame each) in one TASK, WORKER_RESULT, SUBMIT or RESULT.
inline constexpr std::uint32_t kMaxChunksPerMessage = 1024;

struct WorkerExited {
  std::string host;
  std::uint32_t pid = 0;
  std::uint64_t instance = 0;    // the process that ended (the id its supervisor gave it)
  std::uint64_t supervisor = 0;  // the supervisor reporting it; must match the one in the process's READY
  bool crashed = false;  // killed by a signal or exited with a non-zero status
  std::string cause;     // "signal 11 (Segmentation fault)", "exit code 3"
  std::uint64_t running_ticket = 0;  // the chunk it was running (from its progress slot); 0 = idle or unknown
  template <class Archive>
  void serialize(Archive& ar) {
    ar(host, pid, instance, supervisor, crashed, cause, running_ticket);
  }
};

struct WorkerInfo {
  std::string host;
  std::uint32_t pid = 0;
  std::uint32_t in_flight = 0;
  std::uint64_t chunks_done = 0;
  std::uint64_t instance = 0;
  std::uint64_t supervisor = 0;
  std::vector<TaskInfo> tasks;
  std::uint64_t chunks_failed = 0;  // answered with an error (the task threw, a deadline, ...)
  std::uint32_t last_seen_ms = 0;   // since the broker last heard from it
  std::uint32_t credit = 0;         // chunks it accepts at a time (READY, CREDIT)
  // The chunk it runs now (the oldest it holds): its job (as JobInfo::job), first item and count,
  // and how long it has run (since it was sent, or since the worker answered the one before it).
  // running_items == 0: it runs none.
  std::string running_task{};
  std::uint64_t running_job = 0;
  std::uint64_t running_first_index = 0;
  std::uint32_t running_items = 0;
  std::uint32_t running_ms = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(host, pid, in_flight, chunks_done, instance, supervisor, tasks, chunks_failed, last_seen_ms, credit,
       running_task, running_job, running_first_index, running_items, running_ms);
  }
};

// A job of a client with chunks at the broker now (or answered within the last liveness period).
struct JobInfo {
  std::string client_host;
  std::uint32_t client_pid = 0;
  std::uint64_t job = 0;
  std::string task;
  std::uint64_t items_total = 0;  // from SUBMIT's job_items; 0 = not known
  std::uint64_t items_done = 0;   // in chunks answered, plus what running chunks reported
  std::uint32_t chunks_queued = 0;
  std::uint32_t chunks_in_flight = 0;
  std::uint32_t age_ms = 0;       // since its first SUBMIT reached the broker
  std::uint8_t stream = 0;        // 1: an imap (Submit::stream), its chunks counted together
  std::uint64_t items_failed = 0; // in chunks answered with an error
  // Why its work waits, as far as the broker can tell ("" = it does not, or for no reason it
  // knows): no worker offers the task, every worker that does is busy, the client is at its quota
  // at the broker, or the client's own window holds the rest while workers that could run it idle.
  std::string waiting{};
  template <class Archive>
  void serialize(Archive& ar) {
    ar(client_host, client_pid, job, task, items_total, items_done, chunks_queued, chunks_in_flight, age_ms, stream,
       items_failed, waiting);
  }
};

// Something that went wrong with a chunk, as the status shows it (the latest kMaxStatusEvents).
struct EventInfo {
  std::uint8_t kind = 0;  // kEventFailed: it failed (its client got the error); kEventRedispatched: queued again
  std::uint32_t age_ms = 0;
  std::string task;
  std::string client_host;
  std::uint32_t client_pid = 0;
  std::uint64_t job = 0;    // as JobInfo::job
  std::uint64_t item = 0;   // the failing item's index (a task's exception), else the chunk's first item
  std::uint32_t items = 0;  // in the chunk
  std::uint32_t attempt = 0;
  std::string error;    // failed: the exception's type, or the error code's name
  std::string message;  // failed: the exception's message or what went wrong; redispatched: the cause
  std::string worker_host;  // the worker that ran it ("" when none did)
  std::uint32_t worker_pid = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(kind, age_ms, task, client_host, client_pid, job, item, items, attempt, error, message, worker_host, worker_pid);
  }
};
inline constexpr std::uint8_t kEventFailed = 1;
inline constexpr std::uint8_t kEventRedispatched = 2;
inline constexpr std::size_t kMaxStatusEvents = 50;

struct StatusReply {
  std::vector<WorkerInfo> workers;
  std::uint32_t clients = 0;
  std::uint64_t chunks_queued = 0;
  std::uint64_t chunks_in_flight = 0;
  std::uint64_t chunks_done = 0;
  std::uint64_t chunks_failed = 0;
  std::uint64_t chunks_redispatched = 0;
  std::uint64_t bad_messages = 0;
  std::uint64_t context_bytes_received = 0;  // broadcast contexts, from clients
  std::uint64_t context_bytes_sent = 0;      // broadcast contexts, to workers
  std::uint64_t context_bytes_held = 0;      // broadcast contexts the broker keeps now
  std::vector<JobInfo> jobs;                 // at most kMaxStatusJobs, oldest first
  std::string role;                          // "active" or "passive" ("active" for a broker without a peer)
  std::uint64_t epoch = 0;                   // 0 for a broker without a peer
  std::string peer;                          // "" (no peer), or the peer's state: "active", "passive", "silent"
  std::uint32_t peer_silent_ms = 0;          // since the peer was last heard (with a peer)
  std::vector<EventInfo> events;             // failures and re-dispatches, newest first, at most kMaxStatusEvents
  std::uint32_t jobs_omitted = 0;            // jobs beyond the kMaxStatusJobs in `jobs`
  template <class Archive>
  void serialize(Archive& ar) {
    ar(workers, clients, chunks_queued, chunks_in_flight, chunks_done, chunks_failed,
       chunks_redispatched, bad_messages, context_bytes_received, context_bytes_sent, context_bytes_held, jobs, role,
       epoch, peer, peer_silent_ms, events, jobs_omitted);
  }
};

// Between the two brokers of a pair (--ha-bind / --ha-peer): each publishes its state every
// heartbeat interval and at once when it changes. Frame 0 is signature_frame(kPeerState, epoch).
struct PeerState {
  std::uint8_t role = 0;        // 1 primary, 2 backup (as configured)
  std::uint8_t state = 0;       // 1 active, 2 passive
  std::uint64_t epoch = 0;      // the newest epoch it knows (its own while active)
  std::uint32_t heartbeat_ms = 0;
  std::uint8_t handing_over = 0;  // 1: it steps down now and asks the peer to take over (failing back)
  template <class Archive>
  void serialize(Archive& ar) {
    ar(role, state, epoch, heartbeat_ms, handing_over);
  }
};

inline constexpr std::size_t kMaxStatusJobs = 1000;

// Encodes a header struct.
template <class Message>
Bytes encode(const Message& message) {
  Bytes out;
  {
    OutputArchive ar(out);
    ar(message);
  }
  return out;
}

// Decodes a header struct; the whole span must be consumed.
template <class Message>
Result<Message> decode(std::span<const std::byte> bytes) {
  Message message;
  try {
    thread_local InputArchive ar{std::span<const std::byte>{}};  // reused: see InputArchive::reset
    ar.reset(bytes);
    ar(message);
    if (ar.remaining() != 0) {
      return Status(ErrorCode::kMalformed, std::to_string(ar.remaining()) + " trailing bytes");
    }
  } catch (const std::exception& e) {
    return Status(ErrorCode::kMalformed, e.what());
  }
  return message;
}

}  // namespace poolmap::proto
