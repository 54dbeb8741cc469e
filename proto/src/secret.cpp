#include "secret.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "poolmap/error.hpp"

namespace poolmap::detail {

namespace {

constexpr std::size_t kMaxSecretFileBytes = 64 * 1024;

[[noreturn]] void fail(const std::string& message) { throw Error(ErrorCode::kInvalidArgument, message); }

std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

std::string octal(mode_t mode) {
  std::ostringstream text;
  text << std::oct << (mode & 07777);
  return text.str();
}

std::string variable(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

// What to do when this user's secret cannot be had: said at the end of every error.
constexpr const char* kWhatElse =
    "; or give every program the same file with --secret-file PATH (POOLMAP_SECRET_FILE, PoolOptions::secret_file), "
    "or use CURVE keys (docs/SECURITY.md)";

void random_bytes(unsigned char* out, std::size_t size) {
  std::size_t filled = 0;
  while (filled < size) {
    const auto got = ::getrandom(out + filled, size - filled, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorCode::kInternal, std::string("cannot make a poolmap secret: getrandom failed: ") +
                                            std::strerror(errno));
    }
    filled += static_cast<std::size_t>(got);
  }
}

std::string hex(const unsigned char* bytes, std::size_t size) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string text;
  text.reserve(2 * size);
  for (std::size_t i = 0; i < size; ++i) {
    text += kHex[bytes[i] >> 4];
    text += kHex[bytes[i] & 15];
  }
  return text;
}

// stat() of a directory, checked as `what`.
void check_directory(const std::filesystem::path& directory, SecretPath what) {
  struct stat info {};
  if (::stat(directory.c_str(), &info) != 0) {
    fail("cannot use the directory " + quoted(directory) + " for the poolmap secret: " + std::strerror(errno) +
         kWhatElse);
  }
  if (!S_ISDIR(info.st_mode)) fail("the poolmap secret's directory " + quoted(directory) + " is not a directory");
  if (const auto problem = permission_problem(what, directory, info.st_mode, info.st_uid, ::geteuid())) fail(*problem);
}

// mkdir with mode 0700; one that exists already is fine (another process may have made it).
void make_private_directory(const std::filesystem::path& directory) {
  if (::mkdir(directory.c_str(), 0700) != 0 && errno != EEXIST) {
    fail("cannot make the directory " + quoted(directory) + " for the poolmap secret: " + std::strerror(errno) +
         kWhatElse);
  }
}

// The secret in an existing file, or nullopt when there is no such file.
std::optional<std::string> read_secret_file(const std::filesystem::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    fail("cannot read the poolmap secret file " + quoted(file) + ": " + std::strerror(errno) +
         " (is it another user's? a broker's secret can only be used by its own user)" + kWhatElse);
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat info {};
  if (::fstat(fd, &info) != 0) fail("cannot read the poolmap secret file " + quoted(file) + ": " + std::strerror(errno));
  if (!S_ISREG(info.st_mode)) fail("the poolmap secret file " + quoted(file) + " is not a regular file");
  if (const auto problem = permission_problem(SecretPath::kFile, file, info.st_mode, info.st_uid, ::geteuid())) {
    fail(*problem);
  }
  std::string text;
  std::array<char, 4096> buffer{};
  for (;;) {
    const auto n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot read the poolmap secret file " + quoted(file) + ": " + std::strerror(errno));
    if (n == 0) break;
    text.append(buffer.data(), static_cast<std::size_t>(n));
    if (text.size() > kMaxSecretFileBytes) fail("the poolmap secret file " + quoted(file) + " is too large to be one");
  }
  return parse_secret(text, file);
}

void write_all(int fd, const std::string& text, const std::filesystem::path& file) {
  std::size_t written = 0;
  while (written < text.size()) {
    const auto n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("cannot write the poolmap secret file " + quoted(file) + ": " + std::strerror(errno));
    written += static_cast<std::size_t>(n);
  }
}

// Puts a new secret at `file` unless one is there already. Returns the new secret, or nullopt when
// another process was first (its file is whole: it was linked in only after it was written).
std::optional<std::string> create_secret_file(const std::filesystem::path& file) {
  const std::string secret = generate_secret();
  std::array<unsigned char, 6> tag{};
  random_bytes(tag.data(), tag.size());
  const std::filesystem::path directory = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
  const std::filesystem::path temporary =
      directory / ("." + file.filename().string() + "." + std::to_string(::getpid()) + "." + hex(tag.data(), tag.size()));
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    fail("cannot make the poolmap secret file " + quoted(file) + ": " + quoted(temporary) + ": " +
         std::strerror(errno) + kWhatElse);
  }
  try {
    write_all(fd,
              "# poolmap secret of this user: its clients and workers give it to a poolmap-broker started without\n"
              "# CURVE, which refuses peers that do not (docs/SECURITY.md). Keep it private (mode 0600).\n" +
                  secret + "\n",
              temporary);
    if (::fsync(fd) != 0) fail("cannot write the poolmap secret file " + quoted(temporary) + ": " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(temporary.c_str());
    throw;
  }
  ::close(fd);
  // link() puts the whole file in place, or fails with EEXIST when another process was first.
  int error = ::link(temporary.c_str(), file.c_str()) == 0 ? 0 : errno;
  if (error != 0 && error != EEXIST) {
    // A file system without hard links: a rename that never replaces does the same.
    error = ::renameat2(AT_FDCWD, temporary.c_str(), AT_FDCWD, file.c_str(), RENAME_NOREPLACE) == 0 ? 0 : errno;
  }
  ::unlink(temporary.c_str());  // gone already after a rename
  if (error == EEXIST) return std::nullopt;
  if (error != 0) fail("cannot make the poolmap secret file " + quoted(file) + ": " + std::strerror(error) + kWhatElse);
  return secret;
}

}  // namespace

