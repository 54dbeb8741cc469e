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
  std::vector<std::function<void(const JobOutcome&)>> continuations;
  {
    std::lock_guard lock(mutex_);
    if (done_) return;
    outcome_ = std::move(outcome);
    done_ = true;
    continuations.swap(continuations_);
  }
  changed_.notify_all();
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
