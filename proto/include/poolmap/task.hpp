// Tasks: the typed names that stand for remote functions.
//
// C++ cannot ship closures, so a remote function is a name with a signature, declared once in a
// header that both client and worker code include:
//
//   // tasks.hpp
//   inline constexpr poolmap::Task<std::int64_t(std::int64_t)> square{"square"};
//   // tasks.cpp (in a task library loaded by poolmap-worker --tasks, or in the user's program)
//   POOLMAP_TASK(square, [](std::int64_t x) { return x * x; });
//
// Arguments and results are Cereal-serializable (see archive.hpp). The client sends the task's
// signature string with every chunk; a worker whose registration has another signature for the same
// name refuses the chunk with ErrorCode::kSignatureMismatch instead of decoding garbage.
//
// Thread-safety: registration happens during static initialization (program start or dlopen);
// TaskRegistry lookups are safe from any thread once loading is over.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "poolmap/archive.hpp"
#include "poolmap/status.hpp"

namespace poolmap {

namespace detail {

// Portable names for types, so that two compilers agree on a signature.
template <class T, class = void>
struct TypeName {
  static std::string get() {
    std::string_view p = __PRETTY_FUNCTION__;  // "... [with T = Foo; ...]" or "... [T = Foo]"
    const auto start = p.find("T = ");
    if (start == std::string_view::npos) return std::string(p);
    p.remove_prefix(start + 4);
    const auto end = p.find_first_of(";]");
    return std::string(p.substr(0, end));
  }
};
template <class T>
struct TypeName<T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>>> {
  static std::string get() {
    return (std::is_signed_v<T> ? "i" : "u") + std::to_string(8 * sizeof(T));
  }
};
template <class T>
struct TypeName<T, std::enable_if_t<std::is_floating_point_v<T>>> {
  static std::string get() { return "f" + std::to_string(8 * sizeof(T)); }
};
template <>
struct TypeName<bool> {
  static std::string get() { return "bool"; }
};
template <>
struct TypeName<std::string> {
  static std::string get() { return "string"; }
};

template <class... Ts>
std::string type_list() {
  std::string out;
  ((out += (out.empty() ? "" : ","), out += TypeName<std::decay_t<Ts>>::get()), ...);
  return out;
}

template <class T, class A>
struct TypeName<std::vector<T, A>> {
  static std::string get() { return "vector<" + TypeName<T>::get() + ">"; }
};
template <class T, std::size_t N>
struct TypeName<std::array<T, N>> {
  static std::string get() { return "array<" + TypeName<T>::get() + "," + std::to_string(N) + ">"; }
};
template <class T>
struct TypeName<std::optional<T>> {
  static std::string get() { return "optional<" + TypeName<T>::get() + ">"; }
};
template <class A, class B>
struct TypeName<std::pair<A, B>> {
  static std::string get() { return "pair<" + type_list<A, B>() + ">"; }
};
template <class... Ts>
struct TypeName<std::tuple<Ts...>> {
  static std::string get() { return "tuple<" + type_list<Ts...>() + ">"; }
};
template <class K, class V, class C, class A>
struct TypeName<std::map<K, V, C, A>> {
  static std::string get() { return "map<" + type_list<K, V>() + ">"; }
};
template <class K, class V, class H, class E, class A>
struct TypeName<std::unordered_map<K, V, H, E, A>> {
  static std::string get() { return "unordered_map<" + type_list<K, V>() + ">"; }
};
template <class T, class C, class A>
struct TypeName<std::set<T, C, A>> {
  static std::string get() { return "set<" + TypeName<T>::get() + ">"; }
};

template <class R, class... Args>
std::string signature_of() {
  return TypeName<R>::get() + "(" + type_list<Args...>() + ")";
}

// What a worker reports when a task throws on one item of a chunk.
struct TaskFailure {
  std::uint32_t offset = 0;  // index of the failing item within the chunk
  std::string type;          // demangled exception type, "unknown" for non-std exceptions
  std::string message;
};

// The demangled dynamic type of the exception currently being handled.
std::string current_exception_type();

// A registered task, type-erased. Implemented by TaskRunnerFor<> below.
class TaskRunner {
 public:
  virtual ~TaskRunner() = default;
  virtual std::string_view name() const noexcept = 0;
  virtual const std::string& signature() const noexcept = 0;

  // Decodes `count` items from `input`, calls the task on each and appends the `count` encoded
  // results to `output`. Returns kMalformed if the input does not decode, or kTaskFailed with
  // `failure` filled when the task throws (items before failure.offset are already in `output`).
  // Adds one to `items_started` (if not null) before each item, so another thread can watch for
  // an item that runs too long.
  virtual Status run(std::span<const std::byte> input, std::uint32_t count, Bytes& output, TaskFailure& failure,
                     std::atomic<std::uint64_t>* items_started = nullptr) const = 0;
};

// Every task known to this process, by name.
class TaskRegistry {
 public:
  static TaskRegistry& instance();

  // Adds a task. A second registration of the same name with the same signature is ignored; one
  // with another signature is recorded in conflicts() and ignored.
  void add(std::unique_ptr<TaskRunner> runner);

  // The task registered under `name`, or nullptr. The pointer stays valid for the process lifetime.
  const TaskRunner* find(std::string_view name) const;

  std::vector<std::string> names() const;
  std::vector<std::string> conflicts() const;

  // Worker initializers (POOLMAP_WORKER_INIT), in registration order.
  using Initializer = void (*)(const std::vector<std::string>& init_args);
  void add_initializer(Initializer initializer) { initializers_.push_back(initializer); }
  const std::vector<Initializer>& initializers() const { return initializers_; }

