#include "poolmap/broker.hpp"

#include <malloc.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "core/core.hpp"
#include "core/paired.hpp"
#include "core/log_throttle.hpp"
#include "http.hpp"
#include "log.hpp"
#include "metrics.hpp"
#include "poolmap/curve.hpp"
#include "poolmap/error.hpp"
#include "poolmap/protocol.hpp"
#include "process_info.hpp"
#include "secret.hpp"
#include "security.hpp"
#include "wire.hpp"

// The broker's shell: its sockets, ZAP (CURVE keys, passwords), the poll loop, and moving messages
// between the sockets and the core (core/core.hpp), which makes every decision. In a pair (--ha)
// also the peer link (a PUB socket this broker binds, a SUB socket connected to the peer's); the
// pair's part without I/O is core/paired.hpp.

namespace poolmap {

namespace {
using Clock = std::chrono::steady_clock;
using detail::Side;

// Most messages read from one socket before the other socket gets its turn.
constexpr int kReceiveBatch = 256;

// Not in the non-draft zmq.h of libzmq 4.3, but honoured by it: a CURVE handshake fails when no
// ZAP handler answers, instead of letting every key in.
#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93
#endif
constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";

// A connection's TCP state as the kernel counts it.
class ProbeWatch final : public detail::LinkWatch {
 public:
  explicit ProbeWatch(wire::ConnectionProbe probe) : probe_(std::move(probe)) {}
  std::optional<std::chrono::milliseconds> since_data_received() const override { return probe_.since_data_received(); }

 private:
  wire::ConnectionProbe probe_;
};

// The facts of the connection a message came on, from ZeroMQ's metadata of its frames.
class FrameFacts final : public detail::PeerFacts {
 public:
  explicit FrameFacts(const zmq::message_t& frame) : frame_(frame) {}
  std::string key() const override {
    const char* user = zmq_msg_gets(frame_.handle(), "User-Id");
    return user == nullptr ? std::string() : std::string(user);
  }
  std::string address() const override {
    const char* address = zmq_msg_gets(frame_.handle(), "Peer-Address");
    return address == nullptr ? std::string() : std::string(address);
  }
  std::unique_ptr<detail::LinkWatch> link() const override {
    auto probe = wire::ConnectionProbe::of(frame_);
    if (!probe) return nullptr;
    return std::make_unique<ProbeWatch>(std::move(*probe));
  }

