// Exceptions thrown at the user boundary of poolmap (the client library and the daemons' mains).
//
// Every exception poolmap throws derives from poolmap::Error, which derives from std::runtime_error,
// so `catch (const std::exception&)` sees them all and `catch (const poolmap::Error&)` sees the code.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "poolmap/status.hpp"

namespace poolmap {

// A poolmap failure with its code. what() is a sentence a user can act on.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  explicit Error(const Status& status) : Error(status.code(), status.message()) {}

  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// A task threw on a worker. Carries where and what, like the traceback Python's Pool re-raises.
class TaskError : public Error {
 public:
  struct Details {
    std::string task;           // task name, e.g. "square"
    std::uint64_t index = 0;    // index of the failing item in the caller's input
    std::string remote_type;    // the exception's type on the worker, e.g. "std::invalid_argument"
    std::string remote_message; // its what()
    std::string worker_host;    // host name of the worker process
    std::uint32_t worker_pid = 0;
  };

  explicit TaskError(Details details);

  const std::string& task() const noexcept { return details_.task; }
  std::uint64_t index() const noexcept { return details_.index; }
  const std::string& remote_type() const noexcept { return details_.remote_type; }
  const std::string& remote_message() const noexcept { return details_.remote_message; }
  const std::string& worker_host() const noexcept { return details_.worker_host; }
  std::uint32_t worker_pid() const noexcept { return details_.worker_pid; }

 private:
  Details details_;
};

}  // namespace poolmap
