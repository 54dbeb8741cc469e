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

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "poolmap/archive.hpp"
#include "poolmap/chunking.hpp"
#include "poolmap/error.hpp"
#include "poolmap/future.hpp"
#include "poolmap/result_stream.hpp"
#include "poolmap/task.hpp"

namespace poolmap {

// Call first in main(). In a worker copy started by an embedded Pool it runs the worker loop and
// exits the process (it does not return); otherwise it records argv so that an embedded Pool can
// start worker copies of this program, and returns.
void init(int argc, char** argv);

struct PoolOptions {
  // Broker client endpoint, e.g. "tcp://head-node:5555", or a comma-separated list of the two
  // brokers of a pair ("tcp://head-a:5555,tcp://head-b:5555": the Pool works with the active one
  // and turns to the other when it loses it). Default: "" = the POOLMAP_BROKER
  // environment variable if set (the PBS/Slurm scripts in deploy/ set it), else embedded mode.
  std::string broker{};
  // Embedded mode: worker processes to start. Default: 0 = physical cores, limited by CPU affinity,
  // cgroup quota and SLURM_CPUS_PER_TASK / PBS_NCPUS / NCPUS (see cpu_count.hpp).
  std::size_t processes = 0;
  // Embedded mode: replace a worker process after it ran this many chunks (Python's
  // maxtasksperchild). Default: 0 = never.
  std::uint64_t max_tasks_per_child = 0;
  // Embedded mode: arguments for the POOLMAP_WORKER_INIT initializers (Python's initargs).
  std::vector<std::string> init_args{};
  // Embedded mode: serve the broker's live dashboard (docs/OPERATIONS.md, "The dashboard") at
  // http://ADDRESS/, e.g. "127.0.0.1:0" (port 0: a free one); its URL is logged once at info
  // ("dashboard at http://127.0.0.1:PORT/"). Loopback addresses only. Ignored in remote mode (the
  // broker daemon's --http serves it). Default: "" = the POOLMAP_DASHBOARD environment variable if
  // set, else none.
  std::string dashboard{};
  // Chunks sent and not yet answered, over all calls on this Pool (the window). Default: 0 =
  // automatic: 512, or 32 per worker process registered at the broker when that is more (at most
  // 2048), the part past 512 only while the chunks in flight hold less than 64 MiB of payload
  // (poolmap::automatic_window in chunking.hpp).
  std::size_t max_chunks_in_flight = 0;
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
  // Remote mode, CURVE: this client's secret key file and the broker's public key file (`poolmap
  // keygen`; see docs/SECURITY.md). Both or neither. Default: "" = the POOLMAP_CURVE_SECRET and
  // POOLMAP_BROKER_KEY environment variables if set, else no CURVE. Embedded mode needs no keys.
  std::filesystem::path curve_secret_file{};
  std::filesystem::path broker_key_file{};
  // Remote mode without CURVE: the file of this user's secret, which a poolmap-broker started without
  // CURVE requires of every client (ZeroMQ PLAIN; docs/SECURITY.md). Read, or made when missing, by the
  // constructor. The same user's broker uses the same file by default, so nothing needs setting on
  // one host; give the broker's file (--secret-file) to join a broker whose user or HOME differs.
  // "none": give no secret (for a broker started with --secret-file none). Ignored with CURVE keys
  // and in embedded mode (its workers get a password of their own). Default: "" = the
  // POOLMAP_SECRET_FILE environment variable if set, else ${XDG_CONFIG_HOME:-$HOME/.config}/poolmap/secret.
  std::filesystem::path secret_file{};
  // Largest message this client sends or accepts, in bytes; keep it equal to the daemons'
  // --max-message-bytes. map() splits chunks so that each fits; an item (or a broadcast context)
  // that alone is larger fails the call with kInvalidArgument before anything is sent. Embedded
  // mode uses it for its broker and workers too. Default: 64 MiB.
  std::int64_t max_message_bytes = 64LL << 20;
  // Makes glibc's malloc keep the memory this process frees for its next allocations, for the whole
  // process, from the first Pool on: blocks up to 32 MiB come from the heap, up to 256 MiB of free
  // heap stays mapped, and all threads share one arena. A map's buffers (encoded chunks, received
  // results) then reuse pages already touched instead of faulting in fresh ones, which costs 10-20 us
  // per 4 KiB on virtual machines: up to 2x the throughput for large items (see docs/BENCHMARKS.md).
  // The heap then grows 64 MiB at a time, and the memory it grows by, which a map's large buffers
  // (encoded chunks, the output, decoded results) are written into, is advised to use transparent
  // huge pages (madvise, as numpy does): a page fault per 2 MiB, not per 4 KiB (tiny maps 2-3x
  // faster). The price: the process keeps up to 256 MiB it freed, and threads that allocate heavily
  // at once share one malloc lock. glibc fixes its arena limit when a second thread first allocates:
  // create the first Pool before other threads do, or the threads keep arenas of their own (the
  // thresholds still apply). Set false to leave the allocator as the program set it. The daemons
  // always run this way. Default: true.
  bool reuse_freed_memory = true;
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
  // Longest time the whole call may take; past it the rest is cancelled and the call fails with
  // ErrorCode::kDeadlineExceeded. Default: 0 = none.
  std::chrono::milliseconds deadline{0};
  // Called with (items done, items in total) on the thread that called map/starmap, at most once
  // per progress_interval and once at the end. Items done include those of chunks still running,
  // as their workers report them (every 100 ms). Not called by map_async. Default: none.
  std::function<void(std::size_t done, std::size_t total)> progress{};
  // Default: 100 ms.
  std::chrono::milliseconds progress_interval{100};
};

// Options of one submit(). Default: no deadline.
struct SubmitOptions {
  // Longest time the call may take before its Future fails with kDeadlineExceeded (the item is
  // cancelled). Default: 0 = none.
  std::chrono::milliseconds deadline{0};
  // Longest time the item may run on a worker (as MapOptions::task_deadline). Default: 0 = none.
  std::chrono::milliseconds task_deadline{0};
};

// A snapshot of the broker, as `poolmap status` prints it.
struct BrokerStatus {
  struct TaskInfo {
    std::string name;
    std::string signature;  // e.g. "i64(i64)"
  };
  struct Worker {
    std::string host;
    std::uint32_t pid = 0;
    std::uint32_t chunks_in_flight = 0;
    std::uint64_t chunks_done = 0;
    // The public half of the process's unique 64-bit id: its high 32 bits (the 8 hex digits logs
    // and `poolmap status` show), low bits zero. The broker never reveals the rest: the whole id
    // is what the process registers with and what its supervisor's exit reports must name.
    std::uint64_t instance = 0;
    std::uint64_t supervisor = 0;  // the same of the supervisor that started it; 0 = none
    std::vector<TaskInfo> tasks;   // what it announced it can run
    std::uint64_t chunks_failed = 0;          // answered with an error
    std::chrono::milliseconds last_seen{0};  // since the broker last heard from it
    std::uint32_t credit = 0;  // chunks it accepts at a time: 1 + its prefetch (fixed or adapted)
    // The chunk it runs now (the oldest it holds): task, job (as Job::id), first item and count,
    // and how long it has run. running_items == 0: none.
    std::string running_task{};
    std::uint64_t running_job = 0;
    std::uint64_t running_first_index = 0;
    std::uint32_t running_items = 0;
    std::chrono::milliseconds running_for{0};
  };
  // A job with chunks at the broker (or answered within the last liveness period), oldest first.
  struct Job {
    std::string client_host;
    std::uint32_t client_pid = 0;
    std::uint64_t id = 0;  // per client
    std::string task;
    std::uint64_t items_total = 0;  // 0 = not known (an imap's)
    std::uint64_t items_done = 0;   // answered, plus what running chunks reported
    std::uint32_t chunks_queued = 0;
    std::uint32_t chunks_in_flight = 0;
    std::chrono::milliseconds age{0};  // since its first chunk reached the broker
    bool stream = false;               // an imap (or imap_unordered): its chunks counted as one job
    std::uint64_t items_failed = 0;    // in chunks answered with an error
    // Why its work waits, as far as the broker can tell; "" = it does not (or for no reason it
    // knows). E.g. "no worker offers task square (3 registered)".
    std::string waiting{};
  };
  // Something that went wrong with a chunk: it failed (its client got the error), or it was
  // queued again (its worker was lost, crashed or answered wrongly).
  struct Event {
    enum class Kind { kFailed, kRedispatched };
    Kind kind = Kind::kFailed;
    std::chrono::milliseconds age{0};  // how long ago
    std::string task;
    std::string client_host;
    std::uint32_t client_pid = 0;
    std::uint64_t job = 0;    // as Job::id
    std::uint64_t item = 0;   // the failing item's index (a task's exception), else the chunk's first item
    std::uint32_t items = 0;  // in the chunk
    std::uint32_t attempt = 0;
    std::string error;        // kFailed: the exception's type, or the error code's name
    std::string message;      // kFailed: the exception's message; kRedispatched: the cause
    std::string worker_host;  // the worker that ran it ("" when none did)
    std::uint32_t worker_pid = 0;
  };
  std::vector<Worker> workers;
  std::vector<Job> jobs;
  std::vector<Event> events;  // the latest (at most 50), newest first
  std::uint32_t clients = 0;
  std::uint64_t chunks_queued = 0;
  std::uint64_t chunks_in_flight = 0;
  std::uint64_t chunks_done = 0;
  std::uint64_t chunks_failed = 0;
  std::uint64_t chunks_redispatched = 0;
  std::uint64_t bad_messages = 0;
  std::uint64_t context_bytes_received = 0;  // broadcast contexts received from clients
  std::uint64_t context_bytes_sent = 0;      // broadcast contexts sent to workers
  std::uint64_t context_bytes_held = 0;      // broadcast contexts the broker keeps now
  // A broker of a pair (poolmap-broker --ha): "active" or "passive" ("active" without a peer), its
  // epoch (0 without a peer), and its peer's state as it sees it: "active", "passive", "silent"
  // ("" without a peer), last heard peer_silent ago.
  std::string role;
  std::uint64_t epoch = 0;
  std::string peer;
  std::chrono::milliseconds peer_silent{0};
};

namespace detail {
// Encodes one input item of `Task<R(Args...)>`: the argument itself for one-argument tasks, each
// element of a tuple-like item in order for several arguments (starmap).
template <class... Args, class Item>
void encode_item(OutputArchive& archive, const Item& item) {
  if constexpr (sizeof...(Args) == 1) {
    using Arg = std::decay_t<std::tuple_element_t<0, std::tuple<Args...>>>;
    if constexpr (std::is_same_v<std::decay_t<Item>, Arg>) {
      archive(item);
    } else {
      archive(static_cast<Arg>(item));
    }
  } else {
    static_assert(std::tuple_size_v<std::decay_t<Item>> == sizeof...(Args),
                  "starmap: each item must be a tuple with one element per task argument");
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (archive(static_cast<std::decay_t<Args>>(std::get<I>(item))), ...);
    }(std::index_sequence_for<Args...>{});
  }
}

// An item already encoded (Pool::map_encoded): written as its bytes, without a size tag.
struct EncodedItem {
  const Bytes* bytes = nullptr;
  template <class Archive>
  void save(Archive& archive) const {
    archive.save_bytes(bytes->data(), bytes->size(), 1);
  }
};

// The error for an item that alone encodes to more bytes than a message may hold.
inline Error item_too_large(std::size_t index, std::size_t bytes, std::size_t limit) {
  return Error(ErrorCode::kInvalidArgument,
               "item " + std::to_string(index) + " encodes to " + std::to_string(bytes) +
                   " bytes, more than max_message_bytes (" + std::to_string(limit) +
                   "): raise PoolOptions::max_message_bytes and the daemons' --max-message-bytes together, or "
                   "split the item");
}

// Whether the items of `Range` are encoded as their own bytes, so that a chunk of them is one
// copy: a task of one arithmetic argument (not bool), items of exactly that type in contiguous
// memory, on a little-endian machine (the archive writes arithmetic values little-endian, as they are).
template <class Range, class... Args>
struct BytewiseItems : std::false_type {};
template <class Range, class Arg>
struct BytewiseItems<Range, Arg>
    : std::bool_constant<std::ranges::contiguous_range<Range> && std::ranges::sized_range<Range> &&
                         kEncodedAsBytes<std::decay_t<Arg>> &&
                         std::is_same_v<std::remove_cvref_t<std::ranges::range_reference_t<Range>>, std::decay_t<Arg>>> {};

// encode_chunks() for BytewiseItems: the same chunks, each filled with one copy.
template <class Range>
void encode_bytewise(Range&& inputs, std::size_t chunksize, std::size_t max_bytes, JobRequest& job) {
  using Item = std::remove_cvref_t<std::ranges::range_reference_t<Range>>;
  const std::size_t total = std::ranges::size(inputs);
  const auto* bytes = reinterpret_cast<const std::byte*>(std::ranges::data(inputs));
  if (total > 0 && sizeof(Item) > max_bytes) throw item_too_large(0, sizeof(Item), max_bytes);
  const std::size_t per_chunk =
      std::min({chunksize == 0 ? total : chunksize, max_bytes / sizeof(Item), std::size_t{UINT32_MAX}});
  for (std::size_t first = 0; first < total; first += per_chunk) {
    ChunkRequest chunk;
    chunk.first_index = first;
    chunk.count = static_cast<std::uint32_t>(std::min(per_chunk, total - first));
    advise_heap_growth();  // before the chunk's bytes are written there
    chunk.payload.reserve(chunk.count * sizeof(Item));
    advise_huge_pages(chunk.payload.data(), chunk.payload.capacity());
    chunk.payload.insert(chunk.payload.end(), bytes + first * sizeof(Item), bytes + (first + chunk.count) * sizeof(Item));
    job.chunks.push_back(std::move(chunk));
  }
  job.total_items = total;
}

// Splits `inputs` into chunks of `chunksize` encoded items (chunksize 0: all in one chunk), each
// at most `max_bytes` long: a chunk that would grow past it ends before the item that does not fit.
// Throws item_too_large() for an item that fits in no chunk.
template <class... Args, class Range>
void encode_chunks(Range&& inputs, std::size_t chunksize, std::size_t max_bytes, JobRequest& job) {
  if constexpr (BytewiseItems<Range, Args...>::value) {
    encode_bytewise(std::forward<Range>(inputs), chunksize, max_bytes, job);
    return;
  }
  ChunkRequest current;
  std::optional<OutputArchive> archive;  // writes into current.payload
  auto flush = [&] {
    archive.reset();
    job.chunks.push_back(std::move(current));
    current = ChunkRequest{};
  };
  std::size_t index = 0;
  for (auto&& item : inputs) {
    if (current.count == 0) {
      current.first_index = index;
      advise_heap_growth();  // before the chunk's bytes are written there
      archive.emplace(current.payload);
    }
    const std::size_t before = current.payload.size();
    encode_item<Args...>(*archive, item);
    if (current.payload.size() > max_bytes) {
      if (current.count == 0) throw item_too_large(index, current.payload.size(), max_bytes);
      current.payload.resize(before);  // the chunk ends before this item, which starts the next
      flush();
      current.first_index = index;
      archive.emplace(current.payload);
      encode_item<Args...>(*archive, item);
      if (current.payload.size() > max_bytes) throw item_too_large(index, current.payload.size(), max_bytes);
    }
    if (current.count == 0 && chunksize > 1) {
      current.payload.reserve(std::min(max_bytes, expected_bytes(current.payload.size(), chunksize)));
      advise_huge_pages(current.payload.data(), current.payload.capacity());
    }
    ++current.count;
    ++index;
    if (current.count == chunksize || current.count == UINT32_MAX) flush();
  }
  if (current.count > 0) flush();
  job.total_items = index;
}
}  // namespace detail

