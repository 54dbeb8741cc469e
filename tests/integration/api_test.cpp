// The Pool API beyond map, modelled on the Pool cases of CPython's
// Lib/test/_test_multiprocessing.py (test_apply, test_map_async, test_map_async_callbacks,
// test_async_timeout, test_starmap, test_empty_iterable, test_map_chunksize, test_terminate,
// test_context/join), written anew against real broker and worker processes.
#include <doctest/doctest.h>

#include <sys/resource.h>

#include <cstdlib>
#include <cstring>
#include <malloc.h>

#include <atomic>
#include <latch>
#include <mutex>
#include <algorithm>
#include <numeric>
#include <optional>
#include <ranges>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>

#include "poolmap/poolmap.hpp"
#include "process.hpp"
#include "test_tasks.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;

namespace {

poolmap::PoolOptions remote(const t::Cluster& cluster) {
  return {.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()};
}

std::vector<std::int64_t> iota_vector(std::size_t n, std::int64_t start = 0) {
  std::vector<std::int64_t> out(n);
  std::iota(out.begin(), out.end(), start);
  return out;
}

}  // namespace

TEST_CASE("Api.Submit.GetReadyWaitFor" * doctest::timeout(30)) {  // test_apply
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  poolmap::Future<std::int64_t> future = pool.submit(t::square, 7);
  CHECK(future.valid());
  CHECK(future.get() == 49);
  CHECK(future.ready());
  CHECK(future.wait_for(0ms));
  CHECK(future.get() == 49);  // again
  CHECK(pool.submit(t::add, 40, 2).get() == 42);
  CHECK(pool.submit(t::repeat, std::string("ab"), 3).get() == "ababab");
}

TEST_CASE("Api.Submit.ErrorReachesGetAndErrorCallback" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  auto future = pool.submit(t::fail_at_13, 13);
  std::mutex mutex;
  std::string error_seen;
  bool value_seen = false;
  future.then([&](const std::int64_t&) { value_seen = true; },
              [&](const poolmap::Error& e) {
                std::lock_guard lock(mutex);
                error_seen = e.what();
              });
  CHECK_THROWS_AS(future.get(), poolmap::TaskError);
  try {
    future.get();
  } catch (const poolmap::TaskError& e) {
    CHECK(e.index() == 0);  // the only item of a submit
    CHECK(e.remote_message() == "bad item 13");
  }
  std::lock_guard lock(mutex);
  CHECK_FALSE(value_seen);
  CHECK(error_seen.find("bad item 13") != std::string::npos);
}

TEST_CASE("Api.Submit.GetTimeoutThenValue" * doctest::timeout(30)) {  // test_async_timeout
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  auto future = pool.submit(t::sleep_ms, 400);
  try {
    (void)future.get(50ms);
    FAIL("get(50ms) returned before a 400 ms task could finish");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kDeadlineExceeded);
  }
  CHECK_FALSE(future.ready());
  CHECK(future.get() == 400);  // the work went on
}

TEST_CASE("Api.Submit.DeadlineCancelsTheItem" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  auto future = pool.submit(poolmap::SubmitOptions{.deadline = 100ms}, t::sleep_ms, 2000);
  try {
    (void)future.get();
    FAIL("a 2 s task finished within a 100 ms deadline");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kDeadlineExceeded);
  }
}

TEST_CASE("Api.Submit.CancelQueuedItem" * doctest::timeout(30)) {
  t::Cluster cluster({.workers = 1});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 10s));
  // One worker holds 2 chunks (1 running + 1 prefetched); the third waits at the broker.
  auto first = pool.submit(t::sleep_ms, 300);
  auto second = pool.submit(t::sleep_ms, 300);
  auto third = pool.submit(t::sleep_ms, 300);
  CHECK(third.cancel());
  try {
    (void)third.get();
    FAIL("a cancelled future returned a value");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kCancelled);
  }
  CHECK(first.get() == 300);
  CHECK(second.get() == 300);
  CHECK_FALSE(first.cancel());  // already done
}

TEST_CASE("Api.MapAsync.CallbackAndErrorCallback" * doctest::timeout(30)) {  // test_map_async_callbacks
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  std::mutex mutex;
  std::vector<std::int64_t> called_with;
  std::string error;
  auto good = pool.map_async(t::square, iota_vector(10));
  good.then([&](const std::vector<std::int64_t>& v) {
    std::lock_guard lock(mutex);
    called_with = v;
  });
  CHECK(good.get() == std::vector<std::int64_t>{0, 1, 4, 9, 16, 25, 36, 49, 64, 81});
  auto bad = pool.map_async(t::fail_at_13, iota_vector(20));
  bad.then({}, [&](const poolmap::Error& e) {
    std::lock_guard lock(mutex);
    error = e.what();
  });
  CHECK_THROWS_AS(bad.get(), poolmap::TaskError);
  std::lock_guard lock(mutex);  // continuations ran before get() returned
  CHECK(called_with.size() == 10);
  CHECK(error.find("item 13") != std::string::npos);
}

