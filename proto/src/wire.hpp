// Internal (not installed): ZeroMQ framing shared by broker, worker and client.
//
// A poolmap message is a vector of frames: [signature, header, payload?]; on a ROUTER socket the
// peer's routing identity frame comes first. These helpers build and take apart such messages and
// set the socket options every poolmap socket uses.
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "poolmap/context.hpp"
#include "poolmap/protocol.hpp"

namespace poolmap {
class Context::Impl {
 public:
  zmq::context_t zmq{1};
};
}  // namespace poolmap

namespace poolmap::wire {

// The endpoints of a broker address: one, or a comma-separated list (the two brokers of a pair),
// spaces around each trimmed; an entry without a transport takes the one before it
// ("tcp://a:5556,b:5556" is tcp://a:5556 and tcp://b:5556, as a systemd instance name gives it).
// Throws poolmap::Error (kInvalidArgument) naming `list` for an empty one or an empty entry.
std::vector<std::string> split_endpoints(const std::string& list);

// Limits applied to every poolmap socket.
struct SocketLimits {
  int high_water_mark = 10000;                  // ZMQ_SNDHWM and ZMQ_RCVHWM, in messages
  std::chrono::milliseconds linger{1000};       // ZMQ_LINGER
  std::int64_t max_message_bytes = 1LL << 30;   // ZMQ_MAXMSGSIZE; -1 = unlimited
};

// Sets HWMs, linger and max message size; on ROUTER sockets also ZMQ_ROUTER_MANDATORY.
void configure(zmq::socket_t& socket, const SocketLimits& limits, bool is_router);

// The CURVE keys of a socket that connects to a broker: its own pair and the broker's public key
// (Z85 text).
struct CurveClientKeys {
  std::string public_key;
  std::string secret_key;
  std::string server_key;
};
// Reads them from the two files. Both paths empty: no CURVE (nullopt). Throws poolmap::Error
// (kInvalidArgument) when only one is given or a file is not a usable key.
std::optional<CurveClientKeys> load_curve_client(const std::filesystem::path& secret_file,
                                                 const std::filesystem::path& broker_key_file);
// Makes `socket` a CURVE client with these keys (before connect()).
void apply_curve_client(zmq::socket_t& socket, const CurveClientKeys& keys);
// Makes `socket` a PLAIN client giving `password` (before connect()): a broker's worker_password.
void apply_password(zmq::socket_t& socket, const std::string& password);
// The per-user secret a client or worker gives a broker without CURVE (secret.hpp): `secret_file`, or
// POOLMAP_SECRET_FILE, or the default file, read or made now. "" when it is "none". Throws
// poolmap::Error (kInvalidArgument) with what to do when the file cannot be had or is open to others.
std::string load_secret(const std::filesystem::path& secret_file);
// Makes `socket` a PLAIN client giving the per-user secret (before connect()). User name
// kSecretUser, which HandshakeWatch reads back to word a refusal.
void apply_secret(zmq::socket_t& socket, const std::string& secret);
inline constexpr const char* kSecretUser = "poolmap-user";
inline constexpr const char* kPasswordUser = "poolmap-worker";

// Watches the handshakes of one connecting socket (a ZeroMQ socket monitor over inproc), so that a
// peer the broker refuses learns why instead of waiting in silence. Poll socket() for POLLIN, then
// call failure(). Owned by the thread that owns the watched socket. Construct it after the socket's
// security is set (apply_curve_client, apply_password, apply_secret): it words failures after it.
//
// ZeroMQ (4.3) never reconnects after a refused handshake, and the refused socket may have no pipe
// left, so a blocking send on it waits for ever: send with dont_wait on a socket whose handshake
// may fail, and open a new socket kRetryAfterRefusal after a refusal (a broker may admit the key
// after a SIGHUP).
//
// The watch stops the socket's monitor itself once a handshake succeeded or a failure was reported
// (while the socket is surely open): ZeroMQ's I/O thread sends each event with a blocking send, so
// an event for a socket whose watch was closed first (a reconnection's handshake finishing while the
// socket lingers after close) would block that thread, and with it every socket of the context.
inline constexpr std::chrono::seconds kRetryAfterRefusal{5};

//
// Lifetime: ZeroMQ's I/O thread sends monitor events with a blocking send, so an event sent to a
// reader that is gone (or whose queue is full) blocks that I/O thread for ever, and with it every
// socket of the context (the wedge of issue 23: workers that never registered again after a burst
// of broker restarts, because a socket closed before its watch kept reconnecting through its
// linger and reported the handshake to a reader already closed). So the reader's queue is
// unbounded, and the destructor first stops the monitor on the watched socket (under the lock
// ZeroMQ holds while it sends an event) and only then closes the reader. Destroy the watch BEFORE
// closing the watched socket, and stop watching (destroy it) once the broker has answered: an
// unread watch would only gather events.
class HandshakeWatch {
 public:
  HandshakeWatch(zmq::context_t& context, zmq::socket_t& watched);
  ~HandshakeWatch();
  HandshakeWatch(const HandshakeWatch&) = delete;
  HandshakeWatch& operator=(const HandshakeWatch&) = delete;
  zmq::socket_t& socket() { return monitor_; }
  // A sentence for the handshake failure that was reported, or nullopt (none, or another event).
  // A broker that refuses the mechanism may close the connection before its greeting is out (a
  // loaded broker reads the end of ours before it writes the rest of its own), which ZeroMQ
  // reports without detail and retries: kClosedHandshakesMeanRefused such closes in a row, with
  // no handshake succeeding between them, are reported as the mechanism's refusal.
  // `curve` is kept for callers; the watched socket's own mechanism decides the wording.
  std::optional<std::string> failure(const std::string& endpoint, bool curve);

