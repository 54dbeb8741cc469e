#include "poolmap/future.hpp"

#include "log.hpp"

namespace poolmap::detail {

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

void FutureCore::complete(JobOutcome outcome) {
  // Like Python's AsyncResult: the callbacks run before waiters see the result, so get() returns
  // only after them. Callbacks added meanwhile (on_complete while not done) are run here too.
  {
    std::lock_guard lock(mutex_);
    if (done_ || completing_) return;
    completing_ = true;
    outcome_ = std::move(outcome);
  }
  for (;;) {
    std::vector<std::function<void(const JobOutcome&)>> continuations;
    {
      std::lock_guard lock(mutex_);
      if (continuations_.empty()) {
        done_ = true;
        break;
      }
      continuations.swap(continuations_);
    }
    for (auto& continuation : continuations) {
      try {
        continuation(outcome_);
      } catch (const std::exception& e) {
        logger("poolmap.client")->error("a Future callback of task '{}' threw: {}", task, e.what());
      } catch (...) {
        logger("poolmap.client")->error("a Future callback of task '{}' threw", task);
      }
    }
  }
  changed_.notify_all();
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
  continuation(outcome_);
}

}  // namespace poolmap::detail