TEST_CASE("Api.Starmap.TuplesAndPairs" * doctest::timeout(30)) {  // test_starmap
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  std::vector<std::tuple<std::int64_t, std::int64_t>> tuples;
  for (std::int64_t i = 0; i < 100; ++i) tuples.emplace_back(i, 1000 * i);
  const auto sums = pool.starmap(t::add, tuples, {.chunksize = 7});
  REQUIRE(sums.size() == 100);
  for (std::int64_t i = 0; i < 100; ++i) CHECK(sums[static_cast<std::size_t>(i)] == 1001 * i);
  const std::vector<std::pair<std::string, int>> pairs{{"x", 3}, {"yz", 2}};
  CHECK(pool.starmap(t::repeat, pairs) == std::vector<std::string>{"xxx", "yzyz"});
  CHECK(pool.starmap_async(t::add, std::vector<std::tuple<int, int>>{{1, 2}}).get() == std::vector<std::int64_t>{3});
}

TEST_CASE("Api.Map.EmptyAndChunksizeVariations" * doctest::timeout(60)) {  // test_empty_iterable, test_map_chunksize
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  CHECK(pool.map(t::square, std::vector<std::int64_t>{}).empty());
  CHECK(pool.map_async(t::square, std::vector<std::int64_t>{}).get().empty());
  CHECK(pool.starmap(t::add, std::vector<std::tuple<int, int>>{}).empty());
  const auto inputs = iota_vector(100);
  std::vector<std::int64_t> expected;
  for (auto x : inputs) expected.push_back(x * x);
  for (std::size_t chunksize : {1, 2, 3, 50, 99, 100, 101, 1000}) {
    CAPTURE(chunksize);
    CHECK(pool.map(t::square, inputs, {.chunksize = chunksize}) == expected);
  }
}

TEST_CASE("Api.Map.ProgressIsReportedOnTheCallingThread" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  std::vector<std::pair<std::size_t, std::size_t>> reports;
  const auto caller = std::this_thread::get_id();
  bool same_thread = true;
  const auto results = pool.map(t::sleep_ms, std::vector<std::int64_t>(20, 20),
                                {.chunksize = 1, .progress = [&](std::size_t done, std::size_t total) {
                                   same_thread = same_thread && std::this_thread::get_id() == caller;
                                   reports.emplace_back(done, total);
                                 },
                                 .progress_interval = 20ms});
  CHECK(results.size() == 20);
  REQUIRE(reports.size() >= 2);
  CHECK(same_thread);
  CHECK(reports.back() == std::pair<std::size_t, std::size_t>{20, 20});
  for (std::size_t i = 1; i < reports.size(); ++i) CHECK(reports[i].first >= reports[i - 1].first);
}

TEST_CASE("Api.Map.DeadlineFailsTheCall" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  try {
    (void)pool.map(t::sleep_ms, std::vector<std::int64_t>(20, 100), {.chunksize = 1, .deadline = 200ms});
    FAIL("20 x 100 ms on 2 workers finished within 200 ms");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kDeadlineExceeded);
  }
  CHECK(pool.map(t::square, iota_vector(3)) == std::vector<std::int64_t>{0, 1, 4});
}

TEST_CASE("Api.Map.TaskRetriesRunAFailedChunkAgain" * doctest::timeout(30)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  CHECK_THROWS_AS((void)pool.map(t::flaky_once, iota_vector(4, 100), {.chunksize = 1}), poolmap::TaskError);
  // Each process throws once per index: with 2 workers, 2 retries always reach a success.
  CHECK(pool.map(t::flaky_once, iota_vector(4, 200), {.chunksize = 1, .task_retries = 2}) == iota_vector(4, 200));
}

TEST_CASE("Api.Futures.AsCompletedWaitAnyWaitAll" * doctest::timeout(30)) {
  t::Cluster cluster({.workers = 3});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(3, 10s));
  std::vector<poolmap::Future<std::int64_t>> futures{pool.submit(t::sleep_ms, 600), pool.submit(t::sleep_ms, 50),
                                                     pool.submit(t::sleep_ms, 300)};
  const auto first = poolmap::wait_any(futures, 5s);
  REQUIRE(first.has_value());
  CHECK(*first == 1);
  CHECK_FALSE(poolmap::wait_all(futures, 10ms));
  std::vector<std::size_t> order;
  for (std::size_t index : poolmap::as_completed(futures)) order.push_back(index);
  CHECK(order == std::vector<std::size_t>{1, 2, 0});
  CHECK(poolmap::wait_all(futures, 0ms));
}

TEST_CASE("Api.Pool.KeepsFreedMemoryForReuse" * doctest::timeout(30)) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  MESSAGE("skipped: a sanitizer brings its own allocator");
#else
  // What a map's buffers rely on (PoolOptions::reuse_freed_memory, the default): 16 MiB one thread
  // frees is what another thread's next 16 MiB gets (ZeroMQ's I/O thread receives into what the
  // caller freed), not memory the process did not have yet (fresh pages, a page fault each).
  poolmap::Pool pool(poolmap::PoolOptions{.broker = "tcp://127.0.0.1:1"});  // remote: connects lazily
  constexpr std::size_t kBytes = 16 << 20;
  auto fill = [] {
    auto* block = static_cast<char*>(std::malloc(kBytes));
    if (block == nullptr) std::abort();
    std::memset(block, 1, kBytes);
    return block;
  };
  auto heap_bytes = [] {  // memory malloc holds from the kernel: its heaps, and its mmap'ed blocks
    const auto info = ::mallinfo2();
    return info.arena + info.hblkhd;
  };
  std::latch helper_ready(1);
  std::latch block_freed(1);
  std::size_t before = 0;
  std::size_t after = 0;
  std::thread helper([&] {
    std::free(std::malloc(64));  // this thread's own malloc state first
    helper_ready.count_down();
    block_freed.wait();
    before = heap_bytes();
    char* block = fill();
    after = heap_bytes();
    std::free(block);
  });
  helper_ready.wait();
  std::free(fill());
  block_freed.count_down();
  helper.join();
  CAPTURE(before);
  CAPTURE(after);
  CHECK(after < before + (1 << 20));  // reused: the heap did not grow by another 16 MiB