class Pool {
 public:
  // Embedded mode with default options. Throws poolmap::Error: kInvalidArgument if poolmap::init()
  // was not called first in main (this is what prevents a fork bomb), kUnavailable if the worker
  // processes do not register within start_timeout.
  Pool();
  // Embedded mode if options.broker is empty, remote mode otherwise (connects lazily; never throws
  // for an unreachable broker, map() does). Remote mode throws kInvalidArgument for bad key files
  // or a secret file that cannot be had (open to others, no HOME: see secret_file); a broker that
  // refuses the key or secret makes the calls fail with kUnavailable, saying why.
  explicit Pool(PoolOptions options);
  // Like terminate(): work still running is cancelled (its Futures fail with kCancelled), then the
  // I/O thread stops; in embedded mode the workers (SIGTERM, then SIGKILL) and the broker stop too.
  // Call join() first to wait for outstanding work, as with Python's `with Pool() as p:`.
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Applies `task` to every element of `inputs` on the workers and returns the results in input
  // order, like Python's Pool.map. Elements convert to the task's argument type. `inputs` is any
  // input range, including one whose end is a sentinel of another type (a generator such as
  // `std::views::iota(0) | std::views::take_while(p)`, an istream view); without a size and an
  // explicit chunksize it is read to its end first, as Python's map does with a generator.
  // Throws: TaskError when the task throws on an item (the remaining chunks are cancelled);
  // Error(kUnknownTask / kSignatureMismatch) when no worker has a matching task; Error(kWorkerLost)
  // when a chunk's workers kept dying; Error(kDeadlineExceeded) when an item ran past
  // options.task_deadline or the call past options.deadline; Error(kUnavailable) when the broker
  // never answers or does not come back within reconnect_timeout; Error(kCancelled) after
  // terminate() or close(). Lost workers and broker restarts are survived: every item's result is
  // returned exactly once.
  template <class R, class A, std::ranges::input_range Range>
  std::vector<R> map(const Task<R(A)>& task, Range&& inputs, MapOptions options = {}) {
    return wait_and_take(start_map<R, A>(task.name(), Task<R(A)>::signature(), std::forward<Range>(inputs), options),
                         options);
  }

