#include "poolmap/curve.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include <zmq.h>

#include "poolmap/error.hpp"

namespace poolmap {

namespace {

constexpr std::size_t kZ85KeyLength = 40;

[[noreturn]] void fail(const std::string& message) { throw Error(ErrorCode::kInvalidArgument, message); }

// The one key line of a key file: '#' lines and blank lines are skipped, surrounding blanks trimmed.
std::string key_line(const std::filesystem::path& file, const char* what) {
  std::ifstream in(file);
  if (!in) fail(std::string("cannot read ") + what + " file '" + file.string() + "': " + std::strerror(errno));
  std::string line;
  std::string key;
  while (std::getline(in, line)) {
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    const auto last = line.find_last_not_of(" \t\r");
    if (!key.empty()) fail(std::string(what) + " file '" + file.string() + "' holds more than one key line");
    key = line.substr(first, last - first + 1);
  }
  if (curve_key_bytes(key).empty()) {
    fail(std::string(what) + " file '" + file.string() + "' does not hold a CURVE key (one line of 40 Z85 " +
         "characters, as `poolmap keygen` writes)");
  }
  return key;
}

void write_file(const std::filesystem::path& file, const std::string& text, mode_t mode) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    const int error = errno;
    if (error == EEXIST) fail("'" + file.string() + "' exists already; poolmap keygen does not replace keys");
    fail("cannot create '" + file.string() + "': " + std::strerror(error));
  }
  std::size_t written = 0;
  while (written < text.size()) {
    const auto n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = errno;
      ::close(fd);
      fail("cannot write '" + file.string() + "': " + std::strerror(error));
    }
    written += static_cast<std::size_t>(n);
  }
  ::fchmod(fd, mode);  // the umask may have taken bits away from a public file; never adds any
  if (::close(fd) != 0) fail("cannot write '" + file.string() + "': " + std::strerror(errno));
}

}  // namespace

std::string curve_key_bytes(const std::string& z85) {
  if (z85.size() != kZ85KeyLength) return {};
  std::array<std::uint8_t, 32> bytes{};
  if (zmq_z85_decode(bytes.data(), z85.c_str()) == nullptr) return {};
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

CurveKeyPair generate_curve_keypair() {
  std::array<char, kZ85KeyLength + 1> public_key{};
  std::array<char, kZ85KeyLength + 1> secret_key{};
  if (zmq_curve_keypair(public_key.data(), secret_key.data()) != 0) {
    throw Error(ErrorCode::kInternal, std::string("cannot generate a CURVE key pair: ") + zmq_strerror(zmq_errno()) +
                                          " (is libzmq built with CURVE?)");
  }
  return {public_key.data(), secret_key.data()};
}

void write_curve_keypair(const std::filesystem::path& base, const CurveKeyPair& keys) {
  const std::filesystem::path secret_file = base.string() + ".key";
  const std::filesystem::path public_file = base.string() + ".pub";
  if (std::filesystem::exists(secret_file) || std::filesystem::exists(public_file)) {
    fail("'" + secret_file.string() + "' or '" + public_file.string() +
         "' exists already; poolmap keygen does not replace keys");
  }
  write_file(secret_file,
             "# poolmap CURVE secret key: keep it on this host only (mode 0600)\n" + keys.secret_key + "\n", 0600);
  write_file(public_file, "# poolmap CURVE public key\n" + keys.public_key + "\n", 0644);
}

CurveKeyPair read_curve_secret_file(const std::filesystem::path& file) {
  struct stat info {};
  if (::stat(file.c_str(), &info) != 0) {
    fail("cannot read CURVE secret key file '" + file.string() + "': " + std::strerror(errno));
  }
  if ((info.st_mode & 077) != 0) {
    std::ostringstream mode;
    mode << std::oct << (info.st_mode & 0777);
    fail("CURVE secret key file '" + file.string() + "' may be read by others (mode " + mode.str() +
         "); run chmod 600 on it");
  }
  CurveKeyPair keys;
  keys.secret_key = key_line(file, "CURVE secret key");
  std::array<char, kZ85KeyLength + 1> public_key{};
  if (zmq_curve_public(public_key.data(), keys.secret_key.c_str()) != 0) {
    fail("CURVE secret key file '" + file.string() + "': " + zmq_strerror(zmq_errno()));
  }
  keys.public_key = public_key.data();
  return keys;
}

std::string read_curve_public_file(const std::filesystem::path& file) { return key_line(file, "CURVE public key"); }

std::map<std::string, std::string> read_curve_public_dir(const std::filesystem::path& directory) {
  std::error_code error;
  std::filesystem::directory_iterator entries(directory, error);
  if (error) fail("cannot read the key directory '" + directory.string() + "': " + error.message());
  std::map<std::string, std::string> keys;
  for (const auto& entry : entries) {
    if (entry.path().extension() != ".pub" || !entry.is_regular_file()) continue;
    keys[read_curve_public_file(entry.path())] = entry.path().stem().string();
  }
  return keys;
}

}  // namespace poolmap
