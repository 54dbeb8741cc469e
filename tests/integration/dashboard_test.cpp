// The broker's dashboard (poolmap-broker --http): the JSON API a page and scripts read, the token
// rule, and the page itself in a real browser (Debian's chromium, headless) during a real map,
// with a hostile worker whose strings are markup.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "poolmap/poolmap.hpp"
#include "poolmap/protocol.hpp"
#include "process.hpp"
#include "test_tasks.hpp"
#include "wire.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;
namespace proto = poolmap::proto;

namespace {

poolmap::PoolOptions remote(const t::Cluster& cluster) {
  return {.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()};
}

// The keys of every JSON object in `json` ("name": ...), at any depth. (By hand: std::regex trips
// GCC 12's -Wmaybe-uninitialized in the sanitizer builds.)
std::set<std::string> json_keys(const std::string& json) {
  std::set<std::string> keys;
  for (auto at = json.find("\":"); at != std::string::npos; at = json.find("\":", at + 2)) {
    const auto open = json.rfind('"', at - 1);
    if (open == std::string::npos) continue;
    const std::string key = json.substr(open + 1, at - open - 1);
    if (!key.empty() && std::all_of(key.begin(), key.end(), [](char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; })) {
      keys.insert(key);
    }
  }
  return keys;
}

std::string status_of(const t::Cluster& cluster) {
  const auto response = t::http_get(cluster.http_url() + "api/v1/status");
  REQUIRE(response.status == 200);
  return response.body;
}

// The "jobs" array of a status, alone.
std::string jobs_of(const std::string& status) {
  const auto from = status.find("\"jobs\":[");
  const auto to = status.find("],\"jobs_omitted\"");
  REQUIRE(from != std::string::npos);
  REQUIRE(to != std::string::npos);
  return status.substr(from, to - from);
}

// Whether the worker process `pid` runs a chunk now, by the status.
bool runs_a_chunk(const std::string& status, pid_t pid) {
  const auto at = status.find("\"pid\":" + std::to_string(pid) + ",");
  if (at == std::string::npos) return false;
  const auto running = status.find("\"running_items\":", at);
  return running != std::string::npos && status.compare(running + 16, 2, "0,") != 0;
}

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// A worker made by hand whose host and task names are markup: what a hostile peer could send. It
// registers and then only heartbeats, on a thread of its own (its socket's only user).
class MarkupWorker {
 public:
  MarkupWorker(const std::string& endpoint, const std::string& host, const std::string& task)
      : thread_([endpoint, host, task](std::stop_token stop) { run(stop, endpoint, host, task); }) {}

 private:
  static void send(zmq::socket_t& socket, proto::Command command, const zmq::message_t* header) {
    std::vector<zmq::message_t> frames;
    const auto signature = proto::signature_frame(command);
    frames.emplace_back(signature.data(), signature.size());
    frames.emplace_back(header != nullptr ? header->data() : nullptr, header != nullptr ? header->size() : 0);
    (void)zmq::send_multipart(socket, frames);
  }
  static void run(const std::stop_token& stop, const std::string& endpoint, const std::string& host,
                  const std::string& task) {
    zmq::context_t context;
    zmq::socket_t socket(context, zmq::socket_type::dealer);
    socket.set(zmq::sockopt::linger, 0);
    poolmap::wire::apply_secret(socket, t::user_secret());
    socket.connect(endpoint);
    const proto::Ready ready{host, 4242, 1, 0x5eed0001ULL, 0, {{task, "i64(i64)"}}, 1, 0, {}};
    const zmq::message_t header = poolmap::wire::header_message(ready);
    send(socket, proto::Command::kReady, &header);
    while (!stop.stop_requested()) {
      zmq::message_t ignored;
      while (socket.recv(ignored, zmq::recv_flags::dontwait)) {
      }
      send(socket, proto::Command::kHeartbeat, nullptr);
      std::this_thread::sleep_for(t::heartbeat() / 2);
    }
  }