SecretEnvironment secret_environment() {
  SecretEnvironment environment{variable(kSecretFileVariable), variable("XDG_CONFIG_HOME"), variable("HOME"), {}};
  if (environment.home.empty()) {
    passwd entry {};
    passwd* found = nullptr;
    std::array<char, 4096> buffer{};
    if (::getpwuid_r(::geteuid(), &entry, buffer.data(), buffer.size(), &found) == 0 && found != nullptr &&
        found->pw_dir != nullptr) {
      const std::string home = found->pw_dir;
      struct stat info {};
      if (home.size() > 1 && ::stat(home.c_str(), &info) == 0 && S_ISDIR(info.st_mode)) environment.passwd_home = home;
    }
  }
  return environment;
}

std::optional<SecretLocation> locate_secret(const std::filesystem::path& given, const SecretEnvironment& environment) {
  const std::filesystem::path chosen = given.empty() ? std::filesystem::path(environment.secret_file) : given;
  if (chosen == kNoSecret) return std::nullopt;
  if (!chosen.empty()) return SecretLocation{chosen, false};
  // As the XDG base directory specification says: a relative path there is to be ignored.
  if (!environment.xdg_config_home.empty() && environment.xdg_config_home.front() == '/') {
    return SecretLocation{std::filesystem::path(environment.xdg_config_home) / "poolmap" / "secret", true};
  }
  if (!environment.home.empty() && environment.home.front() == '/') {
    return SecretLocation{std::filesystem::path(environment.home) / ".config" / "poolmap" / "secret", true};
  }
  if (environment.home.empty() && !environment.passwd_home.empty() && environment.passwd_home.front() == '/' &&
      environment.passwd_home != "/") {
    return SecretLocation{std::filesystem::path(environment.passwd_home) / ".config" / "poolmap" / "secret", true};
  }
  fail("no place for this user's poolmap secret: neither HOME nor XDG_CONFIG_HOME is set to an absolute path, "
       "and this user has no home directory (a service such as a systemd unit with DynamicUser=yes?). Give the "
       "broker and all its workers and clients the same file with --secret-file PATH or POOLMAP_SECRET_FILE=PATH "
       "(PoolOptions::secret_file in a program), use CURVE keys (docs/SECURITY.md), or turn the secret off with "
       "--secret-file none");
}