#endif
}

TEST_CASE("Api.Pool.CloseJoinTerminate" * doctest::timeout(30)) {  // test_terminate, join
  t::Cluster cluster({.workers = 1});
  {
    poolmap::Pool pool(remote(cluster));
    CHECK_THROWS_AS(pool.join(), poolmap::Error);  // join before close, as Python refuses
    auto running = pool.submit(t::sleep_ms, 200);
    pool.close();
    CHECK_THROWS_WITH_AS((void)pool.submit(t::square, 1), doctest::Contains("closed"), poolmap::Error);
    pool.join();  // waits for the started work
    CHECK(running.ready());
    CHECK(running.get() == 200);
  }
  {
    poolmap::Pool pool(remote(cluster));
    std::vector<poolmap::Future<std::int64_t>> futures;
    for (int i = 0; i < 6; ++i) futures.push_back(pool.submit(t::sleep_ms, 300));
    const auto started = std::chrono::steady_clock::now();
    pool.terminate();
    pool.join();
    CHECK(std::chrono::steady_clock::now() - started < 1s);  // did not wait for 6 x 300 ms
    std::size_t cancelled = 0;
    for (auto& future : futures) {
      try {
        (void)future.get();
      } catch (const poolmap::Error& e) {
        cancelled += e.code() == poolmap::ErrorCode::kCancelled;
      }
    }
    CHECK(cancelled == 6);
  }
}

