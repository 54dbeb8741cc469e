// poolmap::Broker: hands chunks of work from clients to workers and results back.
//
// The broker binds two ROUTER sockets, one for clients and one for workers, and runs a single-threaded
// event loop over them. It reads only the small header frame of each message; payload frames move
// from one socket to the other untouched. Workers pull: each announces credit (how many chunks it
// accepts) and the tasks it has, and the next chunk goes to the least-recently-served worker with
// credit that has the chunk's task with the same signature (a chunk no registered worker can run
// fails with kUnknownTask / kSignatureMismatch). Clients are served round-robin so that several
// clients share the workers fairly. The broker remembers which
// chunk each worker holds: when a worker is lost (its supervisor reports its exit, it is silent for
// heartbeat_interval × heartbeat_liveness, or it says goodbye), its chunks are queued again. A chunk
// fails with kWorkerLost when it was running in poison_kills crashed workers, or after max_retries
// other losses; a worker lost for silence that speaks again was busy, not dead, gives those
// retries back, and its late answer to a chunk still unanswered is taken (first answer wins). stop() drains: no new dispatch, chunks in flight answered (up to drain_timeout),
// then every peer is told to go (clients resend what is left to the next broker).
//
// Security: with CURVE (curve_secret_file and both key directories set) every connection is
// encrypted and authenticated: a ZAP handler, bound before either endpoint and served by run(),
// admits a client only if its public key is in client_keys_dir and a worker only if its key is in
// worker_keys_dir. Without CURVE the broker binds only loopback endpoints (127.0.0.0/8, [::1],
// localhost, ipc://, inproc://) unless `insecure` is set, and admits on each socket only peers that
// give this user's secret (secret_file): other local users, who cannot read it, are refused at the
// handshake. See docs/SECURITY.md.
//
// Thread-safety: construct anywhere; run() blocks the thread that calls it and is the only thread
// touching the sockets; stop(), reload_keys() and the endpoint accessors may be called from any
// thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "poolmap/context.hpp"