  // Python's starmap: for a task with several arguments, each element of `inputs` is a tuple (or
  // pair, or array) of arguments. Throws as map().
  template <class R, class... A, std::ranges::input_range Range>
  std::vector<R> starmap(const Task<R(A...)>& task, Range&& inputs, MapOptions options = {}) {
    return wait_and_take(
        start_map<R, A...>(task.name(), Task<R(A...)>::signature(), std::forward<Range>(inputs), options), options);
  }

  // map with a broadcast context bound to the task's first argument (Task::with): the context is
  // sent to the broker once and to each worker process once (cached there by content hash), not
  // with every chunk. `inputs` hold the remaining argument.
  template <class R, class First, class A, std::ranges::input_range Range>
  std::vector<R> map(const WithContext<R(First, A)>& bound, Range&& inputs, MapOptions options = {}) {
    return wait_and_take(start_map<R, A>(bound.task().name(), Task<R(First, A)>::signature(),
                                         std::forward<Range>(inputs), options, bound.context(), bound.context_hash()),
                         options);
  }
  template <class R, class First, class A, std::ranges::input_range Range>
  Future<std::vector<R>> map_async(const WithContext<R(First, A)>& bound, Range&& inputs, MapOptions options = {}) {
    return start_map<R, A>(bound.task().name(), Task<R(First, A)>::signature(), std::forward<Range>(inputs), options,
                           bound.context(), bound.context_hash())
        .future;
  }