 private:
  const zmq::message_t& frame_;
};

detail::KeyRing read_key_ring(const BrokerOptions& options) {
  detail::KeyRing ring{read_curve_public_dir(options.client_keys_dir), read_curve_public_dir(options.worker_keys_dir),
                       {}, {}, {}};
  if (!options.ha_peer_key_file.empty()) {
    ring.peers.emplace(read_curve_public_file(options.ha_peer_key_file), "peer " + options.ha_peer_key_file.stem().string());
  }
  return ring;
}

std::uint64_t random_ticket() {
  std::random_device random;
  return static_cast<std::uint64_t>(random()) << 32 | random();
}
}  // namespace

class Broker::Impl final : public detail::Outbox, private detail::PairedBroker::PeerLink {
 public:
  Impl(BrokerOptions options, Context context)
      : options_(std::move(options)),
        context_(std::move(context)),
        zap_(context_.impl().zmq, zmq::socket_type::rep),
        clients_(context_.impl().zmq, zmq::socket_type::router),
        workers_(context_.impl().zmq, zmq::socket_type::router),
        log_(detail::logger("poolmap.broker")) {
    check_pair_options();
    if (options_.heartbeat_interval.count() <= 0 || options_.heartbeat_liveness < 1 || options_.max_retries < 0 ||
        options_.poison_kills < 1) {
      throw Error(ErrorCode::kInvalidArgument,
                  "broker options: heartbeat_interval, heartbeat_liveness and poison_kills must be positive, "
                  "max_retries not negative");
    }
    if (options_.max_client_chunks == 0 || options_.max_client_bytes < 1 || options_.max_client_jobs == 0 ||
        options_.max_client_contexts == 0 || options_.max_client_context_bytes < 1 || options_.max_ready_per_second == 0) {
      throw Error(ErrorCode::kInvalidArgument, "broker options: the per-client quotas and max_ready_per_second must be positive");
    }
    // Linger long enough for the goodbyes sent on shutdown to leave, short enough not to hang.
    const wire::SocketLimits limits{.high_water_mark = options_.high_water_mark,
                                    .linger = std::chrono::milliseconds(500),
                                    .max_message_bytes = options_.max_message_bytes};
    wire::configure(clients_, limits, true);
    wire::configure(workers_, limits, true);
    set_up_security();
    client_endpoint_ = bind(clients_, options_.client_endpoint, "client");
    worker_endpoint_ = bind(workers_, options_.worker_endpoint, "worker");
    const std::string token = http_token();
    try {
      metrics_ = std::make_unique<detail::Metrics>(options_.metrics_address, !options_.http_address.empty());
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kInvalidArgument, std::string("broker: ") + e.what());
    }
    metrics_url_ = metrics_->url();
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw Error(ErrorCode::kInternal, "broker: eventfd failed");
    if (!options_.http_address.empty()) {
      try {
        http_ = std::make_unique<detail::HttpServer>(detail::HttpServer::Options{options_.http_address, token}, board_,
                                                     [this] { return metrics_->text(); });
      } catch (const std::exception& e) {
        throw Error(ErrorCode::kInvalidArgument, std::string("broker: ") + e.what());
      }
      http_url_ = http_->url();
    }
    if (options_.ha_role.empty()) {
      core_ = std::make_unique<detail::BrokerCore>(options_, Clock::now(), *this, *metrics_, log_, random_ticket());
    } else {
      set_up_peer_link();
    }
  }

  ~Impl() {
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  void run();
  void stop() noexcept {
    if (stop_requested_.exchange(true)) stop_now_.store(true);
    wake();
  }
  void reload_keys() noexcept {
    reload_requested_.store(true);
    wake();
  }
  void hand_over() noexcept {
    hand_over_requested_.store(true);
    wake();
  }

  std::string client_endpoint_;
  std::string worker_endpoint_;
  std::string metrics_url_;
  std::string http_url_;
  std::string ha_endpoint_;

 private:
  // detail::Outbox: the core's messages go out through the sockets.
  bool send(Side side, const std::string& identity, std::vector<zmq::message_t>& frames) override {
    return wire::send_to(side == Side::kClient ? clients_ : workers_, identity, frames);
  }
  // PeerLink: this broker's state, to its peer.
  void publish(const proto::PeerState& state) override;
  // Dropped payloads were freed into malloc's arenas; hand that memory back to the system now
  // rather than keeping the peak of a client that is gone.
  void release_memory() override { ::malloc_trim(0); }

  void wake() noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(wake_fd_, &one, sizeof(one));
  }
  bool curve() const { return !options_.curve_secret_file.empty(); }
  // CURVE on both sockets with the ZAP handler bound first, or the loopback-only rule.
  void set_up_security();
  // Without CURVE: PLAIN on each socket with a password (the per-user secret, or
  // BrokerOptions::worker_password on the worker socket), checked by the ZAP handler.
  void set_up_passwords();
  // Answers one ZAP request (the handshake of a connection waits for it).
  void serve_zap();
  void apply_reload();
  // --http-token-file's token ("" without one), after the rule: a non-loopback --http needs one.
  std::string http_token() const;
  // A status snapshot for the dashboard, when someone looks (StatusBoard).
  void update_board(Clock::time_point now);

  // The pair (--ha): options, the peer link.
  void check_pair_options() const;
  void set_up_peer_link();
  // Reads the peer's PEER_STATE messages.
  void read_peer(Clock::time_point now);
  // The core (of a broker without a peer, or of the active one of a pair); nullptr while passive.
  detail::BrokerCore* core() { return paired_ ? paired_->core() : core_.get(); }