TEST_CASE("Api.Pool.EightThreadsSubmitAtOnce" * doctest::timeout(60)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int thread = 0; thread < 8; ++thread) {
    threads.emplace_back([&, thread] {
      std::vector<poolmap::Future<std::int64_t>> futures;
      for (std::int64_t i = 0; i < 200; ++i) futures.push_back(pool.submit(t::add, thread * 1000, i));
      for (std::int64_t i = 0; i < 200; ++i) {
        if (futures[static_cast<std::size_t>(i)].get() != thread * 1000 + i) ++wrong;
      }
      const auto squares = pool.map(t::square, iota_vector(500, thread));
      if (squares.back() != (thread + 499) * (thread + 499)) ++wrong;
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(wrong.load() == 0);
}

TEST_CASE("Api.Imap.InOrderAndLazy" * doctest::timeout(60)) {  // test_imap
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  std::vector<std::int64_t> out;
  for (std::int64_t r : pool.imap(t::square, std::views::iota(0, 10'000))) out.push_back(r);
  REQUIRE(out.size() == 10'000);
  for (std::int64_t i = 0; i < 10'000; ++i) CHECK(out[static_cast<std::size_t>(i)] == i * i);

  // Input is pulled as results are consumed, not all at once.
  std::size_t pulled = 0;
  auto counting = std::views::iota(0, 1'000'000) | std::views::transform([&pulled](int x) {
                    ++pulled;
                    return static_cast<std::int64_t>(x);
                  });
  auto stream = pool.imap(t::square, counting, {.window = 4});
  auto it = stream.begin();
  CHECK(*it == 0);
  ++it;
  CHECK(*it == 1);
  CHECK(pulled < 1000);
  CHECK(stream.chunks_sent() <= 6);
}

TEST_CASE("Api.ImapUnordered.CompletionOrder" * doctest::timeout(30)) {  // test_imap_unordered
  // Three idle workers take one item each (idle workers come before prefetch slots).
  t::Cluster cluster({.workers = 3});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(3, 10s));
  std::vector<std::int64_t> order;
  for (std::int64_t r : pool.imap_unordered(t::sleep_ms, std::vector<std::int64_t>{400, 10, 150}, {.chunksize = 1})) {
    order.push_back(r);
  }
  CHECK(order == std::vector<std::int64_t>{10, 150, 400});
}

TEST_CASE("Api.Imap.ExceptionAtIndex" * doctest::timeout(30)) {  // test_imap_handle_iterable_exception
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  for (bool ordered : {true, false}) {
    CAPTURE(ordered);
    std::vector<std::int64_t> seen;
    std::optional<std::uint64_t> failed_index;
    try {
      auto stream = ordered ? pool.imap(t::fail_at_13, std::views::iota(0, 30), {.chunksize = 1})
                            : pool.imap_unordered(t::fail_at_13, std::views::iota(0, 30), {.chunksize = 1});
      for (std::int64_t r : stream) seen.push_back(r);
    } catch (const poolmap::TaskError& e) {
      failed_index = e.index();
    }
    REQUIRE(failed_index.has_value());
    CHECK(*failed_index == 13);
    CHECK(std::find(seen.begin(), seen.end(), 13) == seen.end());
    if (ordered) CHECK(seen == iota_vector(13));  // everything before it, in order
  }
}

TEST_CASE("Api.Imap.AdaptiveChunksize" * doctest::timeout(60)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  // Tiny tasks: chunks grow, so far fewer chunks than items.
  auto tiny = pool.imap(t::square, std::views::iota(0, 200'000));
  std::size_t count = 0;
  for (std::int64_t r : tiny) count += r >= 0;
  CHECK(count == 200'000);
  CHECK(tiny.chunksize() >= 1000);
  CHECK(tiny.chunks_sent() < 2000);
  // Slow tasks (20 ms, the target chunk time): chunks stay at one item.
  auto slow = pool.imap(t::sleep_ms, std::vector<std::int64_t>(12, 20));
  for (std::int64_t r : slow) CHECK(r == 20);
  CHECK(slow.chunksize() <= 2);
  // An explicit chunk size wins.
  auto fixed = pool.imap(t::square, std::views::iota(0, 100), {.chunksize = 7});
  for ([[maybe_unused]] std::int64_t r : fixed) {
  }
  CHECK(fixed.chunksize() == 7);
  CHECK(fixed.chunks_sent() == 15);
}

TEST_CASE("Api.Imap.DestroyingTheStreamCancelsTheRest" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  poolmap::Pool observer(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  {
    auto stream = pool.imap(t::sleep_ms, std::vector<std::int64_t>(100, 100), {.chunksize = 1, .window = 20});
    CHECK(*stream.begin() == 100);
  }
  // The queued chunks are dropped at the broker: new work does not wait behind 2 s of sleeps.
  CHECK(t::eventually([&] { return observer.status().chunks_queued == 0; }, 5s));
  const auto started = std::chrono::steady_clock::now();
  CHECK(pool.map(t::square, iota_vector(4)) == std::vector<std::int64_t>{0, 1, 4, 9});
  CHECK(std::chrono::steady_clock::now() - started < 1s);
}

TEST_CASE("Api.Worker.InitializerRunsOnceWithItsArgs" * doctest::timeout(30)) {  // initializer, initargs
  t::Cluster cluster({.workers = 2, .worker_args = {"--init-arg", "alpha", "--init-arg", "beta"}});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  for (const auto& report : pool.map(t::init_report, iota_vector(20), {.chunksize = 1})) CHECK(report == "alpha,beta|1");
}

TEST_CASE("Api.Worker.MaxTasksPerChildReplacesProcesses" * doctest::timeout(30)) {  // maxtasksperchild
  t::Cluster cluster({.workers = 1, .worker_args = {"--max-tasks-per-child", "2"}});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 10s));
  const auto pids = pool.map(t::worker_pid, iota_vector(10), {.chunksize = 1});
  REQUIRE(pids.size() == 10);
  const std::set<std::int64_t> distinct(pids.begin(), pids.end());
  CHECK(distinct.size() >= 5);  // 2 chunks per process (a handed-back prefetch may run later)
}

TEST_CASE("Api.Worker.MaxTasksPerChildEndsAProcessThatRanQuickCallsOnItsIoThread" * doctest::timeout(60)) {
  // One call at a time: after a streak of quick chunks the worker runs them on its I/O thread
  // (run_here), so the chunk that reaches the limit is one of those, and the process must still
  // answer it, say goodbye and be replaced, without waiting for anything else to wake it.
  t::Cluster cluster({.workers = 1, .worker_args = {"--max-tasks-per-child", "20"}});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 10s));
  std::vector<std::int64_t> pids;
  for (std::int64_t i = 0; i < 100; ++i) pids.push_back(pool.submit(t::worker_pid, i).get(60s));
  const std::set<std::int64_t> distinct(pids.begin(), pids.end());
  CHECK(distinct.size() >= 5);  // 20 calls per process
  for (const std::int64_t pid : distinct) CHECK(std::count(pids.begin(), pids.end(), pid) <= 20);
}

TEST_CASE("Api.Worker.EmbeddedInitArgsAndMaxTasks" * doctest::timeout(60)) {
  poolmap::Pool pool({.processes = 1, .max_tasks_per_child = 3, .init_args = {"x", "y z"},
                      .heartbeat_interval = t::heartbeat()});
  for (const auto& report : pool.map(t::init_report, iota_vector(6), {.chunksize = 1})) CHECK(report == "x,y z|1");
  const auto pids = pool.map(t::worker_pid, iota_vector(9), {.chunksize = 1});
  CHECK(std::set<std::int64_t>(pids.begin(), pids.end()).size() >= 3);
}

TEST_CASE("Api.Broadcast.ContextCrossesOncePerWorkerNotPerChunk" * doctest::timeout(120)) {
  // Once per worker *registration*: a peer that waits for a 50 MB message longer than the liveness
  // window (a loaded host at the 100 ms test heartbeat) registers again and gets the context
  // again. This test is about caching, not liveness, so its window is wider than that transfer.
  const auto heartbeat = 5 * t::heartbeat();
  t::Cluster cluster({.workers = 2, .heartbeat_ms = static_cast<int>(heartbeat.count())});
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = heartbeat});
  REQUIRE(pool.wait_for_workers(2, 10s));
  std::vector<std::uint8_t> table(50'000'000);
  for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<std::uint8_t>((i * 7) % 251);
  const auto indices = iota_vector(1000, 123'456);
  const auto bound = t::lookup.with(table);
  const auto values = pool.map(bound, indices, {.chunksize = 1});  // 1,000 chunks
  REQUIRE(values.size() == 1000);
  for (std::size_t k = 0; k < 1000; ++k) {
    CHECK(values[k] == table[static_cast<std::size_t>(indices[k]) % table.size()]);
  }
  const auto status = pool.status();
  const std::uint64_t size = bound.context()->size();  // 50 MB and its length field
  MESSAGE("context " << size << " bytes; broker received " << status.context_bytes_received << ", sent to workers "
                     << status.context_bytes_sent << " for 1,000 chunks");
  CHECK(status.context_bytes_received == size);   // once from the client
  CHECK(status.context_bytes_sent >= size);       // at least one worker got it...
  CHECK(status.context_bytes_sent <= 2 * size);   // ...and each at most once
  // A second map with the same context: the workers have it cached, nothing more goes to them.
  const auto again = pool.map(bound, iota_vector(100), {.chunksize = 1});
  CHECK(again[99] == table[99]);
  CHECK(pool.status().context_bytes_sent == status.context_bytes_sent);
}

// ---- Python conformance (ported from CPython's Pool and concurrent.futures tests) ----

namespace {

// The input range's own exception (Python's SayWhenError in test_imap_handle_iterable_exception).
struct SayWhenError : std::runtime_error {
  explicit SayWhenError(int at) : std::runtime_error("input fails at " + std::to_string(at)) {}
};

// 0, 1, ..., fail_at - 1, then throws SayWhenError (Python's exception_throwing_generator).
auto throwing_input(int total, int fail_at) {
  return std::views::iota(0, total) | std::views::transform([fail_at](int x) {
           if (x == fail_at) throw SayWhenError(x);
           return static_cast<std::int64_t>(x);
         });
}

}  // namespace

TEST_CASE("Api.Imap.InputExceptionAfterEarlierResults" * doctest::timeout(60)) {  // test_imap_handle_iterable_exception
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  struct Case {
    int total, fail_at;
    std::size_t chunksize;
  };
  for (const Case c : {Case{1, 0, 1}, Case{10, 3, 1}, Case{20, 7, 2}, Case{20, 7, 4}, Case{100, 57, 0}}) {
    for (bool ordered : {true, false}) {
      CAPTURE(c.fail_at);
      CAPTURE(c.chunksize);
      CAPTURE(ordered);
      std::vector<std::int64_t> seen;
      bool thrown = false;
      try {
        auto stream = ordered ? pool.imap(t::square, throwing_input(c.total, c.fail_at), {.chunksize = c.chunksize})
                              : pool.imap_unordered(t::square, throwing_input(c.total, c.fail_at),
                                                    {.chunksize = c.chunksize});
        for (std::int64_t r : stream) seen.push_back(r);
      } catch (const SayWhenError&) {  // the input's own exception, not a poolmap::Error
        thrown = true;
      }
      CHECK(thrown);
      std::vector<std::int64_t> expected;
      for (std::int64_t i = 0; i < c.fail_at; ++i) expected.push_back(i * i);
      if (!ordered) std::sort(seen.begin(), seen.end());
      CHECK(seen == expected);  // every item before the failing one, then the exception
    }
  }
  CHECK(pool.map(t::square, iota_vector(3)) == std::vector<std::int64_t>{0, 1, 4});  // the Pool is fine
}

TEST_CASE("Api.Futures.WaitAnyAndAsCompletedGiveOnlyReadyFutures" * doctest::timeout(60)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  std::size_t not_ready = 0;
  std::size_t seen = 0;
  auto check_ready = [&](const poolmap::Future<std::int64_t>& future) {
    ++seen;
    try {
      (void)future.get(0ms);  // must not be kDeadlineExceeded
    } catch (const poolmap::Error&) {
      ++not_ready;
    }
  };
  for (int round = 0; round < 5; ++round) {
    std::vector<poolmap::Future<std::int64_t>> futures;
    for (std::int64_t i = 0; i < 40; ++i) futures.push_back(pool.submit(t::square, i));
    for (std::size_t index : poolmap::as_completed(futures)) check_ready(futures[index]);
  }
  for (int round = 0; round < 40; ++round) {
    std::vector<poolmap::Future<std::int64_t>> futures{pool.submit(t::square, 1), pool.submit(t::square, 2)};
    const auto index = poolmap::wait_any(futures, 10s);
    REQUIRE(index.has_value());
    check_ready(futures[*index]);
  }
  CHECK(seen == 240);
  CHECK(not_ready == 0);
}

TEST_CASE("Api.Futures.ThenOnAFinishedFutureSwallowsCallbackExceptions" * doctest::timeout(30)) {
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  // Registered before the result arrives: logged and swallowed on the I/O thread.
  auto later = pool.submit(t::sleep_ms, 2 * t::heartbeat().count());
  later.then([](const std::int64_t&) { throw std::runtime_error("callback fails"); });
  CHECK(later.get() == 2 * t::heartbeat().count());
  // Registered after: the same, on the calling thread.
  auto done = pool.submit(t::square, 3);
  CHECK(done.get() == 9);
  CHECK_NOTHROW(done.then([](const std::int64_t&) { throw std::runtime_error("callback fails"); }));
  CHECK_NOTHROW(done.then([](const std::int64_t&) { throw 42; }));
  auto failed = pool.submit(t::fail_at_13, 13);
  CHECK_THROWS_AS((void)failed.get(), poolmap::TaskError);
  CHECK_NOTHROW(failed.then({}, [](const poolmap::Error&) { throw std::runtime_error("error callback fails"); }));
  bool called = false;
  done.then([&](const std::int64_t& v) { called = v == 9; });  // later callbacks still run
  CHECK(called);
  CHECK(pool.submit(t::square, 4).get() == 16);  // the I/O thread is alive
}

TEST_CASE("Api.Futures.CancelIsImmediateAndIdempotent" * doctest::timeout(30)) {
  t::Cluster cluster({.workers = 1});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 10s));
  const std::int64_t ms = 3 * t::heartbeat().count();
  for (int round = 0; round < 20; ++round) {
    CAPTURE(round);
    auto running = pool.submit(t::sleep_ms, ms);
    auto queued = pool.submit(t::sleep_ms, ms);
    REQUIRE(queued.cancel());
    CHECK(queued.ready());  // at once, not when the I/O thread gets to it
    try {
      (void)queued.get(0ms);
      FAIL("a cancelled future returned a value");
    } catch (const poolmap::Error& e) {
      CHECK(e.code() == poolmap::ErrorCode::kCancelled);
    }
    CHECK(queued.cancel());  // cancelling again: still true, as Python
    CHECK(running.cancel());
    CHECK(running.ready());
  }
  auto finished = pool.submit(t::square, 5);
  CHECK(finished.get() == 25);
  CHECK_FALSE(finished.cancel());
  CHECK(finished.get() == 25);
  auto failed = pool.submit(t::fail_at_13, 13);
  CHECK_THROWS_AS((void)failed.get(), poolmap::TaskError);
  CHECK_FALSE(failed.cancel());
  CHECK_THROWS_AS((void)failed.get(), poolmap::TaskError);
}

TEST_CASE("Api.Map.AnyInputRangeWithASentinel" * doctest::timeout(60)) {  // map over a generator
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  std::vector<std::int64_t> expected;
  for (std::int64_t i = 0; i < 100; ++i) expected.push_back(i * i);
  auto below_100 = std::views::iota(0) | std::views::take_while([](int x) { return x < 100; });
  CHECK(pool.map(t::square, below_100) == expected);
  CHECK(pool.map(t::square, below_100, {.chunksize = 7}) == expected);
  CHECK(pool.map_async(t::square, below_100).get() == expected);
  CHECK(pool.map_async(t::square, below_100, {.chunksize = 7}).get() == expected);
  std::istringstream text("3 1 4 1 5");  // an input-only range
  CHECK(pool.map(t::square, std::views::istream<std::int64_t>(text)) == std::vector<std::int64_t>{9, 1, 16, 1, 25});
  auto pairs = std::views::iota(0) | std::views::transform([](int x) { return std::tuple<int, int>{x, 1000 * x}; }) |
               std::views::take_while([](const std::tuple<int, int>& p) { return std::get<0>(p) < 50; });
  std::vector<std::int64_t> sums;
  for (std::int64_t i = 0; i < 50; ++i) sums.push_back(1001 * i);
  CHECK(pool.starmap(t::add, pairs) == sums);
  CHECK(pool.starmap(t::add, pairs, {.chunksize = 3}) == sums);
  CHECK(pool.starmap_async(t::add, pairs).get() == sums);
  const std::vector<std::uint8_t> table{10, 20, 30};
  CHECK(pool.map(t::lookup.with(table), std::views::iota(0) | std::views::take_while([](int x) { return x < 4; })) ==
        std::vector<std::uint8_t>{10, 20, 30, 10});
}

TEST_CASE("Api.Apply.BlocksForTheResult" * doctest::timeout(30)) {  // test_apply
  t::Cluster cluster;
  poolmap::Pool pool(remote(cluster));
  CHECK(pool.apply(t::square, 7) == 49);
  CHECK(pool.apply(t::add, 40, 2) == 42);
  CHECK(pool.apply(t::repeat, std::string("ab"), 2) == "abab");
  CHECK_THROWS_AS((void)pool.apply(t::fail_at_13, 13), poolmap::TaskError);
  try {
    (void)pool.apply(poolmap::SubmitOptions{.deadline = t::heartbeat()}, t::sleep_ms, 20 * t::heartbeat().count());
    FAIL("apply outlived its deadline");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kDeadlineExceeded);
  }
}

TEST_CASE("Api.Futures.CancelledAndException" * doctest::timeout(30)) {  // test_cancelled, test_exception_*
  t::Cluster cluster({.workers = 1});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 10s));
  auto good = pool.submit(t::square, 4);
  CHECK(good.exception() == nullptr);  // waits like get()
  CHECK(good.ready());
  CHECK_FALSE(good.cancelled());
  auto bad = pool.submit(t::fail_at_13, 13);
  const auto error = bad.exception();
  REQUIRE(error != nullptr);
  CHECK(error->code() == poolmap::ErrorCode::kTaskFailed);
  const auto* task_error = dynamic_cast<const poolmap::TaskError*>(error.get());
  REQUIRE(task_error != nullptr);
  CHECK(task_error->remote_message() == "bad item 13");
  CHECK_FALSE(bad.cancelled());
  auto slow = pool.submit(t::sleep_ms, 5 * t::heartbeat().count());
  try {
    (void)slow.exception(t::heartbeat() / 5);
    FAIL("exception(timeout) returned before the task finished");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kDeadlineExceeded);
  }
  CHECK_FALSE(slow.cancelled());
  CHECK(slow.cancel());
  CHECK(slow.cancelled());
  // Python raises CancelledError from exception() on a cancelled future.
  CHECK_THROWS_AS((void)slow.exception(), poolmap::Error);
  CHECK(good.exception(0ms) == nullptr);
}