  std::jthread thread_;
};

std::string chromium_binary() {
  for (const char* candidate : {"/usr/bin/chromium", "/usr/bin/chromium-browser"}) {
    if (::access(candidate, X_OK) == 0) return candidate;
  }
  return {};
}

// What chromium shows of `url` after the page has run for a while: its DOM, or a screenshot.
std::vector<std::string> chromium_args(const std::string& binary, const t::TempDir& dir) {
  return {binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
          "--user-data-dir=" + (dir.path() / "profile").string(), "--virtual-time-budget=4000"};
}

}  // namespace

TEST_CASE("Dashboard.Api.TheStatusHasEveryFieldOfPoolmapStatusJsonAndFollowsAMap" * doctest::timeout(120)) {
  t::Cluster cluster({.workers = 2, .broker_args = {"--http", "127.0.0.1:0"}});
  REQUIRE(cluster.http_url().starts_with("http://127.0.0.1:"));
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 20s));
  // 40 items of 30 ms, a chunk each: about 0.6 s on two workers.
  auto future = pool.map_async(t::sleep_ms, std::vector<std::int64_t>(40, 30), {.chunksize = 1});
  std::string running;
  CHECK(t::eventually([&] {
    running = status_of(cluster);
    return running.find("\"task\":\"test.sleep_ms\"") != std::string::npos;
  }, 20s));
  CHECK(running.find("\"items_total\":40") != std::string::npos);
  REQUIRE(future.get().size() == 40);
  // The answered map: 40 chunks done, each worker listed.
  std::string done;
  CHECK(t::eventually([&] {
    done = status_of(cluster);
    return done.find("\"chunks_done\":40,") != std::string::npos;
  }, 10s));
  CHECK(done.starts_with("{\"version\":1,"));
  // The field names are the API: these stay (more may come).
  const std::set<std::string> pinned{"version", "broker", "role", "epoch", "peer", "peer_silent_ms", "heartbeat_ms", "uptime_ms",
                                     "workers", "workers_omitted", "clients", "chunks_queued", "chunks_in_flight",
                                     "chunks_done", "chunks_failed", "chunks_redispatched", "bad_messages", "jobs",
                                     // a worker
                                     "host", "pid", "id", "supervisor", "chunks_done", "last_seen_ms", "credit",
                                     "tasks", "name", "signature",
                                     // a job
                                     "client_host", "client_pid", "job", "task", "items_done", "items_total",
                                     "age_ms"};
  auto api = json_keys(done);
  api.merge(json_keys(running));  // the job's fields (it may be gone from the status by now)
  for (const std::string& key : pinned) CHECK_MESSAGE(api.contains(key), "the API lost field " << key);
  // Every field `poolmap status --json` prints is in the API too, under the same name.
  t::ChildProcess cli({t::cli_binary(), "status", "--json", "--broker", cluster.client_endpoint()});
  const std::string printed = cli.read_all(20s);
  REQUIRE(printed.find("\"workers\":[") != std::string::npos);
  for (const std::string& key : json_keys(printed)) {
    CHECK_MESSAGE(api.contains(key), "poolmap status --json has " << key << ", /api/v1/status does not");
  }
  // The same metrics as --metrics serves.
  const auto metrics = t::http_get(cluster.http_url() + "metrics");
  CHECK(metrics.status == 200);
  CHECK(metrics.body.find("poolmap_chunks_completed_total 40") != std::string::npos);
  CHECK(t::http_get(cluster.http_url() + "no/such/page").status == 404);
}