  static std::string bind(zmq::socket_t& socket, const std::string& endpoint, const char* what) {
    try {
      socket.bind(endpoint);
    } catch (const zmq::error_t& e) {
      throw Error(ErrorCode::kInvalidArgument,
                  std::string("broker: cannot bind ") + what + " endpoint '" + endpoint + "': " + e.what());
    }
    return socket.get(zmq::sockopt::last_endpoint);
  }

  BrokerOptions options_;
  Context context_;
  // Declared before the endpoints' sockets: bound before them, closed after them, so no handshake
  // ever finds it missing.
  zmq::socket_t zap_;
  bool zap_bound_ = false;  // CURVE or a worker password: ZeroMQ asks zap_ about each handshake
  detail::KeyRing keys_;
  std::atomic<bool> reload_requested_{false};
  zmq::socket_t clients_;
  zmq::socket_t workers_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<detail::Metrics> metrics_;  // does nothing without --metrics
  int wake_fd_ = -1;
  std::atomic<bool> stop_requested_{false};  // drain, then return
  std::atomic<bool> stop_now_{false};        // return without draining
  detail::LogThrottle handshake_refusals_;  // refused handshakes, logged with a count
  std::unique_ptr<detail::BrokerCore> core_;  // every decision (a broker without a peer)
  std::unique_ptr<detail::PairedBroker> paired_;  // every decision (one of a pair, --ha)
  std::optional<zmq::socket_t> peer_out_;  // PUB, bound at ha_bind: this broker's state
  std::optional<zmq::socket_t> peer_in_;   // SUB, connected to ha_peer: the peer's state
  std::atomic<bool> hand_over_requested_{false};
  // Declared last: the server stops (waiting for the requests it serves) before the rest goes.
  const Clock::time_point started_ = Clock::now();
  detail::StatusBoard board_{[this] { wake(); }};
  std::unique_ptr<detail::HttpServer> http_;  // --http
};

void Broker::Impl::check_pair_options() const {
  if (options_.ha_role.empty()) {
    if (!options_.ha_bind.empty() || !options_.ha_peer.empty() || !options_.ha_peer_key_file.empty()) {
      throw Error(ErrorCode::kInvalidArgument, "broker: --ha-bind, --ha-peer and --ha-peer-key need --ha primary|backup");
    }
    return;
  }
  if (options_.ha_role != "primary" && options_.ha_role != "backup") {
    throw Error(ErrorCode::kInvalidArgument, "broker: --ha must be 'primary' or 'backup', not '" + options_.ha_role + "'");
  }
  if (options_.ha_bind.empty() || options_.ha_peer.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "broker: a pair needs --ha-bind (where this broker publishes its state) and --ha-peer (the other "
                "broker's --ha-bind)");
  }
  if (curve() && options_.ha_peer_key_file.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "broker: with CURVE a pair needs --ha-peer-key (the peer broker's .pub file)");
  }
  if (!curve() && !options_.ha_peer_key_file.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "broker: --ha-peer-key is for CURVE (give --curve-secret too)");
  }
  if (!curve() && !options_.insecure && !detail::is_loopback_endpoint(options_.ha_bind)) {
    throw Error(ErrorCode::kInvalidArgument,
                "broker: refusing to bind the peer link '" + options_.ha_bind +
                    "' without CURVE: anyone who can reach it could read this broker's state. Give --curve-secret, "
                    "--client-keys, --worker-keys and --ha-peer-key (see docs/SECURITY.md), bind a loopback address, "
                    "or pass --insecure on a network you trust");
  }
}

