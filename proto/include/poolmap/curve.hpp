// CURVE keys: how poolmap peers prove who they are (ZeroMQ CURVE: Curve25519 keys, encrypted links).
//
// A key pair is two Z85 strings of 40 characters. `poolmap keygen PATH` writes PATH.key (the
// secret key, mode 0600) and PATH.pub (the public key). Each file holds '#' comment lines and one
// line with the key. The broker reads its own secret key and two directories of *.pub files, the
// keys allowed to connect as clients and as workers; clients and workers read their own secret
// key and the broker's public key. See docs/SECURITY.md.
//
// Every function throws poolmap::Error (kInvalidArgument) with a sentence naming the file and what
// is wrong with it: missing, unreadable, not a key, or a secret key others may read.
#pragma once

#include <filesystem>
#include <map>
#include <string>

namespace poolmap {

struct CurveKeyPair {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;  // Z85, 40 characters
};

// A fresh random key pair.
CurveKeyPair generate_curve_keypair();

// Writes `base`.key (the secret key, created with mode 0600) and `base`.pub. Refuses to replace
// an existing file.
void write_curve_keypair(const std::filesystem::path& base, const CurveKeyPair& keys);

// Reads a secret key file and derives its public key. Refuses a file that the group or others
// may read or write (chmod 600 it), as ssh does.
CurveKeyPair read_curve_secret_file(const std::filesystem::path& file);

// Reads a public key file (a .pub written by `poolmap keygen`).
std::string read_curve_public_file(const std::filesystem::path& file);

// The public keys of the *.pub files in a directory, each with its file name without ".pub" (the
// name the broker logs for that peer). Other files are ignored. Throws if the directory cannot be
// read or a *.pub file does not hold a key.
std::map<std::string, std::string> read_curve_public_dir(const std::filesystem::path& directory);

// The 32 raw bytes of a Z85 key, or an empty string if `z85` is not a 40-character Z85 key.
std::string curve_key_bytes(const std::string& z85);

}  // namespace poolmap
