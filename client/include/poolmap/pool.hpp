// poolmap::Pool: Python's multiprocessing.Pool for C++, local or across a cluster.
//
//   int main(int argc, char** argv) {
//     poolmap::init(argc, argv);                    // first line: lets worker copies take over
//     poolmap::Pool pool;                           // embedded: one worker process per core
//     auto squares = pool.map(square, inputs);      // results in input order
//   }
//
// Embedded mode (`Pool()` / empty PoolOptions::broker, no POOLMAP_BROKER variable) starts a private broker in a thread of this
// process and one worker process per physical core; the workers are freshly exec'd copies of this
// program that take the worker path in poolmap::init() and run the tasks registered in it. Remote
// mode (`Pool({.broker = "tcp://host:5555"})`) connects to a running poolmap-broker instead.
//
// Thread-safety: a Pool may be used from several threads at once. One internal I/O thread owns the
// socket; callers hand it work through a queue. The destructor must not race with calls in other
// threads.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "poolmap/archive.hpp"
#include "poolmap/chunking.hpp"
#include "poolmap/error.hpp"
#include "poolmap/task.hpp"

namespace poolmap {

// Call first in main(). In a worker copy started by an embedded Pool it runs the worker loop and
// exits the process (it does not return); otherwise it records argv so that an embedded Pool can
// start worker copies of this program, and returns.
void init(int argc, char** argv);

struct PoolOptions {
  // Broker client endpoint, e.g. "tcp://head-node:5555". Default: "" = the POOLMAP_BROKER
  // environment variable if set (the PBS/Slurm scripts in deploy/ set it), else embedded mode.
  std::string broker{};
  // Embedded mode: worker processes to start. Default: 0 = physical cores, limited by CPU affinity,
  // cgroup quota and SLURM_CPUS_PER_TASK / PBS_NCPUS / NCPUS (see cpu_count.hpp).
  std::size_t processes = 0;
  // Chunks sent and not yet answered, over all calls on this Pool. Default: 512.
  std::size_t max_chunks_in_flight = 512;
  // Heartbeat interval and liveness (embedded mode uses them for its broker and workers too).
  // Default: 1 s × 3.
  std::chrono::milliseconds heartbeat_interval{1000};
  int heartbeat_liveness = 3;
  // Embedded mode: how long the worker processes get to start and register; remote mode: how
  // long map() waits for the broker's first answer. Default: 30 s.
  std::chrono::milliseconds start_timeout{30000};
  // After losing the broker (silent for heartbeat_interval × heartbeat_liveness, or it shut down),
  // how long to keep trying to reach it again before failing the maps in progress with
  // ErrorCode::kUnavailable. When it comes back, every chunk not yet answered is sent again and
  // each result still reaches the caller exactly once. Default: 60 s.
  std::chrono::milliseconds reconnect_timeout{60000};
};

struct MapOptions {
  // Items per chunk (per message to a worker). Default: 0 = Python's ceil(N / (4 × workers)).
  std::size_t chunksize = 0;
  // Longest time one item may run. An item past it makes its worker process end (a fresh one
  // takes its place) and fails the map with ErrorCode::kDeadlineExceeded. Default: 0 = none.
  std::chrono::milliseconds task_deadline{0};
  // How many times a chunk whose task threw is run again before the map fails with TaskError.
  // Only for tasks that are safe to repeat. Default: 0 (like Python: exceptions are not retried).
  std::uint32_t task_retries = 0;
};

// A snapshot of the broker, as `poolmap status` prints it.
struct BrokerStatus {
  struct Worker {
    std::string host;
    std::uint32_t pid = 0;
    std::uint32_t chunks_in_flight = 0;
    std::uint64_t chunks_done = 0;
  };
  std::vector<Worker> workers;
  std::uint32_t clients = 0;
  std::uint64_t chunks_queued = 0;
  std::uint64_t chunks_in_flight = 0;
  std::uint64_t chunks_done = 0;
  std::uint64_t chunks_failed = 0;
  std::uint64_t chunks_redispatched = 0;
  std::uint64_t bad_messages = 0;
};

namespace detail {
// One chunk of encoded items.
struct ChunkRequest {
  std::uint64_t first_index = 0;
  std::uint32_t count = 0;
  Bytes payload;
};
// Everything a map sends.
struct JobRequest {
  std::string task;
  std::string signature;
  std::vector<ChunkRequest> chunks;
  std::uint32_t deadline_ms = 0;
  std::uint32_t task_retries = 0;
};
// The encoded results of one chunk; `bytes` stays valid while `owner` lives.
struct ChunkResult {
  std::span<const std::byte> bytes;
  std::shared_ptr<const void> owner;
};
}  // namespace detail

class Pool {
 public:
  // Embedded mode with default options. Throws poolmap::Error: kInvalidArgument if poolmap::init()
  // was not called first in main (this is what prevents a fork bomb), kUnavailable if the worker
  // processes do not register within start_timeout.
  Pool();
  // Embedded mode if options.broker is empty, remote mode otherwise (connects lazily; never throws
  // for an unreachable broker, map() does).
  explicit Pool(PoolOptions options);
  // Stops the I/O thread; in embedded mode also stops the workers (SIGTERM, then SIGKILL) and the
  // broker. Work still running is abandoned.
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Applies `task` to every element of `inputs` on the workers and returns the results in input
  // order, like Python's Pool.map. Elements convert to the task's argument type.
  // Throws: TaskError when the task throws on an item (the remaining chunks are cancelled);
  // Error(kUnknownTask / kSignatureMismatch) when no worker has a matching task; Error(kWorkerLost)
  // when a chunk's workers kept dying; Error(kDeadlineExceeded) when an item ran past
  // options.task_deadline; Error(kUnavailable) when the broker never answers or does not come back
  // within reconnect_timeout. Lost workers and broker restarts are survived: every item's result
  // is returned exactly once.
  template <class R, class A, std::ranges::input_range Range>
  std::vector<R> map(const Task<R(A)>& task, Range&& inputs, MapOptions options = {});