void Broker::Impl::set_up_peer_link() {
  zmq::context_t& zmq_context = context_.impl().zmq;
  peer_out_.emplace(zmq_context, zmq::socket_type::pub);
  peer_in_.emplace(zmq_context, zmq::socket_type::sub);
  for (zmq::socket_t* socket : {&*peer_out_, &*peer_in_}) {
    socket->set(zmq::sockopt::linger, 500);
    socket->set(zmq::sockopt::maxmsgsize, std::int64_t{4096});
    socket->set(zmq::sockopt::reconnect_ivl, 100);
    socket->set(zmq::sockopt::reconnect_ivl_max, 1000);
  }
  peer_out_->set(zmq::sockopt::sndhwm, 100);  // a state older than the newest is worth nothing
  peer_in_->set(zmq::sockopt::rcvhwm, 100);
  peer_in_->set(zmq::sockopt::subscribe, "");
  if (curve()) {
    const CurveKeyPair own = read_curve_secret_file(options_.curve_secret_file);
    peer_out_->set(zmq::sockopt::curve_server, 1);
    peer_out_->set(zmq::sockopt::curve_secretkey, own.secret_key);
    peer_out_->set(zmq::sockopt::zap_domain, std::string(detail::kPeerDomain));
    const int enforce = 1;
    if (zmq_setsockopt(peer_out_->handle(), ZMQ_ZAP_ENFORCE_DOMAIN, &enforce, sizeof(enforce)) != 0) {
      throw Error(ErrorCode::kInternal, "broker: cannot set ZMQ_ZAP_ENFORCE_DOMAIN on the peer link");
    }
    wire::apply_curve_client(*peer_in_, {own.public_key, own.secret_key, read_curve_public_file(options_.ha_peer_key_file)});
  } else if (!keys_.client_password.empty()) {
    // This user's secret, as on the client socket (ZAP is bound for it already).
    peer_out_->set(zmq::sockopt::plain_server, 1);
    peer_out_->set(zmq::sockopt::zap_domain, std::string(detail::kPeerDomain));
    const int enforce = 1;
    if (zmq_setsockopt(peer_out_->handle(), ZMQ_ZAP_ENFORCE_DOMAIN, &enforce, sizeof(enforce)) != 0) {
      throw Error(ErrorCode::kInternal, "broker: cannot set ZMQ_ZAP_ENFORCE_DOMAIN on the peer link");
    }
    wire::apply_secret(*peer_in_, keys_.client_password);
  }
  ha_endpoint_ = bind(*peer_out_, options_.ha_bind, "peer link (--ha-bind)");
  try {
    peer_in_->connect(options_.ha_peer);
  } catch (const zmq::error_t& e) {
    throw Error(ErrorCode::kInvalidArgument, "broker: bad --ha-peer endpoint '" + options_.ha_peer + "': " + e.what());
  }
  paired_ = std::make_unique<detail::PairedBroker>(
      options_,
      detail::Pair::Options{options_.ha_role == "primary" ? detail::Pair::Role::kPrimary : detail::Pair::Role::kBackup,
                            options_.heartbeat_interval, options_.heartbeat_liveness},
      Clock::now(), static_cast<detail::Outbox&>(*this), *metrics_, log_, random_ticket,
      static_cast<detail::PairedBroker::PeerLink&>(*this));
}

void Broker::Impl::publish(const proto::PeerState& state) {
  std::vector<zmq::message_t> frames;
  const auto signature = proto::signature_frame(proto::Command::kPeerState, state.epoch);
  frames.emplace_back(signature.data(), signature.size());
  frames.push_back(wire::header_message(state));
  (void)wire::send(*peer_out_, frames, true);  // PUB drops what no subscriber takes
}

void Broker::Impl::read_peer(Clock::time_point now) {
  for (int i = 0; i < kReceiveBatch; ++i) {
    auto frames = wire::receive(*peer_in_);
    if (!frames) return;
    if (frames->size() != 2) continue;
    const auto command = proto::parse_signature(wire::view((*frames)[0]));
    if (!command || command.value() != proto::Command::kPeerState) continue;
    const auto state = proto::decode<proto::PeerState>(wire::view((*frames)[1]));
    if (!state) continue;
    paired_->on_peer(now, state.value());
  }
}

