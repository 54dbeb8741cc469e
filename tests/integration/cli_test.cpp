// `poolmap map` and `poolmap exec` against a real broker and workers.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "poolmap/poolmap.hpp"
#include "process.hpp"

using namespace std::chrono_literals;
namespace t = poolmap::test;

namespace {

// A file that is removed when the test ends.
class TempFile {
 public:
  explicit TempFile(const std::string& text)
      : path_(std::filesystem::temp_directory_path() /
              ("poolmap-cli-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++))) {
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  std::string path() const { return path_.string(); }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

struct Run {
  std::string out;
  std::string err;
  int exit_status = -1;
};

Run run(std::vector<std::string> argv) {
  t::ChildProcess child(std::move(argv));
  Run result;
  result.out = child.read_all(60s);
  const auto status = child.wait(60s);
  REQUIRE(status.has_value());
  REQUIRE(WIFEXITED(*status));
  result.exit_status = WEXITSTATUS(*status);
  result.err = child.stderr_text();
  return result;
}

std::string lines(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += item + "\n";
  return out;
}

void wait_for_workers(const t::Cluster& cluster, std::size_t count) {
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(count, 20s));
}

// A directory that is removed, with what is in it, when the test ends.
// The two pids a command wrote to `path` ("SHELL CHILD"), once it has.
std::optional<std::pair<pid_t, pid_t>> read_pids(const std::string& path) {
  std::ifstream in(path);
  long shell = 0;
  long child = 0;
  if (!(in >> shell >> child) || shell <= 0 || child <= 0) return std::nullopt;
  return std::pair{static_cast<pid_t>(shell), static_cast<pid_t>(child)};
}

// The parent of process `pid` (from /proc), or -1.
pid_t parent_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return -1;
  const auto after_name = line.rfind(')');  // "PID (COMM) STATE PPID ..."
  if (after_name == std::string::npos) return -1;
  std::istringstream rest(line.substr(after_name + 1));
  std::string state;
  long parent = -1;
  rest >> state >> parent;
  return static_cast<pid_t>(parent);
}

// Kills, when the test ends, those of `pids` still running: the processes of a command that
// outlived its worker process (only a failing test leaves any; they are not this test's children).
struct KillStrays {
  std::vector<pid_t> pids;
  ~KillStrays() {
    for (const pid_t pid : pids) {
      if (pid > 0 && t::process_running(pid)) ::kill(pid, SIGKILL);
    }
  }
};

// A shell command for exec_task whose line is a file name: it starts a child that would run for
// 1000 s, writes "SHELL_PID CHILD_PID" to the file (whole, by rename) and waits for the child.
// Run again (after its worker process was lost), it finds the file and exits 0 at once.
const std::vector<std::string> kCommandWithAChild{
    "sh", "-c", "test -e {} && exit 0; sleep 1000 & echo \"$$ $!\" > {}.tmp && mv {}.tmp {}; wait"};

}  // namespace

TEST_CASE("Cli.Map.PrintsTheResultsOfEachLineInInputOrder" * doctest::timeout(120)) {
  t::Cluster cluster({.workers = 2});
  wait_for_workers(cluster, 2);
  std::vector<std::string> numbers;
  std::vector<std::string> squares;
  for (std::int64_t i = -500; i < 500; ++i) {
    numbers.push_back(std::to_string(i));
    squares.push_back(std::to_string(i * i));
  }
  const TempFile input(lines(numbers));
  const Run squared = run({t::cli_binary(), "map", "test.square", input.path(), "--broker", cluster.client_endpoint(),
                           "--chunksize", "7"});
  CHECK(squared.exit_status == 0);
  CHECK(squared.out == lines(squares));

  // From stdin; a task of two arguments takes tab-separated fields; strings keep their spaces.
  const Run repeated = run({"/bin/sh", "-c",
                            "printf 'ab\\t3\\nc d\\t2\\n\\t5\\n' | \"$0\" map test.repeat --broker \"$1\"",
                            t::cli_binary(), cluster.client_endpoint()});
  CHECK(repeated.exit_status == 0);
  CHECK(repeated.out == "ababab\nc dc d\n\n");

  // No input, no output.
  const TempFile empty("");
  const Run nothing = run({t::cli_binary(), "map", "test.square", empty.path(), "--broker", cluster.client_endpoint()});
  CHECK(nothing.exit_status == 0);
  CHECK(nothing.out.empty());
}

TEST_CASE("Cli.Map.BadInputAndUnsuitableTasksAreClearErrors" * doctest::timeout(120)) {
  t::Cluster cluster({.workers = 1});
  wait_for_workers(cluster, 1);
  const std::string broker = cluster.client_endpoint();

  const TempFile bad(lines({"1", "2", "three", "4"}));
  const Run unparsable = run({t::cli_binary(), "map", "test.square", bad.path(), "--broker", broker});
  CHECK(unparsable.exit_status == 2);
  CHECK(unparsable.out.empty());  // nothing is sent before every line parses
  CHECK(unparsable.err.find("line 3: 'three' is not an i64") != std::string::npos);

  const TempFile vectors(lines({"1"}));
  const Run no_text_form = run({t::cli_binary(), "map", "test.prefix_sums", vectors.path(), "--broker", broker});
  CHECK(no_text_form.exit_status == 2);
  CHECK(no_text_form.err.find("is vector<f64>(vector<f64>)") != std::string::npos);

  const Run unknown = run({t::cli_binary(), "map", "test.nope", vectors.path(), "--broker", broker});
  CHECK(unknown.exit_status == 1);
  CHECK(unknown.err.find("no worker of the broker at " + broker + " has task 'test.nope'") != std::string::npos);

  std::vector<std::string> to_twenty;
  for (int i = 1; i <= 20; ++i) to_twenty.push_back(std::to_string(i));
  const TempFile twenty(lines(to_twenty));
  const Run thrown = run({t::cli_binary(), "map", "test.fail_at_13", twenty.path(), "--broker", broker});
  CHECK(thrown.exit_status == 1);
  CHECK(thrown.out.empty());
  CHECK(thrown.err.find("bad item 13") != std::string::npos);
}

TEST_CASE("Cli.Exec.RunsACommandPerLineOnTheWorkersInInputOrder" * doctest::timeout(120)) {
  t::Cluster cluster({.workers = 2, .worker_args = {"--allow-exec"}});
  wait_for_workers(cluster, 2);
  const std::string broker = cluster.client_endpoint();
  std::vector<std::string> names;
  std::vector<std::string> expected_out;
  for (char c = 'a'; c <= 'l'; ++c) {
    names.push_back(std::string(1, c));
    expected_out.push_back("out " + std::string(1, c));
  }
  const TempFile input(lines(names));
  // {} is the line; the worker's stdout and stderr come back in input order.
  const Run ran = run({t::cli_binary(), "exec", "--broker", broker, "-a", input.path(), "--", "sh", "-c",
                       "echo out {}; echo err {} >&2"});
  CHECK(ran.exit_status == 0);
  CHECK(ran.out == lines(expected_out));
  CHECK(ran.err.find("err a\nerr b\nerr c\n") != std::string::npos);

  // Without {} the line is the last argument; the command's own options stay its own.
  const Run appended = run({t::cli_binary(), "exec", "--broker", broker, "-a", input.path(), "echo", "-n", "--x"});
  CHECK(appended.exit_status == 0);
  CHECK(appended.out == "--x a--x b--x c--x d--x e--x f--x g--x h--x i--x j--x k--x l");

  // A failing command stops the run (what came before it is printed) ...
  const Run stopped = run({t::cli_binary(), "exec", "--broker", broker, "-a", input.path(), "sh", "-c",
                           "echo {}; test {} != c"});
  CHECK(stopped.exit_status == 1);
  CHECK(stopped.out.starts_with("a\nb\nc\n"));
  CHECK(stopped.err.find("exited with status 1 for input line 3") != std::string::npos);

  // ... unless --keep-going, which runs every line and still fails the run.
  const Run kept_going = run({t::cli_binary(), "exec", "--keep-going", "--broker", broker, "-a", input.path(), "sh",
                              "-c", "echo {}; test {} != c"});
  CHECK(kept_going.exit_status == 1);
  CHECK(kept_going.out == lines(names));
  CHECK(kept_going.err.find("1 of 12 commands failed") != std::string::npos);

  const Run missing = run({t::cli_binary(), "exec", "--broker", broker, "-a", input.path(), "no-such-command-here"});
  CHECK(missing.exit_status == 1);
  CHECK(missing.err.find("no-such-command-here: No such file or directory") != std::string::npos);
}

TEST_CASE("Cli.Exec.OnlyOnWorkersStartedWithAllowExec" * doctest::timeout(60)) {
  t::Cluster cluster({.workers = 1});
  wait_for_workers(cluster, 1);
  const TempFile input(lines({"a"}));
  const Run refused = run({t::cli_binary(), "exec", "--broker", cluster.client_endpoint(), "-a", input.path(), "touch",
                           "/tmp/poolmap-exec-must-not-run"});
  CHECK(refused.exit_status == 1);
  CHECK(refused.err.find("start poolmap-worker with --allow-exec") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists("/tmp/poolmap-exec-must-not-run"));

  // A client that sends the task anyway is refused by the broker: no worker has it.
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  CHECK_THROWS_AS((void)pool.apply(poolmap::exec_task.with(std::vector<std::string>{"touch"}),
                                   std::string("/tmp/poolmap-exec-must-not-run")),
                  poolmap::Error);
  CHECK_FALSE(std::filesystem::exists("/tmp/poolmap-exec-must-not-run"));
}

TEST_CASE("Cli.Exec.DeadlineEndsTheCommandAndWhatItStarted" * doctest::timeout(60)) {
  // A command past the item's deadline ends with its worker process: the shell and the child it
  // started, not only the worker process (they used to run on as orphans).
  t::Cluster cluster({.workers = 1, .worker_args = {"--allow-exec"}});
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(1, 20s));
  const auto hb = t::heartbeat();
  const t::TempDir dir;
  const std::string pid_file = dir / "pids";
  const poolmap::SubmitOptions deadline{.task_deadline = 10 * hb};
  auto result = pool.submit(deadline, poolmap::exec_task.with(kCommandWithAChild), pid_file);
  std::optional<std::pair<pid_t, pid_t>> pids;
  REQUIRE(t::eventually([&] { return (pids = read_pids(pid_file)).has_value(); }, 50 * hb));
  const KillStrays strays{{pids->first, pids->second}};
  try {
    (void)result.get(100 * hb);
    FAIL("a command that runs for 1000 s finished within its deadline");
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kDeadlineExceeded);
    CHECK(std::string(e.what()).find("ran longer than its deadline of " + std::to_string((10 * hb).count()) + " ms") !=
          std::string::npos);
  }
  CHECK(t::eventually([&] { return !t::process_running(pids->first); }, 50 * hb));   // the shell
  CHECK(t::eventually([&] { return !t::process_running(pids->second); }, 50 * hb));  // its child
  // The worker process that ran it was replaced and serves again.
  REQUIRE(pool.wait_for_workers(1, 20s));
  CHECK(pool.apply(poolmap::exec_task.with(std::vector<std::string>{"echo"}), std::string("again")) ==
        poolmap::ExecResult{0, "again\n", ""});
}