  // Python's map_async: starts the map and returns at once. The Future holds the whole vector;
  // then() gives Python's callback / error_callback. options.progress is not used.
  template <class R, class A, std::ranges::input_range Range>
  Future<std::vector<R>> map_async(const Task<R(A)>& task, Range&& inputs, MapOptions options = {}) {
    return start_map<R, A>(task.name(), Task<R(A)>::signature(), std::forward<Range>(inputs), options).future;
  }
  template <class R, class... A, std::ranges::input_range Range>
  Future<std::vector<R>> starmap_async(const Task<R(A...)>& task, Range&& inputs, MapOptions options = {}) {
    return start_map<R, A...>(task.name(), Task<R(A...)>::signature(), std::forward<Range>(inputs), options).future;
  }

  // Python's imap: results in input order, lazily (see result_stream.hpp). The input range is read
  // on the thread that iterates the stream; `inputs` must outlive the stream when it is an lvalue.
  // For a task with several arguments each element is a tuple (or pair, or array) of arguments, as
  // with starmap (Python has no lazy starmap; this is imap over the tuples, unpacked). Throws (from
  // the iteration) as map() does, and what the input range throws after the results before it.
  template <class R, class... A, std::ranges::input_range Range>
  ResultStream<R> imap(const Task<R(A...)>& task, Range&& inputs, StreamOptions options = {}) {
    return start_stream<R, A...>(task.name(), Task<R(A...)>::signature(), std::forward<Range>(inputs), options, true);
  }
  // Python's imap_unordered: the same, results in completion order.
  template <class R, class... A, std::ranges::input_range Range>
  ResultStream<R> imap_unordered(const Task<R(A...)>& task, Range&& inputs, StreamOptions options = {}) {
    return start_stream<R, A...>(task.name(), Task<R(A...)>::signature(), std::forward<Range>(inputs), options,
                                 false);
  }
  // imap and imap_unordered with a broadcast context (Task::with); `inputs` hold the remaining
  // argument(s). The context reaches each worker process once, but the broker keeps a context only
  // while chunks need it, so it is sent to the broker with every chunk of the stream: with a big
  // context, choose a large chunksize.
  template <class R, class First, class... A, std::ranges::input_range Range>
  ResultStream<R> imap(const WithContext<R(First, A...)>& bound, Range&& inputs, StreamOptions options = {}) {
    return start_stream<R, A...>(bound.task().name(), Task<R(First, A...)>::signature(), std::forward<Range>(inputs),
                                 options, true, bound.context(), bound.context_hash());
  }
  template <class R, class First, class... A, std::ranges::input_range Range>
  ResultStream<R> imap_unordered(const WithContext<R(First, A...)>& bound, Range&& inputs,
                                 StreamOptions options = {}) {
    return start_stream<R, A...>(bound.task().name(), Task<R(First, A...)>::signature(), std::forward<Range>(inputs),
                                 options, false, bound.context(), bound.context_hash());
  }

