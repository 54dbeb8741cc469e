// Internal (not installed): the broker's HTTP server (poolmap-broker --http HOST:PORT): the live
// dashboard at / (with /dashboard.js and /dashboard.css, compiled into the binary), the status as
// JSON at /api/v1/status (the fields of `poolmap status --json`, plus "version"), and the
// Prometheus metrics at /metrics. civetweb, on threads of its own: the broker's loop never waits
// for a request.
//
// The status is a snapshot (StatusBoard): the loop builds one only while someone looks (a request
// within the last 5 s), at most every 500 ms, so nothing is spent on it while nobody looks and a
// flood of requests costs the loop two snapshots a second. A request that finds no snapshot newer
// than a second wakes the loop and waits up to 2 s for one (503 if none comes).
//
// Safe to leave on: the caller refuses a non-loopback address without a token. With a token every
// request but the page's own three files must carry it (`Authorization: Bearer TOKEN`), compared
// in constant time, or gets 401. The JSON holds no key or secret (only the public half of ids),
// and the page puts every string it shows into text nodes, never into markup.
//
// Thread-safety: StatusBoard is shared by the loop (wanted, publish) and the server's threads
// (latest); HttpServer's constructor and destructor run on the loop's thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "poolmap/protocol.hpp"

struct mg_context;
struct mg_connection;

namespace poolmap::detail {

class StatusBoard {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kLookingFor{5000};   // a request keeps snapshots coming this long
  static constexpr std::chrono::milliseconds kEvery{500};         // at most one snapshot per this
  static constexpr std::chrono::milliseconds kFreshEnough{1000};  // older: a request waits for a new one
  static constexpr std::chrono::milliseconds kWaitAtMost{2000};

  // `wake_loop` makes the broker's loop run a pass soon (any thread may call it).
  explicit StatusBoard(std::function<void()> wake_loop) : wake_loop_(std::move(wake_loop)) {}

  // A server thread: the newest snapshot, waiting for a fresh one if needed; nullptr: none came.
  std::shared_ptr<const std::string> latest();
  // The loop, each pass: whether to build a snapshot now (cheap while nobody looks: one atomic load).
  bool wanted(Clock::time_point now) const;
  void publish(std::string json, Clock::time_point now);

 private:
  std::function<void()> wake_loop_;
  std::atomic<std::int64_t> asked_ns_{0};  // Clock's time of the latest request (0: never)
  mutable std::mutex mutex_;
  std::condition_variable published_;
  std::shared_ptr<const std::string> snapshot_;
  Clock::time_point built_{};
};

// The status as /api/v1/status serves it: `broker` names this broker (its client endpoint). At
// most kMaxWorkersShown workers (sorted as the reply is), the rest counted in "workers_omitted";
// the reply holds at most proto::kMaxStatusJobs jobs (the rest counted in "jobs_omitted") and
// proto::kMaxStatusEvents events.
inline constexpr std::size_t kMaxWorkersShown = 2000;
// `uptime`: since the broker started, when the snapshot was made (the page's rates are per
// broker time, whatever the browser's clock does).
std::string status_json(const proto::StatusReply& status, const std::string& broker,
                        std::chrono::milliseconds heartbeat_interval, std::chrono::milliseconds uptime);

// Whether `token` equals `expected`, in time that depends only on their lengths.
bool same_token(const std::string& token, const std::string& expected);

class HttpServer {
 public:
  struct Options {
    std::string address;  // HOST:PORT; port 0 picks a free one
    std::string token;    // "" = no token asked (the caller allows that on loopback only)
  };
  // Throws std::runtime_error when it cannot listen at the address.
  HttpServer(Options options, StatusBoard& board, std::function<std::string()> metrics_text);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // "http://HOST:PORT/" with the port it listens on.
  const std::string& url() const { return url_; }

 private:
  static int handle(mg_connection* connection, void* self);
  int serve(mg_connection* connection);

  Options options_;
  StatusBoard& board_;
  std::function<std::string()> metrics_text_;
  mg_context* context_ = nullptr;
  std::string url_;
};

}  // namespace poolmap::detail
