// as_completed and wait over futures completed by hand (no Pool, no sockets).
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "poolmap/future.hpp"

using namespace std::chrono_literals;

namespace {

// A future of no job: pending until complete() is called on its core.
poolmap::Future<int> pending_future() { return {std::make_shared<poolmap::detail::FutureCore>(), nullptr}; }

}  // namespace

TEST_CASE("Future.AsCompleted.TimeoutSaysHowManyOfHowManyAreUnfinished" * doctest::timeout(10)) {
  // CPython's test_correct_timeout_exception_msg (bpo-29733): "N (of M) futures unfinished".
  std::vector<poolmap::Future<int>> futures{pending_future(), pending_future(), pending_future(), pending_future()};
  REQUIRE(futures[1].core()->complete({}));
  REQUIRE(futures[3].core()->complete({}));
  std::vector<std::size_t> yielded;
  std::string message;
  try {
    for (std::size_t index : poolmap::as_completed(futures, 0ms)) yielded.push_back(index);
    FAIL("as_completed gave every index of 4 futures, 2 of them pending");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kDeadlineExceeded);
    message = e.what();
  }
  CHECK(yielded.size() == 2);  // the done ones come first
  CHECK(message == "2 (of 4) futures unfinished after 0 ms");

  // Once all are done, nothing is unfinished and nothing throws.
  REQUIRE(futures[0].core()->complete({}));
  REQUIRE(futures[2].core()->complete({}));
  yielded.clear();
  for (std::size_t index : poolmap::as_completed(futures, 0ms)) yielded.push_back(index);
  CHECK(yielded.size() == 4);
}
