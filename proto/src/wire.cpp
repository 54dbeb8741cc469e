#include "wire.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <algorithm>
#include <memory>

#include "poolmap/curve.hpp"
#include "poolmap/error.hpp"
#include "secret.hpp"

namespace poolmap {
Context::Context() : impl_(std::make_shared<Impl>()) {}
}  // namespace poolmap

namespace poolmap::wire {

std::vector<std::string> split_endpoints(const std::string& list) {
  std::vector<std::string> endpoints;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    std::string endpoint = list.substr(start, comma - start);
    const auto first = endpoint.find_first_not_of(" \t");
    const auto last = endpoint.find_last_not_of(" \t");
    endpoint = first == std::string::npos ? std::string() : endpoint.substr(first, last - first + 1);
    if (endpoint.empty()) {
      throw Error(ErrorCode::kInvalidArgument,
                  "bad broker endpoint list '" + list +
                      "': an entry is empty (give one endpoint, or a pair separated by a comma, e.g. "
                      "tcp://broker-a:5556,tcp://broker-b:5556)");
    }
    if (!endpoints.empty() && endpoint.find("://") == std::string::npos) {
      const std::string& before = endpoints.back();
      endpoint = before.substr(0, before.find("://") + 3) + endpoint;
    }
    endpoints.push_back(std::move(endpoint));
    if (comma == list.size()) return endpoints;
    start = comma + 1;
  }
}

void configure(zmq::socket_t& socket, const SocketLimits& limits, bool is_router) {
  socket.set(zmq::sockopt::sndhwm, limits.high_water_mark);
  socket.set(zmq::sockopt::rcvhwm, limits.high_water_mark);
  socket.set(zmq::sockopt::linger, static_cast<int>(limits.linger.count()));
  socket.set(zmq::sockopt::maxmsgsize, limits.max_message_bytes);
  if (is_router) socket.set(zmq::sockopt::router_mandatory, 1);
}

std::optional<CurveClientKeys> load_curve_client(const std::filesystem::path& secret_file,
                                                 const std::filesystem::path& broker_key_file) {
  if (secret_file.empty() && broker_key_file.empty()) return std::nullopt;
  if (secret_file.empty() || broker_key_file.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "CURVE needs both a secret key file (--curve-secret, POOLMAP_CURVE_SECRET) and the broker's public "
                "key file (--broker-key, POOLMAP_BROKER_KEY); only the " +
                    std::string(secret_file.empty() ? "broker key" : "secret key") + " was given");
  }
  const CurveKeyPair own = read_curve_secret_file(secret_file);
  return CurveClientKeys{own.public_key, own.secret_key, read_curve_public_file(broker_key_file)};
}

void apply_curve_client(zmq::socket_t& socket, const CurveClientKeys& keys) {
  socket.set(zmq::sockopt::curve_serverkey, keys.server_key);
  socket.set(zmq::sockopt::curve_publickey, keys.public_key);
  socket.set(zmq::sockopt::curve_secretkey, keys.secret_key);
}

void apply_password(zmq::socket_t& socket, const std::string& password) {
  socket.set(zmq::sockopt::plain_username, kPasswordUser);
  socket.set(zmq::sockopt::plain_password, password);
}

std::string load_secret(const std::filesystem::path& secret_file) { return detail::load_user_secret(secret_file); }

void apply_secret(zmq::socket_t& socket, const std::string& secret) {
  socket.set(zmq::sockopt::plain_username, kSecretUser);
  socket.set(zmq::sockopt::plain_password, secret);
}

HandshakeWatch::HandshakeWatch(zmq::context_t& context, zmq::socket_t& watched)
    : watched_(watched.handle()), monitor_(context, zmq::socket_type::pair) {
  static std::atomic<std::uint64_t> number{0};
  const std::string endpoint = "inproc://poolmap-handshake-watch-" + std::to_string(number.fetch_add(1));
  if (zmq_socket_monitor(watched.handle(), endpoint.c_str(),
                         ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                             ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_SUCCEEDED) != 0) {
    throw Error(ErrorCode::kInternal, std::string("cannot watch a socket: ") + zmq_strerror(zmq_errno()));
  }
  monitor_.set(zmq::sockopt::linger, 0);
  monitor_.set(zmq::sockopt::rcvhwm, 0);  // unbounded: the monitor's blocking send must never wait
  monitor_.connect(endpoint);
  const int mechanism = watched.get(zmq::sockopt::mechanism);
  if (mechanism == ZMQ_CURVE) {
    credentials_ = Credentials::kCurve;
  } else if (mechanism == ZMQ_PLAIN) {
    credentials_ = watched.get(zmq::sockopt::plain_username) == kSecretUser ? Credentials::kSecret : Credentials::kPassword;
  }
}

