// The per-user secret from outside: a broker started without CURVE or any security flag lets in the
// same user's workers, Pools and CLI with no flags at all (they find the secret it made), and refuses
// another user (or a peer given another secret file) at the handshake, on both sockets, while a good
// client keeps getting exact maps; the refused peer says why in its log. Without HOME the home of
// the password database serves; without any home the daemons say which flag to give.
#include <doctest/doctest.h>

#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "poolmap/poolmap.hpp"
#include "process.hpp"
#include "test_tasks.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace t = poolmap::test;

namespace {

constexpr uid_t kNobody = 65534;

// A fresh directory (mode 0700) under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "poolmap-home-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() { fs::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// This test process, and every process it starts from here on, runs with HOME set to a fresh
// directory and no XDG_CONFIG_HOME or POOLMAP_SECRET_FILE: the user's secret is made anew there,
// as on a first start. The old values come back at the end.
class FreshHome {
 public:
  FreshHome() {
    for (const char* name : kNames) {
      const char* value = std::getenv(name);
      saved_.emplace_back(name, value == nullptr ? std::nullopt : std::optional<std::string>(value));
      ::unsetenv(name);
    }
    ::setenv("HOME", home_.path.c_str(), 1);
  }
  ~FreshHome() {
    for (const auto& [name, value] : saved_) {
      if (value) {
        ::setenv(name, value->c_str(), 1);
      } else {
        ::unsetenv(name);
      }
    }
  }
  FreshHome(const FreshHome&) = delete;
  FreshHome& operator=(const FreshHome&) = delete;

  const fs::path& path() const { return home_.path; }
  fs::path secret() const { return home_.path / ".config" / "poolmap" / "secret"; }

 private:
  static constexpr const char* kNames[] = {"HOME", "XDG_CONFIG_HOME", "POOLMAP_SECRET_FILE"};
  TempDir home_;
  std::vector<std::pair<const char*, std::optional<std::string>>> saved_;
};

mode_t mode_of(const fs::path& path) {
  struct stat info {};
  REQUIRE(::stat(path.c_str(), &info) == 0);
  return info.st_mode & 07777;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::int64_t sum_of_squares(std::int64_t n) {
  std::int64_t sum = 0;
  for (std::int64_t i = 0; i < n; ++i) sum += i * i;
  return sum;
}

// Maps test.square over 0..n-1 and says whether every result is exact.
bool exact_map(poolmap::Pool& pool, std::int64_t n) {
  std::vector<std::int64_t> inputs(static_cast<std::size_t>(n));
  std::iota(inputs.begin(), inputs.end(), 0);
  const auto results = pool.map(t::square, inputs);
  bool exact = results.size() == inputs.size();
  for (std::size_t i = 0; exact && i < results.size(); ++i) exact = results[i] == inputs[i] * inputs[i];
  return exact;
}

// Someone who may reach the broker's loopback ports but lacks this user's secret: another user
// (nobody, 65534, with a home of its own: it makes its own secret there), which needs root to set
// up; or this user given another secret file.
class Stranger {
 public:
  enum class Kind { kOtherUser, kOtherSecretFile };
  explicit Stranger(Kind kind) : kind_(kind) {
    if (kind_ == Kind::kOtherUser) {
      REQUIRE(::chown(home_.path.c_str(), kNobody, kNobody) == 0);
      environment_ = {"HOME=" + home_.path.string()};
    } else {
      environment_ = {"POOLMAP_SECRET_FILE=" + (home_.path / "another-secret").string()};
    }
  }
  // Starts `argv` as the stranger.
  t::ChildProcess start(std::vector<std::string> argv) const {
    if (kind_ == Kind::kOtherUser) {
      argv.insert(argv.begin(), {"setpriv", "--reuid=" + std::to_string(kNobody), "--regid=" + std::to_string(kNobody),
                                 "--clear-groups"});
    }
    return t::ChildProcess(std::move(argv), environment_);
  }
  const char* name() const { return kind_ == Kind::kOtherUser ? "another user (nobody)" : "another secret file"; }

 private:
  Kind kind_;
  TempDir home_;
  std::vector<std::string> environment_;
};

// The good user's cluster and client keep working while `stranger` tries to register as a worker,
// to submit work and to ask for status: each attempt is refused at the handshake and says why.
void check_stranger_is_refused(const Stranger& stranger) {
  FreshHome home;
  t::Cluster cluster({.workers = 2});
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(2, 20s));
  CHECK(exact_map(pool, 1000));
  MESSAGE("stranger: " << std::string(stranger.name()));

  const std::string why = "refused this user's poolmap secret";
  t::ChildProcess worker = stranger.start({t::worker_binary(), "--broker", cluster.worker_endpoint(), "--processes",
                                           "2", "--tasks", t::test_tasks_library(), "--heartbeat-ms",
                                           std::to_string(t::heartbeat().count()), "--log-level", "debug"});
  const bool told = t::eventually([&] { return contains(worker.stderr_text(), why); }, 20s);
  INFO(worker.stderr_text());
  CHECK(told);
  CHECK(contains(worker.stderr_text(), "--secret-file"));
  CHECK(t::process_running(worker.pid()));  // it keeps trying (every 5 s), in case the broker changes

  // While it tries, the good client's maps are exact and only the good workers are registered.
  for (int round = 0; round < 3; ++round) CHECK(exact_map(pool, 2000));
  const auto good = cluster.worker_pids(0);
  const auto status = pool.status();
  CHECK(status.workers.size() == 2);
  for (const auto& registered : status.workers) {
    CHECK(std::find(good.begin(), good.end(), static_cast<pid_t>(registered.pid)) != good.end());
  }

  // As a client it can neither submit nor ask for status; each says why at once.
  t::ChildProcess client = stranger.start({t::test_client_binary(), "map", cluster.client_endpoint(), "100"});
  const auto client_status = client.wait(20s);
  REQUIRE(client_status.has_value());
  CHECK_FALSE((WIFEXITED(*client_status) && WEXITSTATUS(*client_status) == 0));
  CHECK(client.read_all(1s).find(std::to_string(sum_of_squares(100))) == std::string::npos);
  CHECK(contains(client.stderr_text(), why));

  t::ChildProcess cli = stranger.start({t::cli_binary(), "status", "--broker", cluster.client_endpoint()});
  const auto cli_status = cli.wait(20s);
  REQUIRE(cli_status.has_value());
  CHECK(WIFEXITED(*cli_status));
  CHECK(WEXITSTATUS(*cli_status) == 1);
  CHECK(contains(cli.stderr_text(), why));
  CHECK_FALSE(contains(cli.read_all(1s), "workers "));

  // The broker saw and counted the refusals; the good client is still served.
  CHECK(t::eventually([&] { return contains(cluster.broker().stderr_text(), "wrong password"); }, 10s));
  CHECK(exact_map(pool, 500));
  CHECK(pool.status().workers.size() == 2);
}

}  // namespace

