// Codec: round trips of every header, and malformed input that must be an error, never a crash
// or a huge allocation. (fuzz/ fuzzes the same decoders; what it found is pinned down here.)
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "poolmap/future.hpp"
#include "poolmap/pool.hpp"
#include "poolmap/protocol.hpp"
#include "wire.hpp"

namespace proto = poolmap::proto;
using poolmap::Bytes;
using poolmap::ErrorCode;

namespace {
proto::Submit sample_submit() {
  return proto::Submit{.job = 7, .chunk = 3, .first_index = 300, .count = 100, .task = "square", .signature = "i64(i64)"};
}

Bytes bytes_of(std::initializer_list<int> values) {
  Bytes out;
  for (int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

// The largest allocation a CountingAllocator made since it was last reset to 0.
std::size_t largest_allocation = 0;

template <class T>
struct CountingAllocator {
  using value_type = T;
  CountingAllocator() = default;
  template <class U>
  CountingAllocator(const CountingAllocator<U>&) noexcept {}  // NOLINT: rebinding is implicit
  T* allocate(std::size_t n) {
    largest_allocation = std::max(largest_allocation, n * sizeof(T));
    return std::allocator<T>{}.allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept { std::allocator<T>{}.deallocate(p, n); }
  friend bool operator==(const CountingAllocator&, const CountingAllocator&) = default;
};

// 128 bytes in memory and on the wire.
struct Wide {
  std::array<std::uint64_t, 16> words{};
  template <class Archive>
  void serialize(Archive& ar) {
    ar(words);
  }
};
}  // namespace

TEST_CASE("Codec.RoundTrip.EveryHeader" * doctest::timeout(10)) {
  const auto submit = proto::decode<proto::Submit>(proto::encode(sample_submit()));
  REQUIRE(submit.is_ok());
  CHECK(submit.value().job == 7);
  CHECK(submit.value().chunk == 3);
  CHECK(submit.value().first_index == 300);
  CHECK(submit.value().count == 100);
  CHECK(submit.value().task == "square");
  CHECK(submit.value().signature == "i64(i64)");

  proto::ClientResult result{.job = 1, .chunk = 2, .attempt = 3, .outcome = {}, .workers = 4};
  result.outcome = {ErrorCode::kTaskFailed, 5, "std::invalid_argument", "bad", "host-a", 42};
  const auto decoded = proto::decode<proto::ClientResult>(proto::encode(result));
  REQUIRE(decoded.is_ok());
  CHECK(decoded.value().outcome.code == ErrorCode::kTaskFailed);
  CHECK(decoded.value().outcome.failed_offset == 5);
  CHECK(decoded.value().outcome.error_type == "std::invalid_argument");
  CHECK(decoded.value().outcome.worker_host == "host-a");
  CHECK(decoded.value().outcome.worker_pid == 42);
  CHECK(decoded.value().workers == 4);

  proto::StatusReply status;
  status.workers.push_back({"h", 1, 2, 3, 0xabcdef0123456789ULL, 7, {{"sq", "i64(i64)"}}});
  status.chunks_done = 99;
  const auto status_back = proto::decode<proto::StatusReply>(proto::encode(status));
  REQUIRE(status_back.is_ok());
  REQUIRE(status_back.value().workers.size() == 1);
  CHECK(status_back.value().workers[0].chunks_done == 3);
  CHECK(status_back.value().workers[0].instance == 0xabcdef0123456789ULL);
  REQUIRE(status_back.value().workers[0].tasks.size() == 1);
  CHECK(status_back.value().workers[0].tasks[0].signature == "i64(i64)");
  CHECK(status_back.value().chunks_done == 99);

  const auto ready = proto::decode<proto::Ready>(
      proto::encode(proto::Ready{"w", 10, 2, 11, 12, {{"a", "i64(i64)"}, {"b", "f64(f64)"}}, 0, 0, {}}));
  REQUIRE(ready.is_ok());
  CHECK(ready.value().credit == 2);
  CHECK(ready.value().instance == 11);
  CHECK(ready.value().supervisor == 12);
  REQUIRE(ready.value().tasks.size() == 2);
  CHECK(ready.value().tasks[1] == proto::TaskInfo{"b", "f64(f64)"});
}

TEST_CASE("Codec.Encoding.IsLittleEndianFixedWidth" * doctest::timeout(10)) {
  const Bytes encoded = proto::encode(proto::Cancel{0x0102030405060708ULL});
  REQUIRE(encoded.size() == 8);
  CHECK(encoded[0] == std::byte{0x08});
  CHECK(encoded[7] == std::byte{0x01});
  // A string is a 64-bit length, then its bytes.
  const Bytes hello = proto::encode(proto::Hello{"ab", 1, 0, 0, 0, 0});
  REQUIRE(hello.size() == 8 + 2 + 4 + 8 + 8 + 4 + 4);
  CHECK(hello[0] == std::byte{2});
  CHECK(hello[8] == std::byte{'a'});
}

TEST_CASE("Codec.Malformed.EveryTruncationIsAnError" * doctest::timeout(10)) {
  const Bytes full = proto::encode(sample_submit());
  for (std::size_t length = 0; length < full.size(); ++length) {
    const auto decoded = proto::decode<proto::Submit>(std::span(full.data(), length));
    CHECK_FALSE(decoded.is_ok());
    CHECK(decoded.status().code() == ErrorCode::kMalformed);
  }
}

TEST_CASE("Codec.Malformed.TrailingBytesAreAnError" * doctest::timeout(10)) {
  Bytes full = proto::encode(sample_submit());
  full.push_back(std::byte{0});
  const auto decoded = proto::decode<proto::Submit>(full);
  REQUIRE_FALSE(decoded.is_ok());
  CHECK(decoded.status().message().find("trailing") != std::string::npos);
}

TEST_CASE("Codec.Malformed.HugeSizeFieldDoesNotAllocate" * doctest::timeout(10)) {
  // A StatusReply whose worker vector claims 2^62 elements in a 9-byte message: stock Cereal would
  // try to allocate it; the bounded archive must refuse before allocating.
  Bytes evil = bytes_of({0, 0, 0, 0, 0, 0, 0, 0x40, 1});
  const auto decoded = proto::decode<proto::StatusReply>(evil);
  REQUIRE_FALSE(decoded.is_ok());
  CHECK(decoded.status().code() == ErrorCode::kMalformed);
  CHECK(decoded.status().message().find("size field") != std::string::npos);

  // Same for a string length in a Submit header.
  Bytes submit = proto::encode(sample_submit());
  const std::size_t task_length_at = 8 + 8 + 8 + 4;
  const std::uint64_t huge = std::numeric_limits<std::uint64_t>::max();
  std::memcpy(submit.data() + task_length_at, &huge, sizeof(huge));
  CHECK_FALSE(proto::decode<proto::Submit>(submit).is_ok());
}

// Found by fuzz/protocol_fuzz.cpp: a WorkerInfo of 183 bytes whose task list claimed 157 elements
// held 7 KiB, because the vector was sized from its size field (64 bytes of TaskInfo per byte left;
// a 1 GiB READY could have asked for 64 GiB). Vectors now grow as their elements decode.
TEST_CASE("Codec.Malformed.ForgedVectorSizeAllocatesOnlyWhatTheBytesHold" * doctest::timeout(10)) {
  // 1000 elements claimed, 1000 bytes present: room for 7 of these 128-byte elements.
  Bytes wide_bytes(8 + 1000, std::byte{0});
  const std::uint64_t claimed = 1000;
  std::memcpy(wide_bytes.data(), &claimed, sizeof(claimed));
  largest_allocation = 0;
  std::vector<Wide, CountingAllocator<Wide>> wide;
  poolmap::InputArchive wide_in(wide_bytes);
  CHECK_THROWS_AS(wide_in(wide), cereal::Exception);
  CHECK(largest_allocation > 0);
  CHECK(largest_allocation <= 2 * wide_bytes.size());  // was 1000 * 128 bytes

  // Numbers are read in one piece: 1000 claimed 8-byte numbers in 1000 bytes are refused before
  // anything is allocated.
  largest_allocation = 0;
  std::vector<std::uint64_t, CountingAllocator<std::uint64_t>> numbers;
  poolmap::InputArchive numbers_in(wide_bytes);
  CHECK_THROWS_AS(numbers_in(numbers), cereal::Exception);
  CHECK(largest_allocation == 0);  // was 8000 bytes

  // Honest vectors still decode, into vectors that held something before too.
  std::vector<Wide, CountingAllocator<Wide>> two(2);
  two[1].words[3] = 42;
  std::vector<std::uint64_t, CountingAllocator<std::uint64_t>> three{1, 2, 3};
  Bytes honest;
  {
    poolmap::OutputArchive out(honest);
    out(two, three);
  }
  std::vector<Wide, CountingAllocator<Wide>> two_back(5);
  std::vector<std::uint64_t, CountingAllocator<std::uint64_t>> three_back(9);
  poolmap::InputArchive honest_in(honest);
  honest_in(two_back, three_back);
  REQUIRE(two_back.size() == 2);
  CHECK(two_back[1].words[3] == 42);
  CHECK(three_back == three);
  CHECK(honest_in.remaining() == 0);
}

// Found by fuzz/task_args_fuzz.cpp and fuzz/results_fuzz.cpp: a bool byte of 2 or 168 was copied
// into a bool as it was (undefined behaviour when read: UBSan "load of value 168, which is not a
// valid value for type 'bool'"), in task arguments, results, optionals and headers alike.
TEST_CASE("Codec.Malformed.BoolIsZeroOrOne" * doctest::timeout(10)) {
  proto::WorkerExited exited{.host = "h", .pid = 1, .instance = 2, .supervisor = 3, .crashed = true, .cause = "c"};
  Bytes bytes = proto::encode(exited);
  const std::size_t crashed_at = 8 + 1 + 4 + 8 + 8;
  REQUIRE(bytes[crashed_at] == std::byte{1});
  bytes[crashed_at] = std::byte{2};
  const auto decoded = proto::decode<proto::WorkerExited>(bytes);
  REQUIRE_FALSE(decoded.is_ok());
  CHECK(decoded.status().code() == ErrorCode::kMalformed);
  CHECK(decoded.status().message().find("bool") != std::string::npos);
  bytes[crashed_at] = std::byte{0};
  REQUIRE(proto::decode<proto::WorkerExited>(bytes).is_ok());
  CHECK_FALSE(proto::decode<proto::WorkerExited>(bytes).value().crashed);

  // An optional's "empty" flag is a bool too.
  const Bytes optional_bytes = bytes_of({2, 0, 0, 0, 0, 0, 0, 0, 0});
  std::optional<std::string> maybe;
  poolmap::InputArchive optional_in(optional_bytes);
  CHECK_THROWS_AS(optional_in(maybe), cereal::Exception);

  // And each element of a vector<bool>.
  const Bytes flags_bytes = bytes_of({2, 0, 0, 0, 0, 0, 0, 0, 1, 3});
  std::vector<bool> flags;
  poolmap::InputArchive flags_in(flags_bytes);
  CHECK_THROWS_AS(flags_in(flags), cereal::Exception);

  // A client decoding bool results: kMalformed, not a bool that is neither true nor false.
  const Bytes results = bytes_of({1, 0, 2});
  std::vector<poolmap::detail::ChunkResult> chunks{{.bytes = results, .owner = nullptr, .count = 3}};
  std::vector<bool> values;
  try {
    poolmap::detail::decode_results(chunks, 3, "flags", values);
    FAIL("a result byte of 2 decoded as a bool");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == ErrorCode::kMalformed);
  }
}

TEST_CASE("Codec.Signature.TagVersionAndCommand" * doctest::timeout(10)) {
  const auto frame = proto::signature_frame(proto::Command::kSubmit);
  const auto parsed = proto::parse_signature(frame);
  REQUIRE(parsed.is_ok());
  CHECK(parsed.value() == proto::Command::kSubmit);

  auto wrong_version = frame;
  wrong_version[2] = std::byte{9};
  const auto version = proto::parse_signature(wrong_version);
  REQUIRE_FALSE(version.is_ok());
  CHECK(version.status().code() == ErrorCode::kBadVersion);
  CHECK(version.status().message().find("version 9") != std::string::npos);

  auto wrong_tag = frame;
  wrong_tag[0] = std::byte{'X'};
  CHECK(proto::parse_signature(wrong_tag).status().code() == ErrorCode::kBadVersion);

  CHECK(proto::parse_signature(std::span(frame.data(), 3)).status().code() == ErrorCode::kMalformed);
  CHECK(proto::parse_signature({}).status().code() == ErrorCode::kMalformed);
}

TEST_CASE("Codec.Archive.StandardTypesRoundTrip" * doctest::timeout(10)) {
  std::vector<double> doubles{1.5, -2.25};
  std::map<std::string, std::int32_t> counts{{"a", 1}, {"b", -2}};
  std::optional<std::string> maybe = "x";
  std::tuple<std::uint8_t, bool, float> tuple{7, true, 0.5F};
  Bytes out;
  {
    poolmap::OutputArchive ar(out);
    ar(doubles, counts, maybe, tuple);
  }
  std::vector<double> doubles_back;
  std::map<std::string, std::int32_t> counts_back;
  std::optional<std::string> maybe_back;
  std::tuple<std::uint8_t, bool, float> tuple_back;
  poolmap::InputArchive in(out);
  in(doubles_back, counts_back, maybe_back, tuple_back);
  CHECK(doubles_back == doubles);
  CHECK(counts_back == counts);
  CHECK(maybe_back == maybe);
  CHECK(tuple_back == tuple);
  CHECK(in.remaining() == 0);
}

TEST_CASE("Codec.Example.SubmitMatchesDocsProtocolSection9" * doctest::timeout(10)) {
  // docs/PROTOCOL.md section 9 shows these bytes; keep the two in step.
  const Bytes header = proto::encode(proto::Submit{.job = 1, .chunk = 2, .first_index = 6, .count = 3,
                                                   .task = "square", .signature = "i64(i64)", .job_items = 12});
  std::string hex;
  for (const std::byte b : header) {
    static constexpr char kDigits[] = "0123456789abcdef";
    hex += kDigits[std::to_integer<int>(b) >> 4];
    hex += kDigits[std::to_integer<int>(b) & 15];
  }
  CHECK(hex ==
        "0100000000000000020000000000000006000000000000000300000006000000000000007371756172650800000000000000"
        "6936342869363429000000000000000000000000000000000c000000000000000000000000000000");
  const auto signature = proto::signature_frame(proto::Command::kSubmit);
  CHECK(signature == std::array<std::byte, 4>{std::byte{0x50}, std::byte{0x4d}, std::byte{0x08}, std::byte{0x02}});
  // From a broker of a pair: the same, then its epoch (little-endian).
  const auto stamped = proto::signature_frame(proto::Command::kResult, 0x0102);
  CHECK(stamped[3] == std::byte{0x12});
  CHECK(stamped[4] == std::byte{0x02});
  CHECK(stamped[5] == std::byte{0x01});
  CHECK(proto::epoch_of(stamped) == 0x0102);
  CHECK(proto::parse_signature(stamped).value() == proto::Command::kResult);
  CHECK(proto::epoch_of(signature) == 0);
}

TEST_CASE("Codec.Results.AMapDecodesEachChunkIntoItsPlaceAsItArrives" * doctest::timeout(10)) {
  // Pool::map's output: chunks answered out of order land where their items are.
  auto encode = [](std::initializer_list<std::int64_t> values) {
    Bytes out;
    poolmap::OutputArchive archive(out);
    for (auto v : values) archive(v);
    return out;
  };
  poolmap::detail::VectorSink<std::int64_t> output(5, "square");
  output.allocate();
  const Bytes last = encode({9, 16});
  const Bytes first = encode({0, 1, 4});
  REQUIRE(output.take(3, 2, last).is_ok());
  REQUIRE(output.take(0, 3, first).is_ok());
  const std::vector<std::int64_t> expected{0, 1, 4, 9, 16};
  CHECK(output.values() == expected);  // a copy: Future::get() may be called again
  CHECK(output.values() == expected);
  CHECK(output.release() == expected);
}

TEST_CASE("Codec.Results.ResultsThatDoNotMatchTheirChunkAreMalformed" * doctest::timeout(10)) {
  Bytes three;
  {
    poolmap::OutputArchive archive(three);
    archive(std::int64_t{1}, std::int64_t{2}, std::int64_t{3});
  }
  poolmap::detail::VectorSink<std::int64_t> output(4, "square");
  // Too few results, too many, and items outside the map: errors that name the task, never a
  // crash or a write past the output.
  const auto too_few = output.take(0, 4, three);
  CHECK(too_few.code() == ErrorCode::kMalformed);
  CHECK(too_few.message().find("square") != std::string::npos);
  CHECK(output.take(0, 2, three).code() == ErrorCode::kMalformed);
  CHECK(output.take(3, 3, three).code() == ErrorCode::kMalformed);
  CHECK(output.take(5, 0, {}).code() == ErrorCode::kMalformed);

  poolmap::detail::VectorSink<bool> flags(3, "flags");
  CHECK(flags.take(0, 3, bytes_of({1, 0, 2})).code() == ErrorCode::kMalformed);
  REQUIRE(flags.take(0, 3, bytes_of({1, 0, 1})).is_ok());
  CHECK(flags.release() == std::vector<bool>{true, false, true});
}

TEST_CASE("Codec.Archive.ReservesForAChunkAtTheFirstItemsSizeUpTo64MiB" * doctest::timeout(10)) {
  using poolmap::detail::expected_bytes;
  CHECK(expected_bytes(8, 125'000) == 1'000'000);
  CHECK(expected_bytes(4 << 20, 1) == (4u << 20));
  CHECK(expected_bytes(4 << 20, 1000) == (64u << 20));        // a guess, not a promise
  CHECK(expected_bytes(1, std::numeric_limits<std::size_t>::max()) == (64u << 20));  // no overflow
  CHECK(expected_bytes(0, 10) == 0);
}

TEST_CASE("Codec.Chunks.ArithmeticItemsCopiedAChunkAtATimeMatchItemByItem" * doctest::timeout(10)) {
  // A contiguous range of the task's own arithmetic type is encoded a chunk at a time, with one
  // copy (BytewiseItems); a deque of the same values goes item by item through the archive. Both
  // must give the same chunks, byte for byte, at every chunk size and message limit.
  using poolmap::detail::BytewiseItems;
  using poolmap::detail::encode_chunks;
  using poolmap::detail::JobRequest;
  auto same_chunks = [](const auto& values, std::size_t chunksize, std::size_t max_bytes) {
    using T = typename std::decay_t<decltype(values)>::value_type;
    static_assert(BytewiseItems<decltype(values), T>::value);
    const std::deque<T> one_by_one(values.begin(), values.end());
    static_assert(!BytewiseItems<decltype(one_by_one), T>::value);
    JobRequest fast;
    JobRequest slow;
    encode_chunks<T>(values, chunksize, max_bytes, fast);
    encode_chunks<T>(one_by_one, chunksize, max_bytes, slow);
    CAPTURE(chunksize);
    CAPTURE(max_bytes);
    CHECK(fast.total_items == values.size());
    CHECK(slow.total_items == values.size());
    REQUIRE(fast.chunks.size() == slow.chunks.size());
    for (std::size_t c = 0; c < fast.chunks.size(); ++c) {
      CHECK(fast.chunks[c].first_index == slow.chunks[c].first_index);
      CHECK(fast.chunks[c].count == slow.chunks[c].count);
      CHECK(fast.chunks[c].payload == slow.chunks[c].payload);
    }
  };
  std::vector<std::int64_t> int64s(1000);
  std::iota(int64s.begin(), int64s.end(), -500);
  std::vector<double> doubles(333);
  for (std::size_t i = 0; i < doubles.size(); ++i) doubles[i] = static_cast<double>(i) / 7.0;
  std::vector<std::uint8_t> bytes(257);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(i * 3);
  for (const std::size_t chunksize : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1000}, std::size_t{5000}}) {
    for (const std::size_t max_bytes : {std::size_t{64} << 20, std::size_t{80}, std::size_t{8}}) {
      same_chunks(int64s, chunksize, max_bytes);
      same_chunks(doubles, chunksize, max_bytes);
      same_chunks(bytes, chunksize, max_bytes);
    }
  }
  same_chunks(std::vector<std::int32_t>{}, 0, 64);
  // An item larger than a message is refused the same way by both.
  JobRequest job;
  CHECK_THROWS_AS(encode_chunks<std::int64_t>(int64s, 10, 4, job), poolmap::Error);
  const std::deque<std::int64_t> one_by_one(int64s.begin(), int64s.end());
  CHECK_THROWS_AS(encode_chunks<std::int64_t>(one_by_one, 10, 4, job), poolmap::Error);
}

TEST_CASE("Codec.Results.NumbersDecodedAsTheirBytesOnlyWhenTheSizeFits" * doctest::timeout(10)) {
  // decode_chunk copies numbers that fill the chunk exactly; any other size is an error, as it is
  // for the archive.
  std::vector<double> got(3);
  auto put = [&got](std::uint32_t i, double&& value) { got[i] = value; };
  poolmap::Bytes bytes;
  poolmap::OutputArchive archive(bytes);
  archive(0.25, -1.0, 1e300);
  poolmap::detail::decode_chunk<double>(bytes, 3, put);
  CHECK(got == std::vector<double>{0.25, -1.0, 1e300});
  CHECK_THROWS_AS(poolmap::detail::decode_chunk<double>(bytes, 2, put), cereal::Exception);
  CHECK_THROWS_AS(poolmap::detail::decode_chunk<double>(std::span(bytes).first(20), 3, put), cereal::Exception);
}

TEST_CASE("Wire.Endpoints.AListIsSplitAndAnEntryWithoutTransportTakesTheOneBefore" * doctest::timeout(10)) {
  using poolmap::wire::split_endpoints;
  CHECK(split_endpoints("tcp://a:5556") == std::vector<std::string>{"tcp://a:5556"});
  CHECK(split_endpoints(" tcp://a:5556 , tcp://b:5556") == std::vector<std::string>{"tcp://a:5556", "tcp://b:5556"});
  // As a systemd instance name gives a pair: poolmap-worker@a:5556\x2cb:5556 -> tcp://%i.
  CHECK(split_endpoints("tcp://a:5556,b:5556") == std::vector<std::string>{"tcp://a:5556", "tcp://b:5556"});
  CHECK(split_endpoints("ipc:///run/a,tcp://b:1") == std::vector<std::string>{"ipc:///run/a", "tcp://b:1"});
  CHECK_THROWS_AS(split_endpoints(""), poolmap::Error);
  CHECK_THROWS_AS(split_endpoints("tcp://a:1,"), poolmap::Error);
  CHECK_THROWS_AS(split_endpoints("tcp://a:1, ,tcp://b:2"), poolmap::Error);
}
