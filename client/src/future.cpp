#include "poolmap/future.hpp"

#include "log.hpp"

namespace poolmap::detail {

namespace {
// Runs a user callback; what it throws is logged, never passed on (Python logs and goes on too).
void run_callback(const std::function<void(const JobOutcome&)>& callback, const JobOutcome& outcome,
                  const std::string& task) noexcept {
  try {
    callback(outcome);
  } catch (const std::exception& e) {
    logger("poolmap.client")->error("a Future callback of task '{}' threw: {}", task, e.what());
  } catch (...) {
    logger("poolmap.client")->error("a Future callback of task '{}' threw", task);
  }
}
}  // namespace

void throw_outcome(const JobOutcome& outcome) {
  if (outcome.task_error) throw TaskError(*outcome.task_error);
  throw Error(outcome.error);
}

void call_with_error(const JobOutcome& outcome, const std::function<void(const Error&)>& on_error) {
  if (outcome.task_error) {
    on_error(TaskError(*outcome.task_error));
  } else {
    on_error(Error(outcome.error));
  }
}

bool FutureCore::complete(JobOutcome outcome) {
  // Like Python's AsyncResult: the callbacks run before waiters see the result, so get() returns
  // only after them. Callbacks added meanwhile (on_complete while not done) are run here too.
  // Notifiers (wait_any, as_completed) run after done_ is set: the index they report is ready.
  {
    std::lock_guard lock(mutex_);
    if (done_ || completing_) return false;
    completing_ = true;
    outcome_ = std::move(outcome);
  }
  std::vector<std::function<void()>> notifiers;
  for (;;) {
    std::vector<std::function<void(const JobOutcome&)>> continuations;
    {
      std::lock_guard lock(mutex_);
      if (continuations_.empty()) {
        done_ = true;
        notifiers.swap(notifiers_);
        break;
      }
      continuations.swap(continuations_);
    }
    for (auto& continuation : continuations) run_callback(continuation, outcome_, task);
  }
  changed_.notify_all();
  for (auto& notifier : notifiers) notifier();
  return true;
}

bool FutureCore::cancel() {
  if (complete(JobOutcome{{}, Status(ErrorCode::kCancelled, "task '" + task + "' was cancelled"), std::nullopt})) {
    if (request_cancel) request_cancel();
    return true;
  }
  return cancelled();
}

bool FutureCore::cancelled() const {
  std::lock_guard lock(mutex_);
  return (done_ || completing_) && outcome_.error.code() == ErrorCode::kCancelled;
}

void FutureCore::wait_or_throw(std::chrono::milliseconds timeout) const {
  if (!wait_until(deadline_after(timeout))) {
    throw Error(ErrorCode::kDeadlineExceeded,
                "no result from task '" + task + "' within " + std::to_string(timeout.count()) + " ms");
  }
}

std::shared_ptr<const Error> FutureCore::exception(std::chrono::milliseconds timeout) const {
  wait_or_throw(timeout);
  if (outcome_.error.is_ok()) return nullptr;
  if (outcome_.error.code() == ErrorCode::kCancelled) throw Error(outcome_.error);  // Python: CancelledError
  if (outcome_.task_error) return std::make_shared<const TaskError>(*outcome_.task_error);
  return std::make_shared<const Error>(outcome_.error);
}

bool FutureCore::ready() const {
  std::lock_guard lock(mutex_);
  return done_;
}

void FutureCore::wait() const {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [this] { return done_; });
}

bool FutureCore::wait_until(std::chrono::steady_clock::time_point deadline) const {
  std::unique_lock lock(mutex_);
  if (deadline == std::chrono::steady_clock::time_point::max()) {
    changed_.wait(lock, [this] { return done_; });
    return true;
  }
  return changed_.wait_until(lock, deadline, [this] { return done_; });
}

void FutureCore::on_complete(std::function<void(const JobOutcome&)> continuation) {
  {
    std::lock_guard lock(mutex_);
    if (!done_) {
      continuations_.push_back(std::move(continuation));
      return;
    }
  }
  run_callback(continuation, outcome_, task);
}

void FutureCore::on_ready(std::function<void()> notifier) {
  {
    std::lock_guard lock(mutex_);
    if (!done_) {
      notifiers_.push_back(std::move(notifier));
      return;
    }
  }
  notifier();
}

}  // namespace poolmap::detail