void Broker::Impl::set_up_security() {
  const bool any_curve_option = !options_.curve_secret_file.empty() || !options_.client_keys_dir.empty() ||
                                !options_.worker_keys_dir.empty();
  if (!curve()) {
    if (any_curve_option) {
      throw Error(ErrorCode::kInvalidArgument,
                  "broker: CURVE needs the secret key file (--curve-secret) as well as --client-keys and --worker-keys");
    }
    for (const auto& endpoint : {options_.client_endpoint, options_.worker_endpoint}) {
      if (detail::is_loopback_endpoint(endpoint)) continue;
      if (!options_.insecure) {
        throw Error(ErrorCode::kInvalidArgument,
                    "broker: refusing to bind '" + endpoint +
                        "' without CURVE: anyone who can reach it could run tasks and read every input. Give "
                        "--curve-secret, --client-keys and --worker-keys (see docs/SECURITY.md), bind a loopback "
                        "address such as tcp://127.0.0.1:5555, or pass --insecure on a network you trust");
      }
    }
    set_up_passwords();
    return;
  }
  if (!options_.worker_password.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "broker: a worker password is for a broker without CURVE (CURVE keys "
                                             "authenticate workers already)");
  }
  if (options_.client_keys_dir.empty() || options_.worker_keys_dir.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "broker: CURVE needs both --client-keys and --worker-keys directories");
  }
  const CurveKeyPair own = read_curve_secret_file(options_.curve_secret_file);
  keys_ = read_key_ring(options_);
  if (keys_.clients.empty()) log_->warn("no client keys in {}: no client can connect", options_.client_keys_dir.string());
  if (keys_.workers.empty()) log_->warn("no worker keys in {}: no worker can connect", options_.worker_keys_dir.string());
  try {
    zap_.bind(kZapEndpoint);
    zap_bound_ = true;
  } catch (const zmq::error_t& e) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("broker: cannot start the ZAP handler (another CURVE broker in this context?): ") + e.what());
  }
  const std::pair<zmq::socket_t*, std::string_view> sockets[] = {{&clients_, detail::kClientDomain},
                                                                  {&workers_, detail::kWorkerDomain}};
  for (const auto& [socket, domain] : sockets) {
    socket->set(zmq::sockopt::curve_server, 1);
    socket->set(zmq::sockopt::curve_secretkey, own.secret_key);
    socket->set(zmq::sockopt::zap_domain, std::string(domain));
    const int enforce = 1;
    if (zmq_setsockopt(socket->handle(), ZMQ_ZAP_ENFORCE_DOMAIN, &enforce, sizeof(enforce)) != 0) {
      throw Error(ErrorCode::kInternal, std::string("broker: cannot set ZMQ_ZAP_ENFORCE_DOMAIN: ") +
                                            zmq_strerror(zmq_errno()));
    }
  }
  log_->info("CURVE on: broker key {}, {} client keys, {} worker keys", own.public_key, keys_.clients.size(),
             keys_.workers.size());
}

