// poolmap::Future<T>: the result of Pool::submit or Pool::map_async, like Python's AsyncResult and
// concurrent.futures.Future; plus AnyFuture (any result type), as_completed, wait, wait_all and
// wait_any over several of them.
//
//   poolmap::Future<std::int64_t> f = pool.submit(square, 7);
//   f.then([](std::int64_t v) { ... }, [](const poolmap::Error& e) { ... });
//   std::int64_t v = f.get();                      // 49, or throws what the task threw
//
// Thread-safety: a Future may be copied, and its copies used from any threads. then() callbacks
// run on the Pool's I/O thread when the result arrives, before get() returns (or at once on the
// calling thread if the result is already there): keep them short and never wait on a Future of
// the same Pool inside one.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <deque>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "poolmap/archive.hpp"
#include "poolmap/error.hpp"
#include "poolmap/status.hpp"

namespace poolmap {

namespace detail {

// One chunk of encoded items.
struct ChunkRequest {
  std::uint64_t first_index = 0;
  std::uint32_t count = 0;
  Bytes payload;
};
// Everything a job sends.
class ChunkSink;

struct JobRequest {
  std::string task;
  std::string signature;
  std::vector<ChunkRequest> chunks;
  std::uint32_t deadline_ms = 0;   // per item, on the worker
  std::uint32_t task_retries = 0;
  std::chrono::milliseconds job_deadline{0};  // the whole job, at the client; 0 = none
  std::size_t total_items = 0;
  std::shared_ptr<const Bytes> context{};     // broadcast context (Task::with); null = none
  std::uint64_t context_hash = 0;
  std::shared_ptr<ChunkSink> sink{};          // takes each chunk's results as they arrive; null = keep them
  // The imap this job is one chunk of, which status shows as one job: 0 = none; kStartStream: its
  // first chunk (the stream is then named by this job's number, FutureCore::job_id); else that name.
  std::uint64_t stream = 0;
};
inline constexpr std::uint64_t kStartStream = ~std::uint64_t{0};

// Takes a job's results chunk by chunk on the Pool's I/O thread, as they arrive. Pool::map decodes
// them straight into its output vector (VectorSink), so that the received bytes are freed at once
// (and their pages reused for the next chunk) and decoding overlaps the chunks still running.
// A job without a sink keeps every chunk's bytes in JobOutcome::results until get().
class ChunkSink {
 public:
  virtual ~ChunkSink() = default;
  // The results of the `count` items from `first_index` on, encoded in `bytes`. Returns
  // Error(kMalformed)'s status when they are not exactly `count` results of the task's type; the
  // job then fails with it. Called once per chunk, on the I/O thread.
  virtual Status take(std::size_t first_index, std::uint32_t count, std::span<const std::byte> bytes) = 0;
  // False for a sink that only checks the results (CheckingSink): the job then keeps the bytes.
  virtual bool keeps() const noexcept { return true; }
};

// The encoded results of one chunk; `bytes` stays valid while `owner` lives.
struct ChunkResult {
  std::span<const std::byte> bytes;
  std::shared_ptr<const void> owner;
  std::uint32_t count = 0;  // results it must hold: the items the chunk sent
};

// How a job ended. Errors travel as data between threads and become exceptions in the thread that
// asks for the value (no exception object is shared between threads).
struct JobOutcome {
  std::vector<ChunkResult> results;              // one per chunk, in order, when error is ok
  Status error;                                  // ok, or why the job failed
  std::optional<TaskError::Details> task_error;  // set for ErrorCode::kTaskFailed
};

// Throws the exception a failed outcome stands for: TaskError or Error.
// REQUIRES: !outcome.error.is_ok().
[[noreturn]] void throw_outcome(const JobOutcome& outcome);
// Calls `on_error` with the exception a failed outcome stands for.
void call_with_error(const JobOutcome& outcome, const std::function<void(const Error&)>& on_error);

// Decodes exactly `count` results of type R from one chunk's `bytes`, handing each to
// `put(index, value)`. Throws cereal::Exception (or what R's load() throws) when the bytes are not
// exactly `count` results.
template <class R, class Put>
void decode_chunk(std::span<const std::byte> bytes, std::uint32_t count, Put&& put) {
  if constexpr (kEncodedAsBytes<R>) {  // exactly `count` values: each is its bytes (else the archive words the error)
    if (bytes.size() == std::size_t{count} * sizeof(R)) {
      for (std::uint32_t i = 0; i < count; ++i) {
        R value;
        std::memcpy(&value, bytes.data() + std::size_t{i} * sizeof(R), sizeof(R));
        put(i, std::move(value));
      }
      return;
    }
  }
  InputArchive decoder(bytes);
  for (std::uint32_t i = 0; i < count; ++i) {
    R value{};
    decoder(value);
    put(i, std::move(value));
  }
  if (decoder.remaining() != 0) {
    throw cereal::Exception(std::to_string(decoder.remaining()) + " bytes left after " + std::to_string(count) +
                            " results");
  }
}

// Decodes every result of every chunk into `out`: exactly `count` of each chunk, so a worker that
// answers a chunk with too few or too many results cannot shift the results of the next one.
// Throws Error(kMalformed) when a chunk does not decode, holds another number of results than its
// count, or the total is not `expected`.
template <class R>
void decode_results(const std::vector<ChunkResult>& chunks, std::size_t expected, std::string_view task,
                    std::vector<R>& out) {
  out.reserve(out.size() + expected);
  const std::size_t first = out.size();
  for (std::size_t c = 0; c < chunks.size(); ++c) {
    try {
      decode_chunk<R>(chunks[c].bytes, chunks[c].count,
                      [&out](std::uint32_t, R&& value) { out.push_back(std::move(value)); });
    } catch (const cereal::Exception& e) {
      throw Error(ErrorCode::kMalformed, "results of task '" + std::string(task) + "' chunk " + std::to_string(c) +
                                             " do not match its " + std::to_string(chunks[c].count) +
                                             " items: " + e.what());
    }
  }
  if (out.size() - first != expected) {
    throw Error(ErrorCode::kMalformed, "task '" + std::string(task) + "' returned " + std::to_string(out.size() - first) +
                                           " results for " + std::to_string(expected) + " inputs");
  }
}

// Checks that each chunk's bytes are exactly `count` results of R as they arrive, and keeps
// nothing (the job keeps the bytes, decoded again by get()): a job decoded later (submit, imap)
// learns of a worker whose results do not decode while the chunk can still run elsewhere.
template <class R>
class CheckingSink final : public ChunkSink {
 public:
  Status take(std::size_t first_index, std::uint32_t count, std::span<const std::byte> bytes) override {
    try {
      decode_chunk<R>(bytes, count, [](std::uint32_t, R&&) {});
    } catch (const std::exception& e) {  // cereal::Exception, or what a result type's load() throws
      return Status(ErrorCode::kMalformed, "results for items " + std::to_string(first_index) + " to " +
                                               std::to_string(first_index + count - 1) + " do not match its " +
                                               std::to_string(count) + " items: " + e.what());
    }
    return Status::ok();
  }
  bool keeps() const noexcept override { return false; }
  // The one instance a type needs (it holds nothing).
  static std::shared_ptr<ChunkSink> shared() {
    static const std::shared_ptr<ChunkSink> sink = std::make_shared<CheckingSink<R>>();
    return sink;
  }
};

// A map's output: `total` results, each chunk's decoded into its place as it arrives.
// Thread-safety: take() on the I/O thread, allocate() on the caller's, values() and release() once
// the job ended (its Future is ready).
template <class R>
class VectorSink final : public ChunkSink {
 public:
  VectorSink(std::size_t total, std::string task) : total_(total), task_(std::move(task)) {}