  static constexpr int kClosedHandshakesMeanRefused = 3;

  // How the watched socket proves who it is.
  enum class Credentials { kNone, kCurve, kSecret, kPassword };
  // The sentence for a refusal (`refused`: the broker's handler said no) or a mechanism that does not
  // match the broker's, for a peer with these credentials. No I/O.
  static std::string describe(const std::string& endpoint, Credentials credentials, bool refused);

 private:
  void stop_monitor() noexcept;

  void* watched_;  // the watched socket's handle until stop_monitor(); it outlives this watch
  zmq::socket_t monitor_;
  Credentials credentials_ = Credentials::kNone;
  int closed_handshakes_ = 0;  // in a row, since the last handshake that succeeded
};

// Whether bytes arrived lately on the TCP connection a message came over, as the kernel counts
// them: a peer whose heartbeats queue behind one large message on a slow link is silent to the
// application for as long as that message takes, yet its bytes keep arriving. Liveness checks ask
// this before they declare a silent peer gone.
//
// The connection is the socket descriptor ZeroMQ names in the message's metadata (ZMQ_SRCFD),
// checked against the peer address seen when the probe was made: ZeroMQ's I/O thread owns that
// descriptor and may close it, and the number may be reused by another connection, which the
// address tells apart. Only read-only queries (getpeername, TCP_INFO) are made on it.
class ConnectionProbe {
 public:
  // The probe of the connection `message` arrived on; nullopt for a transport that is not TCP
  // (inproc, ipc) or when ZeroMQ does not say.
  static std::optional<ConnectionProbe> of(const zmq::message_t& message);
  // How long ago the kernel last received data on that connection; nullopt when it cannot tell
  // (the connection closed, or its descriptor now belongs to another one).
  std::optional<std::chrono::milliseconds> since_data_received() const;