TEST_CASE("Api.Futures.RunningWhileOnAWorkerOnly" * doctest::timeout(60)) {  // test_running
  // One worker process without prefetch: the second submit waits in the broker's queue while the
  // first runs.
  t::Cluster cluster({.workers = 1, .worker_args = {"--prefetch", "0"}});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(1, 10s));
  const auto hold = 10 * t::heartbeat().count();
  auto first = pool.submit(t::sleep_ms, hold);
  auto second = pool.submit(t::sleep_ms, std::int64_t{1});
  CHECK(t::eventually([&] { return first.running(); }, 20 * t::heartbeat()));
  CHECK_FALSE(second.running());  // queued behind the first, not on a worker
  CHECK_FALSE(second.ready());
  CHECK(first.get() == hold);
  CHECK_FALSE(first.running());  // finished is not running
  CHECK(second.get() == 1);
  CHECK_FALSE(second.running());
  CHECK_FALSE(poolmap::AnyFuture(second).running());
}

TEST_CASE("Api.Futures.AsCompletedTimeoutAndWait" * doctest::timeout(60)) {  // test_as_completed, test_wait
  t::Cluster cluster({.workers = 3});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(3, 10s));
  const auto hb = t::heartbeat();
  std::vector<poolmap::Future<std::int64_t>> futures{pool.submit(t::sleep_ms, 10 * hb.count()),
                                                     pool.submit(t::sleep_ms, hb.count() / 2)};
  // as_completed(futures, timeout): the slow one is not done within 3 heartbeats.
  std::vector<std::size_t> order;
  try {
    for (std::size_t index : poolmap::as_completed(futures, 3 * hb)) order.push_back(index);
    FAIL("as_completed did not time out");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kDeadlineExceeded);
    CHECK(std::string(e.what()) == "1 (of 2) futures unfinished after " + std::to_string((3 * hb).count()) + " ms");
  }
  CHECK(order == std::vector<std::size_t>{1});

  auto first = poolmap::wait(futures, poolmap::FIRST_COMPLETED, 0ms);
  CHECK(first.done == std::vector<std::size_t>{1});
  CHECK(first.not_done == std::vector<std::size_t>{0});
  auto timed_out = poolmap::wait(futures, poolmap::ALL_COMPLETED, hb / 5);
  CHECK(timed_out.not_done == std::vector<std::size_t>{0});

  // FIRST_EXCEPTION returns at the first failure, before the slow one ends.
  std::vector<poolmap::Future<std::int64_t>> mixed{pool.submit(t::sleep_ms, 10 * hb.count()),
                                                   pool.submit(t::fail_at_13, 13)};
  auto on_error = poolmap::wait(mixed, poolmap::FIRST_EXCEPTION, 5 * hb);
  CHECK(on_error.done == std::vector<std::size_t>{1});
  CHECK(on_error.not_done == std::vector<std::size_t>{0});
  // Without a failure FIRST_EXCEPTION is ALL_COMPLETED.
  std::vector<poolmap::Future<std::int64_t>> fine{pool.submit(t::sleep_ms, hb.count()), pool.submit(t::square, 3)};
  auto all = poolmap::wait(fine, poolmap::FIRST_EXCEPTION);
  CHECK(all.done == std::vector<std::size_t>{0, 1});
  CHECK(all.not_done.empty());
  CHECK(poolmap::wait(futures).not_done.empty());  // ALL_COMPLETED, no timeout
  CHECK(poolmap::wait(mixed).done.size() == 2);
  std::vector<std::size_t> rest;
  for (std::size_t index : poolmap::as_completed(futures, 0ms)) rest.push_back(index);  // all done: no wait
  CHECK(rest.size() == 2);
}