TEST_CASE("Security.Secret.TheSameUserNeedsNoFlags" * doctest::timeout(60)) {
  FreshHome home;
  REQUIRE_FALSE(fs::exists(home.secret()));
  // The broker, without CURVE and without any security flag, makes the secret on its first start.
  t::Cluster cluster({.workers = 2});
  REQUIRE(fs::exists(home.secret()));
  CHECK(mode_of(home.secret()) == 0600);
  CHECK(mode_of(home.secret().parent_path()) == 0700);
  CHECK(contains(cluster.broker().stderr_text(), "must give this user's secret from " + home.secret().string()));

  // The same user's worker supervisor (started by the Cluster with no flags but ports), a
  // remote-mode Pool and `poolmap status` find it by themselves.
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  REQUIRE(pool.wait_for_workers(2, 20s));
  CHECK(exact_map(pool, 1000));

  t::ChildProcess cli({t::cli_binary(), "status", "--broker", cluster.client_endpoint()});
  const std::string table = cli.read_all(20s);
  const auto status = cli.wait(10s);
  REQUIRE(status.has_value());
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
  INFO(table);
  CHECK(contains(table, "workers    2"));
  CHECK(contains(table, "chunks     queued 0, in flight 0"));

  // A restarted broker reads the same secret: the workers and the client carry on.
  cluster.restart_broker();
  CHECK(pool.wait_for_workers(2, 20s));
  CHECK(exact_map(pool, 1000));
}

TEST_CASE("Security.Secret.AnotherUserCanNeitherRegisterNorSubmitNorAskForStatus" * doctest::timeout(120)) {
  if (::geteuid() != 0) {
    MESSAGE("not root: cannot start a process as another user; the stranger is this user with another secret file");
    check_stranger_is_refused(Stranger(Stranger::Kind::kOtherSecretFile));
    return;
  }
  check_stranger_is_refused(Stranger(Stranger::Kind::kOtherUser));
}

TEST_CASE("Security.Secret.APeerWithAnotherSecretFileIsRefusedAndToldWhy" * doctest::timeout(120)) {
  check_stranger_is_refused(Stranger(Stranger::Kind::kOtherSecretFile));
}

