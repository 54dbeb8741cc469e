// poolmap::Future<T>: the result of Pool::submit or Pool::map_async, like Python's AsyncResult and
// concurrent.futures.Future; plus as_completed, wait_all and wait_any over several of them.
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
#include <deque>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
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
};

// The encoded results of one chunk; `bytes` stays valid while `owner` lives.
struct ChunkResult {
  std::span<const std::byte> bytes;
  std::shared_ptr<const void> owner;
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

// Decodes every result of every chunk into `out`. Throws Error(kMalformed) when a chunk does not
// decode or the total is not `expected`.
template <class R>
void decode_results(const std::vector<ChunkResult>& chunks, std::size_t expected, std::string_view task,
                    std::vector<R>& out) {
  out.reserve(out.size() + expected);
  for (std::size_t c = 0; c < chunks.size(); ++c) {
    try {
      InputArchive decoder(chunks[c].bytes);
      while (decoder.remaining() > 0) {
        R value{};
        decoder(value);
        out.push_back(std::move(value));
      }
    } catch (const cereal::Exception& e) {
      throw Error(ErrorCode::kMalformed, "results of task '" + std::string(task) + "' chunk " + std::to_string(c) +
                                             " do not decode: " + e.what());
    }
  }
  if (out.size() != expected) {
    throw Error(ErrorCode::kMalformed, "task '" + std::string(task) + "' returned " + std::to_string(out.size()) +
                                           " results for " + std::to_string(expected) + " inputs");
  }
}

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

  // Set by the Pool before the core is shared: asks it to cancel the job at the broker.
  std::function<void()> request_cancel;
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
    if (!wait_for(timeout)) {
      throw Error(ErrorCode::kDeadlineExceeded, "no result from task '" + core_->task + "' within " +
                                                    std::to_string(timeout.count()) + " ms");
    }
    return value();
  }

  // Cancels the work, like concurrent.futures.Future.cancel: once it returns true the future is
  // ready at once, get() throws Error(kCancelled), and the then() error callbacks have run (on this
  // thread); queued chunks are dropped at the broker and results of running ones discarded.
  // Returns true also if the future was cancelled before; false if it had ended otherwise (value
  // or error). Unlike Python, work already running is cancelled too (see docs/API.md).
  bool cancel() { return core_->cancel(); }

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

  // For as_completed / wait_any: the shared state.
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

// Waits until every future is ready, or `timeout` passes. Returns true if all are ready.
template <class T>
bool wait_all(const std::vector<Future<T>>& futures,
              std::chrono::milliseconds timeout = std::chrono::milliseconds::max()) {
  const auto deadline = timeout == std::chrono::milliseconds::max()
                            ? std::chrono::steady_clock::time_point::max()
                            : std::chrono::steady_clock::now() + timeout;
  for (const auto& future : futures) {
    if (!future.core()->wait_until(deadline)) return false;
  }
  return true;
}

namespace detail {
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
}  // namespace detail

// Waits until at least one future is ready, or `timeout` passes. Returns the index of a ready
// one, or nullopt.
template <class T>
std::optional<std::size_t> wait_any(const std::vector<Future<T>>& futures,
                                    std::chrono::milliseconds timeout = std::chrono::milliseconds::max()) {
  auto queue = std::make_shared<detail::CompletionQueue>();
  for (std::size_t i = 0; i < futures.size(); ++i) {
    futures[i].core()->on_ready([queue, i] { queue->push(i); });
  }
  const auto deadline = timeout == std::chrono::milliseconds::max()
                            ? std::chrono::steady_clock::time_point::max()
                            : std::chrono::steady_clock::now() + timeout;
  return queue->pop_until(deadline);
}

// The futures' indices in the order they complete, like concurrent.futures.as_completed:
//   for (std::size_t i : poolmap::as_completed(futures)) use(futures[i].get());
// Iterating blocks until the next one is ready. The futures must outlive the iteration.
template <class T>
class as_completed {
 public:
  explicit as_completed(const std::vector<Future<T>>& futures)
      : queue_(std::make_shared<detail::CompletionQueue>()), remaining_(futures.size()) {
    for (std::size_t i = 0; i < futures.size(); ++i) {
      futures[i].core()->on_ready([queue = queue_, i] { queue->push(i); });
    }
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
      --owner_->remaining_;
      current_ = *owner_->queue_->pop_until(std::chrono::steady_clock::time_point::max());
    }
    as_completed* owner_ = nullptr;
    std::size_t current_ = 0;
  };

  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const { return {}; }

 private:
  std::shared_ptr<detail::CompletionQueue> queue_;
  std::size_t remaining_;
};

}  // namespace poolmap