TEST_CASE("Api.Futures.AnyFutureMixesResultTypes" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 3});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(3, 10s));
  const auto hb = t::heartbeat();
  poolmap::Future<std::string> word = pool.submit(t::shout, std::string("hi"));
  poolmap::Future<std::vector<std::int64_t>> squares = pool.map_async(t::square, iota_vector(3), {.chunksize = 3});
  poolmap::Future<std::int64_t> slow = pool.submit(t::sleep_ms, 5 * hb.count());
  std::vector<poolmap::AnyFuture> all{word, squares, slow};
  const auto first = poolmap::wait_any(all, 10s);
  REQUIRE(first.has_value());
  CHECK(*first != 2);
  CHECK(all[*first].ready());
  std::vector<std::size_t> order;
  for (std::size_t index : poolmap::as_completed(all)) order.push_back(index);
  REQUIRE(order.size() == 3);
  CHECK(order.back() == 2);
  CHECK(poolmap::wait_all(all, 0ms));
  CHECK(poolmap::wait(all, poolmap::ALL_COMPLETED).done.size() == 3);
  CHECK(word.get() == "HI!");
  CHECK(squares.get() == std::vector<std::int64_t>{0, 1, 4});
  CHECK(all[0].exception() == nullptr);
  poolmap::AnyFuture pending = pool.submit(t::sleep_ms, 5 * hb.count());
  CHECK_FALSE(pending.wait_for(0ms));
  CHECK(pending.cancel());
  CHECK(pending.ready());
  CHECK(pending.cancelled());
  poolmap::AnyFuture failed = pool.submit(t::fail_at_13, 13);
  failed.wait();
  REQUIRE(failed.exception(0ms) != nullptr);
  CHECK(failed.exception()->code() == poolmap::ErrorCode::kTaskFailed);
}