TEST_CASE("Cli.Exec.KilledWorkerProcessTakesTheCommandAndWhatItStartedAlong" * doctest::timeout(60)) {
  // kill -9 of the worker process that runs a command (by a user, or its supervisor after the
  // stop grace): the shell and its child end too; the item runs again on the fresh process.
  t::Cluster cluster({.workers = 1, .worker_args = {"--allow-exec"}});
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(1, 20s));
  const auto hb = t::heartbeat();
  const t::TempDir dir;
  const std::string pid_file = dir / "pids";
  auto result = pool.submit(poolmap::exec_task.with(kCommandWithAChild), pid_file);
  std::optional<std::pair<pid_t, pid_t>> pids;
  REQUIRE(t::eventually([&] { return (pids = read_pids(pid_file)).has_value(); }, 50 * hb));
  const KillStrays strays{{pids->first, pids->second}};
  const pid_t worker = parent_of(pids->first);
  const auto workers = cluster.worker_pids();
  REQUIRE(std::find(workers.begin(), workers.end(), worker) != workers.end());
  REQUIRE(::kill(worker, SIGKILL) == 0);
  CHECK(t::eventually([&] { return !t::process_running(pids->first); }, 50 * hb));   // the shell
  CHECK(t::eventually([&] { return !t::process_running(pids->second); }, 50 * hb));  // its child
  // Run again on the fresh worker process, the command finds its file and exits at once.
  CHECK(result.get(100 * hb) == poolmap::ExecResult{0, "", ""});
}

