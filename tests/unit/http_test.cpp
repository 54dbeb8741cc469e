// The dashboard's pure parts (broker/src/http.hpp): the status JSON, the token comparison, and when
// the broker's loop builds a snapshot.
#include <doctest/doctest.h>

#include <string>

#include "http.hpp"

using namespace std::chrono_literals;
namespace d = poolmap::detail;
namespace proto = poolmap::proto;

TEST_CASE("Http.StatusJson.EscapesWhatPeersSentAndCountsWhatItLeavesOut" * doctest::timeout(10)) {
  proto::StatusReply reply;
  reply.role = "active";
  proto::WorkerInfo worker;
  worker.host = "a\"b\\c\n<img src=x>";
  worker.pid = 7;
  worker.instance = 0x1234abcd00000000ULL;
  worker.tasks = {{"t\"ask", "i64(i64)"}};
  reply.workers.assign(d::kMaxWorkersShown + 3, worker);
  reply.jobs.push_back({"client\x01host", 9, 4, "</script>", 10, 3, 1, 2, 1500});
  const std::string json = d::status_json(reply, "tcp://127.0.0.1:5555", 1000ms, 42000ms);
  CHECK(json.starts_with("{\"version\":1,\"broker\":\"tcp://127.0.0.1:5555\",\"role\":\"active\",\"epoch\":0,"
                         "\"peer\":null,"));
  CHECK(json.find("\"host\":\"a\\\"b\\\\c\\u000a<img src=x>\"") != std::string::npos);  // JSON-escaped, no more
  CHECK(json.find("\"name\":\"t\\\"ask\"") != std::string::npos);
  CHECK(json.find("\"id\":\"1234abcd\"") != std::string::npos);  // the public half only
  CHECK(json.find("\"workers_omitted\":3") != std::string::npos);
  CHECK(json.find("\"uptime_ms\":42000") != std::string::npos);
  CHECK(json.find("\"client_host\":\"client\\u0001host\",\"client_pid\":9,\"job\":4,\"task\":\"</script>\"") !=
        std::string::npos);
  CHECK(json.find("\"age_ms\":1500,\"stream\":false,\"items_failed\":0,\"waiting\":\"\"}]") != std::string::npos);
  CHECK(json.ends_with("\"jobs_omitted\":0,\"events\":[]}"));
  std::size_t workers = 0;
  for (auto at = json.find("\"pid\":7"); at != std::string::npos; at = json.find("\"pid\":7", at + 1)) ++workers;
  CHECK(workers == d::kMaxWorkersShown);
}

TEST_CASE("Http.Token.OnlyTheWholeTokenPasses" * doctest::timeout(10)) {
  const std::string token = "0123456789abcdef-token";
  CHECK(d::same_token(token, token));
  CHECK_FALSE(d::same_token(token + "x", token));
  CHECK_FALSE(d::same_token(token.substr(0, token.size() - 1), token));
  CHECK_FALSE(d::same_token("1123456789abcdef-token", token));
  CHECK_FALSE(d::same_token("", token));
  CHECK_FALSE(d::same_token("", ""));  // no token configured is never "the" token
}

TEST_CASE("Http.Board.SnapshotsAreMadeOnlyWhileSomeoneLooksAndAtMostEvery500ms" * doctest::timeout(10)) {
  int built = 0;
  d::StatusBoard* board_ptr = nullptr;
  // The loop, woken: it makes a snapshot at once (as the broker's next pass would).
  d::StatusBoard board([&] {
    ++built;
    board_ptr->publish("{\"n\":" + std::to_string(built) + "}", d::StatusBoard::Clock::now());
  });
  board_ptr = &board;
  const auto now = d::StatusBoard::Clock::now();
  CHECK_FALSE(board.wanted(now));  // nobody has looked: nothing to build
  const auto first = board.latest();
  REQUIRE(first != nullptr);
  CHECK(*first == "{\"n\":1}");
  CHECK(built == 1);
  const auto after = d::StatusBoard::Clock::now();
  CHECK_FALSE(board.wanted(after));  // just built
  CHECK(board.wanted(after + d::StatusBoard::kEvery));  // someone looks: one per 500 ms
  CHECK_FALSE(board.wanted(after + d::StatusBoard::kLookingFor + 1s));  // nobody looked for 5 s
  // A second request finds the fresh snapshot: the loop is not woken.
  CHECK(*board.latest() == "{\"n\":1}");
  CHECK(built == 1);
}