  // Python's apply_async / Executor.submit: runs task(args...) on a worker. Arguments convert to
  // the task's argument types; one per argument. Throws Error(kCancelled) on a closed Pool; every
  // other error reaches the Future.
  template <class R, class... A, class... Args>
  Future<R> submit(const Task<R(A...)>& task, Args&&... args) {
    return submit(SubmitOptions{}, task, std::forward<Args>(args)...);
  }
  template <class R, class... A, class... Args>
  Future<R> submit(const SubmitOptions& options, const Task<R(A...)>& task, Args&&... args) {
    static_assert(sizeof...(Args) == sizeof...(A), "submit: pass one value per task argument");
    return start_one<R, A...>(options, task.name(), Task<R(A...)>::signature(), nullptr, 0,
                              std::forward<Args>(args)...);
  }
  // submit with a broadcast context (Task::with): `args` are the arguments after the first.
  template <class R, class First, class... A, class... Args>
  Future<R> submit(const WithContext<R(First, A...)>& bound, Args&&... args) {
    return submit(SubmitOptions{}, bound, std::forward<Args>(args)...);
  }
  template <class R, class First, class... A, class... Args>
  Future<R> submit(const SubmitOptions& options, const WithContext<R(First, A...)>& bound, Args&&... args) {
    static_assert(sizeof...(Args) == sizeof...(A), "submit: pass one value per task argument after the context");
    return start_one<R, A...>(options, bound.task().name(), Task<R(First, A...)>::signature(), bound.context(),
                              bound.context_hash(), std::forward<Args>(args)...);
  }