TEST_CASE("Dashboard.Api.SaysWhyAJobWaitsWhatFailedAndWhichWorkerWasLostAndShowsAnImapAsOneJob" *
          doctest::timeout(120)) {
  // No worker yet: a map waits, and says why.
  t::Cluster cluster({.workers = 0, .broker_args = {"--http", "127.0.0.1:0"}});
  poolmap::Pool pool(remote(cluster));
  // 16 items of 150 ms, a chunk each: over a second on two workers.
  auto future = pool.map_async(t::sleep_ms, std::vector<std::int64_t>(16, 150), {.chunksize = 1});
  CHECK(t::eventually([&] { return status_of(cluster).find("\"waiting\":\"no worker is registered\"") != std::string::npos; },
                      20s));
  // Two workers come; one of them is killed (kill -9) while it runs a chunk.
  cluster.add_workers(2);
  REQUIRE(pool.wait_for_workers(2, 20s));
  const std::vector<pid_t> pids = cluster.worker_pids();
  REQUIRE(pids.size() == 2);
  const pid_t victim = pids[0];
  REQUIRE(t::eventually([&] { return runs_a_chunk(status_of(cluster), victim); }, 20s));
  ::kill(victim, SIGKILL);
  std::string after;
  CHECK(t::eventually([&] {
    after = status_of(cluster);
    return after.find("\"kind\":\"redispatched\"") != std::string::npos &&
           after.find("\"worker_pid\":" + std::to_string(victim)) != std::string::npos;
  }, 20s));
  INFO("status: " << after);
  CHECK(after.find("\"task\":\"test.sleep_ms\"") != std::string::npos);
  CHECK(future.get().size() == 16);  // and nothing lost

  // A task no worker offers: its map fails, and the failure is listed with the task and the reason.
  CHECK_THROWS_AS(pool.map(t::not_registered, std::vector<std::int64_t>{1, 2, 3}), poolmap::Error);
  std::string failed;
  CHECK(t::eventually([&] {
    failed = status_of(cluster);
    return failed.find("\"kind\":\"failed\"") != std::string::npos;
  }, 10s));
  CHECK(failed.find("\"task\":\"test.not_registered\"") != std::string::npos);
  CHECK(failed.find("\"error\":\"unknown-task\"") != std::string::npos);

  // An imap sends each chunk as a job of its own; the status shows it as one job.
  // Looked at while it is consumed (a stream nobody reads stops sending once its window is full).
  auto stream = pool.imap(t::sleep_ms, std::vector<std::int64_t>(40, 50), {.chunksize = 1, .window = 8});
  std::size_t results = 0;
  std::string streaming;
  for (const std::int64_t slept : stream) {
    CHECK(slept == 50);
    ++results;
    if (streaming.empty()) {
      const std::string jobs = jobs_of(status_of(cluster));
      if (jobs.find("\"stream\":true") != std::string::npos) streaming = jobs;
    }
  }
  CHECK(results == 40);
  INFO("jobs: " << streaming);
  REQUIRE_FALSE(streaming.empty());
  // One row for the imap; besides it, at most the map of the same task before, shown as done.
  CHECK(count_of(streaming, "\"stream\":true") == 1);
  CHECK(count_of(streaming, "\"task\":\"test.sleep_ms\"") <= 2);
  CHECK(count_of(streaming, "\"items_total\":16,\"chunks_queued\":0,\"chunks_in_flight\":0") ==
        count_of(streaming, "\"task\":\"test.sleep_ms\"") - 1);
}

TEST_CASE("Dashboard.Token.DataNeedsTheTokenAndAnAddressBeyondLoopbackNeedsOne" * doctest::timeout(60)) {
  t::TempDir dir;
  const auto token_file = dir.path() / "token";
  const std::string token = "correct-horse-battery-staple-42";
  std::ofstream(token_file) << token << "\n";
  ::chmod(token_file.c_str(), 0600);
  t::Cluster cluster({.workers = 1, .broker_args = {"--http", "127.0.0.1:0", "--http-token-file", token_file.string()}});
  const std::string api = cluster.http_url() + "api/v1/status";
  const auto none = t::http_get(api);
  CHECK(none.status == 401);
  CHECK(none.body.find("correct-horse") == std::string::npos);
  CHECK(t::http_get(api, {"Authorization: Bearer wrong-token-wrong-token"}).status == 401);
  CHECK(t::http_get(api, {"Authorization: Bearer " + token + "x"}).status == 401);
  CHECK(t::http_get(cluster.http_url() + "metrics").status == 401);
  const auto with = t::http_get(api, {"Authorization: Bearer " + token});
  CHECK(with.status == 200);
  CHECK(with.body.starts_with("{\"version\":1,"));
  // The page itself holds no data: it loads, then asks for the token.
  const auto page = t::http_get(cluster.http_url());
  CHECK(page.status == 200);
  CHECK(page.body.find("needs its token") != std::string::npos);
  CHECK(page.headers.find("Content-Security-Policy: default-src 'none'; script-src 'self'") != std::string::npos);

  // Beyond loopback without a token: refused before anything is bound (nothing listens).
  t::ChildProcess open({t::broker_binary(), "--clients", "tcp://127.0.0.1:0", "--workers", "tcp://127.0.0.1:0",
                        "--http", "0.0.0.0:0"});
  const auto refused = open.wait(20s);
  REQUIRE(refused.has_value());
  CHECK(WEXITSTATUS(*refused) != 0);
  CHECK(open.stderr_text().find("--http-token-file") != std::string::npos);
  // A token file other users can read: refused too.
  ::chmod(token_file.c_str(), 0644);
  t::ChildProcess loose({t::broker_binary(), "--clients", "tcp://127.0.0.1:0", "--workers", "tcp://127.0.0.1:0",
                         "--http", "127.0.0.1:0", "--http-token-file", token_file.string()});
  const auto loose_status = loose.wait(20s);
  REQUIRE(loose_status.has_value());
  CHECK(WEXITSTATUS(*loose_status) != 0);
  CHECK(loose.stderr_text().find("chmod 600") != std::string::npos);
}