std::optional<std::string> permission_problem(SecretPath what, const std::filesystem::path& path, mode_t mode,
                                              uid_t owner, uid_t user) {
  switch (what) {
    case SecretPath::kFile:
      if (owner != user) {
        return "the poolmap secret file " + quoted(path) + " belongs to uid " + std::to_string(owner) +
               ", not to this user (uid " + std::to_string(user) + "); use a file of your own" + kWhatElse;
      }
      if ((mode & 077) != 0) {
        return "the poolmap secret file " + quoted(path) + " may be read or written by others (mode " + octal(mode) +
               "); run chmod 600 on it";
      }
      return std::nullopt;
    case SecretPath::kDefaultDirectory:
      if (owner != user) {
        return "the directory " + quoted(path) + " of the poolmap secret belongs to uid " + std::to_string(owner) +
               ", not to this user (uid " + std::to_string(user) + ")" + kWhatElse;
      }
      if ((mode & 077) != 0) {
        return "the directory " + quoted(path) + " of the poolmap secret is open to others (mode " + octal(mode) +
               "); run chmod 700 on it";
      }
      return std::nullopt;
    case SecretPath::kGivenDirectory:
      if ((mode & 022) != 0 && (mode & S_ISVTX) == 0) {
        return "the directory " + quoted(path) + " of the poolmap secret file may be written by others (mode " +
               octal(mode) + "), who could replace the file; keep it in a directory only you can write to";
      }
      return std::nullopt;
  }
  return std::nullopt;
}

std::string parse_secret(std::string_view text, const std::filesystem::path& file) {
  std::string secret;
  bool found = false;
  while (!text.empty()) {
    const auto end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string_view::npos || line[first] == '#') continue;
    line = line.substr(first, line.find_last_not_of(" \t\r") - first + 1);
    if (found) fail("the poolmap secret file " + quoted(file) + " holds more than one line that is not a comment");
    found = true;
    secret = line;
  }
  bool printable = true;
  for (const char c : secret) printable = printable && c > ' ' && c <= '~';
  if (!found || secret.size() < kMinSecretLength || secret.size() > kMaxSecretLength || !printable) {
    fail("the poolmap secret file " + quoted(file) + " does not hold a secret (one line of " +
         std::to_string(kMinSecretLength) + " to " + std::to_string(kMaxSecretLength) +
         " printable characters without blanks; '#' lines are comments); remove it to have a new one made");
  }
  return secret;
}

std::string generate_secret() {
  std::array<unsigned char, 32> bytes{};
  random_bytes(bytes.data(), bytes.size());
  return hex(bytes.data(), bytes.size());
}

std::string read_or_create_secret(const SecretLocation& where) {
  const std::filesystem::path& file = where.file;
  if (file.filename().empty()) fail("the poolmap secret file " + quoted(file) + " names a directory, not a file");
  const std::filesystem::path directory = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
  if (where.default_place) {
    // .../poolmap and the configuration directory above it (~/.config); never further up.
    if (directory.has_parent_path()) {
      const std::filesystem::path config = directory.parent_path();
      struct stat info {};
      if (::stat(config.c_str(), &info) != 0) make_private_directory(config);
    }
    make_private_directory(directory);
    check_directory(directory, SecretPath::kDefaultDirectory);
  } else {
    check_directory(directory, SecretPath::kGivenDirectory);
  }
  // Two rounds at most: the file is missing, another process makes it first, we read theirs.
  for (int round = 0; round < 2; ++round) {
    if (auto secret = read_secret_file(file)) return *secret;
    if (auto secret = create_secret_file(file)) return *secret;
  }
  if (auto secret = read_secret_file(file)) return *secret;
  fail("the poolmap secret file " + quoted(file) + " keeps vanishing while it is read");
}

std::string load_user_secret(const std::filesystem::path& given) {
  const auto where = locate_secret(given, secret_environment());
  return where ? read_or_create_secret(*where) : std::string();
}

}  // namespace poolmap::detail
