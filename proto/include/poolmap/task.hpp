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
#include <cstring>
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
    // Appended, not `"i" + std::to_string(...)`: g++ 12 warns (-Wrestrict, a false positive) about
    // that operator+ when it is inlined at -O2 and above, in every program that includes this.
    std::string name(1, std::is_signed_v<T> ? 'i' : 'u');
    name += std::to_string(8 * sizeof(T));
    return name;
  }
};
template <class T>
struct TypeName<T, std::enable_if_t<std::is_floating_point_v<T>>> {
  static std::string get() {
    std::string name(1, 'f');  // appended: see the integral case
    name += std::to_string(8 * sizeof(T));
    return name;
  }
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
  // results to `output`. Returns kMalformed if the input is truncated or its size fields lie, or
  // kTaskFailed with `failure` filled when the task throws, an argument's load() throws or the
  // result's save() throws (items before failure.offset are already in `output`). Never throws.
  // Adds one to `items_started` (if not null) before each item, so another thread can watch for
  // an item that runs too long. With a `context` (an object from decode_context), the task's first
  // argument is that object for every item and the items hold only the other arguments.
  virtual Status run(std::span<const std::byte> input, std::uint32_t count, Bytes& output, TaskFailure& failure,
                     std::atomic<std::uint64_t>* items_started = nullptr, const void* context = nullptr) const = 0;

  // Decodes a broadcast context: the value of the task's first argument. kMalformed for bytes that
  // do not decode, or for a task with one argument.
  virtual Result<std::shared_ptr<const void>> decode_context(std::span<const std::byte> bytes) const = 0;
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


// FNV-1a 64 of some bytes (how broadcast contexts are named on the wire).
constexpr std::uint64_t fnv1a64(std::span<const std::byte> bytes) noexcept {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (const std::byte b : bytes) hash = (hash ^ static_cast<std::uint64_t>(b)) * 0x100000001b3ULL;
  return hash == 0 ? 1 : hash;  // 0 means "no context"
}

}  // namespace detail

template <class Signature>
class Task;
template <class Signature>
class WithContext;


// A typed handle for a remote function: `Task<R(Args...)> name{"name"}`.
// Cheap to copy; holds a view of its name, so construct it from a string literal.
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

  // Binds a broadcast context as the first argument: `pool.map(task.with(table), xs)` runs
  // task(table, x) for each x, and `table` crosses the network once per worker process (cached
  // there by content hash), not once per chunk. Encodes `context` now. REQUIRES: 2+ arguments.
  template <class Context>
  WithContext<R(Args...)> with(const Context& context) const;

 private:
  std::string_view name_;
};

// A task with its first argument bound to a broadcast context (Task::with).
template <class R, class First, class... Rest>
class WithContext<R(First, Rest...)> {
 public:
  WithContext(Task<R(First, Rest...)> task, std::shared_ptr<const Bytes> context)
      : task_(task), context_(std::move(context)), hash_(detail::fnv1a64(*context_)) {}

  const Task<R(First, Rest...)>& task() const noexcept { return task_; }
  const std::shared_ptr<const Bytes>& context() const noexcept { return context_; }
  std::uint64_t context_hash() const noexcept { return hash_; }

 private:
  Task<R(First, Rest...)> task_;
  std::shared_ptr<const Bytes> context_;
  std::uint64_t hash_;
};

template <class R, class... Args>
template <class Context>
WithContext<R(Args...)> Task<R(Args...)>::with(const Context& context) const {
  static_assert(sizeof...(Args) >= 2, "Task::with: the task needs a first argument for the context and more");
  using First = std::decay_t<std::tuple_element_t<0, std::tuple<Args...>>>;
  auto bytes = std::make_shared<Bytes>();
  {
    OutputArchive archive(*bytes);
    archive(static_cast<const First&>(context));
  }
  return WithContext<R(Args...)>(*this, std::move(bytes));
}

namespace detail {

template <class F, class R, class... Args>
class TaskRunnerFor final : public TaskRunner {
 public:
  TaskRunnerFor(std::string_view name, F function)
      : name_(name), signature_(Task<R(Args...)>::signature()), function_(std::move(function)) {}

  std::string_view name() const noexcept override { return name_; }
  const std::string& signature() const noexcept override { return signature_; }

  Status run(std::span<const std::byte> input, std::uint32_t count, Bytes& output, TaskFailure& failure,
             std::atomic<std::uint64_t>* items_started = nullptr, const void* context = nullptr) const override {
    if constexpr (sizeof...(Args) == 1 && kEncodedAsBytes<std::decay_t<First>> && kEncodedAsBytes<std::decay_t<R>>) {
      if (context == nullptr && input.size() == std::size_t{count} * sizeof(std::decay_t<First>)) {
        return run_bytewise(input, count, output, failure, items_started);
      }
    }
    if (context == nullptr) {
      return run_items(input, count, output, failure, items_started, std::tuple<std::decay_t<Args>...>{},
                       [this](auto& args) { return std::apply(function_, args); });
    }
    if constexpr (sizeof...(Args) >= 2) {
      // The first argument is the broadcast context (decoded once per worker process), the others
      // come with each item.
      const auto& shared = *static_cast<const std::decay_t<First>*>(context);
      return run_items(input, count, output, failure, items_started, typename Split<Args...>::Rest{},
                       [this, &shared](auto& rest) {
                         return std::apply([this, &shared](auto&... others) { return function_(shared, others...); },
                                           rest);
                       });
    } else {
      return Status(ErrorCode::kMalformed, "task '" + name_ + "' takes one argument: it cannot have a context");
    }
  }

