// Internal (not installed): the per-user secret that guards a broker without CURVE.
//
// A broker started without CURVE binds loopback only, but every local user can reach loopback. So
// it also asks each client and worker for a secret only its own user can read: a file made on first
// use (by whichever of the broker, a worker or a client starts first), in a directory only that user
// may read. Peers of the same user find it by themselves; another user cannot read it and is refused
// at the handshake (ZeroMQ PLAIN, checked by the broker's ZAP handler). See docs/SECURITY.md.
//
// Where it is, in this order (locate_secret()):
//   1. the file given (--secret-file, PoolOptions::secret_file, BrokerOptions::secret_file);
//   2. the environment variable POOLMAP_SECRET_FILE;
//   3. $XDG_CONFIG_HOME/poolmap/secret, when XDG_CONFIG_HOME is an absolute path;
//   4. $HOME/.config/poolmap/secret, when HOME is an absolute path;
//   5. HOME/.config/poolmap/secret for the home directory of the password database (getpwuid), as
//      ssh finds it, when HOME is unset (env -i, some batch systems) and that directory exists and
//      is not "/";
//   6. nowhere: an error that names --secret-file (a service without a home, e.g. systemd's
//      DynamicUser=yes, whose home is "/").
// The value "none" (1 or 2) turns the secret off: no PLAIN, any local user is let in, as before.
//
// The file: '#' comment lines and one line of kMinSecretLength..kMaxSecretLength printable ASCII
// characters (no blanks); a made one holds 32 random bytes from getrandom() as 64 hex digits. It must
// be a regular file of this user that nobody else may read or write (mode 0600), as ssh demands of its
// keys. The default directory (.../poolmap) must be this user's and closed to others (0700); the
// directory of a given file must not be writable by others (unless sticky, as /tmp).
//
// Every function that reads or writes throws poolmap::Error (kInvalidArgument) with a sentence naming
// the file, what is wrong and what to do.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace poolmap::detail {

inline constexpr const char* kSecretFileVariable = "POOLMAP_SECRET_FILE";
inline constexpr std::string_view kNoSecret = "none";
inline constexpr std::size_t kMinSecretLength = 32;
inline constexpr std::size_t kMaxSecretLength = 255;  // ZeroMQ PLAIN's limit on a password

// The environment locate_secret() looks at (empty = unset).
struct SecretEnvironment {
  std::string secret_file;      // POOLMAP_SECRET_FILE
  std::string xdg_config_home;  // XDG_CONFIG_HOME
  std::string home;             // HOME
  std::string passwd_home;      // this user's home in the password database, if it exists and is not "/"
};
// This process's environment.
SecretEnvironment secret_environment();

struct SecretLocation {
  std::filesystem::path file;
  // True for the default place (3 or 4 above): the directory is poolmap's own, made 0700 when missing,
  // and must stay closed to others. False for a file given by option or variable: its directory must
  // exist already and only be closed to writers.
  bool default_place = false;
};

// Where the secret is, from the option's value (may be empty) and the environment. nullopt: "none",
// no secret. No I/O. Throws poolmap::Error (kInvalidArgument) when there is no place for it.
std::optional<SecretLocation> locate_secret(const std::filesystem::path& given, const SecretEnvironment& environment);

// What is wrong with the permissions of the secret file or its directory, or nullopt when they are
// fine. `mode` and `owner` as stat() gives them, `user` this process's effective uid. No I/O.
enum class SecretPath { kFile, kDefaultDirectory, kGivenDirectory };
std::optional<std::string> permission_problem(SecretPath what, const std::filesystem::path& path, mode_t mode,
                                              uid_t owner, uid_t user);

// The secret in a file's text (see above). No I/O. Throws when the text holds no usable secret.
std::string parse_secret(std::string_view text, const std::filesystem::path& file);

// A new secret: 32 bytes from getrandom(), as 64 lower-case hex digits.
std::string generate_secret();

// Reads the secret at `where`, or makes it when the file is missing. Safe against any number of
// processes of the user doing the same at once: the file is written whole under a temporary name in
// the same directory, then linked into place, which fails for all but one; the others read the
// winner's. Throws when a file or directory is not this user's, is open to others, or holds no secret.
std::string read_or_create_secret(const SecretLocation& where);

// The secret a client, worker or broker without CURVE uses: locate_secret(given, this process's
// environment), then read_or_create_secret(). "" for "none".
std::string load_user_secret(const std::filesystem::path& given);

}  // namespace poolmap::detail