  // Python's apply: submit(...).get(), blocking. Throws as Future::get (TaskError, Error).
  template <class R, class... A, class... Args>
  R apply(const Task<R(A...)>& task, Args&&... args) {
    return submit(task, std::forward<Args>(args)...).get();
  }
  template <class R, class... A, class... Args>
  R apply(const SubmitOptions& options, const Task<R(A...)>& task, Args&&... args) {
    return submit(options, task, std::forward<Args>(args)...).get();
  }
  template <class R, class First, class... A, class... Args>
  R apply(const WithContext<R(First, A...)>& bound, Args&&... args) {
    return submit(bound, std::forward<Args>(args)...).get();
  }
  template <class R, class First, class... A, class... Args>
  R apply(const SubmitOptions& options, const WithContext<R(First, A...)>& bound, Args&&... args) {
    return submit(options, bound, std::forward<Args>(args)...).get();
  }

  // For tools that learn a task's types only at run time, such as `poolmap map`: runs task `name`
  // with `signature` (as the workers announce it, e.g. "i64(i64)") over items the caller encoded,
  // one Bytes per item holding its arguments in order as OutputArchive writes them. Returns the
  // results back to back in input order; decode them with InputArchive, one value of the task's
  // result type per item. options.progress is reported as by map(). Throws as map().
  Bytes map_encoded(std::string_view name, std::string signature, const std::vector<Bytes>& items,
                    MapOptions options = {}) {
    detail::JobRequest job{std::string(name), std::move(signature), {},
                           static_cast<std::uint32_t>(options.task_deadline.count()), options.task_retries,
                           options.deadline, 0, nullptr, 0};
    if (items.empty()) return {};
    const std::size_t chunksize =
        options.chunksize != 0 ? options.chunksize : default_chunksize(items.size(), workers_for_chunking());
    job.chunks.reserve(chunk_count(items.size(), chunksize));
    detail::encode_chunks<detail::EncodedItem>(
        items | std::views::transform([](const Bytes& item) { return detail::EncodedItem{&item}; }), chunksize,
        max_payload_bytes(), job);
    static const auto decode = std::make_shared<const Future<Bytes>::Decoder>(
        [](const detail::JobOutcome& outcome, const detail::FutureCore&) {
          Bytes out;
          for (const auto& chunk : outcome.results) out.insert(out.end(), chunk.bytes.begin(), chunk.bytes.end());
          return out;
        });
    return wait_and_decode(Future<Bytes>(start(std::move(job)), decode), options);
  }

