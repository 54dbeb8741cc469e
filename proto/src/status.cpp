#include "poolmap/status.hpp"

#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <typeinfo>

#include "poolmap/error.hpp"
#include "poolmap/task.hpp"

namespace poolmap {

std::string_view to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kOk: return "ok";
    case ErrorCode::kMalformed: return "malformed";
    case ErrorCode::kBadVersion: return "bad-version";
    case ErrorCode::kUnknownCommand: return "unknown-command";
    case ErrorCode::kUnknownTask: return "unknown-task";
    case ErrorCode::kSignatureMismatch: return "signature-mismatch";
    case ErrorCode::kTaskFailed: return "task-failed";
    case ErrorCode::kWorkerLost: return "worker-lost";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kUnavailable: return "unavailable";
    case ErrorCode::kInvalidArgument: return "invalid-argument";
    case ErrorCode::kInternal: return "internal";
    case ErrorCode::kDeadlineExceeded: return "deadline-exceeded";
    case ErrorCode::kContextMissing: return "context-missing";
    case ErrorCode::kResourceExhausted: return "resource-exhausted";
  }
  return "unknown-error-code";
}

std::string Status::to_string() const {
  if (is_ok()) return "ok";
  return std::string(poolmap::to_string(code_)) + ": " + message_;
}

namespace {
std::string task_error_message(const TaskError::Details& d) {
  return "task '" + d.task + "' failed at item " + std::to_string(d.index) + " on " + d.worker_host +
         " pid " + std::to_string(d.worker_pid) + ": " + d.remote_type + ": " + d.remote_message;
}
}  // namespace

TaskError::TaskError(Details details)
    : Error(ErrorCode::kTaskFailed, task_error_message(details)), details_(std::move(details)) {}

namespace detail {

std::string current_exception_type() {
  const std::type_info* type = abi::__cxa_current_exception_type();
  if (type == nullptr) return "unknown";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(abi::__cxa_demangle(type->name(), nullptr, nullptr, &status),
                                              std::free);
  if (status != 0 || !name) return type->name();
  return name.get();
}

TaskRegistry& TaskRegistry::instance() {
  static TaskRegistry registry;
  return registry;
}

void TaskRegistry::add(std::unique_ptr<TaskRunner> runner) {
  const auto found = runners_.find(runner->name());
  if (found != runners_.end()) {
    if (found->second->signature() != runner->signature()) {
      conflicts_.push_back("task '" + std::string(runner->name()) + "' registered as " +
                           found->second->signature() + " and again as " + runner->signature() +
                           "; keeping the first");
    }
    return;
  }
  std::string name(runner->name());
  runners_.emplace(std::move(name), std::move(runner));
}

const TaskRunner* TaskRegistry::find(std::string_view name) const {
  const auto found = runners_.find(name);
  return found == runners_.end() ? nullptr : found->second.get();
}

std::vector<std::string> TaskRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& [name, runner] : runners_) out.push_back(name);
  return out;
}

std::vector<std::string> TaskRegistry::conflicts() const { return conflicts_; }

}  // namespace detail
}  // namespace poolmap
