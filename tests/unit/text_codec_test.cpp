// The text forms `poolmap map` reads and prints (client/src/text_codec.hpp).
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>

#include "poolmap/archive.hpp"
#include "poolmap/task.hpp"
#include "text_codec.hpp"

namespace cli = poolmap::cli;

namespace {

poolmap::Bytes encoded(const cli::TextSignature& signature, std::string_view line) {
  poolmap::Bytes bytes;
  poolmap::OutputArchive archive(bytes);
  cli::encode_line(signature, line, archive);
  return bytes;
}

template <class T>
poolmap::Bytes encode_value(const T& value) {
  poolmap::Bytes bytes;
  poolmap::OutputArchive archive(bytes);
  archive(value);
  return bytes;
}

std::string as_text(cli::TextType type, const poolmap::Bytes& bytes) {
  poolmap::InputArchive archive(bytes);
  std::string out;
  cli::decode_result(type, archive, out);
  CHECK(archive.remaining() == 0);
  return out;
}

}  // namespace

TEST_CASE("Unit.TextCodec.SignaturesOfScalarsParseAndOthersAreNamed" * doctest::timeout(10)) {
  const auto square = cli::parse_text_signature("t", poolmap::Task<std::int64_t(std::int64_t)>::signature());
  CHECK(square.result == cli::TextType::kI64);
  REQUIRE(square.arguments.size() == 1);
  CHECK(square.arguments[0] == cli::TextType::kI64);

  const auto mixed = cli::parse_text_signature(
      "t", poolmap::Task<std::string(std::string, std::int32_t, double, bool, std::uint8_t)>::signature());
  CHECK(mixed.result == cli::TextType::kString);
  CHECK(mixed.arguments == std::vector<cli::TextType>{cli::TextType::kString, cli::TextType::kI32,
                                                      cli::TextType::kF64, cli::TextType::kBool, cli::TextType::kU8});

  CHECK_THROWS_WITH_AS(cli::parse_text_signature("sums", "vector<f64>(vector<f64>)"),
                       doctest::Contains("task 'sums' is vector<f64>(vector<f64>)"), std::invalid_argument);
  CHECK_THROWS_AS(cli::parse_text_signature("pair", "i64(tuple<i64,i64>)"), std::invalid_argument);
  CHECK_THROWS_AS(cli::parse_text_signature("x", "nonsense"), std::invalid_argument);
}

TEST_CASE("Unit.TextCodec.LinesEncodeAsTheTaskDecodesThem" * doctest::timeout(10)) {
  const cli::TextSignature i64{cli::TextType::kI64, {cli::TextType::kI64}};
  CHECK(encoded(i64, "-42") == encode_value(std::int64_t{-42}));
  CHECK(encoded(i64, " 7\r") == encode_value(std::int64_t{7}));  // spaces and a CR around a number
  CHECK(encoded(i64, "+7") == encode_value(std::int64_t{7}));
  CHECK_THROWS_WITH_AS(encoded(i64, "7x"), "'7x' is not an i64", std::invalid_argument);
  CHECK_THROWS_WITH_AS(encoded(i64, ""), "'' is not an i64", std::invalid_argument);

  const cli::TextSignature u8{cli::TextType::kU8, {cli::TextType::kU8}};
  CHECK(encoded(u8, "255") == encode_value(std::uint8_t{255}));
  CHECK_THROWS_WITH_AS(encoded(u8, "256"), "'256' is not in the range of a u8", std::invalid_argument);
  CHECK_THROWS_AS(encoded(u8, "-1"), std::invalid_argument);

  const cli::TextSignature f64{cli::TextType::kF64, {cli::TextType::kF64}};
  CHECK(encoded(f64, "0.1") == encode_value(0.1));
  CHECK(encoded(f64, "1e300") == encode_value(1e300));

  const cli::TextSignature flag{cli::TextType::kBool, {cli::TextType::kBool}};
  CHECK(encoded(flag, "true") == encode_value(true));
  CHECK(encoded(flag, "0") == encode_value(false));
  CHECK_THROWS_AS(encoded(flag, "yes"), std::invalid_argument);

  // One string argument takes the whole line, tabs and spaces included.
  const cli::TextSignature text{cli::TextType::kString, {cli::TextType::kString}};
  CHECK(encoded(text, " a\tb ") == encode_value(std::string(" a\tb ")));

  // Several arguments: tab-separated fields, exactly one per argument.
  const cli::TextSignature two{cli::TextType::kString, {cli::TextType::kString, cli::TextType::kI32}};
  CHECK(encoded(two, "a b\t3") == encode_value(std::make_tuple(std::string("a b"), std::int32_t{3})));
  CHECK_THROWS_WITH_AS(encoded(two, "a b"), "has 1 tab-separated fields; the task takes 2", std::invalid_argument);
  CHECK_THROWS_WITH_AS(encoded(two, "a\t1\t2"), "has more than 2 tab-separated fields", std::invalid_argument);
  CHECK_THROWS_WITH_AS(encoded(two, "a\tx"), "field 2: 'x' is not an i32", std::invalid_argument);
}

TEST_CASE("Unit.TextCodec.ResultsPrintInTheirShortestExactForm" * doctest::timeout(10)) {
  CHECK(as_text(cli::TextType::kI64, encode_value(std::numeric_limits<std::int64_t>::min())) ==
        "-9223372036854775808");
  CHECK(as_text(cli::TextType::kU64, encode_value(std::numeric_limits<std::uint64_t>::max())) ==
        "18446744073709551615");
  CHECK(as_text(cli::TextType::kI8, encode_value(std::int8_t{-5})) == "-5");  // a number, not a character
  CHECK(as_text(cli::TextType::kU8, encode_value(std::uint8_t{65})) == "65");
  CHECK(as_text(cli::TextType::kF64, encode_value(0.1)) == "0.1");
  CHECK(as_text(cli::TextType::kF64, encode_value(1.0 / 3)) == "0.3333333333333333");
  CHECK(as_text(cli::TextType::kF32, encode_value(2.5f)) == "2.5");
  CHECK(as_text(cli::TextType::kBool, encode_value(true)) == "true");
  CHECK(as_text(cli::TextType::kString, encode_value(std::string("x y"))) == "x y");
  poolmap::Bytes truncated = encode_value(std::int64_t{1});
  truncated.pop_back();
  poolmap::InputArchive archive(truncated);
  std::string out;
  CHECK_THROWS_AS(cli::decode_result(cli::TextType::kI64, archive, out), cereal::Exception);
}