  // Worker processes the broker knows now (0 before its first answer).
  std::size_t workers() const;
  // Waits until the broker knows at least `count` worker processes. Returns false on timeout.
  bool wait_for_workers(std::size_t count, std::chrono::milliseconds timeout) const;
  // Asks the broker for its status. Throws Error(kUnavailable) on timeout.
  BrokerStatus status(std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;

 private:
  std::vector<detail::ChunkResult> execute(detail::JobRequest job);
  std::size_t workers_for_chunking() const;

  class Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- implementation of the templates ----

template <class R, class A, std::ranges::input_range Range>
std::vector<R> Pool::map(const Task<R(A)>& task, Range&& inputs, MapOptions options) {
  using Arg = std::decay_t<A>;
  using Element = std::ranges::range_value_t<Range>;
  static_assert(std::is_convertible_v<std::ranges::range_reference_t<Range>, Arg>,
                "map: the input elements do not convert to the task's argument type");

  detail::JobRequest job{std::string(task.name()), Task<R(A)>::signature(), {},
                         static_cast<std::uint32_t>(options.task_deadline.count()), options.task_retries};
  std::size_t total = 0;
  std::size_t chunksize = options.chunksize;
  if constexpr (std::ranges::sized_range<Range>) {
    total = static_cast<std::size_t>(std::ranges::size(inputs));
    if (total == 0) return {};
    if (chunksize == 0) chunksize = default_chunksize(total, workers_for_chunking());
    job.chunks.reserve(chunk_count(total, chunksize));
  } else if (chunksize == 0) {
    // Unsized input: materialize it first, as Python's map does with a generator.
    std::vector<Arg> items(std::ranges::begin(inputs), std::ranges::end(inputs));
    return map(task, items, options);
  }

  detail::ChunkRequest current;
  std::optional<OutputArchive> archive;  // writes into current.payload
  auto flush = [&] {
    archive.reset();
    job.chunks.push_back(std::move(current));
    current = detail::ChunkRequest{};
  };
  std::size_t index = 0;
  for (auto&& item : inputs) {
    if (current.count == 0) {
      current.first_index = index;
      archive.emplace(current.payload);
    }
    if constexpr (std::is_same_v<std::decay_t<Element>, Arg>) {
      (*archive)(item);
    } else {
      (*archive)(static_cast<Arg>(item));
    }
    ++current.count;
    ++index;
    if (current.count == chunksize || current.count == UINT32_MAX) flush();
  }
  if (current.count > 0) flush();
  total = index;
  if (total == 0) return {};

  const std::vector<detail::ChunkResult> results = execute(std::move(job));
  std::vector<R> out;
  out.reserve(total);
  for (std::size_t c = 0; c < results.size(); ++c) {
    try {
      InputArchive decoder(results[c].bytes);
      while (decoder.remaining() > 0) {
        R value{};
        decoder(value);
        out.push_back(std::move(value));
      }
    } catch (const cereal::Exception& e) {
      throw Error(ErrorCode::kMalformed, "map: results of task '" + std::string(task.name()) + "' chunk " +
                                             std::to_string(c) + " do not decode: " + e.what());
    }
  }
  if (out.size() != total) {
    throw Error(ErrorCode::kMalformed, "map: task '" + std::string(task.name()) + "' returned " +
                                           std::to_string(out.size()) + " results for " + std::to_string(total) +
                                           " inputs");
  }
  return out;
}

}  // namespace poolmap
