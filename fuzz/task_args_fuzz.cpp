// Fuzz target: a worker decoding a chunk's arguments and a job's broadcast context, the way
// worker_process.cpp does (TaskRegistry::find, TaskRunner::decode_context, TaskRunner::run), for
// tasks of several signatures (fuzz_tasks.hpp).
//
// Input layout (see fuzz_support.hpp; seeds from make_seeds.cpp):
//   byte 0            which task (index into kTaskNames, modulo its size)
//   byte 1            bit 0: the chunk comes with a broadcast context
//   byte 2            the chunk's item count (TaskHeader::count)
//   [u16 N, N bytes]  with a context only: the context's bytes (the CONTEXT payload)
//   the rest          the chunk's payload (the TASK message's frame 2)
//
// Properties checked, beyond "no crash, no leak, no undefined behaviour":
//   - decoding a context or a chunk allocates within the bound of fuzz_support.hpp (plus the
//     results the task produced);
//   - a context that does not decode is kMalformed;
//   - run() ends ok, kMalformed, or kTaskFailed with the failing item's offset inside the chunk;
//   - when it ends ok, the output holds exactly `count` results of the task's result type.
#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "fuzz_support.hpp"
#include "fuzz_tasks.hpp"

using poolmap::Bytes;
using poolmap::ErrorCode;
using poolmap::Status;
using poolmap::fuzz::require;
namespace fz = poolmap::fuzz;

// ---- the tasks: small bodies without undefined behaviour of their own; some throw ----

POOLMAP_TASK(fz::square, [](std::int64_t x) {
  const auto u = static_cast<std::uint64_t>(x);
  return static_cast<std::int64_t>(u * u);  // wraps, as unsigned arithmetic does
});
POOLMAP_TASK(fz::halve, [](double x) { return x * 0.5; });
POOLMAP_TASK(fz::negate, [](bool b) { return !b; });
POOLMAP_TASK(fz::upper, [](const std::string& s) {
  if (s == "boom") throw std::invalid_argument("boom");
  std::string out = s;
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
});
POOLMAP_TASK(fz::sum, [](const std::vector<double>& xs) { return std::accumulate(xs.begin(), xs.end(), 0.0); });
POOLMAP_TASK(fz::reverse, [](const std::vector<std::string>& xs) {
  return std::vector<std::string>(xs.rbegin(), xs.rend());
});
POOLMAP_TASK(fz::describe, [](std::int32_t n, const std::string& s, bool loud) {
  return std::to_string(n) + ":" + s + (loud ? "!" : ".");
});
POOLMAP_TASK(fz::weigh, [](const fz::Record& r) {
  std::uint64_t weight = std::get<0>(r) + std::get<1>(r).size();
  for (const std::uint16_t v : std::get<2>(r)) weight += v;
  for (const std::int16_t v : std::get<3>(r)) weight += static_cast<std::uint16_t>(v);
  return weight;
});
POOLMAP_TASK(fz::show, [](const std::variant<std::int64_t, std::string, double>& v) -> std::optional<std::string> {
  if (const auto* i = std::get_if<std::int64_t>(&v)) {
    if (*i < 0) return std::nullopt;
    return std::to_string(*i);
  }
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  return std::nullopt;
});
POOLMAP_TASK(fz::pick, [](const std::optional<std::pair<std::string, std::int64_t>>& p) {
  return p.value_or(std::pair<std::string, std::int64_t>{"none", 0});
});
POOLMAP_TASK(fz::lookup, [](const std::vector<double>& table, std::uint32_t index) {
  if (index >= table.size()) throw std::out_of_range("index " + std::to_string(index));
  return table[index];
});
POOLMAP_TASK(fz::prefix, [](const std::string& p, const std::string& s) { return p + s; });
POOLMAP_TASK(fz::price, [](const std::map<std::string, std::int64_t>& prices, const std::string& item) {
  const auto found = prices.find(item);
  if (found == prices.end()) throw std::out_of_range("no price for " + item);
  return found->second;
});

namespace {

// Calls `f(handle)` with the Task handle named `name`.
template <class F>
void with_task(std::string_view name, F&& f) {
  const auto handles = std::make_tuple(fz::square, fz::halve, fz::negate, fz::upper, fz::sum, fz::reverse, fz::describe,
                                       fz::weigh, fz::show, fz::pick, fz::lookup, fz::prefix, fz::price);
  std::apply([&](const auto&... handle) { ((handle.name() == name ? f(handle) : void()), ...); }, handles);
}

// The output of a chunk that ran: exactly `count` results of R, nothing after them.
template <class R, class... Args>
void check_output(const poolmap::Task<R(Args...)>&, const Bytes& output, std::uint32_t count) {
  poolmap::InputArchive in(output);
  try {
    for (std::uint32_t i = 0; i < count; ++i) {
      R value{};
      in(value);
    }
  } catch (const cereal::Exception&) {
    require(false, "the results of a chunk that ran decode");
  }
  require(in.remaining() == 0, "the results of a chunk that ran hold nothing more");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fz::install_allocation_hooks();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fz::FuzzInput input(data, size);
  const std::string_view name = fz::kTaskNames[input.take_u8() % fz::kTaskNames.size()];
  const bool with_context = (input.take_u8() & 1U) != 0;
  const std::uint32_t count = input.take_u8();
  const Bytes context_bytes = with_context ? input.take(input.take_u16()) : Bytes{};
  const Bytes payload = input.rest();

  const auto* runner = poolmap::detail::TaskRegistry::instance().find(name);
  require(runner != nullptr, "every fuzz task is registered");

  std::shared_ptr<const void> context;
  if (with_context) {
    fz::HeapPeak heap;
    auto decoded = runner->decode_context(context_bytes);
    fz::require_bounded("context", heap.stop(), context_bytes.size());
    if (!decoded.is_ok()) {
      require(decoded.status().code() == ErrorCode::kMalformed, "a context that does not decode is kMalformed");
      return 0;  // the worker fails the chunk without running it
    }
    context = std::move(decoded).value();
  }

  Bytes output;
  poolmap::detail::TaskFailure failure;
  std::atomic<std::uint64_t> items_started{0};
  Status status;
  {
    fz::HeapPeak heap;
    status = runner->run(payload, count, output, failure, &items_started, context.get());
    const std::size_t peak = heap.stop();
    // The results are the task's to make: a growing buffer holds at most 3 times their size at once.
    fz::require_bounded("chunk", peak, payload.size() + context_bytes.size(), 3 * output.size());
  }
  switch (status.code()) {
    case ErrorCode::kOk:
      require(items_started.load() == count, "every item of a chunk that ran was started");
      with_task(name, [&](const auto& task) { check_output(task, output, count); });
      break;
    case ErrorCode::kMalformed:
      break;
    case ErrorCode::kTaskFailed:
      require(failure.offset < count, "a failing item is inside the chunk");
      break;
    default:
      require(false, "run() ends ok, kMalformed or kTaskFailed");
  }
  return 0;
}