TEST_CASE("Dashboard.Browser.ThePageShowsTheMapAndItsWorkersAndRunsNoScriptOfAPeer" * doctest::timeout(180)) {
  const std::string chromium = chromium_binary();
  if (chromium.empty()) {
    MESSAGE("SKIPPED Dashboard.Browser...: no chromium (scripts/deps installs Debian's)");
    return;
  }
  // A finished job stays listed (at 100 %) for a liveness period: 20 s here, for the browser to look.
  t::Cluster cluster({.workers = 2, .liveness = static_cast<int>(20s / t::heartbeat()),
                      .broker_args = {"--http", "127.0.0.1:0"}});
  poolmap::Pool pool(remote(cluster));
  REQUIRE(pool.wait_for_workers(2, 20s));
  // A map that runs while the browser looks: 600 items of 50 ms on two workers (15 s).
  auto future = pool.map_async(t::sleep_ms, std::vector<std::int64_t>(600, 50), {.chunksize = 2});
  REQUIRE(t::eventually([&] { return status_of(cluster).find("\"task\":\"test.sleep_ms\"") != std::string::npos; }, 20s));
  // A worker killed (kill -9) while it runs a chunk: its chunk is re-dispatched, and the page lists it.
  const pid_t victim = cluster.worker_pids().at(0);
  REQUIRE(t::eventually([&] { return runs_a_chunk(status_of(cluster), victim); }, 20s));
  ::kill(victim, SIGKILL);
  REQUIRE(t::eventually([&] { return status_of(cluster).find("\"kind\":\"redispatched\"") != std::string::npos; }, 20s));
  t::TempDir dir;
  // A screenshot under the build tree (the README's is one of these).
  auto shot = chromium_args(chromium, dir);
  const std::string png = (std::filesystem::current_path() / "dashboard.png").string();
  shot.insert(shot.end(), {"--window-size=1400,900", "--hide-scrollbars", "--screenshot=" + png, cluster.http_url()});
  t::ChildProcess screenshot(shot);
  const auto shot_status = screenshot.wait(90s);
  CHECK(shot_status.has_value());
  CHECK(std::filesystem::exists(png));
  // A hostile peer's strings, shown by the page: each would run script if put into markup.
  const std::string host = "<img src=x onerror=\"document.title='pwned'\">";
  const std::string task = "</script><script>document.title='pwned2'</script>";
  MarkupWorker hostile(cluster.worker_endpoint(), host, task);
  REQUIRE(t::eventually([&] { return status_of(cluster).find("onerror") != std::string::npos; }, 20s));
  const auto dump_dom = [&] {
    auto args = chromium_args(chromium, dir);
    args.push_back("--dump-dom");
    args.push_back(cluster.http_url());
    t::ChildProcess browser(args);
    return browser.read_all(90s);
  };
  // The progress the page's bar shows (its aria-valuenow), or -1.
  const auto progress_of = [](const std::string& page) {
    const auto at = page.find("aria-valuenow=\"");
    return at == std::string::npos ? -1 : std::stoi(page.substr(at + 15));
  };
  const std::string dom = dump_dom();
  INFO("the page as chromium saw it:\n" << dom.substr(0, 4000));
  REQUIRE(dom.find("<title>poolmap</title>") != std::string::npos);  // and not 'pwned'
  CHECK(dom.find("pwned</title>") == std::string::npos);
  // The map's row, with its progress bar; the workers' rows (two real ones and the hostile one).
  CHECK(dom.find("<td class=\"text\">test.sleep_ms</td>") != std::string::npos);
  CHECK(dom.find("role=\"progressbar\"") != std::string::npos);
  CHECK(dom.find("/ 600</td>") != std::string::npos);
  CHECK(dom.find("<td>re-dispatched</td>") != std::string::npos);          // the killed worker's chunk
  CHECK(dom.find("<td class=\"text\">test.sleep_ms, job 1, items ") != std::string::npos);  // a worker's running chunk
  std::size_t mentions = 0;  // the job's row, and the tasks of each real worker
  for (auto at = dom.find("test.sleep_ms"); at != std::string::npos; at = dom.find("test.sleep_ms", at + 1)) ++mentions;
  CHECK(mentions >= 3);
  // The hostile strings are text: escaped in the DOM, no element made of them.
  CHECK(dom.find("&lt;img src=x onerror=\"document.title='pwned'\"&gt;") != std::string::npos);
  CHECK(dom.find("&lt;/script&gt;&lt;script&gt;document.title='pwned2'&lt;/script&gt;") != std::string::npos);
  CHECK(dom.find("<img") == std::string::npos);
  CHECK(dom.find("<script>document") == std::string::npos);
  // The bar moves on and reaches 100 %: the map done, the page shows it done.
  const int running = progress_of(dom);
  CHECK(running >= 0);
  CHECK(running < 100);
  REQUIRE(future.get().size() == 600);
  const std::string finished = dump_dom();
  INFO("the page once the map was done:\n" << finished.substr(0, 4000));
  CHECK(progress_of(finished) == 100);
  CHECK(finished.find("<td>600 / 600</td>") != std::string::npos);
  CHECK(finished.find("<td>done</td>") != std::string::npos);
}