  // Allocates the output; called by the thread that started the map while the first chunks run
  // (take() does it otherwise), so that writing fresh pages does not hold up the I/O thread.
  void allocate() {
    std::lock_guard lock(mutex_);
    size_output();
  }

  Status take(std::size_t first_index, std::uint32_t count, std::span<const std::byte> bytes) override {
    std::lock_guard lock(mutex_);
    size_output();
    if (first_index > total_ || count > total_ - first_index) {
      return Status(ErrorCode::kMalformed, "results of task '" + task_ + "' for items " +
                                               std::to_string(first_index) + " on lie outside its " +
                                               std::to_string(total_) + " inputs");
    }
    advise_heap_growth();  // for what the results allocate (a vector or a string each)
    try {
      decode_chunk<R>(bytes, count, [&](std::uint32_t i, R&& value) { values_[first_index + i] = std::move(value); });
    } catch (const std::exception& e) {  // cereal::Exception, or what a result type's load() throws
      return Status(ErrorCode::kMalformed, "results of task '" + task_ + "' for items " +
                                               std::to_string(first_index) + " to " +
                                               std::to_string(first_index + count - 1) + " do not match its " +
                                               std::to_string(count) + " items: " + e.what());
    }
    return Status::ok();
  }

  // A copy of the output (Future::get() may be called more than once).
  std::vector<R> values() const {
    std::lock_guard lock(mutex_);
    return values_;
  }
  // The output itself, for the one caller that owns the job (Pool::map); the sink is empty after.
  std::vector<R> release() {
    std::lock_guard lock(mutex_);
    return std::move(values_);
  }