HandshakeWatch::~HandshakeWatch() {
  // Stops the events at their source first (see the class comment); only then is the reader closed.
  stop_monitor();
}

std::optional<std::string> HandshakeWatch::failure(const std::string& endpoint, bool /*curve*/) {
  auto frames = receive(monitor_);
  if (!frames || frames->size() < 2 || frames->front().size() < 2) return std::nullopt;
  std::uint16_t event = 0;
  std::memcpy(&event, frames->front().data(), sizeof(event));
  if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
    closed_handshakes_ = 0;
    stop_monitor();  // this socket got in; what follows is the protocol's business
    return std::nullopt;
  }
  if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL && ++closed_handshakes_ >= kClosedHandshakesMeanRefused) {
    event = ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL;
  }
  if (event != ZMQ_EVENT_HANDSHAKE_FAILED_AUTH && event != ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) return std::nullopt;
  stop_monitor();  // said once; the owner opens a new socket (and watch) to try again
  return describe(endpoint, credentials_, event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
}

void HandshakeWatch::stop_monitor() noexcept {
  if (watched_ == nullptr) return;
  (void)zmq_socket_monitor(watched_, nullptr, 0);
  watched_ = nullptr;
}

std::string HandshakeWatch::describe(const std::string& endpoint, Credentials credentials, bool refused) {
  static const std::string kCurveFlags =
      "set --curve-secret and --broker-key, or POOLMAP_CURVE_SECRET and POOLMAP_BROKER_KEY";
  static const std::string kEmbedded =
      "or it is an embedded Pool's own broker (only that Pool's worker copies may join it)";
  if (refused) {
    switch (credentials) {
      case Credentials::kCurve:
        return "the broker at " + endpoint +
               " refused this peer's CURVE key: its .pub file is not in the broker's key directory for this socket "
               "(--client-keys for clients and `poolmap status`, --worker-keys for workers)";
      case Credentials::kSecret:
        return "the broker at " + endpoint +
               " refused this user's poolmap secret: the broker runs as another user, or reads another secret file "
               "(or it is an embedded Pool's own broker, which only that Pool's worker copies may join). Run this "
               "program as the broker's user (same HOME), or give it the broker's secret file with --secret-file PATH "
               "or POOLMAP_SECRET_FILE=PATH (PoolOptions::secret_file in a program); see docs/SECURITY.md";
      case Credentials::kPassword:
        return "the broker at " + endpoint + " refused this worker's password: " + kEmbedded.substr(3);
      case Credentials::kNone:
        break;
    }
    return "the broker at " + endpoint + " refused this peer";
  }
  const std::string head = "the handshake with " + endpoint + " failed: ";
  switch (credentials) {
    case Credentials::kCurve:
      return head + "the broker there does not use CURVE (started without --curve-secret?), or it is not a poolmap "
                    "broker";
    case Credentials::kSecret:
      return head + "the broker there requires CURVE keys (" + kCurveFlags +
             "), or takes no secret (started with --secret-file none: give this program --secret-file none or "
             "POOLMAP_SECRET_FILE=none too), or it is not a poolmap broker, " + kEmbedded;
    case Credentials::kPassword:
      return head + "it is not the embedded Pool's broker that started this worker copy";
    case Credentials::kNone:
      break;
  }
  return head + "the broker there requires CURVE keys (" + kCurveFlags +
         ") or this user's poolmap secret (this program was told --secret-file none or POOLMAP_SECRET_FILE=none), or "
         "it is not a poolmap broker, " + kEmbedded;
}

namespace {
// The peer address of socket `fd` as bytes, or "" when it has none (closed, not connected).
std::string peer_of(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return {};
  return {reinterpret_cast<const char*>(&address), length};
}
}  // namespace