 private:
  ConnectionProbe() = default;
  int fd_ = -1;
  std::string peer_;  // the peer's address bytes (sockaddr) when the probe was made
};

// Wraps an encoded buffer into a message without copying it (ownership moves to ZeroMQ); a
// buffer of at most 1 KiB is copied, which costs less than handing it over.
zmq::message_t to_message(Bytes&& bytes);

// A message holding the 4-byte signature of `command`.
zmq::message_t signature_message(proto::Command command);

// The bytes of a message, as a view valid while the message lives.
inline std::span<const std::byte> view(const zmq::message_t& message) {
  return {static_cast<const std::byte*>(message.data()), message.size()};
}

inline std::string to_string(const zmq::message_t& message) { return {message.data<char>(), message.size()}; }

// header_message(): a header encoded into its own frame. make(): [signature, that frame]. The header is encoded into a buffer
// this thread reuses and copied once into its message: one allocation per header (none up to 33
// bytes, which ZeroMQ keeps inline), where a fresh buffer cost several as it grew. Room for the
// payload frame and a context is made at once.
template <class Header>
zmq::message_t header_message(const Header& header) {
  thread_local Bytes scratch;
  thread_local OutputArchive archive(scratch);  // built once per thread (Cereal's archive carries tables)
  scratch.clear();
  archive(header);
  zmq::message_t message(scratch.data(), scratch.size());
  if (scratch.capacity() > 64 * 1024) Bytes().swap(scratch);  // a rare large header is not kept
  return message;
}
template <class Header>
std::vector<zmq::message_t> make(proto::Command command, const Header& header) {
  std::vector<zmq::message_t> frames;
  frames.reserve(4);
  frames.push_back(signature_message(command));
  frames.push_back(header_message(header));
  return frames;
}
// [signature, empty header].
std::vector<zmq::message_t> make_empty(proto::Command command);

// Most payload bytes a ChunkBatch gathers before it must be sent.
inline constexpr std::size_t kBatchPayloadBytes = 64 * 1024;

// Several chunks in one message (protocol v5, docs/PROTOCOL.md section 2): [signature, then a
// header and a payload frame for each]. A sender gathers what it has at one time and sends it as
// one message; before adding a chunk it asks needs_new_message(), which is true once the message
// holds proto::kMaxChunksPerMessage chunks or the chunk would take its payload past
// kBatchPayloadBytes: large chunks travel one per message, so that the receiver (which gets a
// message whole) starts on the first while the next is still on its way.
class ChunkBatch {
 public:
  explicit ChunkBatch(proto::Command command) : command_(command) {}

  bool empty() const noexcept { return frames_.empty(); }
  std::size_t chunks() const noexcept { return chunks_; }
  bool needs_new_message(std::size_t payload_bytes) const noexcept {
    return !frames_.empty() &&
           (chunks_ >= proto::kMaxChunksPerMessage || payload_bytes_ + payload_bytes > kBatchPayloadBytes);
  }
  void add(zmq::message_t header, zmq::message_t payload) {
    if (frames_.empty()) {
      frames_.reserve(1 + 2 * 32);  // room for 32 chunks before the vector moves its messages
      frames_.push_back(signature_message(command_));
    }
    payload_bytes_ += payload.size();
    frames_.push_back(std::move(header));
    frames_.push_back(std::move(payload));
    ++chunks_;
  }
  // The message gathered so far; the batch is empty after.
  std::vector<zmq::message_t> take() {
    std::vector<zmq::message_t> frames = std::move(frames_);
    frames_.clear();
    chunks_ = 0;
    payload_bytes_ = 0;
    return frames;
  }
  void clear() { (void)take(); }

 private:
  proto::Command command_;
  std::vector<zmq::message_t> frames_;
  std::size_t chunks_ = 0;
  std::size_t payload_bytes_ = 0;
};

// Sends all frames (SNDMORE on all but the last). With `dont_wait`, returns false when the peer's
// queue is full (EAGAIN) or, on a ROUTER with ROUTER_MANDATORY, when the peer is gone
// (EHOSTUNREACH); frames not sent are lost to the caller in that case. Other errors throw
// zmq::error_t. A multipart message is atomic: either all frames are queued or none (only the
// first send can fail with EAGAIN/EHOSTUNREACH).
bool send(zmq::socket_t& socket, std::vector<zmq::message_t>& frames, bool dont_wait = true);

// Same, with a routing identity frame first (ROUTER sockets).
bool send_to(zmq::socket_t& socket, const std::string& identity, std::vector<zmq::message_t>& frames,
             bool dont_wait = true);

// Receives one whole multipart message without blocking; empty when none is waiting.
std::optional<std::vector<zmq::message_t>> receive(zmq::socket_t& socket);

}  // namespace poolmap::wire
