// The per-user secret of a broker without CURVE, without sockets: where it is looked for, what a
// file must hold and who may read it, its first creation (also by many processes at once), and the
// sentence a peer whose secret is refused logs.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "poolmap/error.hpp"
#include "secret.hpp"
#include "security.hpp"
#include "wire.hpp"

namespace fs = std::filesystem;
using poolmap::detail::locate_secret;
using poolmap::detail::permission_problem;
using poolmap::detail::read_or_create_secret;
using poolmap::detail::SecretEnvironment;
using poolmap::detail::SecretLocation;
using poolmap::detail::SecretPath;

namespace {

// A fresh directory (mode 0700) under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "poolmap-secret-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() { fs::remove_all(path); }
};

mode_t mode_of(const fs::path& path) {
  struct stat info {};
  REQUIRE(::stat(path.c_str(), &info) == 0);
  return info.st_mode & 07777;
}

std::string text_of(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

// The message of the poolmap::Error that `call` throws, or "" when it throws none.
template <class Call>
std::string error_of(Call call) {
  try {
    call();
  } catch (const poolmap::Error& e) {
    CHECK(e.code() == poolmap::ErrorCode::kInvalidArgument);
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("Secret.Locate.GivenFileThenVariableThenXdgConfigHomeThenHome" * doctest::timeout(10)) {
  const SecretEnvironment all{"/from/variable", "/xdg", "/home/alice", ""};
  const auto given = locate_secret("/given/secret", all);
  REQUIRE(given.has_value());
  CHECK(given->file == "/given/secret");
  CHECK_FALSE(given->default_place);
  CHECK(locate_secret({}, all)->file == "/from/variable");
  CHECK_FALSE(locate_secret({}, all)->default_place);
  const auto xdg = locate_secret({}, {"", "/xdg", "/home/alice", ""});
  CHECK(xdg->file == "/xdg/poolmap/secret");
  CHECK(xdg->default_place);
  const auto home = locate_secret({}, {"", "", "/home/alice", ""});
  CHECK(home->file == "/home/alice/.config/poolmap/secret");
  CHECK(home->default_place);
  // A relative XDG_CONFIG_HOME is ignored, as the XDG specification says.
  CHECK(locate_secret({}, {"", "relative", "/home/alice", ""})->file == "/home/alice/.config/poolmap/secret");
}

TEST_CASE("Secret.Locate.NoneTurnsTheSecretOff" * doctest::timeout(10)) {
  CHECK_FALSE(locate_secret("none", {"", "", "/home/alice", ""}).has_value());
  CHECK_FALSE(locate_secret({}, {"none", "", "/home/alice", ""}).has_value());
  // A file given beats the variable's "none".
  CHECK(locate_secret("/given", {"none", "", "", ""})->file == "/given");
}

TEST_CASE("Secret.Locate.WithoutAHomeTheErrorNamesSecretFile" * doctest::timeout(10)) {
  for (const SecretEnvironment& environment :
       {SecretEnvironment{"", "", "", ""}, SecretEnvironment{"", "", "relative/home", ""},
        SecretEnvironment{"", "x", "", ""}, SecretEnvironment{"", "", "", "/"}}) {
    const std::string error = error_of([&] { (void)locate_secret({}, environment); });
    CHECK(contains(error, "neither HOME nor XDG_CONFIG_HOME"));
    CHECK(contains(error, "--secret-file PATH"));
    CHECK(contains(error, "POOLMAP_SECRET_FILE"));
  }
  // Without HOME, the home directory of the password database, as ssh finds it; HOME wins over it.
  const auto from_passwd = locate_secret({}, {"", "", "", "/home/bob"});
  REQUIRE(from_passwd.has_value());
  CHECK(from_passwd->file == "/home/bob/.config/poolmap/secret");
  CHECK(from_passwd->default_place);
  CHECK(locate_secret({}, {"", "", "/home/alice", "/home/bob"})->file == "/home/alice/.config/poolmap/secret");
  // A file given needs no HOME.
  CHECK(locate_secret("/run/poolmap/secret", {"", "", "", ""})->file == "/run/poolmap/secret");
}

TEST_CASE("Secret.Permissions.TheFileAndItsDirectoryAreClosedToOthers" * doctest::timeout(10)) {
  const fs::path file = "/home/alice/.config/poolmap/secret";
  CHECK_FALSE(permission_problem(SecretPath::kFile, file, S_IFREG | 0600, 1000, 1000).has_value());
  CHECK_FALSE(permission_problem(SecretPath::kFile, file, S_IFREG | 0400, 1000, 1000).has_value());
  for (const mode_t open : {0640, 0604, 0660, 0606, 0644, 0666, 0610}) {
    const auto problem = permission_problem(SecretPath::kFile, file, S_IFREG | open, 1000, 1000);
    REQUIRE(problem.has_value());
    CHECK(contains(*problem, "chmod 600"));
  }
  const auto foreign = permission_problem(SecretPath::kFile, file, S_IFREG | 0600, 1001, 1000);
  REQUIRE(foreign.has_value());
  CHECK(contains(*foreign, "belongs to uid 1001"));

  const fs::path directory = file.parent_path();
  CHECK_FALSE(permission_problem(SecretPath::kDefaultDirectory, directory, S_IFDIR | 0700, 1000, 1000).has_value());
  for (const mode_t open : {0750, 0705, 0755, 0770, 0777, 0710}) {
    const auto problem = permission_problem(SecretPath::kDefaultDirectory, directory, S_IFDIR | open, 1000, 1000);
    REQUIRE(problem.has_value());
    CHECK(contains(*problem, "chmod 700"));
  }
  CHECK(permission_problem(SecretPath::kDefaultDirectory, directory, S_IFDIR | 0700, 0, 1000).has_value());

  // The directory of a file given may be read by others, not written (unless sticky, as /tmp).
  CHECK_FALSE(permission_problem(SecretPath::kGivenDirectory, "/etc/poolmap", S_IFDIR | 0755, 0, 1000).has_value());
  CHECK_FALSE(permission_problem(SecretPath::kGivenDirectory, "/tmp", S_IFDIR | 01777, 0, 1000).has_value());
  CHECK(permission_problem(SecretPath::kGivenDirectory, "/shared", S_IFDIR | 0777, 0, 1000).has_value());
  CHECK(permission_problem(SecretPath::kGivenDirectory, "/shared", S_IFDIR | 0775, 0, 1000).has_value());
}

TEST_CASE("Secret.Parse.OneLineOfPrintableCharactersWithComments" * doctest::timeout(10)) {
  const std::string secret(64, 'a');
  CHECK(poolmap::detail::parse_secret("# comment\n\n  " + secret + " \r\n# more\n", "f") == secret);
  CHECK(poolmap::detail::parse_secret(std::string(255, '~'), "f") == std::string(255, '~'));
  for (const std::string& bad : {std::string(), std::string("# only a comment\n"), std::string(31, 'a'),
                                std::string(256, 'a'), secret + "\n" + secret, std::string(40, 'a') + " b" + secret,
                                std::string(40, 'a') + "\x01"}) {
    CHECK(contains(error_of([&] { (void)poolmap::detail::parse_secret(bad, "/x/secret"); }), "'/x/secret'"));
  }
}

TEST_CASE("Secret.File.MadeOnFirstUseInAPrivateDirectoryAndReadAfter" * doctest::timeout(10)) {
  TempDir home;
  const auto where = locate_secret({}, {"", "", home.path.string(), ""});
  REQUIRE(where.has_value());
  const std::string made = read_or_create_secret(*where);
  CHECK(made.size() == 64);
  CHECK(made.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(mode_of(home.path / ".config") == 0700);
  CHECK(mode_of(home.path / ".config" / "poolmap") == 0700);
  CHECK(mode_of(where->file) == 0600);
  CHECK(contains(text_of(where->file), made));
  // Nothing else is left in the directory (no temporary file).
  CHECK(std::distance(fs::directory_iterator(home.path / ".config" / "poolmap"), fs::directory_iterator()) == 1);
  // The next start reads the same secret; another user's (another HOME's) is another.
  CHECK(read_or_create_secret(*where) == made);
  TempDir other;
  CHECK(read_or_create_secret({other.path / "secret", false}) != made);
  CHECK(poolmap::detail::generate_secret() != poolmap::detail::generate_secret());
}

TEST_CASE("Secret.File.OpenToOthersIsRefusedWithWhatToDo" * doctest::timeout(10)) {
  TempDir home;
  const SecretLocation where{home.path / ".config" / "poolmap" / "secret", true};
  (void)read_or_create_secret(where);

  fs::permissions(where.file, fs::perms(0644));
  std::string error = error_of([&] { (void)read_or_create_secret(where); });
  CHECK(contains(error, where.file.string()));
  CHECK(contains(error, "chmod 600"));
  fs::permissions(where.file, fs::perms(0600));

  fs::permissions(where.file.parent_path(), fs::perms(0755));
  error = error_of([&] { (void)read_or_create_secret(where); });
  CHECK(contains(error, "chmod 700"));
  fs::permissions(where.file.parent_path(), fs::perms(0700));

  // A given file in a directory that others may write to: they could replace it.
  const fs::path open_directory = home.path / "open";
  fs::create_directory(open_directory);
  fs::permissions(open_directory, fs::perms(0777));
  error = error_of([&] { (void)read_or_create_secret({open_directory / "secret", false}); });
  CHECK(contains(error, "may be written by others"));
  CHECK_FALSE(fs::exists(open_directory / "secret"));

  // A file that holds no secret is not taken, and not replaced.
  const fs::path broken = home.path / "broken";
  std::ofstream(broken) << "short\n";
  fs::permissions(broken, fs::perms(0600));
  CHECK(contains(error_of([&] { (void)read_or_create_secret({broken, false}); }), "does not hold a secret"));
  CHECK(text_of(broken) == "short\n");
  CHECK(error_of([&] { (void)read_or_create_secret(where); }).empty());  // fixed: taken again
}

TEST_CASE("Secret.File.ManyProcessesStartingAtOnceAllGetTheSameSecret" * doctest::timeout(30)) {
  // Daemons and tests of one user start together on a fresh HOME: whoever is first makes the file,
  // every other one reads it whole. Real processes (fork), released at once by a pipe.
  constexpr int kProcesses = 16;
  for (int round = 0; round < 5; ++round) {
    TempDir home;
    const SecretLocation where{home.path / ".config" / "poolmap" / "secret", true};
    int go[2];
    REQUIRE(::pipe(go) == 0);
    std::vector<std::pair<pid_t, int>> children;
    for (int i = 0; i < kProcesses; ++i) {
      int out[2];
      REQUIRE(::pipe(out) == 0);
      const pid_t pid = ::fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        ::close(go[1]);
        ::close(out[0]);
        char byte = 0;
        (void)::read(go[0], &byte, 1);  // returns when the parent closes its end
        std::string line;
        try {
          line = read_or_create_secret(where);
        } catch (const std::exception& e) {
          line = std::string("error: ") + e.what();
        }
        line += '\n';
        (void)::write(out[1], line.data(), line.size());
        ::_exit(0);
      }
      ::close(out[1]);
      children.emplace_back(pid, out[0]);
    }
    ::close(go[0]);
    ::close(go[1]);  // go
    std::set<std::string> secrets;
    for (const auto& [pid, fd] : children) {
      std::string line;
      char buffer[512];
      for (ssize_t n; (n = ::read(fd, buffer, sizeof(buffer))) > 0;) line.append(buffer, static_cast<std::size_t>(n));
      ::close(fd);
      int status = 0;
      ::waitpid(pid, &status, 0);
      CHECK(line.size() == 65);  // 64 hex digits and a newline, never an error or half a file
      secrets.insert(line);
    }
    CHECK(secrets.size() == 1);
    CHECK(contains(text_of(where.file), secrets.begin()->substr(0, 64)));
    CHECK(std::distance(fs::directory_iterator(where.file.parent_path()), fs::directory_iterator()) == 1);
  }
}

TEST_CASE("Secret.Zap.TheSecretAdmitsPlainOnBothSocketsOnly" * doctest::timeout(10)) {
  poolmap::detail::KeyRing keys;
  const std::string secret(64, 'c');
  keys.client_password = secret;
  keys.worker_password = secret;
  auto plain = [&](std::string_view domain, const std::string& password) {
    return poolmap::detail::decide_zap(
               {"1.0", "9", std::string(domain), "127.0.0.1", "", "PLAIN", "poolmap-user", password}, keys)
        .status_code;
  };
  for (const auto domain : {poolmap::detail::kClientDomain, poolmap::detail::kWorkerDomain}) {
    CHECK(plain(domain, secret) == "200");
    CHECK(plain(domain, std::string(63, 'c') + "d") == "400");
    CHECK(plain(domain, std::string(63, 'c')) == "400");
    CHECK(plain(domain, "") == "400");
    CHECK(poolmap::detail::decide_zap({"1.0", "9", std::string(domain), "127.0.0.1", "", "NULL"}, keys).status_code ==
          "400");
  }
  CHECK(plain("other-domain", secret) == "400");
}

TEST_CASE("Secret.Handshake.ARefusedSecretSaysWhatToDo" * doctest::timeout(10)) {
  using Watch = poolmap::wire::HandshakeWatch;
  const std::string refused = Watch::describe("tcp://127.0.0.1:5556", Watch::Credentials::kSecret, true);
  CHECK(contains(refused, "tcp://127.0.0.1:5556"));
  CHECK(contains(refused, "refused this user's poolmap secret"));
  CHECK(contains(refused, "as the broker's user"));
  CHECK(contains(refused, "--secret-file"));
  CHECK(contains(refused, "POOLMAP_SECRET_FILE"));
  // A peer told to give no secret, at a broker that wants one, learns that too.
  const std::string without = Watch::describe("tcp://127.0.0.1:5556", Watch::Credentials::kNone, false);
  CHECK(contains(without, "this user's poolmap secret"));
  CHECK(contains(without, "--secret-file none"));
  // And one that gives it to a broker that takes none.
  CHECK(contains(Watch::describe("tcp://h:1", Watch::Credentials::kSecret, false), "takes no secret"));
  CHECK(contains(Watch::describe("tcp://h:1", Watch::Credentials::kCurve, true), "CURVE key"));
}