TEST_CASE("Cli.Exec.HungCommandEndsWithItsWorkerProcessWhenTheSupervisorIsGone" * doctest::timeout(90)) {
  // kill -9 of the supervisor: its worker process is asked to stop (PR_SET_PDEATHSIG), waits for
  // its command up to its stop timeout (10 s), then ends, and takes the command and its child along
  // (no supervisor is left to do it).
  t::Cluster cluster({.workers = 1, .worker_args = {"--allow-exec"}});
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(1, 20s));
  const auto hb = t::heartbeat();
  const t::TempDir dir;
  const std::string pid_file = dir / "pids";
  auto result = pool.submit(poolmap::exec_task.with(kCommandWithAChild), pid_file);
  std::optional<std::pair<pid_t, pid_t>> pids;
  REQUIRE(t::eventually([&] { return (pids = read_pids(pid_file)).has_value(); }, 50 * hb));
  const pid_t worker = parent_of(pids->first);
  const KillStrays strays{{pids->first, pids->second, worker}};
  const auto workers = cluster.worker_pids();
  REQUIRE(std::find(workers.begin(), workers.end(), worker) != workers.end());
  REQUIRE(::kill(cluster.workers().pid(), SIGKILL) == 0);
  REQUIRE(cluster.workers().wait(10s).has_value());
  CHECK(t::eventually([&] { return !t::process_running(worker); }, 10s + 50 * hb));
  CHECK(t::eventually([&] { return !t::process_running(pids->first); }, 50 * hb));   // the shell
  CHECK(t::eventually([&] { return !t::process_running(pids->second); }, 50 * hb));  // its child
  pool.terminate();  // no worker is left to run it again
  CHECK_THROWS_AS((void)result.get(), poolmap::Error);
}