 private:
  // Gives the output its `total_` elements (mutex_ held): reserved first, so that its pages are
  // advised to be huge before the elements are first written.
  void size_output() {
    if (values_.size() == total_) return;
    values_.reserve(total_);
    if constexpr (!std::is_same_v<R, bool>) advise_huge_pages(values_.data(), total_ * sizeof(R));  // bits: no data()
    values_.resize(total_);
  }

  mutable std::mutex mutex_;
  std::size_t total_;
  std::string task_;
  std::vector<R> values_;
};

// The state a Pool's I/O thread shares with the Futures of one job.
class FutureCore {
 public:
  // The job ended (I/O thread), or was cancelled (cancel(), any thread). The first call wins:
  // stores `outcome`, runs the on_complete() continuations (what they throw is logged and
  // swallowed: it must not take the I/O thread down), marks the core ready and wakes waiters, then
  // runs the on_ready() notifiers. Returns false, doing nothing, if an earlier call won.
  bool complete(JobOutcome outcome);
  // I/O thread: `items` more inputs have their results, which took the workers `compute_us`.
  void add_progress(std::size_t items, std::uint64_t compute_us) {
    done_items_.fetch_add(items, std::memory_order_relaxed);
    compute_us_.fetch_add(compute_us, std::memory_order_relaxed);
  }

  // I/O thread: the broker sent the job's first chunk to a worker.
  void mark_started() { started_.store(true, std::memory_order_release); }
  // A chunk of the job is (or was) on a worker.
  bool started() const { return started_.load(std::memory_order_acquire); }

  bool ready() const;
  void wait() const;
  bool wait_until(std::chrono::steady_clock::time_point deadline) const;
  // REQUIRES: ready().
  const JobOutcome& outcome() const { return outcome_; }
  std::size_t done_items() const { return done_items_.load(std::memory_order_relaxed); }
  // Microseconds the workers spent computing the results received so far.
  std::uint64_t compute_us() const { return compute_us_.load(std::memory_order_relaxed); }
  // Runs `continuation` once the job ended, before the core is ready (Python's callbacks: get()
  // returns only after them); now, on this thread, if it is ready already. What it throws is
  // logged and swallowed in both cases.
  void on_complete(std::function<void(const JobOutcome&)> continuation);
  // Runs `notifier` once the core is ready (after the continuations, so a waiter it wakes finds
  // ready() true); now, on this thread, if it is ready already. REQUIRES: `notifier` does not throw.
  void on_ready(std::function<void()> notifier);

  // Completes the core with Error(kCancelled) at once, then asks the Pool (request_cancel) to drop
  // the job. Returns true if the core is now cancelled (by this call or an earlier one), false if
  // the job had ended otherwise.
  bool cancel();
  // True if the job ended by cancellation (cancel(), terminate(), a destroyed Pool).
  bool cancelled() const;
  // Waits up to `timeout` (max: for ever); throws Error(kDeadlineExceeded) if not ready by then.
  void wait_or_throw(std::chrono::milliseconds timeout) const;
  // Future::exception(): wait_or_throw(timeout), then the error of the outcome (nullptr if ok).
  // Throws Error(kCancelled) if cancelled.
  std::shared_ptr<const Error> exception(std::chrono::milliseconds timeout) const;

  // Set by the Pool before the core is shared: asks it to cancel the job at the broker.
  std::function<void()> request_cancel;
  std::uint64_t job_id = 0;     // set by the Pool before the core is shared: the job's number at the broker
  std::string task;             // for messages
  std::size_t total_items = 0;  // inputs of the job

 private:
  mutable std::mutex mutex_;  // guards done_, completing_, continuations_, notifiers_; outcome_ is written once, before
  mutable std::condition_variable changed_;
  bool done_ = false;
  bool completing_ = false;  // complete() is running the continuations
  JobOutcome outcome_;
  std::vector<std::function<void(const JobOutcome&)>> continuations_;
  std::vector<std::function<void()>> notifiers_;
  std::atomic<bool> started_{false};
  std::atomic<std::size_t> done_items_{0};
  std::atomic<std::uint64_t> compute_us_{0};
};

}  // namespace detail

template <class T>
class Future {
 public:
  using Decoder = std::function<T(const detail::JobOutcome&, const detail::FutureCore&)>;

