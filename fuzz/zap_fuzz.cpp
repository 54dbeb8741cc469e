// Fuzz target: the broker's ZAP handler (broker/src/security.cpp decide_zap), which answers every
// handshake on a CURVE broker, and its loopback rule (is_loopback_endpoint).
//
// Input layout (seeds from make_seeds.cpp):
//   byte 0        number of frames of the ZAP request (0..15: the low 4 bits)
//   per frame     one length byte, then that many bytes (fewer if the input ends)
//   the rest      an endpoint string for is_loopback_endpoint
//
// Properties checked, beyond "no crash, no leak, no undefined behaviour":
//   - a request is accepted (200) only with the CURVE mechanism, exactly 7 frames, a known domain
//     and a key from that domain's list, and the User-Id is that key's name;
//   - with a worker password (an embedded Pool's broker), the worker socket accepts only PLAIN
//     with exactly 8 frames and that password, with an empty User-Id; the client socket's rule
//     does not change;
//   - every reply echoes the request id when there is one, and its status is 200, 400 or 500;
//   - an endpoint is loopback only if it starts with inproc://, ipc:// or tcp://.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "poolmap/curve.hpp"
#include "security.hpp"

using poolmap::fuzz::require;
namespace detail = poolmap::detail;

namespace {

// Two fixed keys: 32 zero bytes, and the example public key of the ZeroMQ CURVE documentation.
const std::string kClientKey = "0000000000000000000000000000000000000000";
const std::string kWorkerKey = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";

const detail::KeyRing& keys() {
  static const detail::KeyRing ring{{{kClientKey, "alice"}}, {{kWorkerKey, "node1"}}, {}, {}, {}};
  return ring;
}
const std::string kPassword = "0123456789abcdef";
const detail::KeyRing& keys_with_password() {
  static const detail::KeyRing ring{{{kClientKey, "alice"}}, {}, kPassword, {}, {}};
  return ring;
}
// A daemon broker without CURVE: the per-user secret on both sockets.
const detail::KeyRing& keys_with_secret() {
  static const detail::KeyRing ring{{}, {}, kPassword, kPassword, {}};
  return ring;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  poolmap::fuzz::FuzzInput input(data, size);
  const std::size_t frames = input.take_u8() & 0x0f;
  std::vector<std::string> request;
  for (std::size_t i = 0; i < frames; ++i) {
    const auto bytes = input.take(input.take_u8());
    request.emplace_back(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  const detail::ZapReply reply = detail::decide_zap(request, keys());
  require(reply.status_code == "200" || reply.status_code == "400" || reply.status_code == "500",
          "a ZAP status is 200, 400 or 500");
  if (request.size() >= 2) require(reply.request_id == request[1], "the reply echoes the request id");
  if (reply.status_code == "200") {
    require(request.size() == 7 && request[0] == "1.0" && request[5] == "CURVE", "only CURVE 1.0 is accepted");
    const bool client = request[2] == detail::kClientDomain &&
                        request[6] == poolmap::curve_key_bytes(kClientKey) && reply.user_id == "alice";
    const bool worker = request[2] == detail::kWorkerDomain &&
                        request[6] == poolmap::curve_key_bytes(kWorkerKey) && reply.user_id == "node1";
    require(client || worker, "a key is accepted only on its own socket, under its own name");
  } else {
    require(reply.user_id.empty(), "a refusal names nobody");
  }

  const detail::ZapReply with_password = detail::decide_zap(request, keys_with_password());
  if (with_password.status_code == "200") {
    const bool client = request.size() == 7 && request[0] == "1.0" && request[5] == "CURVE" &&
                        request[2] == detail::kClientDomain && request[6] == poolmap::curve_key_bytes(kClientKey) &&
                        with_password.user_id == "alice";
    const bool worker = request.size() == 8 && request[0] == "1.0" && request[5] == "PLAIN" &&
                        request[2] == detail::kWorkerDomain && request[7] == kPassword &&
                        with_password.user_id.empty();
    require(client || worker, "with a worker password, a worker gets in only with PLAIN and that password");
  } else {
    require(with_password.user_id.empty(), "a refusal names nobody");
  }

  const detail::ZapReply with_secret = detail::decide_zap(request, keys_with_secret());
  if (with_secret.status_code == "200") {
    require(request.size() == 8 && request[0] == "1.0" && request[5] == "PLAIN" && request[7] == kPassword &&
                (request[2] == detail::kClientDomain || request[2] == detail::kWorkerDomain) &&
                with_secret.user_id.empty(),
            "with the per-user secret, a peer gets in only with PLAIN and that secret, on either socket");
  } else {
    require(with_secret.user_id.empty(), "a refusal names nobody");
  }

  const auto rest = input.rest();
  const std::string endpoint(reinterpret_cast<const char*>(rest.data()), rest.size());
  if (detail::is_loopback_endpoint(endpoint)) {
    require(endpoint.starts_with("inproc://") || endpoint.starts_with("ipc://") || endpoint.starts_with("tcp://"),
            "only inproc, ipc and tcp endpoints can be loopback");
  }
  return 0;
}