namespace poolmap {

struct BrokerOptions {
  // Where clients connect. Any ZeroMQ endpoint; "tcp://127.0.0.1:*" picks a free port.
  // Default: "tcp://*:5555".
  std::string client_endpoint = "tcp://*:5555";
  // Where workers connect. Default: "tcp://*:5556".
  std::string worker_endpoint = "tcp://*:5556";
  // Send a heartbeat to a peer that has heard nothing from us for this long. Default: 1 s.
  std::chrono::milliseconds heartbeat_interval{1000};
  // A peer silent for heartbeat_interval × heartbeat_liveness is considered gone. Default: 3.
  int heartbeat_liveness = 3;
  // Re-dispatches a chunk gets after losing a worker for reasons not blamed on it (heartbeat
  // lost, link cut, worker gone without an exit report) before it fails with kWorkerLost.
  // Default: 3.
  int max_retries = 3;
  // A chunk that was running in this many worker processes when they crashed (signal or non-zero
  // exit, as reported by their supervisor) is poison: it fails with kWorkerLost. Default: 3.
  int poison_kills = 3;
  // On stop(): how long to wait for the chunks in flight to be answered before disconnecting
  // everyone (clients resend what was not answered to the next broker). Default: 5 s.
  std::chrono::milliseconds drain_timeout{5000};
  // Largest message (frame) accepted on either socket, in bytes; a peer that sends a larger one is
  // disconnected by ZeroMQ before it is read. Keep it equal on every peer. Default: 64 MiB.
  std::int64_t max_message_bytes = 64LL << 20;
  // ZMQ_SNDHWM/ZMQ_RCVHWM of both sockets, in messages. Default: 10000.
  int high_water_mark = 10000;
  // Most worker processes and clients registered at once; READY or HELLO beyond that is answered
  // with ERROR kUnavailable and leaves no state. Default: 10000 workers, 1000 clients.
  std::size_t max_workers = 10000;
  std::size_t max_clients = 1000;
  // Per-client quotas: what one client may hold at the broker at once. A chunk (or job, or
  // broadcast context) beyond them is answered kResourceExhausted and its Pool sends it again as
  // its earlier chunks are answered (backpressure); one that could never fit (a chunk larger than
  // max_client_bytes, a context larger than max_client_context_bytes) fails with kInvalidArgument.
  // A context no chunk uses is freed a liveness period after its last chunk, or at once when the
  // client needs room for another. The defaults leave a Pool with its default window
  // (at most 2048 chunks in flight) room to spare: 4096 chunks, 1 GiB of chunk payload, 1024 jobs,
  // 64 contexts, 256 MiB of contexts.
  std::size_t max_client_chunks = 4096;  // queued or running
  std::int64_t max_client_bytes = 1LL << 30;
  std::size_t max_client_jobs = 1024;  // with a chunk queued or running
  std::size_t max_client_contexts = 64;
  std::int64_t max_client_context_bytes = 256LL << 20;
  // READY messages accepted per second from one peer (its IP address, or its CURVE key), with a
  // burst of the same size; more are answered ERROR kUnavailable and register nothing (the worker
  // tries again a heartbeat later). Bounds registration churn. Default: 1000.
  std::uint32_t max_ready_per_second = 1000;
  // CURVE: the broker's secret key file (`poolmap keygen`), and the directories of *.pub files
  // allowed to connect as clients and as workers. All three or none. Default: none (no CURVE).
  std::filesystem::path curve_secret_file{};
  std::filesystem::path client_keys_dir{};
  std::filesystem::path worker_keys_dir{};
  // Without CURVE, allow endpoints other hosts can reach (a warning is logged at every start).
  // Default: false (loopback only).
  bool insecure = false;
  // Without CURVE and with a loopback worker endpoint only: a password every peer of the worker
  // socket must give with ZeroMQ's PLAIN mechanism (in clear, which is why it needs loopback). An
  // embedded Pool sets a random one, so that no other local user who finds its loopback port can
  // register as one of its workers. It replaces the per-user secret on the worker socket.
  // Default: "" = none.
  std::string worker_password{};
  // Without CURVE: the file of this user's secret, which every client and worker must give (ZeroMQ
  // PLAIN, checked by the ZAP handler in constant time) on each socket not bound to inproc:// (and,
  // with worker_password, on the client socket only). Read, or made when missing: 32 random bytes as
  // hex, mode 0600, in a directory only this user may open. The same user's workers, `Pool`s and CLI
  // find the same file by themselves; other local users cannot read it and are refused. PLAIN sends
  // it in clear: on loopback only root can see it, with `insecure` the network can. "none": no
  // secret, anyone who reaches the endpoints is let in. Ignored with CURVE. Throws (at construction)
  // for a file or directory open to others, or no place for it.
  // Default: "" = the POOLMAP_SECRET_FILE environment variable, else
  // ${XDG_CONFIG_HOME:-$HOME/.config}/poolmap/secret (without HOME: the home directory of the
  // password database; without any home, an error naming --secret-file).
  std::filesystem::path secret_file{};
  // Serve Prometheus metrics at http://ADDRESS/metrics, e.g. "127.0.0.1:9464" (port 0: a free
  // one, see metrics_url()). Default: "" = none.
  std::string metrics_address{};
  // Serve the live dashboard at http://ADDRESS/, the status as JSON at /api/v1/status and the
  // metrics at /metrics, e.g. "127.0.0.1:8080" (an IP address; port 0: a free one, see
  // http_url()). An address that is not loopback needs http_token_file. Default: "" = none.
  std::string http_address{};
  // A file holding the token that every request for data must carry (`Authorization: Bearer
  // TOKEN`; the page asks for it once): at least 16 characters (surrounding whitespace is
  // dropped), in a file others cannot read. Default: "" = none (loopback only).
  std::filesystem::path http_token_file{};
  // A pair of brokers (docs/OPERATIONS.md, "A standby broker"): "primary" or "backup"; "" = this
  // broker has no peer. Both start passive; exactly one is active at a time, and the passive one
  // takes over when its peer has been silent for heartbeat_interval × heartbeat_liveness and a
  // client or worker turns to it. Clients and workers are given both brokers' endpoints.
  std::string ha_role{};
  // Where this broker publishes its state to its peer, e.g. "tcp://10.0.0.1:5557" (port 0 / "*"
  // picks a free one, see ha_endpoint()), and the peer's ha_bind endpoint. Both needed with ha_role.
  // Without CURVE, ha_bind must be loopback unless `insecure`, and the peer gives this user's secret.
  std::string ha_bind{};
  std::string ha_peer{};
  // With CURVE: the peer's public key file (*.pub, from `poolmap keygen`); only that key may
  // subscribe to this broker's state, and the peer is known by it. Needed with CURVE and ha_role.
  std::filesystem::path ha_peer_key_file{};
};

class Broker {
 public:
  // Reads the keys, starts the ZAP handler, then binds both endpoints. Share `context` with
  // in-process clients that connect over inproc://. Throws poolmap::Error (kInvalidArgument) when
  // an endpoint cannot be bound, a key file or directory is bad, or an endpoint is not loopback
  // without CURVE or `insecure`.
  explicit Broker(BrokerOptions options, Context context = Context());
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // The endpoints actually bound, with wildcards resolved ("tcp://127.0.0.1:41523").
  const std::string& client_endpoint() const noexcept;
  const std::string& worker_endpoint() const noexcept;
  // Where the metrics are served ("http://127.0.0.1:9464/metrics"), or "" without metrics_address.
  const std::string& metrics_url() const noexcept;
  // Where the dashboard is served ("http://127.0.0.1:8080/"), or "" without http_address.
  const std::string& http_url() const noexcept;
  // The peer link's endpoint actually bound (ha_bind), or "" without a pair.
  const std::string& ha_endpoint() const noexcept;

  // Serves until stop() is called. Call from one thread, once.
  void run();

  // Makes run() drain and return (within drain_timeout plus a heartbeat). A second call makes it
  // return without waiting for chunks in flight. Thread-safe; not async-signal-safe (call it from
  // a signal-waiting thread, not from a signal handler).
  void stop() noexcept;

  // Reads the key directories again (keys added or removed take effect for new connections; the
  // daemon calls it on SIGHUP). If a directory cannot be read, the keys in use stay and an error
  // is logged. Does nothing without CURVE. Thread-safe.
  void reload_keys() noexcept;

  // Failing back (the daemon calls it on SIGUSR1): an active broker whose peer is there and
  // passive steps down and asks the peer to take over at once; otherwise it logs why not. Does
  // nothing without a pair. Thread-safe.
  void hand_over() noexcept;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace poolmap
