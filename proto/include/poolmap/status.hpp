// Status and Result<T>: error values used inside the broker, the worker and the codec.
//
// Exceptions are for the user boundary (poolmap::Error and its subclasses, see error.hpp);
// code that handles bytes from a socket returns a Status or a Result<T> instead, so that a bad
// peer can never unwind through a daemon's event loop.
//
// Thread-safety: value types; distinct objects may be used from distinct threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace poolmap {

// What went wrong. The numeric values travel on the wire (see docs/PROTOCOL.md): never renumber.
enum class ErrorCode : std::uint8_t {
  kOk = 0,
  kMalformed = 1,          // bytes that do not decode: truncated, oversized, trailing garbage
  kBadVersion = 2,         // protocol tag or version not understood
  kUnknownCommand = 3,     // a command byte this peer does not handle
  kUnknownTask = 4,        // no task registered under the requested name
  kSignatureMismatch = 5,  // the task exists but its argument/result types differ
  kTaskFailed = 6,         // the task threw an exception
  kWorkerLost = 7,         // the worker holding a chunk died or went silent too often
  kCancelled = 8,          // the work was cancelled
  kUnavailable = 9,        // no broker, or no worker could run it
  kInvalidArgument = 10,   // a caller passed something unusable (options, endpoints)
  kInternal = 11,          // a bug or an environment failure (bind, spawn)
  kDeadlineExceeded = 12,  // the work did not finish in time
  kContextMissing = 13,    // a worker no longer has a chunk's broadcast context (broker-internal)
  kResourceExhausted = 14, // over a per-client quota at the broker now; send it again later
};

// A readable name for an error code, e.g. "unknown-task". Never empty.
std::string_view to_string(ErrorCode code) noexcept;

// Success, or an error code with a message for humans.
class [[nodiscard]] Status {
 public:
  Status() = default;  // ok
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return {}; }

  bool is_ok() const noexcept { return code_ == ErrorCode::kOk; }
  explicit operator bool() const noexcept { return is_ok(); }
  ErrorCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }

  // "unknown-task: task 'cube' is not registered" (or "ok").
  std::string to_string() const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

// A value or the Status that explains why there is none.
// REQUIRES: value() only when is_ok(); status() is ok exactly when a value is present.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : state_(std::move(status)) {}  // NOLINT: implicit by design

  bool is_ok() const noexcept { return std::holds_alternative<T>(state_); }
  explicit operator bool() const noexcept { return is_ok(); }

  T& value() & { return std::get<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }

  // The error; Status::ok() when a value is present.
  Status status() const { return is_ok() ? Status::ok() : std::get<Status>(state_); }

 private:
  std::variant<T, Status> state_;
};

}  // namespace poolmap