void Broker::Impl::set_up_passwords() {
  if (!options_.worker_password.empty() && !detail::is_loopback_endpoint(options_.worker_endpoint)) {
    throw Error(ErrorCode::kInvalidArgument, "broker: a worker password travels in clear: the worker endpoint '" +
                                                 options_.worker_endpoint + "' must be a loopback one");
  }
  // The per-user secret on every socket that has no password of its own and is not inproc:// (where
  // only this process can connect).
  const bool clients_need_secret = !options_.client_endpoint.starts_with("inproc://");
  const bool workers_need_secret =
      options_.worker_password.empty() && !options_.worker_endpoint.starts_with("inproc://");
  std::string secret;
  std::optional<detail::SecretLocation> location;
  if (clients_need_secret || workers_need_secret) {
    location = detail::locate_secret(options_.secret_file, detail::secret_environment());
    if (location) secret = detail::read_or_create_secret(*location);
  }
  keys_.client_password = clients_need_secret ? secret : std::string();
  keys_.worker_password = workers_need_secret ? secret : options_.worker_password;
  const bool reachable = !(detail::is_loopback_endpoint(options_.client_endpoint) &&
                           detail::is_loopback_endpoint(options_.worker_endpoint));
  if (location) {
    log_->info("without CURVE: clients and workers must give this user's secret from {} (the same user's programs "
               "find it by themselves; others give --secret-file)",
               location->file.string());
    if (options_.insecure && reachable) {
      log_->warn("INSECURE: no CURVE; the secret travels in clear to {} and {}: whoever can read that network can take "
                 "it, then submit work, register as a worker and read every input and result",
                 options_.client_endpoint, options_.worker_endpoint);
    }
  } else if (clients_need_secret || workers_need_secret) {
    log_->warn("{}: no CURVE and no secret (--secret-file none): anyone who can reach {} or {} can submit work, "
               "register as a worker and read every input and result",
               options_.insecure && reachable ? "INSECURE" : "UNPROTECTED", options_.client_endpoint,
               options_.worker_endpoint);
  }
  const std::pair<zmq::socket_t*, const std::string*> sockets[] = {{&clients_, &keys_.client_password},
                                                                   {&workers_, &keys_.worker_password}};
  for (const auto& [socket, password] : sockets) {
    if (password->empty()) continue;
    if (!zap_bound_) {
      try {
        zap_.bind(kZapEndpoint);
        zap_bound_ = true;
      } catch (const zmq::error_t& e) {
        throw Error(ErrorCode::kInvalidArgument,
                    std::string("broker: cannot start the ZAP handler (another broker with keys in this context?): ") +
                        e.what());
      }
    }
    socket->set(zmq::sockopt::plain_server, 1);
    socket->set(zmq::sockopt::zap_domain,
                std::string(socket == &clients_ ? detail::kClientDomain : detail::kWorkerDomain));
    const int enforce = 1;
    if (zmq_setsockopt(socket->handle(), ZMQ_ZAP_ENFORCE_DOMAIN, &enforce, sizeof(enforce)) != 0) {
      throw Error(ErrorCode::kInternal, std::string("broker: cannot set ZMQ_ZAP_ENFORCE_DOMAIN: ") +
                                            zmq_strerror(zmq_errno()));
    }
  }
}

void Broker::Impl::serve_zap() {
  for (int i = 0; i < kReceiveBatch; ++i) {
    auto frames = wire::receive(zap_);
    if (!frames) return;
    std::vector<std::string> request;
    request.reserve(frames->size());
    for (const auto& frame : *frames) request.push_back(wire::to_string(frame));
    const detail::ZapReply reply = detail::decide_zap(request, keys_);
    if (reply.status_code != "200") {
      if (const auto refused = handshake_refusals_.count(Clock::now(), options_.heartbeat_interval)) {
        const std::string domain = request.size() > 2 ? detail::printable(request[2], 32) : "";
        const std::string address = request.size() > 3 ? detail::printable(request[3], 64) : "";
        log_->warn("refused {} connection{} since the last report; latest from {} on {}: {}", refused,
                   detail::plural(refused), address, domain, reply.status_text);
      }
    }
    std::vector<zmq::message_t> out;
    for (const std::string_view part : {std::string_view("1.0"), std::string_view(reply.request_id),
                                        std::string_view(reply.status_code), std::string_view(reply.status_text),
                                        std::string_view(reply.user_id), std::string_view()}) {
      out.emplace_back(part.data(), part.size());
    }
    (void)wire::send(zap_, out, false);
  }
}

