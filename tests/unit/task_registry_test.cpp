// Task handles, signatures and the registry, without sockets.
#include <doctest/doctest.h>

#include <atomic>
#include <span>
#include <stdexcept>

#include "poolmap/task.hpp"

namespace {

struct Celsius {
  double degrees = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(degrees);
  }
};

inline constexpr poolmap::Task<std::int64_t(std::int64_t)> triple{"unit.triple"};
inline constexpr poolmap::Task<std::string(const std::string&, std::int32_t)> repeat{"unit.repeat"};
inline constexpr poolmap::Task<std::int64_t(std::int64_t)> picky{"unit.picky"};
inline constexpr poolmap::Task<double(double)> triple_as_double{"unit.triple"};

POOLMAP_TASK(triple, [](std::int64_t x) { return 3 * x; });
POOLMAP_TASK(repeat, [](const std::string& s, std::int32_t n) {
  std::string out;
  for (std::int32_t i = 0; i < n; ++i) out += s;
  return out;
});
POOLMAP_TASK(picky, [](std::int64_t x) -> std::int64_t {
  if (x < 0) throw std::out_of_range("negative: " + std::to_string(x));
  return x;
});
inline constexpr poolmap::Task<double(std::int32_t)> halve{"unit.halve"};
POOLMAP_TASK(halve, [](std::int32_t x) { return x / 2.0; });
inline constexpr poolmap::Task<bool(bool)> flip{"unit.flip"};
POOLMAP_TASK(flip, [](bool b) { return !b; });
// Registering the same name again with another signature is refused and recorded.
POOLMAP_TASK(triple_as_double, [](double x) { return x; });

template <class... Values>
poolmap::Bytes encode_items(const Values&... values) {
  poolmap::Bytes out;
  poolmap::OutputArchive ar(out);
  ar(values...);
  return out;
}

}  // namespace

TEST_CASE("Task.Signature.PortableNames" * doctest::timeout(10)) {
  CHECK(triple.signature() == "i64(i64)");
  CHECK(repeat.signature() == "string(string,i32)");
  CHECK(poolmap::Task<std::vector<double>(std::vector<float>)>::signature() == "vector<f64>(vector<f32>)");
  CHECK(poolmap::Task<bool(std::map<std::string, std::uint16_t>)>::signature() == "bool(map<string,u16>)");
  CHECK(poolmap::Task<std::int32_t(Celsius)>::signature().find("Celsius") != std::string::npos);
  CHECK(triple.name() == "unit.triple");
}

TEST_CASE("Task.Registry.FindsRegisteredTasks" * doctest::timeout(10)) {
  const auto& registry = poolmap::detail::TaskRegistry::instance();
  const auto* runner = registry.find("unit.triple");
  REQUIRE(runner != nullptr);
  CHECK(runner->signature() == "i64(i64)");  // the first registration wins
  CHECK(registry.find("unit.nothing") == nullptr);
  const auto names = registry.names();
  CHECK(std::find(names.begin(), names.end(), "unit.repeat") != names.end());
}

TEST_CASE("Task.Registry.ConflictingSignatureIsRecorded" * doctest::timeout(10)) {
  const auto conflicts = poolmap::detail::TaskRegistry::instance().conflicts();
  REQUIRE(conflicts.size() == 1);
  CHECK(conflicts[0].find("unit.triple") != std::string::npos);
  CHECK(conflicts[0].find("f64(f64)") != std::string::npos);
}

TEST_CASE("Task.Runner.RunsAChunk" * doctest::timeout(10)) {
  const auto* runner = poolmap::detail::TaskRegistry::instance().find("unit.repeat");
  REQUIRE(runner != nullptr);
  const auto input = encode_items(std::string("ab"), std::int32_t{2}, std::string("c"), std::int32_t{3});
  poolmap::Bytes output;
  poolmap::detail::TaskFailure failure;
  REQUIRE(runner->run(input, 2, output, failure).is_ok());
  poolmap::InputArchive in(output);
  std::string first;
  std::string second;
  in(first, second);
  CHECK(first == "abab");
  CHECK(second == "ccc");
  CHECK(in.remaining() == 0);
}

TEST_CASE("Task.Runner.ExceptionNamesItemAndType" * doctest::timeout(10)) {
  const auto* runner = poolmap::detail::TaskRegistry::instance().find("unit.picky");
  REQUIRE(runner != nullptr);
  const auto input = encode_items(std::int64_t{1}, std::int64_t{2}, std::int64_t{-5}, std::int64_t{4});
  poolmap::Bytes output;
  poolmap::detail::TaskFailure failure;
  const auto status = runner->run(input, 4, output, failure);
  CHECK(status.code() == poolmap::ErrorCode::kTaskFailed);
  CHECK(failure.offset == 2);
  CHECK(failure.type == "std::out_of_range");
  CHECK(failure.message == "negative: -5");
}