TEST_CASE("Dashboard.Embedded.APoolServesItsOwnDashboardOnLoopbackOnly" * doctest::timeout(120)) {
  {
    poolmap::Pool pool({.processes = 1, .dashboard = "127.0.0.1:0", .heartbeat_interval = t::heartbeat()});
    REQUIRE(pool.dashboard_url().starts_with("http://127.0.0.1:"));
    const auto squares = pool.map(t::square, std::vector<std::int64_t>{1, 2, 3, 4});
    CHECK(squares == std::vector<std::int64_t>{1, 4, 9, 16});
    const auto api = t::http_get(pool.dashboard_url() + "api/v1/status");
    CHECK(api.status == 200);
    CHECK(api.body.find("\"broker\":\"inproc://") != std::string::npos);
    CHECK(api.body.find("\"workers\":[{\"host\":") != std::string::npos);
    CHECK(t::http_get(pool.dashboard_url()).body.find("<title>poolmap</title>") != std::string::npos);
  }
  // From the environment, as for POOLMAP_BROKER.
  ::setenv("POOLMAP_DASHBOARD", "127.0.0.1:0", 1);
  {
    poolmap::Pool pool({.processes = 1, .heartbeat_interval = t::heartbeat()});
    CHECK(pool.dashboard_url().starts_with("http://127.0.0.1:"));
  }
  ::unsetenv("POOLMAP_DASHBOARD");
  // Beyond loopback an embedded Pool has no token to give: refused.
  CHECK_THROWS_WITH_AS(poolmap::Pool({.processes = 1, .dashboard = "0.0.0.0:0", .heartbeat_interval = t::heartbeat()}),
                       doctest::Contains("without a token"), poolmap::Error);
  poolmap::Pool plain({.processes = 1, .heartbeat_interval = t::heartbeat()});
  CHECK(plain.dashboard_url().empty());
}