std::string Broker::Impl::http_token() const {
  if (options_.http_token_file.empty()) {
    if (!options_.http_address.empty() && !detail::is_loopback_endpoint("tcp://" + options_.http_address)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "broker: refusing to serve the dashboard on '" + options_.http_address +
                      "' without a token: anyone who can reach it could watch every job. Give --http-token-file "
                      "(see docs/OPERATIONS.md), or bind a loopback address such as 127.0.0.1:8080 and use an SSH "
                      "tunnel");
    }
    return {};
  }
  if (options_.http_address.empty()) throw Error(ErrorCode::kInvalidArgument, "broker: --http-token-file needs --http");
  const std::string file = options_.http_token_file.string();
  std::error_code error;
  const auto permissions = std::filesystem::status(options_.http_token_file, error).permissions();
  if (error) throw Error(ErrorCode::kInvalidArgument, "broker: cannot read --http-token-file '" + file + "': " + error.message());
  if ((permissions & (std::filesystem::perms::others_read | std::filesystem::perms::others_write)) !=
      std::filesystem::perms::none) {
    throw Error(ErrorCode::kInvalidArgument,
                "broker: --http-token-file '" + file + "' can be read or written by other users: chmod 600 it");
  }
  std::ifstream in(options_.http_token_file);
  std::string token((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) throw Error(ErrorCode::kInvalidArgument, "broker: cannot read --http-token-file '" + file + "'");
  const auto first = token.find_first_not_of(" \t\r\n");
  const auto last = token.find_last_not_of(" \t\r\n");
  token = first == std::string::npos ? std::string() : token.substr(first, last - first + 1);
  if (token.size() < 16 || token.find_first_of(" \t\r\n") != std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument, "broker: the token in --http-token-file '" + file +
                                                 "' must be one word of at least 16 characters (e.g. from "
                                                 "`head -c 32 /dev/urandom | base64`)");
  }
  return token;
}

void Broker::Impl::update_board(Clock::time_point now) {
  if (!http_ || !board_.wanted(now)) return;
  proto::StatusReply reply;
  if (core() != nullptr) {
    reply = core()->status_reply();
  } else if (paired_) {
    paired_->pair().describe(reply, now);
  }
  board_.publish(detail::status_json(reply, client_endpoint_, options_.heartbeat_interval,
                                     std::chrono::duration_cast<std::chrono::milliseconds>(now - started_)),
                 now);
}

void Broker::Impl::apply_reload() {
  if (!reload_requested_.exchange(false) || !curve()) return;
  try {
    keys_ = read_key_ring(options_);
    log_->info("keys reloaded: {} client keys, {} worker keys (connections already made stay)", keys_.clients.size(),
               keys_.workers.size());
  } catch (const std::exception& e) {
    log_->error("keys not reloaded, the old ones stay in use: {}", e.what());
  }
}