TEST_CASE("Task.Runner.MalformedInputIsAnError" * doctest::timeout(10)) {
  const auto* runner = poolmap::detail::TaskRegistry::instance().find("unit.triple");
  REQUIRE(runner != nullptr);
  poolmap::detail::TaskFailure failure;
  poolmap::Bytes output;
  // Two items announced, one present.
  CHECK(runner->run(encode_items(std::int64_t{1}), 2, output, failure).code() == poolmap::ErrorCode::kMalformed);
  // One item announced, two present.
  output.clear();
  CHECK(runner->run(encode_items(std::int64_t{1}, std::int64_t{2}), 1, output, failure).code() ==
        poolmap::ErrorCode::kMalformed);
  // A string whose length field exceeds the bytes present.
  const auto* repeat_runner = poolmap::detail::TaskRegistry::instance().find("unit.repeat");
  poolmap::Bytes evil = encode_items(std::uint64_t{1} << 40);
  output.clear();
  CHECK(repeat_runner->run(evil, 1, output, failure).code() == poolmap::ErrorCode::kMalformed);
}

// Found by fuzz/task_args_fuzz.cpp: an argument byte of 168 for a bool parameter reached the task
// as a bool that is neither true nor false (undefined behaviour). It is malformed input.
TEST_CASE("Task.Runner.BoolArgumentThatIsNeitherZeroNorOneIsMalformed" * doctest::timeout(10)) {
  const auto* runner = poolmap::detail::TaskRegistry::instance().find("unit.flip");
  REQUIRE(runner != nullptr);
  poolmap::detail::TaskFailure failure;
  poolmap::Bytes output;
  const poolmap::Bytes input{std::byte{1}, std::byte{168}};
  const auto status = runner->run(input, 2, output, failure);
  CHECK(status.code() == poolmap::ErrorCode::kMalformed);
  CHECK(status.message().find("item 1") != std::string::npos);
  output.clear();
  REQUIRE(runner->run(poolmap::Bytes{std::byte{1}, std::byte{0}}, 2, output, failure).is_ok());
  CHECK(output == poolmap::Bytes{std::byte{0}, std::byte{1}});
}

// A task whose argument and result are plain numbers copies them instead of going through the
// archive (TaskRunnerFor::run_bytewise): the output must be the archive's encoding, byte for byte,
// every item must count as started, and a throwing item must leave the results before it.
TEST_CASE("Task.Runner.NumbersCopiedGiveTheArchivesBytes" * doctest::timeout(10)) {
  const auto& registry = poolmap::detail::TaskRegistry::instance();
  const auto* halve_runner = registry.find("unit.halve");
  REQUIRE(halve_runner != nullptr);
  poolmap::detail::TaskFailure failure;
  poolmap::Bytes output{std::byte{0x7f}};  // run() appends
  std::atomic<std::uint64_t> started{10};
  REQUIRE(halve_runner->run(encode_items(std::int32_t{3}, std::int32_t{-8}, std::int32_t{2147483647}), 3, output,
                            failure, &started)
              .is_ok());
  poolmap::Bytes expected{std::byte{0x7f}};
  poolmap::OutputArchive archive(expected);
  archive(1.5, -4.0, 2147483647 / 2.0);
  CHECK(output == expected);
  CHECK(started.load() == 13);

  const auto* picky_runner = registry.find("unit.picky");
  REQUIRE(picky_runner != nullptr);
  output.clear();
  started = 0;
  const auto status = picky_runner->run(
      encode_items(std::int64_t{7}, std::int64_t{9}, std::int64_t{-1}, std::int64_t{4}), 4, output, failure, &started);
  CHECK(status.code() == poolmap::ErrorCode::kTaskFailed);
  CHECK(failure.offset == 2);
  CHECK(failure.type == "std::out_of_range");
  CHECK(output == encode_items(std::int64_t{7}, std::int64_t{9}));  // the results before the failed item
  CHECK(started.load() == 3);

  // Zero items, and sizes that do not match the count, take the archive's path and its errors.
  output.clear();
  CHECK(picky_runner->run({}, 0, output, failure).is_ok());
  CHECK(output.empty());
  const auto short_input = encode_items(std::int64_t{1});
  const auto truncated = picky_runner->run(std::span(short_input).first(5), 1, output, failure);
  CHECK(truncated.code() == poolmap::ErrorCode::kMalformed);
  CHECK(truncated.message().find("does not decode at item 0") != std::string::npos);
}