  Future() = default;  // not valid(): every other call is undefined
  Future(std::shared_ptr<detail::FutureCore> core, std::shared_ptr<const Decoder> decode)
      : core_(std::move(core)), decode_(std::move(decode)) {}

  bool valid() const noexcept { return core_ != nullptr; }
  // True once the result (or the error) is here.
  bool ready() const { return core_->ready(); }
  // Waits until ready or `timeout` passes; returns ready().
  bool wait_for(std::chrono::milliseconds timeout) const {
    return core_->wait_until(std::chrono::steady_clock::now() + timeout);
  }
  void wait() const { core_->wait(); }

  // The value. Blocks until it is here; throws TaskError or Error as map() would, Error(kCancelled)
  // after cancel(). May be called more than once (decodes again each time).
  T get() const {
    core_->wait();
    return value();
  }
  // Same, but throws Error(kDeadlineExceeded) if the value is not here within `timeout` (the work
  // goes on: call get again, or cancel()).
  T get(std::chrono::milliseconds timeout) const {
    core_->wait_or_throw(timeout);
    return value();
  }

  // Cancels the work, like concurrent.futures.Future.cancel: once it returns true the future is
  // ready at once, get() throws Error(kCancelled), and the then() error callbacks have run (on this
  // thread); queued chunks are dropped at the broker and results of running ones discarded.
  // Returns true also if the future was cancelled before; false if it had ended otherwise (value
  // or error). Unlike Python, work already running is cancelled too (see docs/API.md).
  bool cancel() { return core_->cancel(); }

  // True if the future was cancelled (cancel(), terminate(), a destroyed Pool): Python's cancelled().
  bool cancelled() const { return core_->cancelled(); }

  // Python's running(): true while the work is on a worker (the broker sent its first chunk to a
  // worker process, which may hold it behind the chunk it runs, and said so 1 ms later) and not
  // yet ready. False while it waits in the queue, and once it is ready: work answered within 1 ms
  // of reaching a worker is never seen running.
  bool running() const { return core_->started() && !core_->ready(); }

  // Python's Future.exception(): waits like get(), then returns the error get() would throw, or
  // nullptr if the work succeeded. The error's dynamic type is TaskError when the task threw
  // (dynamic_cast it for index(), remote_type() ...). Throws Error(kCancelled) if the future was
  // cancelled (as Python raises CancelledError). Results that arrived but do not decode are not
  // checked here: get() reports them (kMalformed).
  std::shared_ptr<const Error> exception() const { return core_->exception(std::chrono::milliseconds::max()); }
  // Same, but throws Error(kDeadlineExceeded) if the work does not end within `timeout`.
  std::shared_ptr<const Error> exception(std::chrono::milliseconds timeout) const { return core_->exception(timeout); }

  // Calls `on_value` with the value, or `on_error` with the error, once the work ends (Python's
  // callback / error_callback). On the Pool's I/O thread before get() returns, on the thread of
  // cancel() for a cancelled future, or at once on this thread if already ready. What a callback
  // throws is logged ("poolmap.client") and swallowed, in every case; then() itself does not throw.
  void then(std::function<void(const T&)> on_value, std::function<void(const Error&)> on_error = {}) {
    auto decode = decode_;
    core_->on_complete([decode, on_value = std::move(on_value), on_error = std::move(on_error),
                        core = core_.get()](const detail::JobOutcome& outcome) {
      if (!outcome.error.is_ok()) {
        if (on_error) detail::call_with_error(outcome, on_error);
        return;
      }
      if (!on_value) return;
      std::optional<T> value;
      try {
        value.emplace((*decode)(outcome, *core));
      } catch (const Error& e) {  // results that do not decode
        if (on_error) on_error(e);
        return;
      }
      on_value(*value);
    });
  }

  // For AnyFuture, as_completed, wait, wait_any: the shared state.
  const std::shared_ptr<detail::FutureCore>& core() const noexcept { return core_; }

 private:
  T value() const {
    const auto& outcome = core_->outcome();
    if (!outcome.error.is_ok()) detail::throw_outcome(outcome);
    return (*decode_)(outcome, *core_);
  }