TEST_CASE("Api.Imap.MultipleArgumentsAndBoundContexts" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  // Several arguments: each item is a tuple, as with starmap.
  std::vector<std::tuple<std::int64_t, std::int64_t>> tuples;
  for (std::int64_t i = 0; i < 200; ++i) tuples.emplace_back(i, 1000 * i);
  std::vector<std::int64_t> sums;
  for (std::int64_t r : pool.imap(t::add, tuples)) sums.push_back(r);
  std::vector<std::int64_t> expected;
  for (std::int64_t i = 0; i < 200; ++i) expected.push_back(1001 * i);
  CHECK(sums == expected);
  std::vector<std::int64_t> unordered;
  for (std::int64_t r : pool.imap_unordered(t::add, tuples, {.chunksize = 3})) unordered.push_back(r);
  std::sort(unordered.begin(), unordered.end());
  CHECK(unordered == expected);
  std::vector<std::string> repeated;
  for (auto& r : pool.imap(t::repeat, std::vector<std::pair<std::string, int>>{{"a", 2}, {"b", 3}})) repeated.push_back(r);
  CHECK(repeated == std::vector<std::string>{"aa", "bbb"});

  // Bound contexts: task.with(ctx) with imap, imap_unordered, submit and apply.
  std::vector<std::uint8_t> table(1'000'000);
  for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<std::uint8_t>((i * 7) % 251);
  const auto bound = t::lookup.with(table);
  // Window 1: see Api.Imap.BoundContextWithAWindow for why.
  const auto indices = iota_vector(50, 5'000);
  std::vector<std::uint8_t> values;
  for (std::uint8_t v : pool.imap(bound, indices, {.chunksize = 1, .window = 1})) values.push_back(v);
  REQUIRE(values.size() == indices.size());
  for (std::size_t k = 0; k < indices.size(); ++k) CHECK(values[k] == table[static_cast<std::size_t>(indices[k])]);
  std::multiset<std::uint8_t> got;
  for (std::uint8_t v : pool.imap_unordered(bound, indices, {.chunksize = 4, .window = 1})) got.insert(v);
  CHECK(got == std::multiset<std::uint8_t>(values.begin(), values.end()));
  // A slow reader: every chunk ends before the next is sent.
  auto stream = pool.imap(bound, iota_vector(5), {.chunksize = 1, .window = 1});
  std::size_t read = 0;
  for (auto it = stream.begin(); it != stream.end(); ++it, ++read) {
    CHECK(*it == table[read]);
    (void)pool.submit(t::square, 1).get();
  }
  CHECK(read == 5);
  CHECK(pool.submit(bound, 12).get() == table[12]);
  CHECK(pool.apply(bound, 13) == table[13]);
  const std::uint64_t size = bound.context()->size();
  CHECK(pool.status().context_bytes_sent <= 2 * size);  // once per worker process, not per chunk
}

// Regression: the broker used to free a context the moment no chunk of it was live, so a SUBMIT
// right behind its last result was refused ("SUBMIT names a context never sent") and every job of
// the client failed. Now the broker keeps an unused context for a liveness period and answers a
// chunk naming a freed one with kContextMissing; the client sends the context again.
TEST_CASE("Api.Broadcast.AContextTheBrokerFreedIsSentAgain" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  std::vector<std::uint8_t> table(10'000);
  for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<std::uint8_t>(i % 199);
  const auto bound = t::lookup.with(table);
  const std::uint64_t size = bound.context()->size();
  const auto indices = iota_vector(100);
  CHECK(pool.map(bound, indices).size() == 100);
  // Unused for a liveness period, the broker frees it; the client still believes it is there.
  REQUIRE(t::eventually([&] { return pool.status().context_bytes_held == 0; }, 20 * t::heartbeat() + 5s));
  const auto values = pool.map(bound, indices, {.chunksize = 10});
  REQUIRE(values.size() == 100);
  for (std::size_t k = 0; k < values.size(); ++k) CHECK(values[k] == table[k]);
  CHECK(pool.status().context_bytes_received == 2 * size);  // sent again once, not per chunk
}

TEST_CASE("Api.Imap.BoundContextWithAWindow" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 10s));
  std::vector<std::uint8_t> table(100'000);
  for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<std::uint8_t>((i * 7) % 251);
  const auto bound = t::lookup.with(table);
  const auto indices = iota_vector(300, 5'000);
  std::vector<std::uint8_t> values;
  for (std::uint8_t v : pool.imap(bound, indices, {.chunksize = 1, .window = 8})) values.push_back(v);
  REQUIRE(values.size() == indices.size());
  for (std::size_t k = 0; k < indices.size(); ++k) CHECK(values[k] == table[static_cast<std::size_t>(indices[k])]);
  std::multiset<std::uint8_t> got;
  for (std::uint8_t v : pool.imap_unordered(bound, indices)) got.insert(v);
  CHECK(got == std::multiset<std::uint8_t>(values.begin(), values.end()));
}