void Broker::Impl::run() {
  log_->info("broker serving clients={} workers={} heartbeat={}ms x{}", client_endpoint_, worker_endpoint_,
             options_.heartbeat_interval.count(), options_.heartbeat_liveness);
  if (paired_) paired_->start(Clock::now(), "its peer's state read from " + options_.ha_peer + ", its own published at " + ha_endpoint_);
  // Each ZeroMQ socket in the poll, and each receive that finds nothing, costs two system calls
  // (ZeroMQ looks at the socket's command pipe): the loop polls zap_ only where it is bound, and
  // reads only the sockets the poll found readable (a socket left with messages after
  // kReceiveBatch is readable at the next poll).
  std::array<zmq::pollitem_t, 5> items{{
      {clients_.handle(), 0, ZMQ_POLLIN, 0},
      {workers_.handle(), 0, ZMQ_POLLIN, 0},
      {nullptr, wake_fd_, ZMQ_POLLIN, 0},
      {zap_bound_ ? zap_.handle() : nullptr, -1, ZMQ_POLLIN, 0},
      {peer_in_ ? peer_in_->handle() : nullptr, -1, ZMQ_POLLIN, 0},
  }};
  const auto until = [](Clock::time_point then) {
    return std::max(std::chrono::milliseconds(0), std::chrono::ceil<std::chrono::milliseconds>(then - Clock::now()));
  };
  // One of a pair hands a message to its PairedBroker, which decides whether its core sees it.
  const auto on_message = [&](Side side, std::vector<zmq::message_t>& frames) {
    const FrameFacts facts(frames[1]);
    if (paired_ && side == Side::kClient) {
      paired_->on_client_message(Clock::now(), frames, facts);
    } else if (paired_) {
      paired_->on_worker_message(Clock::now(), frames, facts);
    } else if (side == Side::kClient) {
      core_->on_client_message(Clock::now(), frames, facts);
    } else {
      core_->on_worker_message(Clock::now(), frames, facts);
    }
  };
  auto next_tick = Clock::now() + options_.heartbeat_interval;
  std::optional<Clock::time_point> drain_deadline;
  while (!stop_now_.load()) {
    if (stop_requested_.load() && !drain_deadline) {
      if (core() == nullptr) break;  // passive: nothing to drain
      drain_deadline = Clock::now() + options_.drain_timeout;
      core()->start_drain(Clock::now());
    }
    if (drain_deadline && (core() == nullptr || core()->chunks_in_flight() == 0 || Clock::now() >= *drain_deadline)) {
      break;
    }
    auto wait = until(next_tick);
    if (drain_deadline) wait = std::min(wait, std::chrono::milliseconds(10));
    if (paired_) {
      if (const auto due = paired_->next_due()) wait = std::min(wait, until(*due));
    } else if (const auto started_due = core_->next_started_due()) {
      wait = std::min(wait, until(*started_due));
    }
    zmq::poll(items.data(), items.size(), wait);
    if ((items[2].revents & ZMQ_POLLIN) != 0) {
      std::uint64_t value = 0;
      [[maybe_unused]] const auto got = ::read(wake_fd_, &value, sizeof(value));
    }
    apply_reload();
    if ((items[3].revents & ZMQ_POLLIN) != 0) serve_zap();
    if (paired_) {
      // The peer first: a broker frozen while its peer took over learns it before it acts.
      if ((items[4].revents & ZMQ_POLLIN) != 0) read_peer(Clock::now());
      if (hand_over_requested_.exchange(false)) paired_->hand_over(Clock::now());
    }
    for (int i = 0; (items[1].revents & ZMQ_POLLIN) != 0 && i < kReceiveBatch; ++i) {
      auto frames = wire::receive(workers_);
      if (!frames) break;
      if (frames->size() < 2) continue;  // nothing but an identity: cannot even answer
      on_message(Side::kWorker, *frames);
    }
    if (core() != nullptr) core()->flush_results();  // the results of those, at once
    for (int i = 0; (items[0].revents & ZMQ_POLLIN) != 0 && i < kReceiveBatch; ++i) {
      auto frames = wire::receive(clients_);
      if (!frames) break;
      if (frames->size() < 2) continue;
      on_message(Side::kClient, *frames);
    }
    if (paired_) {
      paired_->end_of_pass(Clock::now());
    } else {
      core_->end_of_pass(Clock::now());
    }
    if (Clock::now() >= next_tick) {
      if (core() != nullptr) core()->tick(Clock::now());
      next_tick = Clock::now() + options_.heartbeat_interval;
    }
    update_board(Clock::now());
  }
  if (core() == nullptr) {
    log_->info("broker stopped (passive)");
    return;
  }
  core()->flush_results();
  const std::string summary = core()->summary();
  // One of a pair hands the work over: the peer takes it at once, and every client and worker is
  // sent there (PASSIVE); without a peer there, every one is told to go.
  if (paired_) paired_->hand_over(Clock::now());
  if (core() != nullptr) core()->disconnect_everyone();
  log_->info("broker stopped: {}", summary);
}

Broker::Broker(BrokerOptions options, Context context)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(context))) {}
Broker::~Broker() = default;
const std::string& Broker::client_endpoint() const noexcept { return impl_->client_endpoint_; }
const std::string& Broker::worker_endpoint() const noexcept { return impl_->worker_endpoint_; }
const std::string& Broker::metrics_url() const noexcept { return impl_->metrics_url_; }
const std::string& Broker::http_url() const noexcept { return impl_->http_url_; }
const std::string& Broker::ha_endpoint() const noexcept { return impl_->ha_endpoint_; }
void Broker::hand_over() noexcept { impl_->hand_over(); }
void Broker::run() { impl_->run(); }
void Broker::stop() noexcept { impl_->stop(); }
void Broker::reload_keys() noexcept { impl_->reload_keys(); }

}  // namespace poolmap