TEST_CASE("Security.Secret.WithoutHomeThePasswdHomeServesElseTheFlagIsNamed" * doctest::timeout(60)) {
  TempDir dir;
  // No HOME, no XDG_CONFIG_HOME (env -i, a systemd unit with DynamicUser=yes, a bare container).
  const std::vector<std::string> no_home{"env", "-u", "HOME", "-u", "XDG_CONFIG_HOME", "-u", "POOLMAP_SECRET_FILE"};
  auto command = [&](std::vector<std::string> argv, bool as_nobody = false) {
    argv.insert(argv.begin(), no_home.begin(), no_home.end());
    if (as_nobody) {
      argv.insert(argv.begin(), {"setpriv", "--reuid=" + std::to_string(kNobody), "--regid=" + std::to_string(kNobody),
                                 "--clear-groups"});
    }
    return argv;
  };
  const std::vector<std::string> loopback{"--clients", "tcp://127.0.0.1:*", "--workers", "tcp://127.0.0.1:*"};
  auto broker_command = [&](std::vector<std::string> extra, bool as_nobody = false) {
    std::vector<std::string> argv{t::broker_binary()};
    argv.insert(argv.end(), loopback.begin(), loopback.end());
    argv.insert(argv.end(), extra.begin(), extra.end());
    return command(argv, as_nobody);
  };

  // This user's home in the password database serves, as ssh finds it.
  const passwd* entry = ::getpwuid(::geteuid());
  if (entry != nullptr && entry->pw_dir != nullptr && fs::is_directory(entry->pw_dir) && fs::path(entry->pw_dir) != "/") {
    t::ChildProcess broker(broker_command({}));
    const auto ready = broker.read_line(10s);
    INFO(broker.stderr_text());
    REQUIRE(ready.has_value());
    CHECK(contains(broker.stderr_text(), (fs::path(entry->pw_dir) / ".config" / "poolmap" / "secret").string()));
  }

  // A user with no home at all (nobody's is /nonexistent) is told which flag to give.
  if (::geteuid() == 0) {
    t::ChildProcess broker(broker_command({}, true));
    const auto status = broker.wait(10s);
    REQUIRE(status.has_value());
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 1);
    CHECK(contains(broker.stderr_text(), "neither HOME nor XDG_CONFIG_HOME"));
    CHECK(contains(broker.stderr_text(), "--secret-file PATH"));

    // The worker fails before it opens a socket (no secret to give): the address is never used.
    t::ChildProcess worker(command({t::worker_binary(), "--broker", "tcp://127.0.0.1:5556", "--tasks",
                                    t::test_tasks_library()},
                                   true));
    const auto worker_status = worker.wait(10s);
    REQUIRE(worker_status.has_value());
    CHECK(WEXITSTATUS(*worker_status) == 1);
    CHECK(contains(worker.stderr_text(), "--secret-file PATH"));
  } else {
    MESSAGE("not root: cannot run a process as a user without a home directory here");
  }

  // With the file given, the broker and the CLI run without HOME.
  const std::string secret = (dir.path / "secret").string();
  t::ChildProcess given(broker_command({"--secret-file", secret}));
  const auto ready = given.read_line(10s);
  INFO(given.stderr_text());
  REQUIRE(ready.has_value());
  CHECK(contains(*ready, "poolmap-broker ready"));
  CHECK(mode_of(secret) == 0600);
  const auto at = ready->find("clients=") + 8;
  const std::string clients = ready->substr(at, ready->find(" workers=") - at);
  t::ChildProcess cli(command({t::cli_binary(), "status", "--broker", clients, "--secret-file", secret}));
  CHECK(contains(cli.read_all(20s), "workers    0"));
  const auto cli_status = cli.wait(10s);
  REQUIRE(cli_status.has_value());
  CHECK(WEXITSTATUS(*cli_status) == 0);

  // A secret file others may read is refused, as ssh refuses such a key.
  fs::permissions(secret, fs::perms(0644));
  t::ChildProcess exposed(broker_command({"--secret-file", secret}));
  const auto exposed_status = exposed.wait(10s);
  REQUIRE(exposed_status.has_value());
  CHECK(WEXITSTATUS(*exposed_status) == 1);
  CHECK(contains(exposed.stderr_text(), "chmod 600"));
}

TEST_CASE("Security.Secret.NoneTurnsItOffOnBothSidesAndAMismatchIsSaid" * doctest::timeout(60)) {
  FreshHome home;
  // The off switch, on the broker and its workers: anyone who reaches the ports is let in.
  t::Cluster cluster({.workers = 1, .broker_args = {"--secret-file", "none"}, .worker_args = {"--secret-file", "none"}});
  CHECK(contains(cluster.broker().stderr_text(), "no CURVE and no secret (--secret-file none)"));
  CHECK_FALSE(fs::exists(home.secret()));
  poolmap::Pool pool({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat(), .secret_file = "none"});
  REQUIRE(pool.wait_for_workers(1, 20s));
  CHECK(exact_map(pool, 100));

  // A client that gives a secret to this broker is told, at once, that it takes none.
  poolmap::Pool giving({.broker = cluster.client_endpoint(), .heartbeat_interval = t::heartbeat()});
  std::string message = "nothing failed";
  try {
    (void)giving.status(10s);
  } catch (const poolmap::Error& e) {
    message = e.what();
    CHECK(e.code() == poolmap::ErrorCode::kUnavailable);
  }
  CHECK(contains(message, "takes no secret"));

  // And one told to give none, at a broker that wants this user's secret, hears that.
  t::Cluster guarded({.workers = 0});
  poolmap::Pool none({.broker = guarded.client_endpoint(), .heartbeat_interval = t::heartbeat(), .secret_file = "none"});
  message = "nothing failed";
  try {
    (void)none.status(10s);
  } catch (const poolmap::Error& e) {
    message = e.what();
  }
  CHECK(contains(message, "this user's poolmap secret"));
  CHECK(contains(message, "--secret-file none"));
}