std::optional<ConnectionProbe> ConnectionProbe::of(const zmq::message_t& message) {
  const int fd = zmq_msg_get(message.handle(), ZMQ_SRCFD);
  if (fd < 0) return std::nullopt;
  ConnectionProbe probe;
  probe.fd_ = fd;
  probe.peer_ = peer_of(fd);
  if (probe.peer_.empty()) return std::nullopt;
  return probe;
}

std::optional<std::chrono::milliseconds> ConnectionProbe::since_data_received() const {
  if (peer_of(fd_) != peer_) return std::nullopt;
  tcp_info info{};
  socklen_t length = sizeof(info);
  if (::getsockopt(fd_, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) return std::nullopt;
  return std::chrono::milliseconds(info.tcpi_last_data_recv);
}

zmq::message_t to_message(Bytes&& bytes) {
  if (bytes.empty()) return zmq::message_t();
  // A small buffer is copied: one allocation (none up to 33 bytes, which ZeroMQ keeps inline)
  // instead of a holder, ZeroMQ's reference count and the buffer's own, freed later.
  constexpr std::size_t kCopiedUpTo = 1024;
  if (bytes.size() <= kCopiedUpTo) {
    zmq::message_t message(bytes.data(), bytes.size());
    Bytes().swap(bytes);  // consumed, as when handed over
    return message;
  }
  auto owned = std::make_unique<Bytes>(std::move(bytes));
  void* data = owned->data();
  const std::size_t size = owned->size();
  zmq::message_t message(
      data, size, [](void*, void* hint) { delete static_cast<Bytes*>(hint); }, owned.get());
  owned.release();  // ZeroMQ owns it now and frees it through the callback above
  return message;
}

zmq::message_t signature_message(proto::Command command) {
  const auto signature = proto::signature_frame(command);
  return zmq::message_t(signature.data(), signature.size());
}

std::vector<zmq::message_t> make_empty(proto::Command command) {
  std::vector<zmq::message_t> frames;
  frames.reserve(2);
  frames.push_back(signature_message(command));
  frames.emplace_back();
  return frames;
}

namespace {
bool send_parts(zmq::socket_t& socket, zmq::message_t* first, std::vector<zmq::message_t>& frames,
                bool dont_wait) {
  const std::size_t total = frames.size() + (first != nullptr ? 1 : 0);
  std::size_t index = 0;
  auto send_one = [&](zmq::message_t& part) -> bool {
    ++index;
    zmq::send_flags flags = index < total ? zmq::send_flags::sndmore : zmq::send_flags::none;
    if (dont_wait) flags = flags | zmq::send_flags::dontwait;
    try {
      return socket.send(part, flags).has_value();
    } catch (const zmq::error_t& e) {
      if (e.num() == EHOSTUNREACH) return false;
      throw;
    }
  };
  if (first != nullptr && !send_one(*first)) return false;
  for (auto& frame : frames) {
    if (!send_one(frame)) return false;
  }
  return true;
}
}  // namespace

bool send(zmq::socket_t& socket, std::vector<zmq::message_t>& frames, bool dont_wait) {
  return send_parts(socket, nullptr, frames, dont_wait);
}

bool send_to(zmq::socket_t& socket, const std::string& identity, std::vector<zmq::message_t>& frames,
             bool dont_wait) {
  zmq::message_t id(identity.data(), identity.size());
  return send_parts(socket, &id, frames, dont_wait);
}

std::optional<std::vector<zmq::message_t>> receive(zmq::socket_t& socket) {
  zmq::message_t part;
  if (!socket.recv(part, zmq::recv_flags::dontwait)) return std::nullopt;
  std::vector<zmq::message_t> frames;
  frames.reserve(5);  // identity, signature, header, payload, context: every poolmap message fits
  bool more = part.more();  // the message's own flag: no getsockopt call per frame
  frames.push_back(std::move(part));
  while (more) {
    zmq::message_t next;
    (void)socket.recv(next, zmq::recv_flags::none);  // the rest of a multipart is already here
    more = next.more();
    frames.push_back(std::move(next));
  }
  return frames;
}

}  // namespace poolmap::wire