 private:
  TaskRegistry() = default;
  std::map<std::string, std::unique_ptr<TaskRunner>, std::less<>> runners_;
  std::vector<std::string> conflicts_;
  std::vector<Initializer> initializers_;
};

// Registers a worker initializer at static-initialization time; see POOLMAP_WORKER_INIT.
struct InitializerRegistration {
  explicit InitializerRegistration(TaskRegistry::Initializer initializer) {
    TaskRegistry::instance().add_initializer(initializer);
  }
};

}  // namespace detail

// A typed handle for a remote function: `Task<R(Args...)> name{"name"}`.
// Cheap to copy; holds a view of its name, so construct it from a string literal.
template <class Signature>
class Task;

template <class R, class... Args>
class Task<R(Args...)> {
 public:
  using result_type = R;
  using args_tuple = std::tuple<std::decay_t<Args>...>;
  static constexpr std::size_t arity = sizeof...(Args);

  static_assert(sizeof...(Args) >= 1, "a poolmap task takes at least one argument");
  static_assert(!std::is_void_v<R>, "a poolmap task returns a value (return a bool or an int for status)");

  constexpr explicit Task(std::string_view name) noexcept : name_(name) {}

  constexpr std::string_view name() const noexcept { return name_; }

  // Portable signature string, e.g. "i64(i64)" or "vector<f64>(string,i32)".
  static std::string signature() { return detail::signature_of<std::decay_t<R>, std::decay_t<Args>...>(); }

 private:
  std::string_view name_;
};

namespace detail {

template <class F, class R, class... Args>
class TaskRunnerFor final : public TaskRunner {
 public:
  TaskRunnerFor(std::string_view name, F function)
      : name_(name), signature_(Task<R(Args...)>::signature()), function_(std::move(function)) {}

  std::string_view name() const noexcept override { return name_; }
  const std::string& signature() const noexcept override { return signature_; }

  Status run(std::span<const std::byte> input, std::uint32_t count, Bytes& output, TaskFailure& failure,
             std::atomic<std::uint64_t>* items_started = nullptr) const override {
    InputArchive in(input);
    OutputArchive out(output);
    std::tuple<std::decay_t<Args>...> args;
    for (std::uint32_t i = 0; i < count; ++i) {
      try {
        std::apply([&in](auto&... a) { in(a...); }, args);
      } catch (const std::exception& e) {
        return Status(ErrorCode::kMalformed, "input of task '" + name_ + "' does not decode at item " +
                                                 std::to_string(i) + ": " + e.what());
      }
      std::optional<std::decay_t<R>> result;
      if (items_started != nullptr) items_started->fetch_add(1, std::memory_order_relaxed);
      try {
        result.emplace(std::apply(function_, args));
      } catch (...) {
        failure.offset = i;
        failure.type = current_exception_type();
        try {
          throw;
        } catch (const std::exception& e) {
          failure.message = e.what();
        } catch (...) {
          failure.message = "non-standard exception";
        }
        return Status(ErrorCode::kTaskFailed, failure.message);
      }
      out(*result);
    }
    if (in.remaining() != 0) {
      return Status(ErrorCode::kMalformed, "input of task '" + name_ + "' has " +
                                               std::to_string(in.remaining()) + " trailing bytes");
    }
    return Status::ok();
  }

 private:
  std::string name_;
  std::string signature_;
  F function_;
};

// Registers a task at static-initialization time; see POOLMAP_TASK.
class TaskRegistration {
 public:
  template <class R, class... Args, class F>
  TaskRegistration(const Task<R(Args...)>& task, F function) {
    static_assert(std::is_invocable_v<const F&, const std::decay_t<Args>&...>,
                  "POOLMAP_TASK: the callable cannot be called with the task's argument types");
    static_assert(std::is_convertible_v<std::invoke_result_t<const F&, const std::decay_t<Args>&...>, R>,
                  "POOLMAP_TASK: the callable's result does not convert to the task's result type");
    TaskRegistry::instance().add(
        std::make_unique<TaskRunnerFor<F, R, Args...>>(task.name(), std::move(function)));
  }
};

}  // namespace detail
}  // namespace poolmap

#define POOLMAP_DETAIL_CONCAT2(a, b) a##b
#define POOLMAP_DETAIL_CONCAT(a, b) POOLMAP_DETAIL_CONCAT2(a, b)

// Registers a function run once in every worker process before it takes its first chunk, like
// Python's Pool(initializer=..., initargs=...): `void init(const std::vector<std::string>& args)`
// receives the strings given with `poolmap-worker --init-arg` (PoolOptions::init_args in embedded
// mode). Use it to open files, load models, seed generators. If it throws, the worker process exits
// with status 3 (its supervisor restarts it with back-off) and the error is logged.
#define POOLMAP_WORKER_INIT(function)                                                              \
  [[maybe_unused]] static const ::poolmap::detail::InitializerRegistration POOLMAP_DETAIL_CONCAT( \
      poolmap_worker_init_, __COUNTER__) {                                                        \
    function                                                                                       \
  }

// Registers `callable` as the implementation of the Task handle `handle` in this process.
// Use at namespace scope in one .cpp file of a task library or of the program itself.
#define POOLMAP_TASK(handle, ...)                                                              \
  [[maybe_unused]] static const ::poolmap::detail::TaskRegistration POOLMAP_DETAIL_CONCAT( \
      poolmap_task_registration_, __COUNTER__) {                                           \
    handle, __VA_ARGS__                                                                    \
  }