  std::shared_ptr<detail::FutureCore> core_;
  std::shared_ptr<const Decoder> decode_;
};

// A Future of any result type, for waiting on futures of different types together:
//
//   std::vector<poolmap::AnyFuture> all{pool.submit(square, 3), pool.submit(shout, std::string("x"))};
//   for (std::size_t i : poolmap::as_completed(all)) ...;   // then get() on the typed futures
//
// It shares the state of the Future it was made from (cancel() on either cancels both); it has no
// get(): keep the typed Future for the value. Thread-safety as Future.
class AnyFuture {
 public:
  AnyFuture() = default;  // not valid(): every other call is undefined
  template <class T>
  AnyFuture(const Future<T>& future) : core_(future.core()) {}  // NOLINT: implicit, like a base

  bool valid() const noexcept { return core_ != nullptr; }
  bool ready() const { return core_->ready(); }
  bool wait_for(std::chrono::milliseconds timeout) const {
    return core_->wait_until(std::chrono::steady_clock::now() + timeout);
  }
  void wait() const { core_->wait(); }
  bool cancel() { return core_->cancel(); }
  bool cancelled() const { return core_->cancelled(); }
  bool running() const { return core_->started() && !core_->ready(); }
  std::shared_ptr<const Error> exception() const { return core_->exception(std::chrono::milliseconds::max()); }
  std::shared_ptr<const Error> exception(std::chrono::milliseconds timeout) const { return core_->exception(timeout); }
  const std::shared_ptr<detail::FutureCore>& core() const noexcept { return core_; }

 private:
  std::shared_ptr<detail::FutureCore> core_;
};

// What wait_all, wait_any, wait and as_completed take: a range of Future<T> or AnyFuture (a
// std::vector, std::array, std::span ...). The functions below keep no reference to it.
template <class Futures>
concept FutureRange = std::ranges::forward_range<const Futures> &&
                      requires(const std::ranges::range_value_t<Futures>& future) {
                        { future.core() } -> std::convertible_to<std::shared_ptr<detail::FutureCore>>;
                      };

namespace detail {
// now + timeout; time_point::max() for timeout == milliseconds::max() (no timeout).
inline std::chrono::steady_clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  return timeout == std::chrono::milliseconds::max() ? std::chrono::steady_clock::time_point::max()
                                                     : std::chrono::steady_clock::now() + timeout;
}

// Indices of futures in the order they become ready. Thread-safe.
class CompletionQueue {
 public:
  void push(std::size_t index) {
    {
      std::lock_guard lock(mutex_);
      ready_.push_back(index);
    }
    changed_.notify_all();
  }
  std::optional<std::size_t> pop_until(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(mutex_);
    if (!changed_.wait_until(lock, deadline, [&] { return !ready_.empty(); })) return std::nullopt;
    const std::size_t index = ready_.front();
    ready_.pop_front();
    return index;
  }

 private:
  std::mutex mutex_;  // guards ready_
  std::condition_variable changed_;
  std::deque<std::size_t> ready_;
};

// Pushes each future's index to a new queue once it is ready (at once for those ready already).
// Returns the queue and the number of futures.
template <class Futures>
std::pair<std::shared_ptr<CompletionQueue>, std::size_t> watch(const Futures& futures) {
  auto queue = std::make_shared<CompletionQueue>();
  std::size_t count = 0;
  for (const auto& future : futures) {
    future.core()->on_ready([queue, index = count] { queue->push(index); });
    ++count;
  }
  return {std::move(queue), count};
}
}  // namespace detail

// Waits until every future is ready, or `timeout` passes. Returns true if all are ready.
template <FutureRange Futures>
bool wait_all(const Futures& futures, std::chrono::milliseconds timeout = std::chrono::milliseconds::max()) {
  const auto deadline = detail::deadline_after(timeout);
  for (const auto& future : futures) {
    if (!future.core()->wait_until(deadline)) return false;
  }
  return true;
}

// Waits until at least one future is ready, or `timeout` passes. Returns the index of a ready
// one (get(0ms) on it does not time out), or nullopt.
template <FutureRange Futures>
std::optional<std::size_t> wait_any(const Futures& futures,
                                    std::chrono::milliseconds timeout = std::chrono::milliseconds::max()) {
  return detail::watch(futures).first->pop_until(detail::deadline_after(timeout));
}