  // Python's close(): no new work is accepted (map, submit ... throw Error(kCancelled)); work
  // already started goes on.
  void close();
  // Python's join(): waits until every started map and submit has ended. REQUIRES: close() first
  // (like Python); otherwise throws Error(kInvalidArgument).
  void join();
  // Python's terminate(): close(), then cancel every started map and submit (their Futures fail
  // with kCancelled, queued chunks are dropped at the broker).
  void terminate();

  // Worker processes the broker knows now (0 before its first answer).
  std::size_t workers() const;
  // Waits until the broker knows at least `count` worker processes. Returns false on timeout.
  bool wait_for_workers(std::size_t count, std::chrono::milliseconds timeout) const;
  // Asks the broker for its status. Throws Error(kUnavailable) on timeout.
  BrokerStatus status(std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  // Embedded mode with PoolOptions::dashboard: the dashboard's URL ("http://127.0.0.1:PORT/");
  // else "".
  std::string dashboard_url() const;

 private:
  // One job of one item: the arguments `args` of task(args...), after the context if there is one.
  template <class R, class... A, class... Args>
  Future<R> start_one(const SubmitOptions& options, std::string_view name, std::string signature,
                      std::shared_ptr<const Bytes> context, std::uint64_t context_hash, Args&&... args) {
    detail::JobRequest job{std::string(name), std::move(signature), {},
                           static_cast<std::uint32_t>(options.task_deadline.count()), 0, options.deadline, 1,
                           std::move(context), context_hash};
    detail::ChunkRequest chunk{0, 1, {}};
    {
      OutputArchive archive(chunk.payload);
      (archive(static_cast<std::decay_t<A>>(std::forward<Args>(args))), ...);
    }
    job.chunks.push_back(std::move(chunk));
    job.sink = detail::CheckingSink<R>::shared();  // a lying worker's answer is run again, not returned
    static const auto decode = std::make_shared<const typename Future<R>::Decoder>(
        [](const detail::JobOutcome& outcome, const detail::FutureCore& core) {
          std::vector<R> one;
          detail::decode_results(outcome.results, 1, core.task, one);
          return std::move(one.front());
        });
    return Future<R>(start(std::move(job)), decode);
  }

  template <class R, class... A, class Range>
  ResultStream<R> start_stream(std::string_view name, std::string signature, Range&& inputs, StreamOptions options,
                               bool ordered, std::shared_ptr<const Bytes> context = nullptr,
                               std::uint64_t context_hash = 0) {
    using View = std::views::all_t<Range>;
    struct Cursor {
      explicit Cursor(View v) : view(std::move(v)) {}
      View view;
      std::optional<std::ranges::iterator_t<View>> at;
      std::size_t index = 0;  // of the item `at` points to
    };
    auto cursor = std::make_shared<Cursor>(std::views::all(std::forward<Range>(inputs)));
    detail::StreamProducer producer = [cursor, max_bytes = max_payload_bytes()](
                                           std::size_t max_items, Bytes& payload,
                                           std::exception_ptr& input_error) -> std::size_t {
      std::size_t count = 0;
      std::size_t good_bytes = payload.size();  // the end of the last whole item
      try {
        if (!cursor->at) cursor->at.emplace(std::ranges::begin(cursor->view));
        auto& at = *cursor->at;
        OutputArchive archive(payload);
        while (count < max_items && at != std::ranges::end(cursor->view)) {
          detail::encode_item<A...>(archive, *at);
          if (payload.size() > max_bytes) {
            // This item starts the next chunk (encoded again then), or fits in none.
            if (count == 0) throw detail::item_too_large(cursor->index, payload.size(), max_bytes);
            payload.resize(good_bytes);
            break;
          }
          good_bytes = payload.size();
          ++count;
          ++cursor->index;
          ++at;
        }
      } catch (...) {  // the caller's input range threw: keep the items before it
        input_error = std::current_exception();
        payload.resize(good_bytes);
      }
      return count;
    };
    const std::size_t window = options.window != 0 ? options.window : std::max<std::size_t>(4, 4 * workers_for_chunking());
    detail::JobStarter starter = [this, context = std::move(context), context_hash](detail::JobRequest job) {
      job.context = context;  // each chunk of a stream is a job of its own
      job.context_hash = context_hash;
      return start(std::move(job));
    };
    return ResultStream<R>(std::move(producer), std::move(starter),
                           std::string(name), std::move(signature), options, window, ordered,
                           [this](const std::string& line) { log_debug(line); });
  }

  // A started map: its Future, and the output its chunks are decoded into as they arrive.
  template <class R>
  struct StartedMap {
    Future<std::vector<R>> future;
    std::shared_ptr<detail::VectorSink<R>> output;
  };

  template <class R, class... A, class Range>
  StartedMap<R> start_map(std::string_view name, std::string signature, Range&& inputs, const MapOptions& options,
                          std::shared_ptr<const Bytes> context = nullptr, std::uint64_t context_hash = 0) {
    detail::JobRequest job{std::string(name), std::move(signature), {},
                           static_cast<std::uint32_t>(options.task_deadline.count()), options.task_retries,
                           options.deadline, 0, context, context_hash};
    std::size_t chunksize = options.chunksize;
    if constexpr (std::ranges::sized_range<Range>) {
      const auto total = static_cast<std::size_t>(std::ranges::size(inputs));
      if (chunksize == 0 && total > 0) chunksize = default_chunksize(total, workers_for_chunking());
      job.chunks.reserve(chunk_count(total, chunksize));
      detail::encode_chunks<A...>(std::forward<Range>(inputs), chunksize, max_payload_bytes(), job);
    } else {
      if (chunksize == 0) {
        // Unsized input (a generator, a view ending in a sentinel of another type): materialize it
        // first, as Python's map does, to know the default chunk size.
        std::vector<std::ranges::range_value_t<Range>> items;
        for (auto&& item : inputs) items.push_back(std::forward<decltype(item)>(item));
        return start_map<R, A...>(name, std::move(job.signature), items, options, std::move(context), context_hash);
      }
      detail::encode_chunks<A...>(std::forward<Range>(inputs), chunksize, max_payload_bytes(), job);
    }
    auto output = std::make_shared<detail::VectorSink<R>>(job.total_items, job.task);
    job.sink = output;
    auto decode = std::make_shared<const typename Future<std::vector<R>>::Decoder>(
        [output](const detail::JobOutcome&, const detail::FutureCore&) { return output->values(); });
    Future<std::vector<R>> future(start(std::move(job)), std::move(decode));
    output->allocate();  // while the first chunks run
    return StartedMap<R>{std::move(future), std::move(output)};
  }

  // map(): waits for the started map on the calling thread, reporting progress, and returns its
  // output without a copy (nothing else holds its Future). Throws as Future::get().
  template <class R>
  static std::vector<R> wait_and_take(StartedMap<R> started, const MapOptions& options) {
    report_progress(started.future, options);
    started.future.wait();
    const auto& outcome = started.future.core()->outcome();
    if (!outcome.error.is_ok()) detail::throw_outcome(outcome);
    return started.output->release();
  }

  // Waits for a map's Future on the calling thread, reporting progress.
  template <class T>
  static T wait_and_decode(Future<T> future, const MapOptions& options) {
    report_progress(future, options);
    return future.get();
  }
  // Calls options.progress (if set) every progress_interval until `future` is ready, and once then.
  template <class T>
  static void report_progress(const Future<T>& future, const MapOptions& options) {
    if (!options.progress) return;
    const auto interval =
        options.progress_interval.count() > 0 ? options.progress_interval : std::chrono::milliseconds(100);
    while (!future.wait_for(interval)) options.progress(future.core()->done_items(), future.core()->total_items);
    options.progress(future.core()->done_items(), future.core()->total_items);
  }

  // Writes `line` to the "poolmap.client" logger at debug level.
  void log_debug(const std::string& line) const;
  // Hands a job to the I/O thread (a job with no chunks completes at once).
  std::shared_ptr<detail::FutureCore> start(detail::JobRequest job);
  std::size_t workers_for_chunking() const;
  // PoolOptions::max_message_bytes: the largest chunk payload.
  std::size_t max_payload_bytes() const noexcept;

  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace poolmap
