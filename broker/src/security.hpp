// Internal: the broker's access rules, as plain functions (no sockets), so they can be unit-tested
// and fuzzed.
//
// With CURVE, every connection to the broker is authenticated through ZAP (ZeroMQ Authentication
// Protocol, RFC 27): libzmq sends a request per handshake to the broker's handler, which answers
// with decide_zap(). The client socket uses the ZAP domain kClientDomain and the worker socket
// kWorkerDomain, so a key is accepted only on the socket whose allow-list holds it: a client key
// cannot register as a worker, a worker key cannot submit work or ask for status.
//
// Without CURVE, the broker binds only endpoints is_loopback_endpoint() accepts, unless told
// --insecure, and asks each peer for a password with ZeroMQ's PLAIN mechanism, checked by the same
// handler: the per-user secret (secret.hpp) on both sockets, or an embedded Pool's own worker password.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace poolmap::detail {

inline constexpr std::string_view kClientDomain = "poolmap-clients";
inline constexpr std::string_view kWorkerDomain = "poolmap-workers";
inline constexpr std::string_view kPeerDomain = "poolmap-peer";  // the other broker of a pair (--ha)

// The public keys allowed on each socket: Z85 key -> name (the .pub file's stem, logged as the peer).
struct KeyRing {
  std::map<std::string, std::string> clients;
  std::map<std::string, std::string> workers;
  // When not empty (a broker without CURVE: the per-user secret, or BrokerOptions::worker_password):
  // the worker socket accepts only the PLAIN mechanism with this password.
  std::string worker_password;
  // Likewise for the client socket (the per-user secret), and for the peer link of a pair.
  std::string client_password;
  std::map<std::string, std::string> peers;  // CURVE: the peer broker's key (--ha-peer-key)
};

// The reply to one ZAP request: RFC 27 frames 2..5 (version "1.0" and empty metadata are added by
// the caller).
struct ZapReply {
  std::string request_id;
  std::string status_code;  // "200" accepted, "400" refused, "500" not a request we understand
  std::string status_text;
  std::string user_id;      // the key's name when accepted (empty for a password)
};

// Decides a ZAP request given as its frames (version, request id, domain, address, routing id,
// mechanism, credentials...). Accepts only the CURVE mechanism with a key in the domain's list, or,
// on a domain whose password is set, only PLAIN with that password (compared in constant time).
ZapReply decide_zap(const std::vector<std::string>& request, const KeyRing& keys);

// True for endpoints only this host can reach: inproc://, ipc://, and tcp:// on 127.0.0.0/8,
// [::1] or localhost. A wildcard (tcp://*:5555), a host name or an interface name is not loopback.
bool is_loopback_endpoint(std::string_view endpoint);

}  // namespace poolmap::detail