// When poolmap::wait returns (concurrent.futures' FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED).
enum class ReturnWhen {
  kFirstCompleted,  // any future is ready
  kFirstException,  // any future failed (not by cancellation); ALL_COMPLETED if none does
  kAllCompleted,    // every future is ready
};
// Python's spellings: poolmap::wait(futures, poolmap::FIRST_COMPLETED).
inline constexpr ReturnWhen FIRST_COMPLETED = ReturnWhen::kFirstCompleted;
inline constexpr ReturnWhen FIRST_EXCEPTION = ReturnWhen::kFirstException;
inline constexpr ReturnWhen ALL_COMPLETED = ReturnWhen::kAllCompleted;

// What poolmap::wait returns: the indices of the futures ready and not ready when it returned,
// each in ascending order (Python returns two sets of futures).
struct WaitResult {
  std::vector<std::size_t> done;
  std::vector<std::size_t> not_done;
};

// concurrent.futures.wait: waits until `return_when` holds or `timeout` passes (no exception on
// timeout: see not_done). Default: ALL_COMPLETED, no timeout.
template <FutureRange Futures>
WaitResult wait(const Futures& futures, ReturnWhen return_when = ReturnWhen::kAllCompleted,
                std::chrono::milliseconds timeout = std::chrono::milliseconds::max()) {
  std::vector<detail::FutureCore*> cores;
  for (const auto& future : futures) cores.push_back(future.core().get());
  auto [queue, count] = detail::watch(futures);
  const auto deadline = detail::deadline_after(timeout);
  for (std::size_t completed = 0; completed < count; ++completed) {
    if (return_when == ReturnWhen::kFirstCompleted && completed > 0) break;
    const auto index = queue->pop_until(deadline);
    if (!index) break;
    const auto& outcome = cores[*index]->outcome();
    if (return_when == ReturnWhen::kFirstException && !outcome.error.is_ok() &&
        outcome.error.code() != ErrorCode::kCancelled) {
      break;
    }
  }
  WaitResult result;
  for (std::size_t i = 0; i < cores.size(); ++i) (cores[i]->ready() ? result.done : result.not_done).push_back(i);
  return result;
}

// The futures' indices in the order they complete, like concurrent.futures.as_completed:
//   for (std::size_t i : poolmap::as_completed(futures)) use(futures[i].get());
// Iterating blocks until the next one is ready; each index is given once, when its future is
// ready. With a timeout (counted from construction, as Python counts from the call), the iteration
// throws Error(kDeadlineExceeded) when the next future is not ready by then (Python's
// TimeoutError), with Python's message and the timeout: "2 (of 4) futures unfinished after
// 500 ms". Futures ready already come first. Default: no timeout.
class as_completed {
 public:
  template <FutureRange Futures>
  explicit as_completed(const Futures& futures, std::chrono::milliseconds timeout = std::chrono::milliseconds::max())
      : deadline_(detail::deadline_after(timeout)), timeout_(timeout) {
    std::tie(queue_, remaining_) = detail::watch(futures);
    total_ = remaining_;
  }

  class iterator {
   public:
    using value_type = std::size_t;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(as_completed* owner) : owner_(owner) { advance(); }
    std::size_t operator*() const { return current_; }
    iterator& operator++() {
      advance();
      return *this;
    }
    void operator++(int) { advance(); }
    bool operator==(std::default_sentinel_t) const { return owner_ == nullptr; }

   private:
    void advance() {
      if (owner_ == nullptr || owner_->remaining_ == 0) {
        owner_ = nullptr;
        return;
      }
      const auto next = owner_->queue_->pop_until(owner_->deadline_);
      if (!next) {
        // concurrent.futures' words (bpo-29733): "N (of M) futures unfinished".
        std::string message = std::to_string(owner_->remaining_) + " (of " + std::to_string(owner_->total_) +
                              ") futures unfinished after " + std::to_string(owner_->timeout_.count()) + " ms";
        owner_ = nullptr;
        throw Error(ErrorCode::kDeadlineExceeded, message);
      }
      --owner_->remaining_;
      current_ = *next;
    }
    as_completed* owner_ = nullptr;
    std::size_t current_ = 0;
  };

  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const { return {}; }

 private:
  std::shared_ptr<detail::CompletionQueue> queue_;
  std::size_t remaining_ = 0;  // not yielded yet
  std::size_t total_ = 0;      // futures given
  std::chrono::steady_clock::time_point deadline_;
  std::chrono::milliseconds timeout_;
};

}  // namespace poolmap
