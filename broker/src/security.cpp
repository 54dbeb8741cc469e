#include "security.hpp"

#include <arpa/inet.h>

#include <array>
#include <cstdint>

#include <zmq.h>

namespace poolmap::detail {

namespace {

std::string z85(const std::string& key) {
  std::array<char, 41> text{};
  if (key.size() != 32 || zmq_z85_encode(text.data(), reinterpret_cast<const std::uint8_t*>(key.data()), key.size()) == nullptr) {
    return {};
  }
  return text.data();
}

}  // namespace

ZapReply decide_zap(const std::vector<std::string>& request, const KeyRing& keys) {
  ZapReply reply;
  if (request.size() < 2) {
    reply.status_code = "500";
    reply.status_text = "malformed ZAP request";
    return reply;
  }
  reply.request_id = request[1];
  if (request.size() < 6 || request[0] != "1.0") {
    reply.status_code = "500";
    reply.status_text = "malformed ZAP request";
    return reply;
  }
  const std::string& domain = request[2];
  const std::string& mechanism = request[5];
  reply.status_code = "400";
  const std::map<std::string, std::string>* allowed = nullptr;
  if (domain == kClientDomain) {
    allowed = &keys.clients;
  } else if (domain == kWorkerDomain) {
    allowed = &keys.workers;
  } else if (domain == kPeerDomain) {
    allowed = &keys.peers;
  } else {
    reply.status_text = "unknown domain";
    return reply;
  }
  const std::string& password = domain == kWorkerDomain ? keys.worker_password : keys.client_password;
  if (!password.empty()) {
    // PLAIN credentials: user name, password. Compared in time that does not depend on where they differ.
    if (mechanism != "PLAIN" || request.size() != 8) {
      reply.status_text = "password required";
      return reply;
    }
    const std::string& given = request[7];
    unsigned char difference = given.size() == password.size() ? 0 : 1;
    for (std::size_t i = 0; i < given.size() && i < password.size(); ++i) {
      difference |= static_cast<unsigned char>(given[i] ^ password[i]);
    }
    if (difference != 0) {
      reply.status_text = "wrong password";
      return reply;
    }
    reply.status_code = "200";
    reply.status_text = "OK";
    return reply;
  }
  if (mechanism != "CURVE" || request.size() != 7) {
    reply.status_text = "CURVE required";
    return reply;
  }
  const auto found = allowed->find(z85(request[6]));
  if (found == allowed->end()) {
    reply.status_text = "key not allowed";
    return reply;
  }
  reply.status_code = "200";
  reply.status_text = "OK";
  reply.user_id = found->second;
  return reply;
}

bool is_loopback_endpoint(std::string_view endpoint) {
  if (endpoint.starts_with("inproc://") || endpoint.starts_with("ipc://")) return true;
  constexpr std::string_view kTcp = "tcp://";
  if (!endpoint.starts_with(kTcp)) return false;
  std::string_view address = endpoint.substr(kTcp.size());
  // "tcp://SOURCE;ADDRESS" names a source address for connect(); binds do not use it.
  if (address.find(';') != std::string_view::npos) return false;
  const auto colon = address.rfind(':');
  if (colon == std::string_view::npos) return false;
  std::string host(address.substr(0, colon));
  if (host == "localhost") return true;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
    in6_addr v6{};
    return ::inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
  }
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) != 1) return false;
  return (ntohl(v4.s_addr) >> 24) == 127;
}

}  // namespace poolmap::detail