  Result<std::shared_ptr<const void>> decode_context(std::span<const std::byte> bytes) const override {
    if constexpr (sizeof...(Args) >= 2) {
      auto value = std::make_shared<std::decay_t<First>>();
      try {
        InputArchive in(bytes);
        in(*value);
        if (in.remaining() != 0) return Status(ErrorCode::kMalformed, "context has trailing bytes");
      } catch (const std::exception& e) {
        return Status(ErrorCode::kMalformed, "context of task '" + name_ + "' does not decode: " + e.what());
      }
      return std::shared_ptr<const void>(std::move(value));
    } else {
      (void)bytes;
      return Status(ErrorCode::kMalformed, "task '" + name_ + "' takes one argument: it cannot have a context");
    }
  }

 private:
  template <class... Ts>
  struct Split;
  template <class T, class... Ts>
  struct Split<T, Ts...> {
    using Rest = std::tuple<std::decay_t<Ts>...>;
  };
  using First = std::tuple_element_t<0, std::tuple<Args...>>;

  // Decodes each item into `args` (a tuple of the per-item arguments), calls `call(args)`, encodes
  // the result.
  template <class Tuple, class Call>
  Status run_items(std::span<const std::byte> input, std::uint32_t count, Bytes& output, TaskFailure& failure,
                   std::atomic<std::uint64_t>* items_started, Tuple args, Call call) const {
    InputArchive in(input);
    OutputArchive out(output);
    auto failed = [&failure](std::uint32_t item, const std::string& what) { return item_failed(failure, item, what); };
    std::uint64_t started = items_started != nullptr ? items_started->load(std::memory_order_relaxed) : 0;
    for (std::uint32_t i = 0; i < count; ++i) {
      try {
        std::apply([&in](auto&... a) { in(a...); }, args);
      } catch (const cereal::Exception& e) {  // the payload is truncated or its sizes lie
        return Status(ErrorCode::kMalformed, "input of task '" + name_ + "' does not decode at item " +
                                                 std::to_string(i) + ": " + e.what());
      } catch (...) {  // an argument type whose load() throws: this item fails, the process lives on
        return failed(i, "the argument of task '" + name_ + "' cannot be decoded: ");
      }
      std::optional<std::decay_t<R>> result;
      if (items_started != nullptr) items_started->store(++started, std::memory_order_relaxed);  // one writer
      try {
        result.emplace(call(args));
      } catch (...) {
        return failed(i, "");
      }
      try {
        out(*result);
      } catch (...) {  // a result type whose save() throws: this item fails, the process lives on
        return failed(i, "the result of task '" + name_ + "' cannot be encoded: ");
      }
    }
    if (in.remaining() != 0) {
      return Status(ErrorCode::kMalformed, "input of task '" + name_ + "' has " +
                                               std::to_string(in.remaining()) + " trailing bytes");
    }
    return Status::ok();
  }

  // run_items() for a task of one argument whose argument and result are encoded as their bytes
  // (kEncodedAsBytes), given exactly `count` items: the same output and failures, each value
  // copied rather than passed through the archive. (Any other input size takes run_items(), which
  // words the error.)
  Status run_bytewise(std::span<const std::byte> input, std::uint32_t count, Bytes& output, TaskFailure& failure,
                      std::atomic<std::uint64_t>* items_started) const {
    using Arg = std::decay_t<First>;
    using Out = std::decay_t<R>;
    const std::size_t start = output.size();
    output.resize(start + std::size_t{count} * sizeof(Out));
    std::uint64_t started = items_started != nullptr ? items_started->load(std::memory_order_relaxed) : 0;
    for (std::uint32_t i = 0; i < count; ++i) {
      Arg arg;
      std::memcpy(&arg, input.data() + std::size_t{i} * sizeof(Arg), sizeof(Arg));
      if (items_started != nullptr) items_started->store(++started, std::memory_order_relaxed);  // one writer
      try {
        const Out result(function_(arg));
        std::memcpy(output.data() + start + std::size_t{i} * sizeof(Out), &result, sizeof(Out));
      } catch (...) {
        output.resize(start + std::size_t{i} * sizeof(Out));  // the results before the failed item
        return item_failed(failure, i, "");
      }
    }
    return Status::ok();
  }

  // Fills `failure` from the exception being handled for item `item`; `what` says which step threw.
  static Status item_failed(TaskFailure& failure, std::uint32_t item, const std::string& what) {
    failure.offset = item;
    failure.type = current_exception_type();
    try {
      throw;
    } catch (const std::exception& e) {
      failure.message = what + e.what();
    } catch (...) {
      failure.message = what + "non-standard exception";
    }
    return Status(ErrorCode::kTaskFailed, failure.message);
  }

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
